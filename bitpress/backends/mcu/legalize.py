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

with ma, mb as large as int32 allows (window * 255 * (ma + mb) < 2^31: about 19 bits); without a pool
the add and the requantization are one op (`add_requant_int8`, no int32 tensor in between).  That is the
real-number result rounded once, where the float graph rounds each float32 step, so an output code
can differ by one when the exact value lies within ~1e-6 (relative) of a rounding boundary; the
backend reports the rewritten nodes (info["integer_glue"]) and tests measure the agreement.

With `Quantize(act_bits=8, act_scope="all")` every activation between layers is dequantize(int8)
as well, and three more glue rules make a transformer block integer-only (ops and their exact
integer semantics in integer_ops.py; TFLite-Micro / I-BERT style):

- `integer-matmul`: quantize(layout(matmul(A[a], B[b]) * c)) -> layout(matmul_int8(a, b)): int8 x
  int8 -> int32 with both zero points, requantized with one multiplier for sa * sb * c / s_out (the
  scalar c, attention's 1/sqrt(d), folds in); transposes move onto the int8 codes (layout rules);
- `integer-layer-norm`: quantize(layer_norm(A[x])) -> layer_norm_int8(x): integer mean and
  variance, integer square root, per-channel multiplier for gamma * sqrt(D) / s_out and the bias;
- `integer-softmax`: quantize(softmax(A[x])) -> softmax_int8(x) with a 256-entry exp table over
  max - x and the fixed output encoding 1/256, zero point -128 (any other output encoding declines).

These round differently from float32 too (an isqrt, a reciprocal, the exp table): agreement with
the float graph is measured in the tests (within a code or two per layer, cosine > 0.999 end to end).

Requires: W8A8 graphs from the quantize pass.  Ensures: `mcu_rules` keep interpreter results bit for
bit; `integer_glue_rules` keep them to the rounding described above.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from bitpress.backends.mcu.integer_ops import LN_NORM_BITS, softmax_bits
from bitpress.compiler.builder import const, emit
from bitpress.compiler.ir import Graph, TensorType, Value
from bitpress.compiler.ops import get_op, register_op
from bitpress.compiler.pattern import Pat, Reject, RuleSet, rule
from bitpress.compiler.rewrite import common_subexpression_elimination, dead_code_elimination, rewrite
from bitpress.formats.integer import SOFTMAX_SCALE, SOFTMAX_ZERO_POINT, quant_multiplier, requantize

__all__ = ["CODES", "GLUE_OPS", "LEGALIZED_OPS", "integer_glue_rules", "legalize", "mcu_rules"]

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
LAYOUT_OPS = ("reshape", "flatten", "squeeze", "unsqueeze", "dropout", "transpose", "permute", "slice", "select")
# ops legalize() rewrites into lowered ones (tables after a dequantize; split into slices)
LEGALIZED_OPS = (*UNARY_OPS, "split")


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


@register_op("add_requant_int8", ("a", "b?"), infer=lambda t, a: [TensorType(t[0].shape, "int8")])  # type: ignore[union-attr]
def add_requant_int8(
    a: torch.Tensor, b: torch.Tensor | None = None, *, multiplier: int, shift: int, zero_point: int, **add: Any
) -> torch.Tensor:
    """q = requantize(ma f(a) + mb f(b))   (rescale_add_int32 then requantize_int32, fused: a residual add)"""
    return requantize_int32(rescale_add_int32(a, b, **add), multiplier=multiplier, shift=shift, zero_point=zero_point)


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
    m, r = quant_multiplier(torch.tensor([u / (window * float(node.attrs["scale"]))]))
    req = {"multiplier": int(m[0]), "shift": int(r[0]), "zero_point": int(node.attrs["zero_point"])}
    if pool is None:  # add and requantization in one pass, no int32 tensor in between
        y = emit("add_requant_int8", *[s[0] for s in srcs], name=node.name if not layouts else f"{node.name}.int_add", **attrs, **req)  # type: ignore[index]
        return _reapply_layouts(y, layouts)
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
    return emit("requantize_int32", y, name=node.name, **req)


# ----------------------------------------------------------------------------- transformer ops (integer_ops.py)


def _through_layouts(v: Value) -> tuple[Value, list[Any]]:
    """(the value under a chain of layout ops, the layout nodes from the outside in)."""
    layouts = []
    while v.producer is not None and v.producer.op in LAYOUT_OPS and v.producer.inputs[0] is not None:
        layouts.append(v.producer)
        v = v.producer.inputs[0]
    return v, layouts


def _reapply_layouts(y: Value, layouts: list[Any]) -> Value:
    for lay in reversed(layouts):
        y = emit(lay.op, y, name=f"{lay.name}.int8", **lay.attrs)
    return y


def _dq(v: Value) -> tuple[Value, float, int] | None:
    """(codes, scale, zero point) when v = dequantize_act(q)."""
    n = v.producer
    if n is None or n.op != "dequantize_act" or n.inputs[0] is None:
        return None
    return n.inputs[0], float(n.attrs["scale"]), int(n.attrs["zero_point"])


def _scalar(v: Value | None) -> float | None:
    if v is None or not v.is_const or v.numel != 1:
        return None
    return float(v.value.reshape(()))


def _last_two_swapped(v: Value) -> Value | None:
    """x when v = transpose(x, -1, -2) (or the same permute), else None."""
    p = v.producer
    if p is None or p.inputs[0] is None or v.ndim < 2:
        return None
    nd = v.ndim
    if p.op == "transpose":
        dims = {int(p.attrs["dim0"]) % nd, int(p.attrs["dim1"]) % nd}
        return p.inputs[0] if dims == {nd - 2, nd - 1} else None
    if p.op == "permute" and [int(d) % nd for d in p.attrs["dims"]] == [*range(nd - 2), nd - 1, nd - 2]:
        return p.inputs[0]
    return None


@rule(Pat.op("quantize_act", x=Pat.var("v")), name="integer-matmul")
def integer_matmul(v: Value, *, node: Any) -> Value | Reject:
    """quantize(layout(matmul(A[a], B[b]) * c)) -> layout(requant((a - za) @ (b - zb)))   int8 x int8 -> int32 -> int8"""
    cur, layouts = _through_layouts(v)
    factor = 1.0
    while cur.producer is not None and cur.producer.op in ("mul", "div") and len(cur.producer.inputs) == 2:
        a, b = cur.producer.inputs
        if cur.producer.op == "mul" and _scalar(a) is not None:
            a, b = b, a
        c = _scalar(b)
        if c is None or a is None or c == 0:
            break
        factor = factor * c if cur.producer.op == "mul" else factor / c
        cur = a
    if cur.producer is None or cur.producer.op != "matmul":
        return Reject("no matmul before the quantize")
    srcs = [_dq(x) for x in cur.producer.inputs if x is not None]
    if len(srcs) != 2 or any(s is None for s in srcs):
        return Reject("a matmul operand is not dequantize(int8 codes)")
    (qa, sa, za), (qb, sb, zb) = srcs  # type: ignore[misc]
    real = sa * sb * factor / float(node.attrs["scale"])
    if real <= 0:
        return Reject("a negative scale factor between the matmul and the quantize")
    m, r = quant_multiplier(torch.tensor([real]))
    # the kernel reads b as [.., N, K] (both operands contiguous along K): undo a transpose of the
    # last two dims (k^T in q @ k^T), else transpose the int8 codes once
    bt = _last_two_swapped(qb)
    if bt is None:
        bt = emit("transpose", qb, name=f"{node.name}.b_t", dim0=-2, dim1=-1)
    y = emit(
        "matmul_int8",
        qa,
        bt,
        name=f"{node.name}.matmul" if layouts else node.name,
        a_zero_point=za,
        b_zero_point=zb,
        multiplier=int(m[0]),
        shift=int(r[0]),
        out_zero_point=int(node.attrs["zero_point"]),
        transpose_b=True,
    )
    return _reapply_layouts(y, layouts)


@rule(Pat.op("quantize_act", x=Pat.op("layer_norm", bind="ln")), name="integer-layer-norm")
def integer_layer_norm(ln: Value, *, node: Any) -> Value | Reject:
    """quantize(layer_norm(A[x], g, b)) -> requant((D x - sum x) / isqrt(sum (D x - sum x)^2 + E) * g' + b')   integer only"""
    p = ln.producer
    assert p is not None
    x, g, b = ([*p.inputs, None, None])[:3]
    src = _dq(x) if x is not None else None
    if src is None:
        return Reject("the layer norm's input is not dequantize(int8 codes)")
    q, s_in, _ = src
    d = q.shape[-1]
    if list(p.attrs.get("normalized_shape") or [d]) != [d]:
        return Reject("layer norm over more than the last dimension")
    if d > 4096:
        return Reject(f"layer norm over {d} values: the int64 sum of squares is only bounded for D <= 4096")
    if (g is not None and not g.is_const) or (b is not None and not b.is_const):
        return Reject("the layer norm's weight or bias is computed at run time")
    s_out, zp_out = float(node.attrs["scale"]), int(node.attrs["zero_point"])
    gamma = g.value.double().reshape(d) if g is not None else torch.ones(d, dtype=torch.float64)
    beta = b.value.double().reshape(d) if b is not None else torch.zeros(d, dtype=torch.float64)
    gain = gamma * math.sqrt(d) / (s_out * 2.0**LN_NORM_BITS)  # per channel: q = n * gain + beta / s_out + zp
    offset = beta / s_out + zp_out
    top = max(float(gain.abs().max()), 1e-30)
    shift = min(62, math.floor(math.log2((2**31 - 1) / top)), math.floor(math.log2(2.0**61 / (float(offset.abs().max()) + 1))))
    if shift < 1:
        return Reject("the layer norm's output scale is too small for a 32-bit multiplier")
    mult = torch.round(gain * 2.0**shift).to(torch.int32)
    bias = (torch.round(offset * 2.0**shift) + 2.0 ** (shift - 1)).to(torch.int64)
    eps = min(round(float(p.attrs.get("eps", 1e-5)) * d**3 / s_in**2), 1 << 60)
    return emit(
        "layer_norm_int8",
        q,
        const(mult, f"{node.name}.ln_mult"),
        const(bias, f"{node.name}.ln_bias"),
        name=node.name,
        eps=int(eps),
        shift=int(shift),
    )


@rule(Pat.op("quantize_act", x=Pat.op("softmax", bind="sm")), name="integer-softmax")
def integer_softmax(sm: Value, *, node: Any) -> Value | Reject:
    """quantize(softmax(A[x])) -> round(256 T[max x - x] / sum T[max x - x]) - 128   T[d] = round(2^F exp(-s d))"""
    p = sm.producer
    assert p is not None and p.inputs[0] is not None
    src = _dq(p.inputs[0])
    if src is None:
        return Reject("the softmax input is not dequantize(int8 codes)")
    q, s_in, _ = src
    if int(p.attrs.get("dim", -1)) % q.ndim != q.ndim - 1:
        return Reject("softmax over a dimension other than the last")
    if float(node.attrs["scale"]) != SOFTMAX_SCALE or int(node.attrs["zero_point"]) != SOFTMAX_ZERO_POINT:
        return Reject("the softmax output is not quantized with the int8 softmax encoding (scale 1/256, zero point -128)")
    f = softmax_bits(q.shape[-1])
    if f < 8:
        return Reject(f"softmax rows of {q.shape[-1]} values are too long for a 32-bit sum")
    t = torch.round(2.0**f * torch.exp(-s_in * torch.arange(256, dtype=torch.float64))).to(torch.int32)
    return emit("softmax_int8", q, const(t, f"{node.name}.exp_table"), name=node.name)


integer_glue_rules = RuleSet([integer_add_pool, integer_matmul, integer_layer_norm, integer_softmax])
# the integer ops the glue rules introduce (reported in the backend's info["integer_glue"])
GLUE_OPS = ("requantize_int32", "add_requant_int8", "matmul_int8", "layer_norm_int8", "softmax_int8")


def _split_to_slices(g: Graph) -> None:
    """split(x) -> one slice(x) per piece (exact): single-output layout ops that move past dequantize."""
    for n in list(g.nodes):
        if n.op != "split" or n.inputs[0] is None:
            continue
        x = n.inputs[0]
        dim = int(n.attrs.get("dim", 0)) % x.ndim
        start = 0
        with g.inserting_before(n):
            for i, (o, size) in enumerate(zip(n.outputs, n.attrs["sizes"], strict=True)):
                piece = g.call("slice", [x], {"dim": dim, "start": start, "end": start + int(size), "step": 1}, name=f"{n.name}.{i}")
                g.replace_all_uses(o, piece)
                start += int(size)
        g.erase_node(n)


def legalize(g: Graph, *, integer_glue: bool = True) -> tuple[Graph, list[str]]:
    """A copy of `g` with the W8A8 glue in int8 (see the module docstring) and the names of the
    nodes rewritten in fixed point; `g` is not modified."""
    out = g.clone()
    _split_to_slices(out)
    rewrite(out, mcu_rules, pass_name="mcu-legalize")
    glue: list[str] = []
    if integer_glue:
        # several layers reading one activation quantize it alike (q, k, v): one quantize, one integer op
        common_subexpression_elimination(out)
        rewrite(out, integer_glue_rules, pass_name="mcu-integer-glue")
        rewrite(out, mcu_rules, pass_name="mcu-legalize")
        glue = sorted(n.name for n in out.nodes if n.op in GLUE_OPS)
    dead_code_elimination(out)
    return out, glue
