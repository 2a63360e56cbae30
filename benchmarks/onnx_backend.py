"""ONNX frontend and backend: latency of bitpress's emitted ONNX vs torch's exporter, both in onnxruntime.

For each model: compile to target="onnx" (torch.export -> IR -> canonicalize -> ONNX opset 21),
and export the same module with torch.onnx.export (TorchScript exporter, opset 18); run both in
onnxruntime with the same thread count, plus eager torch.  Also times import_onnx of the
torch-exported file and checks every path agrees with the interpreter.

Latencies are the best of `--repeat` rounds in which the candidates run in turn.

Run: .venv/bin/python benchmarks/onnx_backend.py [--threads 2] [--repeat 30] [--smollm]
"""

from __future__ import annotations

import argparse
import io
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

import bitpress as bp
from bitpress.compiler.frontend.onnx_import import import_onnx
from bitpress.compiler.interpreter import run


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Best-of-`rounds` latency in ms, calling the candidates in turn each round (a shared, loaded
    machine drifts; interleaving keeps the comparison fair)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: min(v) * 1e3 for k, v in times.items()}


def torch_export(m: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> bytes | None:
    f = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(m, inputs, f, dynamo=False, opset_version=18)
    except Exception as e:
        print(f"  torch.onnx.export failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        return None
    return f.getvalue()


def bench(name: str, m: torch.nn.Module, inputs: tuple[torch.Tensor, ...], threads: int, repeat: int) -> str:
    m = m.eval()
    t = time.perf_counter()
    cm = bp.compile(m, inputs, target="onnx", options={"threads": threads})
    compile_s = time.perf_counter() - t
    ref = run(cm.graph, inputs)[0]
    err = (cm(*inputs) - ref).abs().max().item()
    fns: dict[str, Callable[[], Any]] = {"eager": lambda: _eager(m, inputs), "bitpress": lambda: cm(*inputs)}
    data = torch_export(m, inputs)
    import_s, import_err = float("nan"), float("nan")
    if data is not None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
        feeds = {i.name: x.numpy() for i, x in zip(sess.get_inputs(), inputs)}
        fns["ort"] = lambda: sess.run(None, feeds)
        t = time.perf_counter()
        g = import_onnx(_proto(data), inputs)
        import_s = time.perf_counter() - t
        import_err = (run(g, inputs)[0] - torch.from_numpy(np.asarray(sess.run(None, feeds)[0]))).abs().max().item()
    ms = interleaved(fns, repeat)
    eager_ms, bp_ms, ort_ms = ms["eager"], ms["bitpress"], ms.get("ort", float("nan"))
    rep = cm.report.backend
    return (
        f"| {name} | {eager_ms:.3f} | {ort_ms:.3f} | {bp_ms:.3f} | {bp_ms / ort_ms:.2f} | {compile_s:.1f} | {import_s:.2f} | "
        f"{rep['onnx_nodes']} | {rep['initializer_bytes']:,} | {err:.1e} | {import_err:.1e} |"
    )


def _eager(m: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    with torch.no_grad():
        return m(*inputs)


def _proto(data: bytes) -> Any:
    import onnx

    return onnx.load_from_string(data)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--smollm", action="store_true", help="also SmolLM2-135M at sequence 64 (slow to compile)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from bitpress.models import SENTENCES, MiniLMEncoder, encode_batch, load_fashion_cnn, load_fashion_mnist, load_minilm

    rows = []
    mlp = torch.nn.Sequential(
        torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10)
    )
    rows.append(bench("MLP 784-512-512-10, batch 32", mlp, (torch.randn(32, 784),), args.threads, args.repeat))
    x, _ = load_fashion_mnist("test", limit=64)
    rows.append(bench("Fashion-MNIST CNN, batch 64", load_fashion_cnn(), (x,), args.threads, args.repeat))
    hf, tok = load_minilm()
    ids, mask = encode_batch(tok, SENTENCES[:1], 128)
    rows.append(bench("MiniLM-L6, batch 1, seq 128", MiniLMEncoder(hf), (ids, mask), args.threads, args.repeat))
    if args.smollm:
        from bitpress.models import SmolLMLogits, load_smollm2

        sm, _ = load_smollm2()
        rows.append(
            bench("SmolLM2-135M, seq 64", SmolLMLogits(sm), (torch.randint(0, 1000, (1, 64)),), args.threads, max(3, args.repeat // 5))
        )
    print(f"threads={args.threads}, onnxruntime {ort.__version__}, torch {torch.__version__}")
    print(
        "| model | eager torch ms | ORT (torch.onnx.export) ms | ORT (bitpress target=onnx) ms | bitpress / torch-export | "
        "compile s | import_onnx s | ONNX nodes | initializer bytes | max err vs interpreter | import: max err vs ORT |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
