"""2:4 sparse vs dense linear on llvm at SmolLM2 MLP shapes (gate/up 1536x576, down 576x1536).

Run: .venv/bin/python benchmarks/prune_kernels.py [--threads 2] [--repeat 200] [--layers 16]

Compares, per call: torch fp32 dense, bitpress TVM dense `linear` (default CPU schedule),
bitpress TVM `nm_linear` 2:4 (gather kernel over values + 2-bit packed indices), and
bitpress TVM `sparse_linear` at 50% unstructured (row-padded CSR, int16 columns).  Hot: one
layer called repeatedly.  Cold: `--layers` distinct copies cycled (working set beyond the
last-level cache), as when decoding through a model's layers.
"""

from __future__ import annotations

import argparse
import time

import torch

import bitpress as bp


class Layer(torch.nn.Module):
    def __init__(self, k: int, n: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(k, n, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def timeit(fns, x: torch.Tensor, repeat: int, rounds: int = 5) -> float:  # type: ignore[no-untyped-def]
    """Best of `rounds` rounds of `repeat` calls (the minimum is robust to other load on a shared machine)."""
    for f in fns[:2]:
        f(x)
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for i in range(repeat):
            fns[i % len(fns)](x)
        best = min(best, (time.perf_counter() - t) / repeat * 1e3)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--layers", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| shape (N x K) | batch | weights | torch fp32 | TVM dense | TVM 2:4 | TVM CSR 50% | 2:4 vs TVM dense | 2:4 vs torch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, k in [(1536, 576), (576, 1536)]:
        for batch in (1, 16):
            x = torch.randn(batch, k)
            mods = [Layer(k, n).eval() for _ in range(args.layers)]
            cal = [(torch.randn(batch, k),)]
            dense = [bp.compile(m, (x,), target="llvm", quiet=True) for m in mods]
            nm = [bp.compile(m, (x,), passes=[bp.passes.Prune(sparsity="2:4")], target="llvm", quiet=True, calibration=cal) for m in mods]
            csr = [bp.compile(m, (x,), passes=[bp.passes.Prune(sparsity=0.5)], target="llvm", quiet=True, calibration=cal) for m in mods]
            assert nm[0].graph.find("lin").op == "nm_linear" and csr[0].graph.find("lin").op == "sparse_linear"
            for label, count in (("hot", 1), ("cold", args.layers)):
                with torch.no_grad():
                    t_torch = timeit([m.forward for m in mods[:count]], x, args.repeat)
                t_dense = timeit(dense[:count], x, args.repeat)
                t_nm = timeit(nm[:count], x, args.repeat)
                t_csr = timeit(csr[:count], x, args.repeat)
                print(
                    f"| {n}x{k} | {batch} | {label} | {t_torch:.3f} ms | {t_dense:.3f} ms | {t_nm:.3f} ms | {t_csr:.3f} ms "
                    f"| {t_dense / t_nm:.2f}x | {t_torch / t_nm:.2f}x |"
                )
    b_dense = dense[0].report.total_bytes
    b_nm = nm[0].report.total_bytes
    b_csr = csr[0].report.total_bytes
    print(
        f"\nstored bytes per {n}x{k} layer: dense {b_dense:,}, 2:4 {b_nm:,} ({b_nm / b_dense:.3f}), CSR 50% {b_csr:,} ({b_csr / b_dense:.3f})"
    )


if __name__ == "__main__":
    main()
