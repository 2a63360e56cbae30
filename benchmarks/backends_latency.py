"""Latency of the TVM llvm backend (untuned and tuned) vs PyTorch eager and ONNX Runtime.

For each model (an MLP, the Fashion-MNIST CNN, MiniLM at sequence 128, SmolLM2 at sequence 64),
on the same machine and thread count: bitpress target="llvm" untuned (default schedules),
bitpress target="llvm" tuned (MetaSchedule, `--trials` per model, records cached in
`--cache`), eager torch, and onnxruntime on torch.onnx.export's model.  Prints a markdown
table with each latency as a ratio to ONNX Runtime, plus compile and tuning times and the
per-kernel breakdown of the bitpress build (the VM's profiler) for the slowest kernels.

Run: .venv/bin/python benchmarks/backends_latency.py [--threads 2] [--trials 16] [--models mlp,cnn,minilm,smollm2]
"""

from __future__ import annotations

import os
import sys

# Thread counts must be fixed before torch / TVM start their pools; idle OpenMP threads
# sleep instead of spinning, so torch's pool does not steal the cores TVM's pool is using.
_THREADS = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
os.environ.setdefault("TVM_NUM_THREADS", _THREADS)
os.environ.setdefault("OMP_NUM_THREADS", _THREADS)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import io  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import bitpress as bp  # noqa: E402
from bitpress.compiler.interpreter import run  # noqa: E402


def timeit(fn: Callable[[], Any], min_s: float = 2.0, max_n: int = 300) -> float:
    """Median of per-call times (ms) after 3 warm-up calls, running at least `min_s` seconds or 5 calls."""
    for _ in range(3):
        fn()
    times = []
    t_end = time.perf_counter() + min_s
    while (len(times) < 5 or time.perf_counter() < t_end) and len(times) < max_n:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def ort_session(m: torch.nn.Module, inputs: tuple[torch.Tensor, ...], threads: int) -> Callable[[], Any] | None:
    import onnxruntime as ort

    f = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(m, inputs, f, dynamo=False, opset_version=18)
    except Exception as e:
        # e.g. SmolLM2's rotary code exports aten::diff, which opset 18 lacks: use bitpress's own
        # ONNX emitter (target="onnx", also run by onnxruntime with the same thread count)
        print(f"  torch.onnx.export failed ({type(e).__name__}: {str(e).splitlines()[0][:100]}); using bitpress target=onnx")
        try:
            cm = bp.compile(m, inputs, target="onnx", options={"threads": threads})
        except Exception as e2:
            print(f"  bitpress onnx failed too: {type(e2).__name__}: {str(e2).splitlines()[0][:120]}")
            return None
        return lambda: cm(*inputs)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(f.getvalue(), so, providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs, strict=True)}
    return lambda: sess.run(None, feeds)


def models(which: list[str]) -> list[tuple[str, torch.nn.Module, tuple[torch.Tensor, ...]]]:
    out: list[tuple[str, torch.nn.Module, tuple[torch.Tensor, ...]]] = []
    torch.manual_seed(0)
    if "mlp" in which:
        mlp = torch.nn.Sequential(
            torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)
        )
        out.append(("MLP 256-512-256-10, batch 32", mlp.eval(), (torch.randn(32, 256),)))
    if "cnn" in which:
        from bitpress.models import load_fashion_cnn, load_fashion_mnist

        x, _ = load_fashion_mnist("test", limit=32)
        out.append(("Fashion-MNIST CNN, batch 32", load_fashion_cnn().eval(), (x.clone(),)))
    if "minilm" in which:
        from bitpress.models import SENTENCES, MiniLMEncoder, encode_batch, load_minilm

        model, tok = load_minilm()
        out.append(("MiniLM-L6, batch 1, seq 128", MiniLMEncoder(model).eval(), encode_batch(tok, SENTENCES[:1], 128)))
    if "smollm2" in which:
        from bitpress.models import SmolLMLogits, load_smollm2

        model, _ = load_smollm2()
        ids = torch.randint(0, 49152, (1, 64), generator=torch.Generator().manual_seed(0))
        out.append(("SmolLM2-135M, batch 1, seq 64", SmolLMLogits(model).eval(), (ids,)))
    return out


