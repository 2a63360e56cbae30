"""W4A16 GEMV speed at SmolLM2 MLP shapes: bitpress TVM int4 (g128) vs TVM fp32 vs torch fp32.

Run: .venv/bin/python benchmarks/quant_gemv.py [--threads 2] [--repeat 200]

Cold-weight variant: cycles through `--layers` distinct copies of the layer (a working set
larger than the last-level cache), like decoding through every layer of a model in turn.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import bitpress as bp


class Layer(torch.nn.Module):
    def __init__(self, k: int, n: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(k, n, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def _best(call, repeat: int, trials: int = 10) -> float:  # type: ignore[no-untyped-def]
    """Milliseconds per call: the best of `trials` runs of `repeat // trials` calls (load on a shared machine)."""
    call(0)
    per = max(1, repeat // trials)
    best = float("inf")
    for _ in range(trials):
        t = time.perf_counter()
        for i in range(per):
            call(i)
        best = min(best, (time.perf_counter() - t) / per * 1e3)
    return best


def timeit(fn, xs, repeat: int) -> float:  # type: ignore[no-untyped-def]
    return _best(lambda i: fn(xs[i % len(xs)]), repeat)


def timeit_cycle(fns, x: torch.Tensor, repeat: int) -> float:  # type: ignore[no-untyped-def]
    """Each call uses the next of len(fns) distinct weight copies (cold caches)."""
    return _best(lambda i: fns[i % len(fns)](x), repeat)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=300)
    ap.add_argument("--layers", type=int, default=24, help="distinct weight copies for the cold-cache run")
    ap.add_argument("--batches", default="1,16")
    args = ap.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))  # read when tvm starts its pool
    torch.set_num_threads(args.threads)
    print(
        "| shape (N x K) | batch | torch fp32 ms | TVM fp32 ms | TVM W4 g128 ms | W4 vs TVM fp32 | W4 vs torch | cold: torch | cold: TVM fp32 | cold: W4 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, k in [(1536, 576), (576, 1536)]:
        for batch in [int(b) for b in args.batches.split(",")]:
            x = torch.randn(batch, k)
            hot = {}
            cold = {}
            mods = [Layer(k, n).eval() for _ in range(args.layers)]
            fp = [bp.compile(m, (x,), target="llvm", quiet=True) for m in mods]
            q4 = [
                bp.compile(m, (x,), passes=[bp.passes.Quantize(bits=4, group_size=128, weight_clip="minmax")], target="llvm", quiet=True)
                for m in mods
            ]
            with torch.no_grad():
                for key, fns in (("torch", mods), ("fp", fp), ("q4", q4)):
                    hot[key] = timeit(fns[0], [x], args.repeat)
                    cold[key] = timeit_cycle(fns, x, args.repeat)
            print(
                f"| {n} x {k} | {batch} | {hot['torch']:.3f} | {hot['fp']:.3f} | {hot['q4']:.3f} | {hot['fp'] / hot['q4']:.2f}x | "
                f"{hot['torch'] / hot['q4']:.2f}x | {cold['torch']:.3f} | {cold['fp']:.3f} | {cold['q4']:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
