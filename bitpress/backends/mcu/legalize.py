"""MCU legalization: move the float glue that W8A8 quantization leaves between layers into int8.

`Quantize(act_bits=8)` rewrites each layer to dequantize(int8 layer(quantize(x))), so between two
integer layers the graph computes in float: dequantize -> relu -> max_pool -> flatten -> quantize.
These rules move that glue into the integer domain without changing a single bit of the result:

- an elementwise unary op after a dequantize (or after another table) depends on the int8 code
  only, so it becomes a 256-entry float table `table_f32(q, T)` computed by the reference ops;
- quantize(table) is then an int8 -> int8 table `lut_int8(q, quantize(T))`, and tables compose;
- max pooling commutes with a monotone non-decreasing map, so it moves before the table / dequantize
  (`max_pool2d_int8`); layout ops (reshape, flatten, ...) commute with any elementwise map.

What is left in float (e.g. a residual add of two dequantized tensors, average pooling) has no
integer lowering: the backend rejects it unless `allow_float=True`.

Requires: W8A8 graphs from the quantize pass.  Ensures: interpreter results unchanged, bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch

from bitpress.compiler.builder import const, emit
from bitpress.compiler.ir import Graph, TensorType, Value
from bitpress.compiler.ops import get_op, register_op
from bitpress.compiler.pattern import Pat, Reject, RuleSet, rule
from bitpress.compiler.rewrite import dead_code_elimination, rewrite

__all__ = ["CODES", "legalize", "mcu_rules"]

# every int8 code, in table order: entry u holds the value for the code whose byte is u
CODES = torch.arange(256, dtype=torch.int64).to(torch.uint8).view(torch.int8)
UNARY_OPS = (
    "relu",
    "gelu",
    "sigmoid",
    "tanh",
    "silu",
    "hardswish",
    "hardsigmoid",
    "leaky_relu",
    "elu",
    "softplus",
    "clamp",
    "neg",
    "abs",
    "dropout",
    "identity",
)
LAYOUT_OPS = ("reshape", "flatten", "squeeze", "unsqueeze", "dropout")


def _index(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.int64) & 0xFF


@register_op("lut_int8", ("x", "table"), infer=lambda t, a: [TensorType(t[0].shape, "int8")])  # type: ignore[union-attr]
def lut_int8(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """y = T[x]   (int8 -> int8, T indexed by the code's byte)"""
    if x.device.type == "meta":
        return torch.empty(x.shape, dtype=torch.int8, device="meta")
    return table[_index(x)]


@register_op("table_f32", ("x", "table"), infer=lambda t, a: [TensorType(t[0].shape, "float32")])  # type: ignore[union-attr]
def table_f32(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """y = T[x]   (int8 -> float32)"""
    if x.device.type == "meta":
        return torch.empty(x.shape, dtype=torch.float32, device="meta")
    return table[_index(x)]


@register_op("max_pool2d_int8", ("x",))
def max_pool2d_int8(
    x: torch.Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1, ceil_mode: bool = False
) -> torch.Tensor:
    """y = max_pool2d(x)   on int8 codes (exact: integers up to 127 are exact in float32)"""
    return get_op("max_pool2d").ref(x.to(torch.float32), kernel_size, stride, padding, dilation, ceil_mode).to(torch.int8)


def _dq_table(dq: Value) -> torch.Tensor:
    a = dq.producer.attrs  # type: ignore[union-attr]
    return get_op("dequantize_act").ref(CODES, scale=a["scale"], zero_point=a["zero_point"])


def _source(v: Value) -> tuple[Value, torch.Tensor] | None:
    """(int8 codes, float table) when `v` is dequantize_act(q) or table_f32(q, T)."""
    n = v.producer
    if n is None:
        return None
    if n.op == "dequantize_act":
        return n.inputs[0], _dq_table(v)  # type: ignore[return-value]
    if n.op == "table_f32" and n.inputs[1] is not None and n.inputs[1].is_const:
        return n.inputs[0], n.inputs[1].value  # type: ignore[return-value]
    return None


_TABLE_SRC = Pat.op(("dequantize_act", "table_f32"), bind="src")


@rule(Pat.op(UNARY_OPS, x=_TABLE_SRC), name="unary-to-table")
def unary_to_table(src: Value, *, node: Any) -> Value | Reject:
    """u(T[q]) -> T'[q]   with T' = u(T) over all 256 codes"""
    s = _source(src)
    if s is None:
        return Reject("table is not a constant")
    q, t = s
    new = get_op(node.op).ref(t, **node.attrs)
    return emit("table_f32", q, const(new.to(torch.float32).contiguous(), f"{node.name}.table"), name=node.name)


@rule(Pat.op("quantize_act", x=_TABLE_SRC), name="quantize-table")
def quantize_table(src: Value, *, node: Any) -> Value | Reject:
    """quantize(T[q]) -> L[q]   with L = quantize(T), int8 -> int8"""
    s = _source(src)
    if s is None:
        return Reject("table is not a constant")
    q, t = s
    lut = get_op("quantize_act").ref(t, **node.attrs)
    return emit("lut_int8", q, const(lut.contiguous(), f"{node.name}.lut"), name=node.name)


@rule(Pat.op("max_pool2d", x=_TABLE_SRC), name="pool-before-table")
def pool_before_table(src: Value, *, node: Any) -> Value | Reject:
    """max_pool(T[q]) -> T[max_pool(q)]   when T is non-decreasing in the code"""
    s = _source(src)
    if s is None:
        return Reject("table is not a constant")
    q, t = s
    ordered = t[_index(torch.arange(-128, 128))]
    if ordered.isnan().any() or (ordered[1:] < ordered[:-1]).any():
        return Reject("the map from codes to values is not monotone")
    pooled = emit("max_pool2d_int8", q, name=f"{node.name}.int8", **node.attrs)
    return _reapply(src, pooled, node.name)


@rule(Pat.op(LAYOUT_OPS, x=_TABLE_SRC), name="layout-before-table")
def layout_before_table(src: Value, *, node: Any) -> Value:
    """reshape(T[q]) -> T[reshape(q)]   (any elementwise map commutes with a layout change)"""
    q = src.producer.inputs[0]  # type: ignore[union-attr]
    moved = emit(node.op, q, name=f"{node.name}.int8", **node.attrs)
    return _reapply(src, moved, node.name)


@rule(Pat.op("lut_int8", x=Pat.op("lut_int8", x=Pat.var("q"), table=Pat.const("a")), table=Pat.const("b")), name="fuse-luts")
def fuse_luts(q: Value, a: Value, b: Value, *, node: Any) -> Value:
    """B[A[q]] -> (B . A)[q]"""
    return emit("lut_int8", q, const(b.value[_index(a.value)].contiguous(), f"{node.name}.lut"), name=node.name)


@rule(Pat.op("table_f32", x=Pat.op("lut_int8", x=Pat.var("q"), table=Pat.const("a")), table=Pat.const("t")), name="fuse-lut-table")
def fuse_lut_table(q: Value, a: Value, t: Value, *, node: Any) -> Value:
    """T[A[q]] -> (T . A)[q]"""
    return emit("table_f32", q, const(t.value[_index(a.value)].contiguous(), f"{node.name}.table"), name=node.name)


def _reapply(src: Value, q: Value, name: str) -> Value:
    n = src.producer
    assert n is not None
    if n.op == "dequantize_act":
        return emit("dequantize_act", q, name=f"{name}.dequantize", **n.attrs)
    return emit("table_f32", q, n.inputs[1], name=f"{name}.table")


mcu_rules = RuleSet([unary_to_table, quantize_table, pool_before_table, layout_before_table, fuse_luts, fuse_lut_table])


def legalize(g: Graph) -> Graph:
    """A copy of `g` with the W8A8 glue in int8 (see the module docstring); `g` is not modified."""
    out = g.clone()
    rewrite(out, mcu_rules, pass_name="mcu-legalize")
    dead_code_elimination(out)
    return out
