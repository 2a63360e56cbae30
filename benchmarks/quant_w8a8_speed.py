"""W8A8 speed: bitpress's int8 kernels on TVM llvm vs fp32, and vs ONNX Runtime int8, side by side.

Run: .venv/bin/python benchmarks/quant_w8a8_speed.py [--models cnn,minilm] [--threads 1] [--rounds 5]

Per model, from one fp32 graph and one bitpress W8A8 graph (static int8 activations, RTN
per-channel int8 weights, min-max ranges from 4 calibration batches):

- TVM llvm fp32 and TVM llvm W8A8 (int8 x int8 -> int32 on AVX512-VNNI, see
  bitpress/backends/tvm/lower_quant.py);
- ONNX Runtime fp32 (bitpress's ONNX emitter) and ONNX Runtime running bitpress's W8A8 graph
  (`target="onnx"`: QDQ + MatMulInteger/ConvInteger);
- the peer: ONNX Runtime `quantize_static` (QDQ, per-channel int8 weights, int8 activations,
  MatMul/Conv/Gemm only) on the same fp32 ONNX model, with the same calibration batches.

Times: per call, best of `--rounds` round-robin rounds, process CPU time with one thread per
runtime (`--clock cpu`; a loaded shared machine does not inflate it by preemption).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import bitpress as bp
from bitpress.backends.onnx.backend import lower_to_onnx

CLOCK = time.process_time


def per_call_ms(fn: Callable[[], Any], seconds: float) -> float:
    fn()
    n, t0 = 0, CLOCK()
    while True:
        fn()
        n += 1
        el = CLOCK() - t0
        if el >= seconds and n >= 3:
            return el / n * 1e3


def models(which: list[str]) -> list[tuple[str, torch.nn.Module, tuple[torch.Tensor, ...], list[tuple[torch.Tensor, ...]]]]:
    out = []
    if "cnn" in which:
        from bitpress.models import load_fashion_cnn, load_fashion_mnist

        x, _ = load_fashion_mnist("test", limit=160)
        cal = [(x[i : i + 32].clone(),) for i in range(32, 160, 32)]
        out.append(("Fashion-MNIST CNN, batch 32", load_fashion_cnn().eval(), (x[:32].clone(),), cal))
    if "minilm" in which:
        from bitpress.models import SENTENCES, MiniLMEncoder, encode_batch, load_minilm

        model, tok = load_minilm()
        cal = [encode_batch(tok, SENTENCES[i : i + 8], 32) for i in range(0, 32, 8)]
        out.append(("MiniLM-L6, batch 8 x 32 tokens", MiniLMEncoder(model).eval(), encode_batch(tok, SENTENCES[32:40], 32), cal))
    return out


def ort_session(path: str, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="cnn,minilm")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.5)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, clock {args.clock}; load average at start {os.getloadavg()}")
    print(
        "| model | TVM fp32 | TVM W8A8 | TVM W8A8 vs fp32 | ORT fp32 | ORT on bitpress W8A8 | ORT quantize_static int8 (peer) | "
        "TVM W8A8 vs peer | max abs diff TVM W8A8 vs interpreter |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, model, inputs, cal in models(args.models.split(",")):
        bench_model(label, model, inputs, cal, args)
    print(f"load average at end {os.getloadavg()}")


def bench_model(
    label: str, model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], cal: list[tuple[torch.Tensor, ...]], args: Any
) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    base = bp.compile(model, inputs, target="torch", quiet=True)
    w8 = bp.compile(
        base.graph.clone(),
        inputs,
        passes=[bp.passes.Quantize(method="rtn", bits=8, group_size=None, act_bits=8, observer="minmax")],
        target="torch",
        calibration=cal,
        canonicalize=False,
        quiet=True,
    )
    runs: dict[str, Callable[[], Any]] = {}
    tf = bp.compile(base.graph.clone(), inputs, target="llvm", canonicalize=False, quiet=True)
    tq = bp.compile(w8.graph.clone(), inputs, target="llvm", canonicalize=False, quiet=True)
    runs["tvm_fp32"] = lambda tf=tf: tf(*inputs)
    runs["tvm_w8a8"] = lambda tq=tq: tq(*inputs)
    diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(_tup(tq(*inputs)), _tup(w8(*inputs)), strict=True))
    of = bp.compile(base.graph.clone(), inputs, target="onnx", canonicalize=False, quiet=True)
    runs["ort_fp32"] = lambda of=of: of(*inputs)
    try:
        oq = bp.compile(w8.graph.clone(), inputs, target="onnx", canonicalize=False, quiet=True)
        oq(*inputs)
        runs["ort_bp_w8a8"] = lambda oq=oq: oq(*inputs)
    except Exception as e:  # reported in the table, not fatal
        print(f"  (bitpress W8A8 on onnx failed: {type(e).__name__}: {str(e).splitlines()[0][:200]})")
    tmp = Path(tempfile.mkdtemp(prefix="w8a8-speed-"))
    fp_model = lower_to_onnx(base.graph)
    onnx.save(fp_model, str(tmp / "fp32.onnx"))
    names = [i.name for i in fp_model.graph.input]
    feeds = {n: t.numpy() for n, t in zip(names, inputs, strict=True)}

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{n: t.numpy() for n, t in zip(names, b, strict=True)} for b in cal])

        def get_next(self) -> Any:
            return next(self.it, None)

    quantize_static(
        str(tmp / "fp32.onnx"),
        str(tmp / "int8.onnx"),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Conv", "Gemm"],
    )
    sess = ort_session(str(tmp / "int8.onnx"), args.threads)
    runs["ort_peer"] = lambda sess=sess: sess.run(None, feeds)
    best: dict[str, float] = {}
    with torch.no_grad():
        for _ in range(args.rounds):
            for k, fn in runs.items():
                best[k] = min(best.get(k, float("inf")), per_call_ms(fn, args.seconds))
    b = best
    bq = f"{b['ort_bp_w8a8']:.2f}" if "ort_bp_w8a8" in b else "failed"
    print(
        f"| {label} | {b['tvm_fp32']:.2f} | {b['tvm_w8a8']:.2f} | {b['tvm_fp32'] / b['tvm_w8a8']:.2f}x | {b['ort_fp32']:.2f} | "
        f"{bq} | {b['ort_peer']:.2f} | {b['ort_peer'] / b['tvm_w8a8']:.2f}x | {diff:.3g} |",
        flush=True,
    )
    print(f"  (kernels: {tq.executable.info.get('schedules')}; load average {os.getloadavg()[0]:.1f})", flush=True)


def _tup(x: Any) -> tuple[torch.Tensor, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


if __name__ == "__main__":
    main()
