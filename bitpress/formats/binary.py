"""Binary, partially binary and shift-add linear ops (reference semantics = the oracle).

Storage (bytes as stored, nothing expanded at run time):

- `binary_linear(x, signs, scales, b?)`: signs `uint1[k, out, in]` (8 per byte, bit 1 = +1),
  scales `float32[k, out, n_groups]`; W = sum_k scales_k (2 B_k - 1).  k = 1 is sign
  binarization (BWN/XNOR-Net), k > 1 multi-basis (residual) binarization, and ternary is
  k = 2 with equal scales (B1 + B2 in {-2, 0, 2}).  `act="sign"` binarizes the activation
  too: x -> mean|x| sign(x) per row (XNOR-Net), so the dot product is an XNOR-popcount.
- `partial_binary_linear(x, signs, scales, values, index, value_scale, b?)`: PB-LLM; a
  binary matrix plus per row m salient corrections stored as int8 `values[out, m]` at
  int16/int32 column `index[out, m]` with a per-row `value_scale`.
- `shiftadd_linear(x, signs, exponents, b?)`: ShiftAddLLM; like binary_linear but the
  group scales are powers of two stored as int8 exponents: W = sum_k 2^e_k (2 B_k - 1),
  so every product is a shift of the activation and the rest adds and subtracts.
- `shift_linear(x, codes, base, b?)`: DeepShift/DenseShift-style; every weight is a signed
  power of two, `codes uint4|uint2[out, in]` = sign bit (top) | exponent offset c, and
  `base int8[out, n_groups]`: w = (-1)^s 2^(base - c).

Groups run along in-features: `group_size = 0` means one group per output row.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from bitpress.compiler.ir import TensorType, unpack_bits
from bitpress.compiler.ops import register_op
from bitpress.formats.dense import register_dense_weight

__all__ = [
    "binary_weight",
    "expand_groups",
    "n_groups",
    "partial_weight",
    "shift_weight",
    "shiftadd_weight",
]


def n_groups(in_features: int, group_size: int) -> int:
    return 1 if group_size <= 0 else math.ceil(in_features / group_size)


def expand_groups(s: torch.Tensor, in_features: int, group_size: int) -> torch.Tensor:
    """Per-group values [..., n_groups] -> per-column [..., in_features]."""
    if group_size <= 0:
        return s[..., :1].expand(*s.shape[:-1], in_features)
    return s.repeat_interleave(group_size, dim=-1)[..., :in_features]


def _pm1(signs: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    return unpack_bits(signs, 1, shape).to(torch.float32) * 2.0 - 1.0


# packed tensor -> (other inputs, attrs, dense weight): store tensors are immutable by convention, so the
# interpreter (the oracle, also used to evaluate big models) need not unpack a weight on every call.
# Keyed by id() with a weak reference to check identity (tensors compare elementwise, so they
# cannot be dict keys); an entry goes when its packed tensor does.
_DENSE_CACHE: dict[int, tuple[weakref.ref[torch.Tensor], tuple[Any, ...], tuple[Any, ...], torch.Tensor]] = {}
_CACHE_MAX = 4096


def _cached(packed: torch.Tensor, others: tuple[torch.Tensor, ...], key: tuple[Any, ...], make: Any) -> torch.Tensor:
    if packed.device.type == "meta":
        return make()
    hit = _DENSE_CACHE.get(id(packed))
    if (
        hit is not None
        and hit[0]() is packed
        and len(hit[1]) == len(others)
        and all(a is b for a, b in zip(hit[1], others))
        and hit[2] == key
    ):
        return hit[3]
    w = make()
    if len(_DENSE_CACHE) >= _CACHE_MAX:
        _DENSE_CACHE.clear()
    if hit is None or hit[0]() is not packed:
        weakref.finalize(packed, _DENSE_CACHE.pop, id(packed), None)  # drop the entry with its weight
    _DENSE_CACHE[id(packed)] = (weakref.ref(packed), others, key, w)
    return w


def binary_weight(
    signs: torch.Tensor, scales: torch.Tensor, out_features: int, in_features: int, bases: int, group_size: int
) -> torch.Tensor:
    pm = _pm1(signs, (bases, out_features, in_features))
    return (pm * expand_groups(scales.float(), in_features, group_size)).sum(0)


def partial_weight(
    signs: torch.Tensor,
    scales: torch.Tensor,
    values: torch.Tensor,
    index: torch.Tensor,
    value_scale: torch.Tensor,
    out_features: int,
    in_features: int,
    group_size: int,
) -> torch.Tensor:
    w = binary_weight(signs, scales, out_features, in_features, 1, group_size)
    return w.scatter_add(1, index.long(), values.float() * value_scale.float()[:, None])


def shiftadd_weight(
    signs: torch.Tensor, exponents: torch.Tensor, out_features: int, in_features: int, bases: int, group_size: int
) -> torch.Tensor:
    pm = _pm1(signs, (bases, out_features, in_features))
    return (torch.ldexp(pm, expand_groups(exponents.to(torch.int32), in_features, group_size))).sum(0)


def shift_weight(codes: torch.Tensor, base: torch.Tensor, out_features: int, in_features: int, bits: int, group_size: int) -> torch.Tensor:
    c = unpack_bits(codes, bits, (out_features, in_features)).to(torch.int32)
    sign = 1.0 - 2.0 * (c >> (bits - 1)).to(torch.float32)
    off = c & ((1 << (bits - 1)) - 1)
    e = expand_groups(base.to(torch.int32), in_features, group_size) - off
    return torch.ldexp(sign, e)


def _infer_linear_like(types: Sequence[TensorType | None], attrs: dict[str, Any]) -> list[TensorType]:
    x = types[0]
    assert x is not None
    if x.shape[-1] != attrs["in_features"]:
        raise ValueError(f"input has {x.shape[-1]} features, the layer expects {attrs['in_features']}")
    return [TensorType((*x.shape[:-1], int(attrs["out_features"])), x.dtype)]


def sign_activation(x: torch.Tensor) -> torch.Tensor:
    """x -> mean|x| * sign(x) per row, sign(0) = +1 (XNOR-Net's activation binarization)."""
    beta = x.abs().mean(-1, keepdim=True)
    return torch.where(x >= 0, beta, -beta)


@register_op("binary_linear", ("x", "signs", "scales", "b?"), infer=_infer_linear_like)
def _binary_linear(
    x: torch.Tensor,
    signs: torch.Tensor,
    scales: torch.Tensor,
    b: torch.Tensor | None = None,
    *,
    out_features: int,
    in_features: int,
    bases: int = 1,
    group_size: int = 0,
    act: str = "none",
) -> torch.Tensor:
    """y = act(x) @ (sum_k s_k (2 B_k - 1))^T + b   (act: none | sign = mean|x| sign(x))"""
    key = (out_features, in_features, bases, group_size)
    w = _cached(signs, (scales,), key, lambda: binary_weight(signs, scales, *key)).to(x.dtype)
    xa = sign_activation(x) if act == "sign" else x
    return F.linear(xa, w, b)


@register_op("partial_binary_linear", ("x", "signs", "scales", "values", "index", "value_scale", "b?"), infer=_infer_linear_like)
def _partial_binary_linear(
    x: torch.Tensor,
    signs: torch.Tensor,
    scales: torch.Tensor,
    values: torch.Tensor,
    index: torch.Tensor,
    value_scale: torch.Tensor,
    b: torch.Tensor | None = None,
    *,
    out_features: int,
    in_features: int,
    group_size: int = 0,
) -> torch.Tensor:
    """y = x @ (s (2 B - 1) + S)^T + b   with S[o, index[o, j]] += values[o, j] * value_scale[o]"""
    key = (out_features, in_features, group_size)
    w = _cached(
        signs, (scales, values, index, value_scale), key, lambda: partial_weight(signs, scales, values, index, value_scale, *key)
    ).to(x.dtype)
    return F.linear(x, w, b)


@register_op("shiftadd_linear", ("x", "signs", "exponents", "b?"), infer=_infer_linear_like)
def _shiftadd_linear(
    x: torch.Tensor,
    signs: torch.Tensor,
    exponents: torch.Tensor,
    b: torch.Tensor | None = None,
    *,
    out_features: int,
    in_features: int,
    bases: int = 1,
    group_size: int = 0,
) -> torch.Tensor:
    """y = x @ (sum_k 2^e_k (2 B_k - 1))^T + b"""
    key = (out_features, in_features, bases, group_size)
    w = _cached(signs, (exponents,), key, lambda: shiftadd_weight(signs, exponents, *key)).to(x.dtype)
    return F.linear(x, w, b)


@register_op("shift_linear", ("x", "codes", "base", "b?"), infer=_infer_linear_like)
def _shift_linear(
    x: torch.Tensor,
    codes: torch.Tensor,
    base: torch.Tensor,
    b: torch.Tensor | None = None,
    *,
    out_features: int,
    in_features: int,
    bits: int = 4,
    group_size: int = 0,
) -> torch.Tensor:
    """y = x @ W^T + b   with W[o, i] = (-1)^s 2^(base[o, g] - c), (s, c) = codes[o, i]"""
    key = (out_features, in_features, bits, group_size)
    w = _cached(codes, (base,), key, lambda: shift_weight(codes, base, *key)).to(x.dtype)
    return F.linear(x, w, b)


# -- dense weights, so Compensate (and reports) can rebuild what these layers compute


def _c(node: Any, i: int) -> torch.Tensor:
    return node.inputs[i].value


@register_dense_weight("binary_linear")
def _binary_dense(node: Any) -> torch.Tensor | None:
    a = node.attrs
    if a.get("act", "none") != "none":
        return None  # binary activations: no dense weight computes the same function
    return binary_weight(_c(node, 1), _c(node, 2), a["out_features"], a["in_features"], a.get("bases", 1), a.get("group_size", 0))


@register_dense_weight("partial_binary_linear")
def _partial_dense(node: Any) -> torch.Tensor:
    a = node.attrs
    signs, scales, values, index, value_scale = (_c(node, i) for i in range(1, 6))
    return partial_weight(signs, scales, values, index, value_scale, a["out_features"], a["in_features"], a.get("group_size", 0))


@register_dense_weight("shiftadd_linear")
def _shiftadd_dense(node: Any) -> torch.Tensor:
    a = node.attrs
    return shiftadd_weight(_c(node, 1), _c(node, 2), a["out_features"], a["in_features"], a.get("bases", 1), a.get("group_size", 0))


@register_dense_weight("shift_linear")
def _shift_dense(node: Any) -> torch.Tensor:
    a = node.attrs
    return shift_weight(_c(node, 1), _c(node, 2), a["out_features"], a["in_features"], a.get("bits", 4), a.get("group_size", 0))
