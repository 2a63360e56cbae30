"""Backends.  Importing this package registers every target lazily (no heavy imports)."""

from bitpress.compiler.target import register_backend

register_backend(["torch"], "bitpress.backends.reference:ReferenceBackend")
register_backend(["onnx"], "bitpress.backends.onnx:OnnxBackend")
register_backend(["llvm", "cuda"], "bitpress.backends.tvm:TvmBackend")
