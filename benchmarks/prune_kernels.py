"""Sparse (and sparse + int4) linear kernels vs dense on llvm at SmolLM2 MLP shapes.

Run: .venv/bin/python benchmarks/prune_kernels.py [--threads 2] [--repeat 50] [--rounds 7] [--layers 8] [--batches 1,32]

Per shape (gate/up 1536x576, down 576x1536) and batch, every variant is built for
`--layers` distinct random layers and timed side by side, round-robin (each round times
every variant once, so load from other processes hits all of them alike):

- torch fp32 eager (`F.linear`, MKL)
- TVM dense fp32 `linear` (bitpress's default CPU GEMM/GEMV schedule)
- TVM `nm_linear` 2:4 (fp32 values + 2-bit packed indices)
- TVM `sparse_linear` 50% unstructured (row-padded CSR, int16 columns)
- TVM dense W4 g128 `qlinear` (packed int4 + fp16 scales/zeros)
- TVM `nm_qlinear` 2:4 + W4 g128 (int4 codes of the kept values + scales/zeros per 128
  kept values + 2-bit indices)

"hot": one layer called repeatedly (weights in cache); "cold": the `--layers` copies
cycled, a working set beyond the L2 caches, as when decoding through a model's layers.
Times are the best round (ms per call); ratios are against TVM dense fp32 in the same run.
On a shared, loaded machine use `--threads 1` (the default clock is then process CPU time,
which does not count the time the process waits for a core).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import torch

import bitpress as bp

Fn = Callable[[torch.Tensor], object]


class Layer(torch.nn.Module):
    def __init__(self, k: int, n: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(k, n, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def side_by_side(variants: dict[str, list[Fn]], x: torch.Tensor, repeat: int, rounds: int, clock: Callable[[], float]) -> dict[str, float]:
    """Best-of-`rounds` ms per call for each variant; each round times every variant in turn."""
    for fns in variants.values():
        for f in fns:
            f(x)
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(rounds):
        for name, fns in variants.items():
            t = clock()
            for i in range(repeat):
                fns[i % len(fns)](x)
            best[name] = min(best[name], (clock() - t) / repeat * 1e3)
    return best


PASSES = {
    "TVM dense fp32": [],
    "TVM 2:4": [bp.passes.Prune(sparsity="2:4")],
    "TVM CSR 50%": [bp.passes.Prune(sparsity=0.5)],
    "TVM W4 g128": [bp.passes.Quantize(bits=4, group_size=128)],
    "TVM 2:4+W4 g128": [bp.passes.Prune(sparsity="2:4"), bp.passes.Quantize(bits=4, group_size=128)],
}
OPS = {
    "TVM dense fp32": "linear",
    "TVM 2:4": "nm_linear",
    "TVM CSR 50%": "sparse_linear",
    "TVM W4 g128": "qlinear",
    "TVM 2:4+W4 g128": "nm_qlinear",
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument(
        "--clock",
        default="auto",
        choices=("auto", "cpu", "wall"),
        help="cpu: process CPU time (robust to other processes on a loaded machine; with --threads 1 it is the kernel's own time); auto: cpu for 1 thread, else wall",
    )
    ap.add_argument("--variants", default=",".join(PASSES), help="comma-separated subset of: " + ", ".join(PASSES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    chosen = [v for v in PASSES if v in args.variants.split(",")]
    clock = time.process_time if args.clock == "cpu" or (args.clock == "auto" and args.threads == 1) else time.perf_counter
    print(f"load average at start: {os.getloadavg()}; clock: {clock.__name__}; threads: {args.threads}")
    cols = ["torch fp32", *chosen]
    print("| shape (N x K) | batch | weights | " + " | ".join(cols) + " | " + " | ".join(f"{c} vs dense" for c in chosen[1:]) + " |")
    print("|---" * (3 + len(cols) + len(chosen) - 1) + "|")
    sizes: dict[str, dict[str, int]] = {}
    failed: dict[str, str] = {}
    for n, k in [(1536, 576), (576, 1536)]:
        for batch in (int(b) for b in args.batches.split(",")):
            torch.manual_seed(0)
            x = torch.randn(batch, k)
            mods = [Layer(k, n).eval() for _ in range(args.layers)]
            built: dict[str, list[Fn]] = {}
            for name in chosen:  # magnitude pruning and RTN: no calibration data needed
                try:
                    cms = [bp.compile(m, (x,), passes=PASSES[name], target="llvm", quiet=True) for m in mods]
                except Exception as e:  # another kernel's build failing must not hide the others' numbers
                    failed.setdefault(name, f"{n}x{k} batch {batch}: {type(e).__name__}: {str(e).strip().splitlines()[-1][:160]}")
                    continue
                assert cms[0].graph.find("lin").op == OPS[name], (name, cms[0].graph.find("lin").op)
                sizes.setdefault(f"{n}x{k}", {})[name] = cms[0].report.total_bytes
                built[name] = cms  # type: ignore[assignment]
            for label, count in (("hot", 1), ("cold", args.layers)):
                variants: dict[str, list[Fn]] = {"torch fp32": [torch.no_grad()(m.forward) for m in mods[:count]]}
                variants.update({name: fns[:count] for name, fns in built.items()})
                t = side_by_side(variants, x, args.repeat, args.rounds, clock)
                base = t.get(chosen[0], float("nan"))
                print(
                    f"| {n}x{k} | {batch} | {label} | "
                    + " | ".join(f"{t[c]:.3f} ms" if c in t else "build failed" for c in cols)
                    + " | "
                    + " | ".join(f"{base / t[c]:.2f}x" if c in t else "-" for c in chosen[1:])
                    + " |"
                )
    print(f"\nload average at end: {os.getloadavg()}")
    for name, why in failed.items():
        print(f"{name}: build failed ({why})")
    print("\nstored bytes per layer (report.total_bytes):")
    for shape, per in sizes.items():
        dense = per.get("TVM dense fp32")
        print(f"  {shape}: " + ", ".join(f"{k} {v:,}" + (f" ({v / dense:.3f})" if dense else "") for k, v in per.items()))


if __name__ == "__main__":
    main()
