"""ONNX lowerings of the quantized ops (bitpress/formats/quantized.py).

- `qlinear`, 4-bit with a power-of-two group size >= 16: com.microsoft `MatMulNBits`
  (codes re-laid out as [N, blocks, block_size / 2] bytes; signed codes are offset by 8,
  MatMulNBits' default zero point, so symmetric layers need no zero-point input).
- `qlinear` otherwise (2/3/8 bits, ragged or per-channel groups) and `qconv2d`: the packed
  bytes are stored as they are and decoded in the graph (BitShift / BitwiseAnd on the
  bytes, the 3-bit stream through 24-bit words), then W = (q - z) * s with the group
  scales gathered per column, then MatMul / Conv.
- W8A8: `quantize_act` / `dequantize_act` are QuantizeLinear / DequantizeLinear (the same
  float32 arithmetic and round-half-even as the reference); `qlinear_w8a8` is
  MatMulInteger and `qconv2d_w8a8` ConvInteger, followed by the reference's integer
  requantization in int64 (multiply, add 2^(r-1), floor division by 2^r written as a
  truncating Div on a shifted numerator, add the zero point, clip), so the integer path is
  bit-exact.  Between these ops the int8 activations travel as uint8 (q + 128, zero points
  + 128; see `_offset_u8`), the encoding onnxruntime's CPU kernels and QDQ rewrites expect.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch

from bitpress.backends.onnx.lowering import MS_DOMAIN, OnnxLowerContext, register_lowering
from bitpress.compiler.ir import PACKED_BITS, Node, Value, pack_bits
from bitpress.formats.quantized import QuantAttrs, unpack_codes

Names = list[str | None]


def _val(node: Node, i: int) -> Value | None:
    return node.inputs[i] if len(node.inputs) > i else None


# ----------------------------------------------------------------------------- decoding in the graph


def _decode(ctx: OnnxLowerContext, v: Value, bits: int, shape: tuple[int, ...], signed: bool, hint: str) -> str:
    """Float32 codes of logical `shape` decoded in the graph from the stored bytes of `v`."""
    n = math.prod(shape)
    data = v.value
    if bits == 8 or v.dtype not in PACKED_BITS:
        init = ctx.add_initializer(data.reshape(shape), f"{hint}.codes")
        return ctx.add_node("Cast", [init], to=onnx.TensorProto.FLOAT)[0]
    flat = data.reshape(-1)
    if bits == 3 and flat.numel() % 3:  # padded once at build time so the stream splits into 24-bit words
        flat = torch.cat([flat, torch.zeros((-flat.numel()) % 3, dtype=torch.uint8)])
    init = ctx.add_initializer(flat, f"{hint}.bytes")
    if bits == 3:
        w = ctx.add_node("Reshape", [init, ctx.ints([-1, 3])])[0]
        w = ctx.add_node("Cast", [w], to=onnx.TensorProto.UINT32)[0]
        parts = []
        for j, sh in enumerate((0, 8, 16)):
            col = ctx.add_node("Slice", [w, ctx.ints([j]), ctx.ints([j + 1]), ctx.ints([1])])[0]
            if sh:
                col = ctx.add_node("BitShift", [col, ctx.add_initializer(np.array([sh], dtype=np.uint32), "shift")], direction="LEFT")[0]
            parts.append(col)
        word = ctx.add_node("BitwiseOr", [ctx.add_node("BitwiseOr", [parts[0], parts[1]])[0], parts[2]])[0]
        shifts = ctx.add_initializer(np.arange(8, dtype=np.uint32) * 3, "shifts")
        mask = ctx.add_initializer(np.array(7, dtype=np.uint32), "mask")
    else:
        per = 8 // bits
        word = ctx.add_node("Reshape", [init, ctx.ints([-1, 1])])[0]
        shifts = ctx.add_initializer(np.arange(per, dtype=np.uint8) * bits, "shifts")
        mask = ctx.add_initializer(np.array((1 << bits) - 1, dtype=np.uint8), "mask")
    codes = ctx.add_node("BitwiseAnd", [ctx.add_node("BitShift", [word, shifts], direction="RIGHT")[0], mask])[0]
    codes = ctx.add_node("Reshape", [codes, ctx.ints([-1])])[0]
    codes = ctx.add_node("Slice", [codes, ctx.ints([0]), ctx.ints([n]), ctx.ints([0])])[0]
    codes = ctx.add_node("Reshape", [codes, ctx.ints(list(shape))])[0]
    f = ctx.add_node("Cast", [codes], to=onnx.TensorProto.FLOAT)[0]
    if signed:  # two's complement: c - 2^b when c >= 2^(b-1)
        half = ctx.scalar(float(1 << (bits - 1)), "float32")
        neg = ctx.add_node("Cast", [ctx.add_node("GreaterOrEqual", [f, half])[0]], to=onnx.TensorProto.FLOAT)[0]
        f = ctx.add_node("Sub", [f, ctx.add_node("Mul", [neg, ctx.scalar(float(1 << bits), "float32")])[0]])[0]
    return f


def _dequant_weight(ctx: OnnxLowerContext, node: Node) -> str:
    """W [N, K] float32 = (q - z[:, k // gs]) * s[:, k // gs], decoded in the graph."""
    a = node.attrs
    qa = QuantAttrs.of(a)
    shape, bits, gs, signed = list(qa.shape), qa.bits, qa.group_size, qa.signed
    n, k = shape[0], math.prod(shape[1:])
    qv, sv, zv = node.inputs[1], node.inputs[2], _val(node, 3)
    assert qv is not None and sv is not None
    q = _decode(ctx, qv, bits, (n, k), signed, node.name)
    gidx = ctx.add_initializer(np.arange(k, dtype=np.int64) // gs, f"{node.name}.group_index")
    s = ctx.add_node("Cast", [ctx.add_initializer(sv.value, f"{node.name}.scales")], to=onnx.TensorProto.FLOAT)[0]
    s = ctx.add_node("Gather", [s, gidx], axis=1)[0]
    if zv is not None:
        z = _decode(ctx, zv, bits, tuple(sv.shape), False, f"{node.name}.zeros")
        z = ctx.add_node("Gather", [z, gidx], axis=1)[0]
        q = ctx.add_node("Sub", [q, z])[0]
    return ctx.add_node("Mul", [q, s])[0]


def _matmul_nbits_ok(node: Node) -> bool:
    a = node.attrs
    gs = int(a["group_size"])
    return int(a["bits"]) == 4 and gs >= 16 and gs & (gs - 1) == 0


def _matmul_nbits(ctx: OnnxLowerContext, node: Node, x: str, b: str | None) -> list[str]:
    a = node.attrs
    n, k = int(a["shape"][0]), int(a["shape"][1])
    qa = QuantAttrs.of(a)
    gs, signed = qa.group_size, qa.signed
    qv, sv, zv = node.inputs[1], node.inputs[2], _val(node, 3)
    assert qv is not None and sv is not None
    codes = unpack_codes(qv.value, 4, (n, k), signed)
    if signed:
        codes = codes + 8
    nb = math.ceil(k / gs)
    u = torch.zeros(n, nb * gs, dtype=torch.int64)
    u[:, :k] = codes
    blob = pack_bits(u, 4).reshape(n, nb, gs // 2)
    s = sv.value.to(torch.float32).expand(n, nb).contiguous()
    ins = [x, ctx.add_initializer(blob, f"{node.name}.B"), ctx.add_initializer(s, f"{node.name}.scales")]
    if zv is not None:
        z = unpack_codes(zv.value, 4, tuple(sv.shape), False).expand(n, nb)
        zp = pack_bits(torch.cat([z, torch.zeros(n, nb % 2, dtype=torch.int64)], 1), 4).reshape(n, -1)
        ins.append(ctx.add_initializer(zp, f"{node.name}.zero_points"))
    else:
        ins.append(None)
    ins += [None, b]
    return ctx.add_node("MatMulNBits", ins, domain=MS_DOMAIN, K=k, N=n, bits=4, block_size=gs)


def _f32(ctx: OnnxLowerContext, name: str, v: Value | None) -> str:
    return name if v is None or v.dtype == "float32" else ctx.cast(name, v.dtype, "float32")


@register_lowering("qlinear")
def lower_qlinear(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """y = x @ ((q - z) * s)^T + b   (MatMulNBits for int4 blocks, else decoded in the graph)"""
    x = _f32(ctx, str(inputs[0]), node.inputs[0])
    b = inputs[4] if len(inputs) > 4 else None
    if b is not None:
        b = _f32(ctx, b, node.inputs[4])
    if _matmul_nbits_ok(node):
        y = _matmul_nbits(ctx, node, x, b)[0]
    else:
        w = _dequant_weight(ctx, node)
        y = ctx.add_node("MatMul", [x, ctx.add_node("Transpose", [w], perm=[1, 0])[0]])[0]
        if b is not None:
            y = ctx.add_node("Add", [y, b])[0]
    return [ctx.cast(y, "float32", node.output.dtype)]


def _conv_attrs(node: Node) -> dict[str, list[int]]:
    def pair(v: object) -> list[int]:
        if isinstance(v, (list, tuple)):
            return [int(v[0]), int(v[-1])]
        return [int(v), int(v)]  # type: ignore[call-overload]

    a = node.attrs
    p = pair(a.get("padding", 0))
    return {"strides": pair(a.get("stride", 1)), "pads": [p[0], p[1], p[0], p[1]], "dilations": pair(a.get("dilation", 1))}


@register_lowering("qconv2d")
def lower_qconv2d(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """y = conv2d(x, (q - z) * s) + b   (kernel decoded in the graph)"""
    x = _f32(ctx, str(inputs[0]), node.inputs[0])
    b = inputs[4] if len(inputs) > 4 else None
    w = ctx.add_node("Reshape", [_dequant_weight(ctx, node), ctx.ints(list(node.attrs["shape"]))])[0]
    y = ctx.add_node("Conv", [x, w, None if b is None else _f32(ctx, b, node.inputs[4])], **_conv_attrs(node))[0]
    return [ctx.cast(y, "float32", node.output.dtype)]


# ----------------------------------------------------------------------------- W8A8


# In ONNX the int8 activations between the W8A8 ops travel as uint8 holding q + 128 (zero
# points shifted by 128 too): the integers (q - zp) are the same, MatMulInteger runs its
# u8 x s8 kernel, and onnxruntime's QDQ rewrites (QDQPropagationTransformer, then
# QDQS8ToU8Transformer) do not fire.  With int8, onnxruntime 1.32 copies a DequantizeLinear
# through a Reshape as Q/DQ with `output_dtype=INT8`, then switches the zero point to uint8
# and leaves that attribute, so the session fails to load ("output_dtype INT8 does not match
# y_zero_point type UINT8").  A value that leaves this family of ops (a graph output, or any
# other consumer) stays int8.
_W8A8_OPS = ("quantize_act", "qlinear_w8a8", "qconv2d_w8a8")
_W8A8_READERS = ("qlinear_w8a8", "qconv2d_w8a8", "dequantize_act")


def _offset_u8(v: Value | None) -> bool:
    """True when the int8 value `v` is carried as uint8 (q + 128) in the ONNX graph."""
    if v is None or v.producer is None or v.producer.op not in _W8A8_OPS:
        return False
    if any(o is v for o in v.graph.outputs):
        return False
    return all(u.op in _W8A8_READERS and u.inputs and u.inputs[0] is v for u in v.users)


def _zp(ctx: OnnxLowerContext, zp: int, u8: bool, hint: str) -> str:
    if u8:
        return ctx.add_initializer(np.array(zp + 128, dtype=np.uint8), f"{hint}_u8")
    return ctx.scalar(zp, "int8", hint)


def _as_u8(ctx: OnnxLowerContext, name: str, v: Value | None) -> str:
    """An int8 activation as uint8 q + 128 (no-op when it already travels that way)."""
    if _offset_u8(v):
        return name
    x = ctx.add_node("Cast", [name], to=onnx.TensorProto.INT16)[0]
    x = ctx.add_node("Add", [x, ctx.scalar(128, "int16")])[0]
    return ctx.add_node("Cast", [x], to=onnx.TensorProto.UINT8)[0]


@register_lowering("quantize_act")
def lower_quantize_act(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """q = clamp(round(x / s) + zp, -128, 127)   QuantizeLinear (uint8 q + 128 between W8A8 ops)"""
    s = ctx.scalar(float(node.attrs["scale"]), "float32", "x_scale")
    zp = _zp(ctx, int(node.attrs["zero_point"]), _offset_u8(node.output), "x_zero_point")
    return ctx.add_node("QuantizeLinear", [_f32(ctx, str(inputs[0]), node.inputs[0]), s, zp])


@register_lowering("dequantize_act")
def lower_dequantize_act(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """x = (q - zp) * s   DequantizeLinear"""
    s = ctx.scalar(float(node.attrs["scale"]), "float32", "y_scale")
    zp = _zp(ctx, int(node.attrs["zero_point"]), _offset_u8(node.inputs[0]), "y_zero_point")
    return ctx.add_node("DequantizeLinear", [str(inputs[0]), s, zp])


def _requant(ctx: OnnxLowerContext, node: Node, acc: str, bias: str | None, channel_shape: list[int]) -> list[str]:
    mv, rv = node.inputs[2], node.inputs[3]
    assert mv is not None and rv is not None
    m = mv.value.to(torch.int64).reshape(channel_shape)
    r = rv.value.to(torch.int64).reshape(channel_shape)
    d = torch.ones_like(r) << r
    a = ctx.add_node("Cast", [acc], to=onnx.TensorProto.INT64)[0]
    if bias is not None:
        bv = node.inputs[4]
        assert bv is not None
        a = ctx.add_node("Add", [a, ctx.add_initializer(bv.value.to(torch.int64).reshape(channel_shape), f"{node.name}.bias64")])[0]
    a = ctx.add_node("Mul", [a, ctx.add_initializer(m, f"{node.name}.multiplier64")])[0]
    a = ctx.add_node("Add", [a, ctx.add_initializer(d // 2, f"{node.name}.half")])[0]
    # floor(a / d) with a truncating Div: shift negative numerators down by d - 1 first
    neg = ctx.add_node("Less", [a, ctx.scalar(0, "int64")])[0]
    adj = ctx.add_node("Where", [neg, ctx.add_initializer(d - 1, f"{node.name}.dm1"), ctx.scalar(0, "int64")])[0]
    q = ctx.add_node("Div", [ctx.add_node("Sub", [a, adj])[0], ctx.add_initializer(d, f"{node.name}.divisor")])[0]
    off = 128 if _offset_u8(node.output) else 0
    q = ctx.add_node("Add", [q, ctx.scalar(int(node.attrs["out_zero_point"]) + off, "int64")])[0]
    q = ctx.add_node("Clip", [q, ctx.scalar(-128 + off, "int64"), ctx.scalar(127 + off, "int64")])[0]
    return ctx.add_node("Cast", [q], to=onnx.TensorProto.UINT8 if off else onnx.TensorProto.INT8)


# Weights travel as uint8 w + 128 with zero point 128 (the integers w are the same), so
# onnxruntime runs its u8 x u8 kernels.  Its u8 x s8 kernels on hosts without VNNI (AVX2,
# AVX-512BW) use vpmaddubsw, which adds two u8 x s8 products in a saturating int16: with
# activations near 255 and weights near +-127 the sum leaves int16 and the result is no
# longer the reference's.  The u8 x u8 kernels widen to int16 first (vpmaddwd): exact on
# every x86 host, so one ONNX artifact is bit-exact wherever it is loaded.
def _weight_u8(w: torch.Tensor) -> torch.Tensor:
    return (w.to(torch.int16) + 128).to(torch.uint8)


def _weight_zp(ctx: OnnxLowerContext) -> str:
    return ctx.add_initializer(np.array(128, dtype=np.uint8), "w_zero_point_u8")


@register_lowering("qlinear_w8a8")
def lower_qlinear_w8a8(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """y = requant(sum_k (x - xzp) w + b)   MatMulInteger + int64 requantization"""
    wv = node.inputs[1]
    assert wv is not None
    wt = ctx.add_initializer(_weight_u8(wv.value.t().contiguous()), f"{node.name}.wT_u8")
    xu = _as_u8(ctx, str(inputs[0]), node.inputs[0])
    xzp = _zp(ctx, int(node.attrs["x_zero_point"]), True, "x_zero_point")
    acc = ctx.add_node("MatMulInteger", [xu, wt, xzp, _weight_zp(ctx)])[0]
    return _requant(ctx, node, acc, inputs[4] if len(inputs) > 4 else None, [-1])


@register_lowering("qconv2d_w8a8")
def lower_qconv2d_w8a8(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """y = requant(conv2d(x - xzp, w) + b)   ConvInteger (uint8 activations) + int64 requantization"""
    # ConvInteger takes uint8 activations: x + 128 with zero point xzp + 128 is the same integer x - xzp
    xu = _as_u8(ctx, str(inputs[0]), node.inputs[0])
    xzp = ctx.add_initializer(np.array(int(node.attrs["x_zero_point"]) + 128, dtype=np.uint8), "x_zero_point_u8")
    wv = node.inputs[1]
    assert wv is not None
    wu = ctx.add_initializer(_weight_u8(wv.value), f"{node.name}.w_u8")
    acc = ctx.add_node("ConvInteger", [xu, wu, xzp, _weight_zp(ctx)], **_conv_attrs(node))[0]
    return _requant(ctx, node, acc, inputs[4] if len(inputs) > 4 else None, [1, -1, 1, 1])
