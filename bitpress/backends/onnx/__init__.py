"""ONNX backend: lower the IR to an ONNX model (opset 21) and run it with onnxruntime.

`target="onnx"` emits a model that passes `onnx.checker`, runs it with onnxruntime and
`cm.save()` writes it as `model.onnx`.  Lowerings live in `lower_*.py` modules (all
imported on first use) and register with `register_onnx_lowering`.
"""

from bitpress.backends.onnx.backend import OnnxBackend, OnnxExecutable, lower_to_onnx
from bitpress.backends.onnx.lowering import OnnxLowerContext, register_onnx_lowering

__all__ = ["OnnxBackend", "OnnxExecutable", "OnnxLowerContext", "lower_to_onnx", "register_onnx_lowering"]
