"""Sparse ops introduced by pruning, with their storage formats and reference semantics.

* ``nm_linear(x, values, indices, b?)``: an N:M sparse linear layer.  Each group of M
  consecutive input columns of a row keeps N weights; ``values`` holds them densely
  (``[out, in / M * N]``) and ``indices`` their position inside the group, packed to
  ``ceil(log2 M)`` bits each (2:4 -> 2-bit indices, four per byte).
  ``y = x @ W^T + b`` with ``W[o, (k // N) * M + idx[o, k]] = values[o, k]``.
* ``nm_qlinear(x, qvalues, scales, zeros?, indices, b?)``: N:M sparsity composed with
  weight quantization (prune, then quantize).  The kept values ``[out, in / M * N]`` are
  stored as packed integer codes (int2/3/4/8, attr ``shape`` is their logical shape) with
  float16 scales and optional packed zero points per group of ``group_size`` consecutive
  *kept* values of a row (Quantize's ``group_size`` applied to the values matrix, so a
  scale costs the same per stored code as in a dense ``qlinear``; the last group may be
  ragged), plus the packed in-group indices of ``nm_linear``.
  ``y = x @ W^T + b`` with ``W[o, (k // N) * M + idx[o, k]] = (q[o, k] - z[o, k // gs]) * s[o, k // gs]``.
* ``sparse_linear(x, values, cols, b?)``: unstructured sparsity in a row-padded CSR
  (ELLPACK) layout: every row stores ``K`` (value, column) pairs, ``K`` the largest row
  count; padding pairs hold value 0.  int16 columns when ``in <= 32767``.  Used only when
  it stores fewer bytes than the dense matrix (see `ell_pays_off`).

All three are gather kernels: a backend reads ``x`` at the stored columns and multiplies by
the stored values, so no mask and no dense weight exists at run time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from bitpress.compiler.ir import IRError, Node, TensorType, pack_bits, unpack_bits
from bitpress.compiler.ops import register_op
from bitpress.formats.dense import register_dense_weight
from bitpress.formats.quantized import dequantize_weight

__all__ = [
    "decode_ell",
    "decode_nm",
    "ell_bytes",
    "ell_pays_off",
    "encode_ell",
    "encode_nm",
    "index_bits",
    "is_nm_sparse",
    "nm_columns",
]


def index_bits(m: int) -> int:
    """Bits per stored in-group index for groups of `m` (1, 2, 3 or 4)."""
    if not 2 <= m <= 16:
        raise ValueError(f"N:M needs 2 <= M <= 16, got M={m}")
    return max(1, math.ceil(math.log2(m)))


def _index_dtype(m: int) -> str:
    return f"uint{index_bits(m)}"


def is_nm_sparse(w: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of `m` consecutive columns of every row holds at most `n` nonzeros."""
    if w.shape[-1] % m:
        return False
    return bool(((w.reshape(w.shape[0], -1, m) != 0).sum(-1) <= n).all())


