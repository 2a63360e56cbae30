"""Backends.  Importing this package registers every target lazily (no heavy imports)."""

from bitpress.compiler.target import register_backend

register_backend(["torch"], "bitpress.backends.reference:ReferenceBackend")
register_backend(["onnx"], "bitpress.backends.onnx:OnnxBackend")
register_backend(["llvm", "cuda"], "bitpress.backends.tvm:TvmBackend")
register_backend(["cortex-m0", "cortex-m3", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55"], "bitpress.backends.mcu:McuBackend")
register_backend(["aarch64-linux"], "bitpress.backends.aarch64:Aarch64Backend")
