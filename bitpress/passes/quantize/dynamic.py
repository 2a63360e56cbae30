"""Dynamic int8 activations: qlinear (symmetric int4/int8 block weights) -> qlinear_dyn.

`Quantize(bits=4, act_bits=8, act_dynamic=True)` quantizes the weights as weight-only
Quantize does (rtn, awq or gptq; symmetric codes, one scale per block of `group_size`
columns), then this rule set turns each qlinear into qlinear_dyn (bitpress.formats.dynamic_int8),
which quantizes every activation row to int8 at run time and takes int8 x int8 block dots:
llama.cpp's Q4_0 x Q8 scheme.  No calibration is needed for the activations.

Requires: qlinear from weight-only quantization.  Ensures: the codes and scales are the same
tensors (stored bytes unchanged); only the activations change.  Declines, with a reason, a
qlinear with zero points (asymmetric), 2/3-bit codes, or a group size or K that is not a
multiple of 4.
"""

from __future__ import annotations

from typing import Any

from bitpress.compiler.builder import emit
from bitpress.compiler.ir import Node, Value
from bitpress.compiler.pattern import Pat, Reject, RuleSet, rule
from bitpress.formats.quantized import QuantAttrs

__all__ = ["dynamic_rules"]


@rule(
    Pat.op("qlinear", x=Pat.var(dtype="float32"), qweight=Pat.const(), scales=Pat.const(), zeros=Pat.any(), b=Pat.any()),
    name="dynamic-int8-activations",
)
def dynamic_int8_activations(
    x: Value, qweight: Value, scales: Value, zeros: Value | None, b: Value | None, *, node: Node, cfg: Any = None
) -> Value | Reject:
    """qlinear(x, q, s, b) -> qlinear_dyn(x, q, s, b)   x quantized per row to int8 at run time"""
    a = QuantAttrs.of(node.attrs)
    bits, gs = a.bits, a.group_size
    n, k = a.shape
    if zeros is not None or not a.signed:
        return Reject("asymmetric weights (zero points): int8 dots need symmetric codes")
    if bits not in (4, 8):
        return Reject(f"{bits}-bit codes: the int8 dot kernels take 4 or 8 bits")
    if gs % 4 or k % 4:
        return Reject(f"group size {gs} or K={k} is not a multiple of 4 (the int8 dots take 4 columns at a time)")
    y = emit("qlinear_dyn", x, qweight, scales, b, name=node.name, shape=[n, k], bits=bits, group_size=gs)
    assert y.producer is not None
    y.producer.meta.update({**node.meta, "act_bits": 8})
    return y


dynamic_rules = RuleSet([dynamic_int8_activations])
