"""Quantized ops: the reference semantics every backend is checked against.

Weight-only (W8A16 / W4A16 / W3 / W2):

- `qlinear(x, qweight, scales, zeros?, b?)`: y = x @ W^T + b with
  W[n, k] = (q[n, k] - z[n, k // gs]) * s[n, k // gs].  `qweight` is a packed constant
  (int4/uint4/int3/uint3/int2/uint2, or int8/uint8) whose logical shape is [N, K];
  `scales` is float16 [Ns, G] (Ns = N, or 1 for per-tensor), G = ceil(K / gs) (the last
  group may be ragged), `zeros` the packed unsigned zero points [Ns, G] (asymmetric only).
- `qconv2d(...)`: the same weight encoding for a conv kernel [O, C, kh, kw] flattened to
  [O, C*kh*kw] (the unfolded-patch column order).

Static W8A8 (integer-only between quantize and dequantize, so MCU and other backends can
be bit-exact):

- `quantize_act(x)`: q = clamp(round_half_even(x / s) + zp, -128, 127) as int8 (ONNX
  QuantizeLinear semantics, float32 arithmetic).
- `dequantize_act(q)`: x = (q - zp) * s (ONNX DequantizeLinear).
- `qlinear_w8a8(x, w, multiplier, shift, b?)` and `qconv2d_w8a8(...)`: int8 x int8 ->
  int32 accumulation acc = sum((x - xzp) * w) + b, then requantization with a per-channel
  fixed-point multiplier m (int32, Q31) and right shift r:
  y = clamp(((acc * m + 2^(r-1)) >> r) + yzp, -128, 127)   (int64 product, arithmetic
  shift, i.e. round half up).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bitpress.compiler.ir import IRError, Node, TensorType, unpack_bits
from bitpress.compiler.ops import register_op
from bitpress.formats.dense import register_dense_weight
from bitpress.formats.integer import requantize

__all__ = [
    "W8A8_OPS",
    "WEIGHT_ONLY_OPS",
    "QuantAttrs",
    "dequantize_weight",
    "requantize",
    "unpack_codes",
    "weight_dtype",
    "zeros_dtype",
]

WEIGHT_ONLY_OPS = ("qlinear", "qconv2d")
W8A8_OPS = ("qlinear_w8a8", "qconv2d_w8a8")


@dataclass(frozen=True)
class QuantAttrs:
    """The weight encoding of a `qlinear` / `qconv2d` / `nm_qlinear` node, each attribute with its one default.

    `shape` is the logical shape of the codes, `bits` their width, `group_size` the codes per
    scale along the flattened input axis, `signed` whether the codes are two's complement
    (symmetric, no zero points) or unsigned (asymmetric, with zero points).
    """

    shape: tuple[int, ...]
    bits: int
    group_size: int
    signed: bool = True

    @classmethod
    def of(cls, attrs: dict[str, Any]) -> QuantAttrs:
        return cls(tuple(int(d) for d in attrs["shape"]), int(attrs["bits"]), int(attrs["group_size"]), bool(attrs.get("signed", True)))


def weight_dtype(bits: int, symmetric: bool) -> str:
    """Storage dtype of the codes: signed two's complement when symmetric, unsigned otherwise."""
    if bits == 8:
        return "int8" if symmetric else "uint8"
    return f"{'int' if symmetric else 'uint'}{bits}"


def zeros_dtype(bits: int) -> str:
    return "uint8" if bits == 8 else f"uint{bits}"


def unpack_codes(data: torch.Tensor, bits: int, shape: Sequence[int], signed: bool) -> torch.Tensor:
    """Integer codes (int64) from a packed byte tensor or an int8/uint8 tensor."""
    if bits == 8:
        return data.reshape(tuple(shape)).to(torch.int64)
    return unpack_bits(data, bits, shape, signed).to(torch.int64)


def _group_index(k: int, group_size: int) -> torch.Tensor:
    return torch.arange(k) // group_size


# qweight tensor -> (scales, zeros, key, dequantized weight): the store's tensors are immutable by
# convention, so the interpreter need not unpack the same weight again on every call.
_DEQ_CACHE: dict[int, tuple[Any, ...]] = {}


