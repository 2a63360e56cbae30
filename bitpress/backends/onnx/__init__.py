"""ONNX backend: lower the IR to an ONNX model (opset 21) and run it with onnxruntime.

`target="onnx"` emits a model that passes `onnx.checker`, runs it with onnxruntime and
`cm.save()` writes it as `model.onnx` (weights in `model.onnx.data` past 2 GB) and `bp.load`
runs it without recompiling.  Lowerings live in `lower_*.py` modules (all imported on first
use) and register with `register_lowering(op)` (`register_onnx_lowering` is its old name).

Options (`bp.compile(..., options={...})`): `threads` (onnxruntime intra-op threads, 0 = its
default), `onnx_optimization` ("none" | "basic" | "extended" | "all", default "all"),
`providers` (default `["CPUExecutionProvider"]`).  `cm.report.backend` has the opset, the ONNX
ops used, `initializer_bytes` (weights as stored in the file) and `model_bytes`.

Example:
    >>> cm = bp.compile(model, (x,), target="onnx", options={"threads": 2})  # doctest: +SKIP
    >>> cm.save("out/")  # out/model.onnx runs in plain onnxruntime too  # doctest: +SKIP
"""

from bitpress.backends.onnx.backend import OnnxBackend, OnnxExecutable, lower_to_onnx
from bitpress.backends.onnx.lowering import OnnxLowerContext, register_lowering, register_onnx_lowering

__all__ = ["OnnxBackend", "OnnxExecutable", "OnnxLowerContext", "lower_to_onnx", "register_lowering", "register_onnx_lowering"]
