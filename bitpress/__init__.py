"""bitpress: a declarative graph-rewriting compiler for neural-network compression.

import bitpress as bp
cm = bp.compile(model, (x,), passes=[bp.passes.Quantize(method="gptq", bits=4)], target="llvm", calibration=batches)
print(cm.report)
"""

from bitpress import backends as _backends  # noqa: F401  (registers targets)
from bitpress import passes
from bitpress.api import ArtifactError, CompiledModel, compile, load
from bitpress.compiler.builder import B, F, const
from bitpress.compiler.frontend import FrontendError, UnsupportedOpError
from bitpress.compiler.ir import Graph, Node, TensorType, Value
from bitpress.compiler.ops import register_op
from bitpress.compiler.pass_manager import (
    CompileError,
    Pass,
    PassContext,
    PassResult,
    Pipeline,
    ToleranceError,
    register_pass,
    rewrite_pass,
)
from bitpress.compiler.pattern import Pat, Reject, Rule, RuleSet, rule
from bitpress.compiler.recipe import RecipeError
from bitpress.compiler.rewrite import rewrite
from bitpress.compiler.target import LoweringError, registered_targets
from bitpress.compiler.torch_pattern import rule_from_torch

__version__ = "0.1.0"

# every real target (bitpress/backends/__init__.py registers them: torch, onnx, llvm, cuda, the Cortex-M cores),
# plus "cpu", the alias of "llvm" this tuple always listed
targets = (*registered_targets(), "cpu")

__all__ = [
    "ArtifactError",
    "B",
    "CompileError",
    "CompiledModel",
    "F",
    "FrontendError",
    "Graph",
    "LoweringError",
    "Node",
    "Pass",
    "PassContext",
    "PassResult",
    "Pat",
    "Pipeline",
    "RecipeError",
    "Reject",
    "Rule",
    "RuleSet",
    "TensorType",
    "ToleranceError",
    "UnsupportedOpError",
    "Value",
    "compile",
    "const",
    "load",
    "passes",
    "register_op",
    "register_pass",
    "rewrite",
    "rewrite_pass",
    "rule",
    "rule_from_torch",
    "targets",
]
