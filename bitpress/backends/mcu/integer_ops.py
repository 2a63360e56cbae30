"""Integer-only transformer ops: the reference semantics (the oracle) of the MCU's int8 kernels.

The MCU legalization (legalize.py, `integer_glue_rules`) rewrites quantize(op(dequantize(q)))
around layer norm, softmax and the matmul of two activations into these ops; their MCU lowerings
(lowerings.py) compute exactly the same integers.  Each is "rounded once" in the sense of
legalize.py: the real-valued result of the float op on the dequantized codes, computed with
integer arithmetic whose rounding steps are defined here, so an output code can differ by one
from the float graph's.

- `matmul_int8(a, b)`: acc = (a - za) @ (b - zb) in int32 (batched, broadcast over leading dims),
  q = clamp(((acc * m + 2^(r-1)) >> r) + zp): the W8A8 requantization with one multiplier;
  `transpose_b` takes b as [..., N, K] (both operands contiguous along the reduction).
- `layer_norm_int8(x, mult, bias)` over the last dimension (D values, I-BERT style with an
  integer square root; the input scale and zero point cancel):

      c_i = D * x_i - sum_j x_j                     int32
      V   = sum_i c_i^2 + E                         int64, E = round(eps * D^3 / s_in^2)
      r   = max(isqrt(V), 1),  t = 31 - bitlength(r)  (r 2^t in [2^30, 2^31); |c_i| <= r, so |c_i 2^t| < 2^31)
      inv = floor(2^56 / (r 2^t))                   in (2^25, 2^26]: one 64-bit division per row
      n_i = (c_i 2^t * inv + 2^31) >> 32            ~ c_i 2^24 / r = (x_i - mean) / sqrt(var + eps) / sqrt(D) in Q24
      q_i = clamp((n_i * M_i + B_i) >> R, -128, 127)  M_i = round(g_i sqrt(D) 2^(R-24) / s_out),
                                                     B_i = round((b_i / s_out + zp_out) 2^R) + 2^(R-1)

  (per value: one 32 x 32 -> 64 multiply for n_i, one multiply-accumulate for q_i, a shift, a saturation)

- `softmax_int8(x, table)` over the last dimension, output scale 1/256 and zero point -128
  (TFLite's int8 softmax encoding): T[d] = round(2^F exp(-s_in d)) for d = 0..255, then per row

      e_j = T[max_k x_k - x_j],  S = sum_j e_j,  q_j = clamp((e_j * 512 + S) // (2 S) - 128, -128, 127)

  (round half up of 256 e_j / S); F <= 30 - ceil(log2 L) keeps 512 e_j + S and 2 S in uint32.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from bitpress.compiler.ir import IRError, TensorType
from bitpress.compiler.ops import register_op

__all__ = ["LN_INV_BITS", "LN_NORM_BITS", "bitlength", "isqrt", "layer_norm_int8", "matmul_int8", "softmax_bits", "softmax_int8"]

LN_INV_BITS = 56  # inv = floor(2^56 / (r 2^t)), r 2^t in [2^30, 2^31)
LN_NORM_BITS = 24  # n_i in Q24: (c_i 2^t * inv) >> 32


def isqrt(v: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(v)) of a non-negative int64 tensor, exactly (float64 estimate, then integer correction)."""
    r = torch.sqrt(v.to(torch.float64)).floor().to(torch.int64)
    for _ in range(4):  # the float64 estimate is off by at most one for v < 2^62
        r = torch.where(r * r > v, r - 1, r)
        r = torch.where((r + 1) * (r + 1) <= v, r + 1, r)
    return r


def bitlength(v: torch.Tensor) -> torch.Tensor:
    """Bits of each non-negative int64 value below 2^62 (0 for 0), exactly."""
    return (v.unsqueeze(-1) >= (torch.ones(62, dtype=torch.int64) << torch.arange(62))).sum(-1)


def _int8_like(t: Any, a: dict[str, Any]) -> list[TensorType]:
    return [TensorType(t[0].shape, "int8")]


def _matmul_type(t: Any, a: dict[str, Any]) -> list[TensorType]:
    x, y = t[0], t[1]
    if x.dtype != "int8" or y.dtype != "int8":
        raise IRError(f"matmul_int8 needs int8 operands, got {x.dtype} and {y.dtype}")
    yt = torch.empty(y.shape, device="meta")
    shape = torch.matmul(torch.empty(x.shape, device="meta"), yt.transpose(-1, -2) if a.get("transpose_b") else yt).shape
    return [TensorType(tuple(shape), "int8")]


@register_op("matmul_int8", ("a", "b"), infer=_matmul_type)
def matmul_int8(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    a_zero_point: int,
    b_zero_point: int,
    multiplier: int,
    shift: int,
    out_zero_point: int,
    transpose_b: bool = False,
) -> torch.Tensor:
    """y = requant((a - za) @ (b - zb))   int8 x int8 -> int32 -> int8, one multiplier (b given as [.., N, K] with transpose_b)"""
    from bitpress.formats.integer import requantize

    if transpose_b:
        b = b.transpose(-1, -2)
    # float64 holds every partial sum exactly (|terms| <= 2^16, K < 2^30)
    acc = torch.matmul(a.to(torch.float64) - a_zero_point, b.to(torch.float64) - b_zero_point).to(torch.int64)
    return requantize(acc, torch.tensor([multiplier]), torch.tensor([shift]), out_zero_point)


@register_op("layer_norm_int8", ("x", "mult", "bias"), infer=_int8_like)
def layer_norm_int8(x: torch.Tensor, mult: torch.Tensor, bias: torch.Tensor, *, eps: int, shift: int) -> torch.Tensor:
    """y = clamp((n(x) * M + B) >> R)   n(x) = (D x - sum x) 2^24 / isqrt(sum (D x - sum x)^2 + E), integer only"""
    d = x.shape[-1]
    xi = x.to(torch.int64)
    c = d * xi - xi.sum(-1, keepdim=True)
    v = (c * c).sum(-1, keepdim=True) + eps
    r = isqrt(v).clamp(min=1)
    t = 31 - bitlength(r)
    inv = torch.div(torch.full_like(r, 1 << LN_INV_BITS), r << t, rounding_mode="floor")
    n = ((c << t) * inv + (1 << 31)) >> 32
    y = (n * mult.to(torch.int64) + bias.to(torch.int64)) >> shift
    return y.clamp(-128, 127).to(torch.int8)


def softmax_bits(length: int) -> int:
    """Fraction bits F of the exp table for rows of `length` values (see the module docstring)."""
    return min(22, 30 - math.ceil(math.log2(max(length, 1))))


@register_op("softmax_int8", ("x", "table"), infer=_int8_like)
def softmax_int8(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """q = round(256 T[max x - x] / sum T[max x - x]) - 128   over the last dim (scale 1/256, zp -128)"""
    xi = x.to(torch.int64)
    e = table.to(torch.int64)[xi.amax(-1, keepdim=True) - xi]
    s = e.sum(-1, keepdim=True)
    q = torch.div((e << 9) + s, s << 1, rounding_mode="floor") - 128
    return q.clamp(-128, 127).to(torch.int8)
