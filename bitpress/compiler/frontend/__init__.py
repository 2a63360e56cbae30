"""Frontends: torch.export (FX) -> IR, ONNX -> IR."""

from bitpress.compiler.frontend.torch_fx import FrontendError, UnsupportedOpError, import_exported, import_module

__all__ = ["FrontendError", "UnsupportedOpError", "import_exported", "import_module"]
