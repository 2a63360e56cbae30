"""End-to-end SmolLM2-135M on TVM llvm: W4A16 (g128, bitpress's fused int4 kernels) vs fp32.

Run: .venv/bin/python benchmarks/quant_smollm2_speed.py [--seq 1,16] [--threads 1]

The model runs without a KV cache, so `--seq 1` is one decoding step's worth of linear
layers at batch 1 (every linear is a GEMV; attention over one token is trivial) and shows the
weight-bandwidth effect; longer sequences are GEMM-bound.  lm_head stays float in both
(tied to the embedding).  Times are the best of several runs (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import bitpress as bp
from bitpress.compiler.interpreter import run
from bitpress.models.smollm2 import SmolLMLogits, load_smollm2


def best_ms(fn, trials: int = 5, per: int = 3) -> float:  # type: ignore[no-untyped-def]
    fn()
    best = float("inf")
    for _ in range(trials):
        t = time.perf_counter()
        for _ in range(per):
            fn()
        best = min(best, (time.perf_counter() - t) / per * 1e3)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", default="1,16")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    model, _ = load_smollm2()
    wrapped = SmolLMLogits(model).eval()
    print(
        "| seq | torch eager fp32 ms | TVM fp32 ms | TVM W4A16 g128 ms | W4 vs TVM fp32 | W4 vs torch | max abs diff W4 TVM vs interpreter |"
    )
    print("|---|---|---|---|---|---|---|")
    for seq in [int(s) for s in args.seq.split(",")]:
        ids = torch.randint(0, 49152, (1, seq))
        g = bp.compile(wrapped, (ids,), target="torch", quiet=True).graph
        q = bp.compile(
            g.clone(),
            (ids,),
            passes=[bp.passes.Quantize(bits=4, group_size=128, weight_clip="minmax", exclude=("*lm_head*",))],
            target="torch",
            canonicalize=False,
            quiet=True,
        ).graph
        t0 = time.perf_counter()
        fp = bp.compile(g, (ids,), target="llvm", canonicalize=False, quiet=True)
        t1 = time.perf_counter()
        w4 = bp.compile(q, (ids,), target="llvm", canonicalize=False, quiet=True)
        t2 = time.perf_counter()
        diff = (w4(ids) - run(q, (ids,))[0]).abs().max().item()
        with torch.no_grad():
            te = best_ms(lambda ids=ids: wrapped(ids))
        tf = best_ms(lambda fp=fp, ids=ids: fp(ids))
        tq = best_ms(lambda w4=w4, ids=ids: w4(ids))
        print(f"| {seq} | {te:.1f} | {tf:.1f} | {tq:.1f} | {tf / tq:.2f}x | {te / tq:.2f}x | {diff:.2e} |", flush=True)
        print(
            f"  (build: fp32 {t1 - t0:.0f} s, W4 {t2 - t1:.0f} s; stored {fp.report.total_bytes:,} vs {w4.report.total_bytes:,} B)",
            flush=True,
        )


if __name__ == "__main__":
    main()
