"""MiniLM-L6 end to end: Prune(2:4) then Quantize(W4) in one pipeline, built for llvm and onnx.

Run: .venv/bin/python benchmarks/prune_quant_minilm.py [--seq 32] [--method wanda] [--quant rtn] [--group-size 64]

Every linear of the 6 encoder layers is pruned 2:4 and its kept values quantized to 4 bits
(`nm_qlinear`: int4 codes, float16 scale + 4-bit zero per `--group-size` kept values, 2-bit
indices); the pipeline is given as a recipe dict, the same form a YAML recipe takes.
Printed: stored weight bytes, sentence-embedding cosine to fp32 (mean pooled, the
sentence-transformers recipe) for 2:4 alone and 2:4 + W4, and the llvm and onnx builds
against the interpreter on the same inputs.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import bitpress as bp
from bitpress.models import SENTENCES, MiniLMEncoder, encode_batch, load_minilm, mean_pool


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--method", default="wanda")
    ap.add_argument("--quant", default="rtn")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_minilm()
    m = MiniLMEncoder(model).eval()
    ids, mask = encode_batch(tok, SENTENCES, args.seq)
    half = len(SENTENCES) // 2
    cal = [(ids[:half], mask[:half])]
    test = (ids[half:], mask[half:])
    with torch.no_grad():
        ref = mean_pool(m(*test), test[1])
    prune = {"prune": {"method": args.method, "sparsity": "2:4"}}
    quant = {"quantize": {"method": args.quant, "bits": 4, "group_size": args.group_size}}
    print(
        f"MiniLM-L6, {len(SENTENCES)} sentences x {args.seq} tokens (calibration: first {half}, test: the rest); load {os.getloadavg()[0]:.1f}"
    )
    print("| config | weights stored | embedding cosine to fp32 (min / mean) | note |\n|---|---|---|---|")
    dense_bytes = sum(p.numel() * 4 for p in model.parameters())
    print(f"| fp32 | {dense_bytes / 2**20:.1f} MiB | 1 / 1 | |")
    graphs = {}
    for label, recipe in ((f"{args.method} 2:4", [prune]), (f"{args.method} 2:4 + {args.quant} W4 g{args.group_size}", [prune, quant])):
        t = time.perf_counter()
        cm = bp.compile(m, test, passes={"passes": recipe}, calibration=cal, target="torch", quiet=True)
        secs = time.perf_counter() - t
        emb = mean_pool(cm(*test), test[1])
        cos = torch.nn.functional.cosine_similarity(emb, ref)
        ops = sorted({n.op for n in cm.graph.nodes if n.op.endswith("linear")})
        print(f"| {label} | {cm.report.total_bytes / 2**20:.1f} MiB | {cos.min():.4f} / {cos.mean():.4f} | ops {ops}; {secs:.0f} s |")
        graphs[label] = cm
    label, cm = list(graphs.items())[-1]
    y_ref = cm(*test)
    for target in ("llvm", "onnx"):
        t = time.perf_counter()
        other = bp.compile(cm.graph, test, target=target, canonicalize=False, quiet=True)
        secs = time.perf_counter() - t
        y = other(*test)
        err = float((y - y_ref).abs().max())
        print(f"{label} on {target}: max |y - interpreter| = {err:.2e} (|y| max {float(y_ref.abs().max()):.1f}); build {secs:.0f} s")


if __name__ == "__main__":
    main()