def dequantize_weight(
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    *,
    shape: Sequence[int],
    bits: int,
    group_size: int,
    signed: bool,
) -> torch.Tensor:
    """W[n, k] = (q[n, k] - z[n, k // gs]) * s[n, k // gs]   as float32 of logical `shape`."""
    if qweight.device.type == "meta":
        return torch.empty(tuple(shape), device="meta")
    key = (tuple(shape), bits, group_size, signed)
    hit = _DEQ_CACHE.get(id(qweight))
    if hit is not None and hit[0]() is qweight and hit[1] is scales and hit[2] is zeros and hit[3] == key:
        return hit[4]
    n = shape[0]
    k = math.prod(shape[1:])
    q = unpack_codes(qweight, bits, (n, k), signed).to(torch.float32)
    g = _group_index(k, group_size)
    s = scales.to(torch.float32)[:, g]
    if zeros is not None:
        z = unpack_codes(zeros, bits, tuple(scales.shape), False).to(torch.float32)[:, g]
        w = (q - z) * s
    else:
        w = q * s
    w = w.reshape(tuple(shape)).contiguous()
    if hit is None:
        weakref.finalize(qweight, _DEQ_CACHE.pop, id(qweight), None)
    _DEQ_CACHE[id(qweight)] = (weakref.ref(qweight), scales, zeros, key, w)
    return w


def _check_bits(bits: int) -> None:
    if bits not in (2, 3, 4, 8):
        raise IRError(f"quantized weights need bits in (2, 3, 4, 8), got {bits}")


def _infer_qlinear(types: Sequence[TensorType | None], attrs: dict[str, Any]) -> list[TensorType]:
    x, qw = types[0], types[1]
    assert x is not None and qw is not None
    shape = tuple(attrs["shape"])
    _check_bits(int(attrs["bits"]))
    if qw.shape != shape:
        raise IRError(f"qlinear: weight typed {qw} but attrs say shape {list(shape)}")
    if x.shape[-1] != shape[1]:
        raise IRError(f"qlinear: input has {x.shape[-1]} features, weight expects {shape[1]}")
    return [TensorType((*x.shape[:-1], shape[0]), x.dtype)]


@register_op("qlinear", ("x", "qweight", "scales", "zeros?", "b?"), infer=_infer_qlinear)
def qlinear(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    shape: Sequence[int],
    bits: int,
    group_size: int,
    signed: bool = True,
) -> torch.Tensor:
    """y = x @ ((q - z) * s)^T + b   (packed q, per-group s and z)"""
    w = dequantize_weight(qweight, scales, zeros, shape=shape, bits=bits, group_size=group_size, signed=signed)
    return F.linear(x, w.to(x.dtype), b)


