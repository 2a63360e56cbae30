"""One artifact with a symbolic batch vs one artifact compiled per batch size, on TVM llvm.

For each model (an MLP, the Fashion-MNIST CNN from bitpress.models, a small transformer
encoder; fp32 and W4 weights for the MLP) this compiles once with the default
`dynamic="batch"` and once per batch size with `dynamic=None`, checks that both agree with
the interpreter, and times batch 1 / 8 / 32 side by side.  Timings interleave the two
artifacts round by round and take the median, so load from other processes hits both alike.

    python benchmarks/dynamic_batch.py [--reps 200] [--threads 2] [--batches 1,8,32]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import bitpress as bp
from bitpress.compiler.interpreter import run


class Encoder(nn.Module):
    """A 2-layer pre-norm transformer encoder: d=64, 4 heads, MLP 128, sequence 16."""

    def __init__(self, d: int = 64, heads: int = 4, layers: int = 2, seq: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.h = heads
        self.embed = nn.Linear(32, d)
        self.pos = nn.Parameter(torch.randn(1, seq, d) * 0.02)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "ln1": nn.LayerNorm(d),
                    "qkv": nn.Linear(d, 3 * d),
                    "out": nn.Linear(d, d),
                    "ln2": nn.LayerNorm(d),
                    "up": nn.Linear(d, 2 * d),
                    "down": nn.Linear(2 * d, d),
                }
            )
            for _ in range(layers)
        )
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        t = self.embed(x) + self.pos
        for blk in self.blocks:
            q, k, v = blk["qkv"](blk["ln1"](t)).reshape(b, s, 3, self.h, -1).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, -1)
            t = t + blk["out"](a)
            t = t + blk["down"](F.gelu(blk["up"](blk["ln2"](t))))
        return self.head(t.mean(1))


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10)).eval()


def cnn() -> nn.Module:
    from bitpress.models.fashion_mnist import load_fashion_cnn

    return load_fashion_cnn().eval()


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[int], torch.Tensor], list[bp.Pass]]] = {
    "MLP 256-512-256-10": (mlp, lambda b: torch.randn(b, 256), []),
    "MLP 256-512-256-10, W4 g64": (mlp, lambda b: torch.randn(b, 256), [bp.passes.Quantize(method="rtn", bits=4, group_size=64)]),
    "FashionCNN": (cnn, lambda b: torch.rand(b, 1, 28, 28), []),
    "encoder d64 x2, seq 16": (lambda: Encoder().eval(), lambda b: torch.randn(b, 16, 32), []),
}


def median_ms(fns: list[Callable[[], object]], reps: int) -> list[float]:
    for f in fns:
        for _ in range(5):
            f()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            f()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) * 1e3 for t in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,8,32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    for name, (make, data, passes) in MODELS.items():
        model = make()
        t0 = time.perf_counter()
        dyn = bp.compile(model, (data(4),), passes=passes, target="llvm", quiet=True)
        t_dyn = time.perf_counter() - t0
        if dyn.report.shapes.get("notes"):
            raise SystemExit(f"{name}: the dynamic build was specialized: {dyn.report.shapes['notes']}")
        for b in batches:
            x = data(b)
            t0 = time.perf_counter()
            st = bp.compile(model, (x,), passes=passes, target="llvm", quiet=True, dynamic=None)
            t_st = time.perf_counter() - t0
            for cm in (dyn, st):
                want = run(cm.graph, [x])[0]
                torch.testing.assert_close(cm(x), want, rtol=1e-3, atol=1e-4)
            ms_dyn, ms_st = median_ms([lambda d=dyn, x=x: d(x), lambda s=st, x=x: s(x)], args.reps)
            rows.append((name, b, ms_st, ms_dyn, ms_dyn / ms_st, t_st, t_dyn))
            print(f"{name:<28} batch {b:>3}: static {ms_st:8.3f} ms  dynamic {ms_dyn:8.3f} ms  ({ms_dyn / ms_st:5.2f}x)", flush=True)
    print()
    print("| model | batch | per-shape artifact (ms) | one dynamic artifact (ms) | dynamic / static |")
    print("|---|---:|---:|---:|---:|")
    for name, b, s, d, r, _, _ in rows:
        print(f"| {name} | {b} | {s:.3f} | {d:.3f} | {r:.2f} |")


if __name__ == "__main__":
    main()
