"""End-to-end SmolLM2-135M on TVM llvm: W4A16 (g128, bitpress's fused int4 kernels) vs fp32.

Run: .venv/bin/python benchmarks/quant_smollm2_speed.py [--seq 1] [--threads 1] [--rounds 5]

The model runs without a KV cache, so `--seq 1` is one decoding step's worth of weights at
batch 1: every linear is a GEMV (attention over one token is trivial) and the step is
bound by reading the weights.  Variants, built from the same fp32 graph:

- torch eager fp32 and TVM fp32;
- TVM W4A16 g128 with lm_head float (tied to the embedding, which stays float);
- TVM W4A16 g128 with lm_head quantized too (an int4 copy of the tied matrix: +14 MB stored,
  but the 113 MB fp32 lm_head is a fifth of the weights read per token);
- TVM W4A8 g128 (`act_dynamic=True`: int8 rows at run time, int8 block dots), lm_head too.

Times are per forward, best of `--rounds` round-robin rounds, in process CPU time by default
(`--clock cpu`: a loaded shared machine does not inflate it by preemption; use `--clock wall`
with `--threads` > 1).  The "linear share" column sums the VM's per-kernel times (its
instrument hook) of the linear kernels (fp32 `dense_packed`, W4 `qmatmul`, W4A8 `qlinear_dyn`)
over all kernels.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import torch

import bitpress as bp
from bitpress.compiler.interpreter import run
from bitpress.models.smollm2 import SmolLMLogits, load_smollm2

CLOCK = time.process_time


def best_ms(fn: Callable[[], Any], per: int = 3) -> float:
    fn()
    t = CLOCK()
    for _ in range(per):
        fn()
    return (CLOCK() - t) / per * 1e3


def kernel_split(cm: Any, ids: torch.Tensor, runs: int = 3) -> tuple[float, float]:
    """(ms in linear kernels, ms in all kernels) per forward, from the VM's instrument hook."""
    from tvm import relax

    exe = cm.executable
    exe.run([ids])
    vm = relax.VirtualMachine(exe.module, exe._dev)
    totals: dict[str, float] = {}
    started: dict[str, float] = {}

    def instrument(func: Any, sym: str, before: bool, ret: Any, *args: Any) -> int:
        if before:
            started[sym] = CLOCK()
        elif sym in started:
            totals[sym] = totals.get(sym, 0.0) + CLOCK() - started.pop(sym)
        return 0

    vm.set_instrument(instrument)
    args = [exe._to_dev(ids), *exe._params]
    vm["main"](*args)
    totals.clear()
    for _ in range(runs):
        vm["main"](*args)
    kernels = {k: v for k, v in totals.items() if not k.startswith("vm.builtin")}
    lin = sum(v for k, v in kernels.items() if "dense_packed" in k or "qmatmul" in k or "qlinear_dyn" in k)
    return lin / runs * 1e3, sum(kernels.values()) / runs * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", default="1")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, clock {args.clock}; load average at start {os.getloadavg()}")
    model, _ = load_smollm2()
    wrapped = SmolLMLogits(model).eval()
    print(
        "| seq | variant | ms / forward | vs TVM fp32 | vs torch eager | linear kernels ms (share) | all kernels ms | "
        "stored bytes | max abs diff vs interpreter |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for seq in [int(s) for s in args.seq.split(",")]:
        ids = torch.randint(0, 49152, (1, seq), generator=torch.Generator().manual_seed(0))
        g = bp.compile(wrapped, (ids,), target="torch", quiet=True).graph

        def quantized(exclude: tuple[str, ...], dynamic: bool = False, g: bp.Graph = g, ids: torch.Tensor = ids) -> bp.Graph:
            act = {"act_bits": 8, "act_dynamic": True} if dynamic else {}
            q = bp.passes.Quantize(bits=4, group_size=128, weight_clip="minmax", exclude=exclude, **act)  # type: ignore[arg-type]
            return bp.compile(g.clone(), (ids,), passes=[q], target="torch", canonicalize=False, quiet=True).graph

        graphs = {
            "fp32": g,
            "W4A16 g128, lm_head fp32": quantized(("*lm_head*",)),
            "W4A16 g128, lm_head W4": quantized(()),
            "W4A8 dynamic g128, lm_head W4A8": quantized((), dynamic=True),
        }
        built = {}
        for name, gr in graphs.items():
            t0 = time.perf_counter()
            built[name] = bp.compile(gr, (ids,), target="llvm", canonicalize=False, quiet=True)
            print(f"  (build {name}: {time.perf_counter() - t0:.0f} s)", flush=True)
        diffs = {name: (cm(ids) - run(graphs[name], (ids,))[0]).abs().max().item() for name, cm in built.items()}
        best: dict[str, float] = {}
        with torch.no_grad():
            for _ in range(args.rounds):
                for name, cm in [("torch", None), *built.items()]:
                    f = (lambda ids=ids: wrapped(ids)) if cm is None else (lambda cm=cm, ids=ids: cm(ids))
                    best[name] = min(best.get(name, float("inf")), best_ms(f))
        splits = {name: kernel_split(cm, ids) for name, cm in built.items()}
        tf, te = best["fp32"], best["torch"]
        print(f"| {seq} | torch eager fp32 | {te:.2f} | {tf / te:.2f}x | 1.00x | - | - | - | - |")
        for name, cm in built.items():
            lin, allk = splits[name]
            t = best[name]
            print(
                f"| {seq} | TVM {name} | {t:.2f} | {tf / t:.2f}x | {te / t:.2f}x | {lin:.2f} ({100 * lin / allk:.0f}%) | "
                f"{allk:.2f} | {cm.report.total_bytes:,} | {diffs[name]:.2e} |",
                flush=True,
            )
        lf = splits["fp32"][0]
        for name in list(built)[1:]:
            print(f"  linear kernels fp32 / {name}: {lf / splits[name][0]:.2f}x", flush=True)
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
