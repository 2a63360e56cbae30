"""W4A16 GEMV/GEMM speed at SmolLM2 shapes: bitpress TVM int4 (g128) vs TVM fp32 vs torch fp32.

Run: .venv/bin/python benchmarks/quant_gemv.py [--threads 1] [--batches 1,32] [--rounds 5]

Per shape (N x K) and batch, every variant is timed in one process, round-robin over
`--rounds` rounds (the best round counts; the machine is shared), and the load average is
printed with the table.  `--clock cpu` (default) times with the process's CPU time, which a
loaded machine does not inflate by preempting the (single-threaded) run; `--clock wall`
uses wall time (use it with `--threads` > 1, where CPU time sums over threads):

- torch: `F.linear` on the fp32 weight;
- call: the whole `bp.compile(...)` callable (torch -> DLPack, Relax VM, back), fp32 and W4;
- kernel: the Relax VM's `time_evaluator` on the compiled main function (no Python
  conversion), fp32 and W4: the kernel's own speed;
- cold: the call cycling through `--layers` distinct weight copies per call (a working set
  larger than L2, as when decoding walks through every layer in turn).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import bitpress as bp

SHAPES = {"gate/up": (1536, 576), "down": (576, 1536), "q/o": (576, 576), "k/v": (192, 576), "lm_head": (49152, 576)}


class Layer(torch.nn.Module):
    def __init__(self, k: int, n: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(k, n, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


CLOCK = time.process_time


def per_call_ms(call: Callable[[int], Any], seconds: float) -> float:
    """Milliseconds per call over about `seconds` of calls (after one warm-up)."""
    call(0)
    n, t0 = 0, CLOCK()
    while True:
        call(n)
        n += 1
        el = CLOCK() - t0
        if el >= seconds and n >= 5:
            return el / n * 1e3


def kernel_ms(cm: Any, x: torch.Tensor, seconds: float) -> float:
    """The VM main function alone (arguments already on the device, no torch conversions), in ms."""
    exe = cm.executable
    exe.run([x])  # makes the VM
    args = [exe._to_dev(x), *exe._params]
    main_fn = exe._vm["main"]
    return per_call_ms(lambda i: main_fn(*args), seconds)


def quant(bits: int, gs: int, dynamic: bool = False) -> list[Any]:
    if dynamic:  # W4A8: int8 rows at run time, int8 block dots (qlinear_dyn)
        return [bp.passes.Quantize(bits=bits, group_size=gs, weight_clip="minmax", act_bits=8, act_dynamic=True)]
    return [bp.passes.Quantize(bits=bits, group_size=gs, weight_clip="minmax")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.2, help="timing window per variant per round")
    ap.add_argument("--layers", type=int, default=8, help="distinct weight copies for the cold run")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--shapes", default="gate/up,down,q/o,k/v,lm_head")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))  # read when tvm starts its pool
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"threads {args.threads}, clock {args.clock}; load average at start {os.getloadavg()}")
    print(
        "| layer | N x K | batch | torch fp32 | TVM fp32 call | TVM W4 call | TVM fp32 kernel | TVM W4 kernel | "
        "W4/TVM fp32 (kernel) | W4/torch (call) | cold: torch | cold: TVM fp32 | cold: W4 | cold W4/TVM fp32 | "
        "TVM W4A8 kernel | W4A8/TVM fp32 (kernel) | cold: W4A8 | cold W4A8/TVM fp32 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.shapes.split(","):
        n, k = SHAPES[name]
        for batch in [int(b) for b in args.batches.split(",")]:
            x = torch.randn(batch, k)
            copies = 1 if name == "lm_head" else args.layers  # lm_head alone is 113 MB fp32: already cold
            mods = [Layer(k, n).eval() for _ in range(copies)]
            fp = [bp.compile(m, (x,), target="llvm", quiet=True) for m in mods]
            q4 = [bp.compile(m, (x,), passes=quant(args.bits, args.group_size), target="llvm", quiet=True) for m in mods]
            a8 = [bp.compile(m, (x,), passes=quant(args.bits, args.group_size, True), target="llvm", quiet=True) for m in mods]
            ws = [m.lin.weight.detach() for m in mods]
            err = (q4[0](x) - bp.compile(q4[0].graph, (x,), target="torch", canonicalize=False, quiet=True)(x)).abs().max().item()
            for f in (*fp, *q4, *a8):
                f(x)  # every copy's VM exists before any timing
            best: dict[str, float] = {}

            def keep(key: str, v: float, best: dict[str, float] = best) -> None:
                best[key] = min(best.get(key, float("inf")), v)

            with torch.no_grad():
                for _ in range(args.rounds):
                    keep("torch", per_call_ms(lambda i, x=x, w=ws[0]: F.linear(x, w), args.seconds))
                    keep("fp", per_call_ms(lambda i, x=x, f=fp[0]: f(x), args.seconds))
                    keep("q4", per_call_ms(lambda i, x=x, f=q4[0]: f(x), args.seconds))
                    keep("kfp", kernel_ms(fp[0], x, args.seconds))
                    keep("kq4", kernel_ms(q4[0], x, args.seconds))
                    keep("ctorch", per_call_ms(lambda i, x=x, ws=ws: F.linear(x, ws[i % len(ws)]), args.seconds))
                    keep("cfp", per_call_ms(lambda i, x=x, fs=fp: fs[i % len(fs)](x), args.seconds))
                    keep("cq4", per_call_ms(lambda i, x=x, fs=q4: fs[i % len(fs)](x), args.seconds))
                    keep("ka8", kernel_ms(a8[0], x, args.seconds))
                    keep("ca8", per_call_ms(lambda i, x=x, fs=a8: fs[i % len(fs)](x), args.seconds))
            b = best
            print(
                f"| {name} | {n} x {k} | {batch} | {b['torch']:.3f} | {b['fp']:.3f} | {b['q4']:.3f} | {b['kfp']:.3f} | "
                f"{b['kq4']:.3f} | {b['kfp'] / b['kq4']:.2f}x | {b['torch'] / b['q4']:.2f}x | {b['ctorch']:.3f} | "
                f"{b['cfp']:.3f} | {b['cq4']:.3f} | {b['cfp'] / b['cq4']:.2f}x | {b['ka8']:.3f} | {b['kfp'] / b['ka8']:.2f}x | "
                f"{b['ca8']:.3f} | {b['cfp'] / b['ca8']:.2f}x |",
                flush=True,
            )
            print(f"  (max |W4 llvm - interpreter| {err:.1e}; load average {os.getloadavg()[0]:.1f})", flush=True)
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
