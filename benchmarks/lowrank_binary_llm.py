"""SmolLM2 perplexity and MiniLM cosine for low-rank, binarization and shift-add at about 4 bits/weight.

Every variant compresses the linear layers of the model (attention + MLP projections; the tied
embedding / LM head is shared, so all passes leave it alone) to roughly the same stored size,
~4 bits per weight counted as stored (packed codes + scales + indices + factors), and the table
prints the exact figure.  Variants:
  SVD, ASVD           LowRank(budget=0.125): fp32 factors holding 12.5% of the parameters
                      (ranks allocated across layers by sensitivity; ASVD whitened by calibration);
  ASVD + 8-bit        LowRank(asvd, budget=0.5) then Quantize(rtn, 8 bits, per channel);
  3-bit + compensate  Quantize(rtn, 3 bits, g64) then Compensate(rank=8) (activation-aware, EoRA);
  3-bit alone         the same quantization without compensation, for reference;
  partial binary      Binarize(partial, salient_ratio=0.1, g64): PB-LLM with GPTQ-style reconstruction;
  shift-add           ShiftAdd(binary-coded, 3 bases, g64): ShiftAddLLM-style.
Evaluated with the interpreter (target "torch"), calibration and evaluation windows disjoint.

Run: .venv/bin/python benchmarks/lowrank_binary_llm.py [--models smollm2,minilm] [--seq 128] [--calib 8] [--eval 16]
"""

from __future__ import annotations

import argparse
import gc
import math
import time
from collections.abc import Callable
from typing import Any

import torch

import bitpress as bp
from bitpress.passes import Binarize, Compensate, LowRank, Quantize, ShiftAdd


def variants() -> dict[str, list[Any]]:
    return {
        "fp32": [],
        "SVD (12.5% params)": [LowRank(method="svd", budget=0.125)],
        "ASVD (12.5% params)": [LowRank(method="asvd", budget=0.125)],
        "ASVD 50% + 8-bit": [LowRank(method="asvd", budget=0.5), Quantize(method="rtn", bits=8, group_size=-1)],
        "3-bit g64 alone": [Quantize(method="rtn", bits=3, group_size=64)],
        "3-bit g64 + Compensate(r=8)": [Quantize(method="rtn", bits=3, group_size=64), Compensate(rank=8)],
        "partial binary 10% g64": [Binarize(method="partial", salient_ratio=0.1, group_size=64)],
        "shift-add 3x g64": [ShiftAdd(bases=3, group_size=64)],
    }


def linear_bits(cm: bp.CompiledModel, ref: bp.Graph) -> float:
    """Stored bits per original weight over the linear layers with their own weight (not the tied LM head).

    Everything a compressed layer stores counts: codes, scales, exponents, salient values and
    indices, both low-rank factors and compensation factors (and biases, where a model has them).
    """
    tied = {n.inputs[1].name for n in ref.nodes if n.op == "linear" and len(n.inputs[1].users) > 1}
    params = sum(n.inputs[1].numel for n in ref.nodes if n.op == "linear" and n.inputs[1].name not in tied)
    stored = 0
    for n in cm.graph.nodes:
        if not n.op.endswith("linear") or (n.op == "linear" and n.inputs[1].name in tied):
            continue
        stored += sum(v.type.nbytes for v in n.inputs[1:] if v is not None and v.is_const)
    return 8 * stored / params


def run_model(
    label: str, model: torch.nn.Module, calib: list[tuple[torch.Tensor, ...]], metric: Callable[[bp.CompiledModel], float]
) -> list[tuple[str, float, float, float, float]]:
    t = time.perf_counter()
    base = bp.compile(model, calib[0], target="torch", quiet=True)
    g = base.graph
    print(f"# {label}: traced in {time.perf_counter() - t:.0f} s, {len(g)} nodes", flush=True)
    rows = []
    for name, passes in variants().items():
        t = time.perf_counter()
        cm = bp.compile(g, calib[0], passes=passes, target="torch", calibration=calib, quiet=True, canonicalize=False)
        ct = time.perf_counter() - t
        value = metric(cm)
        bits = linear_bits(cm, g) if passes else 32.0
        rows.append((name, value, bits, cm.report.total_bytes / 1e6, ct))
        print(
            f"  {name:<30} metric {value:9.4f}  bits/weight {bits:5.2f}  MB {cm.report.total_bytes / 1e6:7.2f}  compile {ct:5.0f} s",
            flush=True,
        )
        del cm
        gc.collect()
    return rows


def smollm2(args: argparse.Namespace) -> list[tuple[str, float, float, float, float]]:
    from bitpress.models.smollm2 import SmolLMLogits, load_smollm2
    from bitpress.models.text import english_text, token_windows

    lm, tok = load_smollm2()
    model = SmolLMLogits(lm).eval()
    text = english_text()
    calib = [(w,) for w in token_windows(tok, text, args.seq, args.calib)]
    evalw = token_windows(tok, text, args.seq, args.eval, offset=args.calib)

    def ppl(cm: bp.CompiledModel) -> float:
        nll, count = 0.0, 0
        for w in evalw:
            logits = cm(w).reshape(args.seq, -1).float()
            nll += float(torch.nn.functional.cross_entropy(logits[:-1], w[0, 1:], reduction="sum"))
            count += args.seq - 1
        return math.exp(nll / count)

    return run_model("SmolLM2-135M perplexity", model, calib, ppl)


def minilm(args: argparse.Namespace) -> list[tuple[str, float, float, float, float]]:
    from bitpress.models.minilm import MiniLMEncoder, encode_batch, load_minilm, mean_pool
    from bitpress.models.text import english_text

    model, tok = load_minilm()
    enc = MiniLMEncoder(model).eval()
    sents = [s.strip() for s in english_text().replace("\n", " ").split(". ") if len(s.split()) >= 6]
    batch = 16
    calib = [encode_batch(tok, sents[i * batch : (i + 1) * batch], args.seq) for i in range(args.calib)]
    evals = [encode_batch(tok, sents[(args.calib + i) * batch : (args.calib + i + 1) * batch], args.seq) for i in range(args.eval // 2)]
    with torch.no_grad():
        ref = [mean_pool(enc(ids, mask), mask) for ids, mask in evals]

    def cosine(cm: bp.CompiledModel) -> float:
        cs = [(mean_pool(cm(ids, mask), mask) * r).sum(-1) for (ids, mask), r in zip(evals, ref)]
        return float(torch.cat(cs).mean())

    return run_model("MiniLM-L6 embedding cosine to fp32", enc, calib, cosine)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="smollm2,minilm")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--calib", type=int, default=8)
    ap.add_argument("--eval", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tables = {}
    if "smollm2" in args.models:
        tables["SmolLM2-135M: perplexity (lower is better)"] = smollm2(args)
    if "minilm" in args.models:
        tables["MiniLM-L6: mean cosine of sentence embeddings to fp32 (higher is better)"] = minilm(args)
    for title, rows in tables.items():
        print(f"\n{title}; seq {args.seq}, {args.calib} calibration / {args.eval} eval windows")
        print("| variant | metric | stored bits per linear weight | model MB (incl. embedding) | compile s |")
        print("|---|---|---|---|---|")
        for name, value, bits, mb, ct in rows:
            print(f"| {name} | {value:.4f} | {bits:.2f} | {mb:.1f} | {ct:.0f} |")


if __name__ == "__main__":
    main()
