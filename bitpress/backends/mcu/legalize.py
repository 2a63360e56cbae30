"""MCU legalization: move the float glue that W8A8 quantization leaves between layers into int8.

`Quantize(act_bits=8)` rewrites each layer to dequantize(int8 layer(quantize(x))), so between two
integer layers the graph computes in float: dequantize -> relu -> max_pool -> flatten -> quantize.
These rules move that glue into the integer domain without changing a single bit of the result:

- an elementwise unary op after a dequantize (or after another table) depends on the int8 code
  only, so it becomes a 256-entry float table `table_f32(q, T)` computed by the reference ops;
- quantize(table) is then an int8 -> int8 table `lut_int8(q, quantize(T))`, and tables compose;
- max pooling commutes with a monotone non-decreasing map, so it moves before the table / dequantize
  (`max_pool2d_int8`); layout ops (reshape, flatten, ...) commute with any elementwise map.

What these exact rules leave in float is a residual add of two dequantized tensors and average
pooling before a quantize.  `integer_glue_rules` turn
quantize(layout(avg_pool(A[a] + B[b]))) into fixed point, TFLite style:

    acc = sum_window(ma * f(a) + mb * f(b))        int32; f(q) = max(q - zp, 0) after a relu, else q - zp
    q   = requantize(acc, m, r) + zp_out           m * 2^-r = u / (window * s_out),  ma = sa / u, mb = sb / u

with ma, mb as large as int32 allows (window * 255 * (ma + mb) < 2^31: about 19 bits).  That is the
real-number result rounded once, where the float graph rounds each float32 step, so an output code
can differ by one when the exact value lies within ~1e-6 (relative) of a rounding boundary; the
backend reports the rewritten nodes (info["integer_glue"]) and tests measure the agreement.

Requires: W8A8 graphs from the quantize pass.  Ensures: `mcu_rules` keep interpreter results bit for
bit; `integer_glue_rules` keep them to the rounding described above.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from bitpress.compiler.builder import const, emit
from bitpress.compiler.ir import Graph, TensorType, Value
from bitpress.compiler.ops import get_op, register_op
from bitpress.compiler.pattern import Pat, Reject, RuleSet, rule
from bitpress.compiler.rewrite import dead_code_elimination, rewrite

__all__ = ["CODES", "integer_glue_rules", "legalize", "mcu_rules"]

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


# ----------------------------------------------------------------------------- fixed-point glue


@register_op("rescale_add_int32", ("a", "b?"), infer=lambda t, a: [TensorType(t[0].shape, "int32")])  # type: ignore[union-attr]
def rescale_add_int32(
    a: torch.Tensor,
    b: torch.Tensor | None = None,
    *,
    a_zero_point: int,
    a_relu: bool,
    a_mult: int,
    b_zero_point: int = 0,
    b_relu: bool = False,
    b_mult: int = 0,
) -> torch.Tensor:
    """y = ma * f(a) + mb * f(b)   f(q) = max(q - zp, 0) with relu, q - zp without (int32)"""

    def f(q: torch.Tensor, zp: int, relu: bool) -> torch.Tensor:
        v = q.to(torch.int64) - zp
        return v.clamp(min=0) if relu else v

    y = a_mult * f(a, a_zero_point, a_relu)
    if b is not None:
        y = y + b_mult * f(b, b_zero_point, b_relu)
    return y.to(torch.int32)


def _sum_pool_type(t: Any, a: dict[str, Any]) -> list[TensorType]:
    n, c, h, w = t[0].shape
    (kh, kw), (sh, sw) = _pair2(a["kernel_size"]), _pair2(a["stride"])
    return [TensorType((n, c, (h - kh) // sh + 1, (w - kw) // sw + 1), "int32")]


def _pair2(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))


@register_op("sum_pool2d_int32", ("x",), infer=_sum_pool_type)
def sum_pool2d_int32(x: torch.Tensor, *, kernel_size: Any, stride: Any) -> torch.Tensor:
    """y = sum over each window of x   (int32, no padding)"""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw) = _pair2(kernel_size), _pair2(stride)
    cols = torch.nn.functional.unfold(x.reshape(n * c, 1, h, w).to(torch.float64), (kh, kw), stride=(sh, sw))
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    return cols.sum(1).round().to(torch.int32).reshape(n, c, oh, ow)  # float64 sums of int32 terms are exact


@register_op("requantize_int32", ("x",), infer=lambda t, a: [TensorType(t[0].shape, "int8")])  # type: ignore[union-attr]
def requantize_int32(x: torch.Tensor, *, multiplier: int, shift: int, zero_point: int) -> torch.Tensor:
    """q = clamp(((x * m + 2^(r-1)) >> r) + zp, -128, 127)   (the W8A8 layers' requantization, per tensor)"""
    from bitpress.passes.quantize.ops import requantize

    return requantize(x, torch.tensor([multiplier]), torch.tensor([shift]), zero_point)


def _affine(v: Value) -> tuple[Value, float, int, bool] | None:
    """(codes, scale, zero point, relu) when v = dequantize(q) or v = relu(dequantize(q)) as a table, checked bit for bit."""
    s = _source(v)
    if s is None:
        return None
    q, t = s
    if v.producer is not None and v.producer.op == "dequantize_act":
        a = v.producer.attrs
        return q, float(a["scale"]), int(a["zero_point"]), False
    ordered = t[_index(torch.arange(-128, 128))]
    zeros = (ordered == 0).nonzero()
    if len(zeros) == 0 or int(zeros.max()) >= 255:
        return None
    zp = int(zeros.max()) - 128  # the last code that maps to 0
    scale = float(ordered[zp + 129])  # (zp + 1 - zp) * s
    if scale <= 0:
        return None
    deq = get_op("dequantize_act").ref(CODES, scale=scale, zero_point=zp)
    for relu in (True, False):
        ref = deq.clamp(min=0) if relu else deq
        if torch.equal(ref, t):
            return q, scale, zp, relu
    return None


@rule(Pat.op("quantize_act", x=Pat.var("v")), name="integer-add-pool")
def integer_add_pool(v: Value, *, node: Any) -> Value | Reject:
    """quantize(layout(avg_pool(A[a] + B[b]))) -> requant(layout(sum_pool(ma f(a) + mb f(b))))   in fixed point"""
    layouts = []
    cur = v
    while cur.producer is not None and cur.producer.op in LAYOUT_OPS:
        layouts.append(cur.producer)
        cur = cur.producer.inputs[0]  # type: ignore[assignment]
    pool = None
    if cur.producer is not None and cur.producer.op == "avg_pool2d":
        pool = cur.producer
        pa = pool.attrs
        if any(int(p) for p in (pa.get("padding") or [0])) or pa.get("ceil_mode") or pa.get("divisor_override"):
            return Reject("average pooling with padding, ceil_mode or a divisor override")
        if cur.producer.inputs[0] is None or cur.producer.inputs[0].ndim != 4:
            return Reject("average pooling over a non-4-D tensor")
        cur = cur.producer.inputs[0]
    if cur.producer is not None and cur.producer.op == "add" and cur.producer.inputs[0].shape == cur.producer.inputs[1].shape:  # type: ignore[union-attr]
        srcs = [_affine(x) for x in cur.producer.inputs]  # type: ignore[arg-type]
    elif pool is not None:
        srcs = [_affine(cur)]
    else:
        return Reject("no residual add or average pool before the quantize")
    if any(s is None for s in srcs):
        return Reject("an operand is not an affine (or relu-affine) function of int8 codes")
    window = 1
    if pool is not None:
        kh, kw = _pair2(pool.attrs["kernel_size"])
        window = kh * kw
    scales = [s[1] for s in srcs]  # type: ignore[index]
    # common unit u: the larger operand's multiplier gets as many bits as int32 allows over the window
    top = 1 << max(1, math.floor(math.log2((2**31 - 1) / (window * 255 * 2.02))))
    u = max(scales) / top
    mults = [round(sc / u) for sc in scales]
    if min(mults) < 1:
        return Reject("operand scales differ by more than the fixed-point range")
    attrs: dict[str, Any] = {}
    for tag, (_, _, zp, relu), m in zip("ab", srcs, mults, strict=False):  # type: ignore[misc]
        attrs |= {f"{tag}_zero_point": zp, f"{tag}_relu": relu, f"{tag}_mult": m}
    y = emit("rescale_add_int32", *[s[0] for s in srcs], name=f"{node.name}.int_add", **attrs)  # type: ignore[index]
    if pool is not None:
        y = emit(
            "sum_pool2d_int32",
            y,
            name=f"{node.name}.int_pool",
            kernel_size=list(_pair2(pool.attrs["kernel_size"])),
            stride=list(_pair2(pool.attrs.get("stride") or pool.attrs["kernel_size"])),
        )
    for lay in reversed(layouts):
        y = emit(lay.op, y, name=f"{lay.name}.int32", **lay.attrs)
    from bitpress.passes.quantize._numerics import quant_multiplier

    m, r = quant_multiplier(torch.tensor([u / (window * float(node.attrs["scale"]))]))
    return emit("requantize_int32", y, name=node.name, multiplier=int(m[0]), shift=int(r[0]), zero_point=int(node.attrs["zero_point"]))


integer_glue_rules = RuleSet([integer_add_pool])


def legalize(g: Graph, *, integer_glue: bool = True) -> tuple[Graph, list[str]]:
    """A copy of `g` with the W8A8 glue in int8 (see the module docstring) and the names of the
    quantize nodes rewritten in fixed point; `g` is not modified."""
    out = g.clone()
    rewrite(out, mcu_rules, pass_name="mcu-legalize")
    glue: list[str] = []
    if integer_glue:
        rewrite(out, integer_glue_rules, pass_name="mcu-integer-glue")
        glue = sorted(n.name for n in out.nodes if n.op == "requantize_int32")
    dead_code_elimination(out)
    return out, glue
