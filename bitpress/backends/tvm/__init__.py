"""TVM backend: bitpress IR -> Relax (+ TE/TIR kernels) -> llvm / cuda, run with the Relax VM.

Importing this package does not import TVM; it is imported when a model is built.
Add lowerings in `lower_*.py` modules with `lowering.register_lowering`.
"""

from __future__ import annotations

from bitpress.backends.tvm.backend import TvmBackend
from bitpress.backends.tvm.lowering import LowerContext, register_lowering

__all__ = ["LowerContext", "TvmBackend", "register_lowering"]