def kernel_profile(cm: bp.CompiledModel, inputs: tuple[torch.Tensor, ...], top: int = 4, runs: int = 5) -> str:
    """The slowest kernels of a bitpress llvm build, timed per VM call with the VM's instrument hook."""
    try:
        from tvm import relax

        exe = cm.executable
        exe.run(list(inputs))  # type: ignore[attr-defined]
        vm = relax.VirtualMachine(exe.module, exe._dev)  # type: ignore[attr-defined]
        totals: dict[str, float] = {}
        started: dict[str, float] = {}

        def instrument(func: Any, sym: str, before: bool, ret: Any, *args: Any) -> int:
            if before:
                started[sym] = time.perf_counter()
            elif sym in started:
                totals[sym] = totals.get(sym, 0.0) + time.perf_counter() - started.pop(sym)
            return 0

        vm.set_instrument(instrument)
        args = [exe._to_dev(x) for x in inputs] + exe._params  # type: ignore[attr-defined]
        for _ in range(runs):
            vm["main"](*args)
        kernels = {k: v for k, v in totals.items() if not k.startswith("vm.builtin")}
        whole = sum(kernels.values())
        rows = sorted(kernels.items(), key=lambda kv: -kv[1])[:top]
        return "; ".join(f"{k} {v / runs * 1e3:.2f} ms ({100 * v / whole:.0f}%)" for k, v in rows)
    except Exception as e:  # profiling is a diagnostic, never fatal
        return f"(profile unavailable: {type(e).__name__}: {e})"


def bench_one(
    name: str, m: torch.nn.Module, inputs: tuple[torch.Tensor, ...], trials: int, cache: str, threads: int, notes: list[str]
) -> str:
    t = time.perf_counter()
    cm = bp.compile(m, inputs, target="llvm")
    compile_s = time.perf_counter() - t
    ref = run(cm.graph, list(inputs))[0]
    err = (cm(*inputs) - ref).abs().max().item()
    t_bp = timeit(lambda: cm(*inputs))
    prof = kernel_profile(cm, inputs)
    t_tuned = tune_s = None
    if trials > 0:
        t = time.perf_counter()
        cmt = bp.compile(m, inputs, target="llvm", tune=trials, cache_dir=cache)
        tune_s = time.perf_counter() - t
        t_tuned = timeit(lambda: cmt(*inputs))
        info = cmt.report.backend
        notes.append(
            f"{name}: tuned {info.get('tune_tasks_tuned')} of {info.get('tune_tasks')} contraction tasks "
            f"({trials} trials in all; {info.get('tune_records_used')} records applied), "
            f"schedules {info.get('schedules')}"
        )
    with torch.no_grad():
        t_torch = timeit(lambda: m(*inputs))
    ort_fn = ort_session(m, inputs, threads)
    t_ort = timeit(ort_fn) if ort_fn is not None else float("nan")
    notes.append(f"{name}: slowest bitpress kernels (untuned): {prof}; max |bitpress - interpreter| = {err:.2e}")

    def ratio(v: float | None) -> str:
        if v is None:
            return "-"
        return f"{v:.2f} ms" if np.isnan(t_ort) else f"{v:.2f} ms ({v / t_ort:.2f}x)"

    return (
        f"| {name} | {ratio(t_bp)} | {ratio(t_tuned)} | {ratio(t_torch)} | {t_ort:.2f} ms (1.00x) "
        f"| {compile_s:.1f} | {'-' if tune_s is None else f'{tune_s:.0f}'} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--trials", type=int, default=16, help="MetaSchedule trials per model (0: skip the tuned column)")
    ap.add_argument("--models", default="mlp,cnn,minilm,smollm2")
    ap.add_argument("--tune-models", default="mlp,cnn", help="which models get a tuned build (tuning is slow on 2 cores)")
    ap.add_argument("--cache", default=str(Path(os.environ.get("BITPRESS_CACHE", Path.home() / ".cache/bitpress/tuning"))))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    which = args.models.split(",")
    tune_which = set(args.tune_models.split(","))
    rows: list[str] = []
    notes: list[str] = []
    for key, (name, m, inputs) in zip(which, models(which), strict=True):
        print(f"== {name}")
        rows.append(bench_one(name, m, inputs, args.trials if key in tune_which else 0, args.cache, args.threads, notes))
        print(rows[-1])
    print()
    print(f"threads: {args.threads}; tuned trials per model: {args.trials}")
    print("| model | bitpress llvm untuned | bitpress llvm tuned | PyTorch eager | ONNX Runtime | compile s (untuned) | tune+compile s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(r)
    print()
    for n in notes:
        print(f"- {n}")


if __name__ == "__main__":
    main()
