"""Packed-binary and shift-add GEMV/GEMM on llvm vs fp32, at SmolLM2 MLP shapes.

Compares, per shape and batch: torch fp32 (eager), bitpress TVM fp32 linear, and bitpress TVM
kernels for sign-binary (1 bit/weight, add/sub over packed signs), 2-basis binary, XNOR-popcount
(binary activations), ShiftAddLLM-style shift-add (3 bases, g128), power-of-two (4-bit codes).
"cold" (batch 1; torch, TVM fp32 and sign only) cycles through `--layers` distinct weight copies
(an fp32 working set beyond the LLC), like decoding through every layer of a model.

Run: .venv/bin/python benchmarks/lowrank_binary_kernels.py [--threads 2] [--repeat 200] [--layers 16]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

import bitpress as bp
from bitpress.passes import Binarize, ShiftAdd


def timeit(fn: Callable[[torch.Tensor], object], xs: list[torch.Tensor], repeat: int) -> float:
    for x in xs[:3]:
        fn(x)
    t = time.perf_counter()
    for i in range(repeat):
        fn(xs[i % len(xs)])
    return (time.perf_counter() - t) / repeat * 1e3


def cycling(fns: list[Callable[[torch.Tensor], object]]) -> Callable[[torch.Tensor], object]:
    """Call the next of `fns` each time (distinct weights: the cold-cache case)."""
    state = {"i": 0}

    def call(x: torch.Tensor) -> object:
        state["i"] += 1
        return fns[state["i"] % len(fns)](x)

    return call


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--layers", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    variants: dict[str, list[object]] = {
        "TVM fp32": [],
        "sign 1b": [Binarize(method="sign", data_aware=False)],
        "2-basis 2b": [Binarize(method="multi-basis", bases=2, data_aware=False)],
        "XNOR 1b/1b": [Binarize(method="sign", activations="sign", data_aware=False)],
        "shift-add 3x g128": [ShiftAdd(bases=3, group_size=128)],
        "pow2 4b g128": [ShiftAdd(method="power-of-two", bits=4, group_size=128)],
    }
    head = ["shape (N x K)", "batch", "torch fp32", *variants]
    print("| " + " | ".join(head) + " | weight bytes fp32 / sign |")
    print("|" + "---|" * (len(head) + 1))
    for n, k in [(1536, 576), (576, 1536)]:
        for batch in (1, 16):
            mods = [torch.nn.Linear(k, n, bias=False).eval() for _ in range(args.layers)]
            x = torch.randn(batch, k)
            row_hot, row_cold = [f"{n} x {k}", f"{batch} hot"], [f"{n} x {k}", f"{batch} cold"]
            with torch.no_grad():
                row_hot.append(f"{timeit(mods[0], [x], args.repeat):.3f}")
                row_cold.append(f"{timeit(cycling(list(mods)), [x], args.repeat):.3f}")
            sizes = []
            for name, passes in variants.items():
                # cold runs (one compile per weight copy) only for batch 1 and the fp32 / sign pair
                cold = batch == 1 and name in ("TVM fp32", "sign 1b")
                cms = [bp.compile(m, (x,), passes=list(passes), target="llvm", quiet=True) for m in (mods if cold else mods[:1])]
                sizes.append(cms[0].report.total_bytes)
                row_hot.append(f"{timeit(cms[0], [x], args.repeat):.3f}")
                row_cold.append(f"{timeit(cycling(list(cms)), [x], args.repeat):.3f}" if cold else "-")
            print("| " + " | ".join(row_hot) + f" | {sizes[0]:,} / {sizes[1]:,} |", flush=True)
            if batch == 1:
                print("| " + " | ".join(row_cold) + " | |", flush=True)


if __name__ == "__main__":
    main()