def _conv_out(x: TensorType, shape: Sequence[int], attrs: dict[str, Any]) -> tuple[Any, ...]:  # int or SymDim (batch)
    def pair(v: Any) -> tuple[int, int]:
        return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))

    st, pad, dil = pair(attrs.get("stride", 1)), pair(attrs.get("padding", 0)), pair(attrs.get("dilation", 1))
    hw = [(x.shape[2 + i] + 2 * pad[i] - dil[i] * (shape[2 + i] - 1) - 1) // st[i] + 1 for i in range(2)]
    return (x.shape[0], shape[0], hw[0], hw[1])


def _infer_qconv(types: Sequence[TensorType | None], attrs: dict[str, Any], out_dtype: str | None = None) -> list[TensorType]:
    x, qw = types[0], types[1]
    assert x is not None and qw is not None
    shape = tuple(attrs["shape"])
    if qw.shape != shape:
        raise IRError(f"quantized conv: weight typed {qw} but attrs say shape {list(shape)}")
    if attrs.get("groups", 1) != 1 or x.shape[1] != shape[1]:
        raise IRError(f"quantized conv: input has {x.shape[1]} channels, weight expects {shape[1]} (groups=1 only)")
    return [TensorType(_conv_out(x, shape, attrs), out_dtype or x.dtype)]


def _conv_args(stride: Any, padding: Any, dilation: Any) -> tuple[Any, Any, Any]:
    def t(v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v

    return t(stride), t(padding), t(dilation)


@register_op("qconv2d", ("x", "qweight", "scales", "zeros?", "b?"), infer=_infer_qconv)
def qconv2d(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    shape: Sequence[int],
    bits: int,
    group_size: int,
    signed: bool = True,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> torch.Tensor:
    """y = conv2d(x, (q - z) * s) + b   (packed q, per-group s and z over C*kh*kw)"""
    w = dequantize_weight(qweight, scales, zeros, shape=shape, bits=bits, group_size=group_size, signed=signed)
    return F.conv2d(x, w.to(x.dtype), b, *_conv_args(stride, padding, dilation), groups)


@register_dense_weight("qlinear")
def _qlinear_dense(node: Node) -> torch.Tensor:
    ins, a = node.inputs, QuantAttrs.of(node.attrs)
    assert ins[1] is not None and ins[2] is not None
    zeros = ins[3].value if len(ins) > 3 and ins[3] is not None else None
    return dequantize_weight(ins[1].value, ins[2].value, zeros, shape=a.shape, bits=a.bits, group_size=a.group_size, signed=a.signed)


# ----------------------------------------------------------------------------- W8A8


@register_op("quantize_act", ("x",), infer=lambda t, a: [TensorType(t[0].shape, "int8")])  # type: ignore[union-attr]
def quantize_act(x: torch.Tensor, *, scale: float, zero_point: int) -> torch.Tensor:
    """q = clamp(round(x / s) + zp, -128, 127)"""
    q = torch.round(x.to(torch.float32) / torch.tensor(scale, dtype=torch.float32)) + zero_point
    return q.clamp(-128, 127).to(torch.int8)


@register_op("dequantize_act", ("x",), infer=lambda t, a: [TensorType(t[0].shape, "float32")])  # type: ignore[union-attr]
def dequantize_act(x: torch.Tensor, *, scale: float, zero_point: int) -> torch.Tensor:
    """x = (q - zp) * s"""
    return (x.to(torch.int32) - zero_point).to(torch.float32) * torch.tensor(scale, dtype=torch.float32)


def _int_matmul(x: torch.Tensor, w: torch.Tensor, x_zero_point: int) -> torch.Tensor:
    # float64 holds every partial sum exactly (|terms| < 2^16, K < 2^30), so this is integer arithmetic.
    xd = x.to(torch.float64) - x_zero_point
    return (xd @ w.to(torch.float64).t()).to(torch.int64)


def _infer_w8a8(types: Sequence[TensorType | None], attrs: dict[str, Any]) -> list[TensorType]:
    x, w = types[0], types[1]
    assert x is not None and w is not None
    if x.dtype != "int8" or w.dtype != "int8":
        raise IRError(f"qlinear_w8a8 needs int8 x and w, got {x.dtype} and {w.dtype}")
    if x.shape[-1] != w.shape[1]:
        raise IRError(f"qlinear_w8a8: input has {x.shape[-1]} features, weight {w.shape[1]}")
    return [TensorType((*x.shape[:-1], w.shape[0]), "int8")]


@register_op("qlinear_w8a8", ("x", "w", "multiplier", "shift", "b?"), infer=_infer_w8a8)
def qlinear_w8a8(
    x: torch.Tensor,
    w: torch.Tensor,
    multiplier: torch.Tensor,
    shift: torch.Tensor,
    b: torch.Tensor | None = None,
    *,
    x_zero_point: int,
    out_zero_point: int,
) -> torch.Tensor:
    """y = requant(sum_k (x - xzp) w + b)   int8 x int8 -> int32 -> int8"""
    acc = _int_matmul(x, w, x_zero_point)
    if b is not None:
        acc = acc + b.to(torch.int64)
    return requantize(acc, multiplier, shift, out_zero_point)


@register_op(
    "qconv2d_w8a8",
    ("x", "w", "multiplier", "shift", "b?"),
    infer=lambda t, a: _infer_qconv(t, {**a, "shape": t[1].shape}, "int8"),  # type: ignore[union-attr]
)
def qconv2d_w8a8(
    x: torch.Tensor,
    w: torch.Tensor,
    multiplier: torch.Tensor,
    shift: torch.Tensor,
    b: torch.Tensor | None = None,
    *,
    x_zero_point: int,
    out_zero_point: int,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> torch.Tensor:
    """y = requant(conv2d(x - xzp, w) + b)   int8 x int8 -> int32 -> int8 (zero padding in the shifted domain)"""
    if x.device.type == "meta":
        return torch.empty(_conv_out(TensorType(tuple(x.shape), "int8"), w.shape, locals()), dtype=torch.int8, device="meta")
    # exact: every product and partial sum is an integer well inside float64's 53-bit mantissa
    acc = F.conv2d(x.to(torch.float64) - x_zero_point, w.to(torch.float64), None, *_conv_args(stride, padding, dilation), groups)
    acc = acc.to(torch.int64)
    if b is not None:
        acc = acc + b.to(torch.int64).reshape(1, -1, 1, 1)
    return requantize(acc, multiplier, shift, out_zero_point, channel_dim=1)