def encode_nm(w: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor, TensorType]:
    """Split an N:M-sparse [out, in] matrix into (values [out, in/m*n], packed index bytes, index type).

    Groups with fewer than `n` nonzeros store explicit zeros at unused positions.
    """
    out, k = w.shape
    if k % m:
        raise ValueError(f"N:M {n}:{m}: input size {k} is not a multiple of {m}")
    if not is_nm_sparse(w, n, m):
        raise ValueError(f"matrix is not {n}:{m} sparse")
    groups = w.reshape(out, k // m, m)
    # nonzeros first (stable keeps column order), so the first n positions of each group cover them all
    order = torch.sort((groups == 0).to(torch.int8), dim=-1, stable=True).indices[..., :n]
    order = torch.sort(order, dim=-1).values
    values = torch.gather(groups, -1, order).reshape(out, -1).contiguous()
    itype = TensorType((out, k // m * n), _index_dtype(m))
    return values, pack_bits(order.reshape(out, -1), index_bits(m)), itype


def nm_columns(idx: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Absolute input columns [out, in/m*n] of the stored values, from in-group indices."""
    k = idx.shape[-1]
    base = (torch.arange(k, dtype=torch.int64) // n) * m
    return base + idx.to(torch.int64)


def decode_nm(values: torch.Tensor, indices: torch.Tensor, n: int, m: int, in_features: int) -> torch.Tensor:
    """The dense [out, in] matrix of an N:M pair (values, packed index bytes)."""
    out, k = values.shape
    idx = unpack_bits(indices, index_bits(m), (out, k))
    w = values.new_zeros(out, in_features)
    return w.scatter_(1, nm_columns(idx, n, m), values)


def _ell_col_dtype(in_features: int) -> torch.dtype:
    return torch.int16 if in_features <= 32767 else torch.int32


def ell_bytes(w: torch.Tensor) -> int:
    """Bytes the ELL form of `w` [out, in] takes (values + columns, padded to the fullest row)."""
    k = int((w != 0).sum(1).max().item()) if w.numel() else 0
    colb = 2 if w.shape[1] <= 32767 else 4
    return w.shape[0] * max(k, 1) * (w.element_size() + colb)


def ell_pays_off(w: torch.Tensor) -> bool:
    """True when the ELL form stores fewer bytes than the dense matrix."""
    return ell_bytes(w) < w.numel() * w.element_size()


def encode_ell(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values [out, K], cols [out, K]) of `w` [out, in]; padding pairs are (0, last kept column)."""
    out, k_in = w.shape
    nz = w != 0
    k = max(int(nz.sum(1).max().item()) if w.numel() else 0, 1)
    # stable sort puts each row's nonzero columns first, in column order
    order = torch.sort((~nz).to(torch.int8), dim=1, stable=True).indices[:, :k]
    vals = torch.gather(w, 1, order)
    count = nz.sum(1, keepdim=True)
    pos = torch.arange(k).expand(out, k)
    pad = pos >= count
    last = torch.gather(order, 1, (count - 1).clamp(min=0))
    cols = torch.where(pad, last.expand(out, k), order)
    vals = torch.where(pad, torch.zeros_like(vals), vals)
    return vals.contiguous(), cols.to(_ell_col_dtype(k_in)).contiguous()


def decode_ell(values: torch.Tensor, cols: torch.Tensor, in_features: int) -> torch.Tensor:
    """The dense [out, in] matrix of an ELL pair (padding adds zeros)."""
    w = values.new_zeros(values.shape[0], in_features)
    return w.scatter_add_(1, cols.to(torch.int64), values)


# ----------------------------------------------------------------------------- op registrations


def _infer_sparse_linear(types: Sequence[TensorType | None], attrs: dict[str, Any]) -> list[TensorType]:
    x, values = types[0], types[1]
    if x is None or values is None:
        raise IRError("sparse linear needs x and values")
    if x.shape[-1] != attrs["in_features"]:
        raise IRError(f"x has {x.shape[-1]} features, the layer expects {attrs['in_features']}")
    return [TensorType((*x.shape[:-1], values.shape[0]), values.dtype)]


@register_op("nm_linear", ("x", "values", "indices", "b?"), infer=_infer_sparse_linear)
def nm_linear(
    x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, b: torch.Tensor | None = None, *, n: int, m: int, in_features: int
) -> torch.Tensor:
    """y = x @ W^T + b   with W[o, (k // N) * M + idx[o, k]] = values[o, k]   (N:M sparse)"""
    return F.linear(x, decode_nm(values, indices, n, m, in_features), b)


@register_op("sparse_linear", ("x", "values", "cols", "b?"), infer=_infer_sparse_linear)
def sparse_linear(
    x: torch.Tensor, values: torch.Tensor, cols: torch.Tensor, b: torch.Tensor | None = None, *, in_features: int
) -> torch.Tensor:
    """y = x @ W^T + b   with W[o, cols[o, k]] += values[o, k]   (row-padded CSR)"""
    return F.linear(x, decode_ell(values, cols, in_features), b)


def _infer_nm_qlinear(types: Sequence[TensorType | None], attrs: dict[str, Any]) -> list[TensorType]:
    x, qv, idx = types[0], types[1], types[4]
    if x is None or qv is None or idx is None:
        raise IRError("nm_qlinear needs x, qvalues and indices")
    shape = tuple(attrs["shape"])
    n, m, k_in = int(attrs["n"]), int(attrs["m"]), int(attrs["in_features"])
    if int(attrs["bits"]) not in (2, 3, 4, 8):
        raise IRError(f"nm_qlinear: bits must be 2, 3, 4 or 8, got {attrs['bits']}")
    if qv.shape != shape or idx.shape != shape:
        raise IRError(f"nm_qlinear: codes {qv} and indices {idx} must both have the logical shape {list(shape)}")
    if k_in % m or shape[1] != k_in // m * n:
        raise IRError(f"nm_qlinear: {shape[1]} kept values per row do not match {n}:{m} of {k_in} inputs")
    if x.shape[-1] != k_in:
        raise IRError(f"nm_qlinear: x has {x.shape[-1]} features, the layer expects {k_in}")
    return [TensorType((*x.shape[:-1], shape[0]), x.dtype)]


@register_op("nm_qlinear", ("x", "qvalues", "scales", "zeros?", "indices", "b?"), infer=_infer_nm_qlinear)
def nm_qlinear(
    x: torch.Tensor,
    qvalues: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    indices: torch.Tensor,
    b: torch.Tensor | None = None,
    *,
    n: int,
    m: int,
    in_features: int,
    shape: Sequence[int],
    bits: int,
    group_size: int,
    signed: bool = True,
) -> torch.Tensor:
    """y = x @ W^T + b   with W[o, (k // N) * M + idx[o, k]] = (q[o, k] - z[o, k // gs]) * s[o, k // gs]   (N:M, packed codes)"""
    vals = dequantize_weight(qvalues, scales, zeros, shape=shape, bits=bits, group_size=group_size, signed=signed)
    return F.linear(x, decode_nm(vals, indices, n, m, in_features).to(x.dtype), b)


def _const(node: Node, i: int) -> torch.Tensor:
    v = node.inputs[i]
    assert v is not None
    return v.value


@register_dense_weight("nm_linear")
def _nm_dense(node: Node) -> torch.Tensor:
    a = node.attrs
    return decode_nm(_const(node, 1), _const(node, 2), a["n"], a["m"], a["in_features"])


@register_dense_weight("sparse_linear")
def _ell_dense(node: Node) -> torch.Tensor:
    return decode_ell(_const(node, 1), _const(node, 2), node.attrs["in_features"])
