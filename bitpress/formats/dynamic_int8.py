"""qlinear_dyn: int4/int8 block weights x int8 activations quantized per row at run time.

The integer-dot form llama.cpp takes its CPU speed from: the weight is stored as symmetric
codes in blocks of `group_size` along K (the last may be shorter) with one float scale per block, each activation row
(token) is quantized to int8 on the fly with its own scale, the block dot products are int8 x
int8 -> int32, and floats enter only once per block:

    s_a[i]  = max_k |x[i, k]| / 127            (1 for an all-zero row)
    xq[i,k] = clamp(round(x[i, k] / s_a[i]), -127, 127)
    acc[i, j, g] = sum_{k in block g} xq[i, k] * q[j, k]              (int32, exact)
    y[i, j] = (sum_g float(acc[i, j, g]) * s_w[j, g]) * s_a[i] + b[j]   (g in order)

Activations are clamped to +-127 and weights are symmetric (|q| <= 127, int4 in [-8, 7]), so a
kernel may multiply |q| (unsigned) by sign(q) * xq (signed) with u8 x s8 instructions: a pair of
such products is at most 2 * 127 * 127 < 2**15, so AVX2's saturating vpmaddubsw is exact here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from bitpress.compiler.ir import IRError, Node, TensorType, unpack_bits
from bitpress.compiler.ops import register_op
from bitpress.formats.dense import register_dense_weight

__all__ = ["DYN_OPS", "dynamic_codes", "quantize_rows"]

DYN_OPS = ("qlinear_dyn",)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(xq int32 [M, K] in [-127, 127], s_a float32 [M, 1]) for x [M, K] (float32 arithmetic)."""
    xs = x.to(torch.float32)
    amax = xs.abs().amax(1, keepdim=True)
    sa = torch.where(amax > 0, amax / torch.tensor(127.0), torch.ones_like(amax))
    return torch.clamp(torch.round(xs / sa), -127, 127).to(torch.int32), sa


def dynamic_codes(qweight: torch.Tensor, bits: int, shape: Sequence[int]) -> torch.Tensor:
    """Signed integer codes [N, K] (int32) of a qlinear_dyn weight."""
    if bits == 8:
        return qweight.reshape(tuple(shape)).to(torch.int32)
    return unpack_bits(qweight, bits, shape, signed=True).to(torch.int32)


def _infer(types: Sequence[TensorType | None], attrs: dict[str, Any]) -> list[TensorType]:
    x, qw, s = types[0], types[1], types[2]
    assert x is not None and qw is not None and s is not None
    n, k = (int(v) for v in attrs["shape"])
    bits, gs = int(attrs["bits"]), int(attrs["group_size"])
    if bits not in (4, 8):
        raise IRError(f"qlinear_dyn: bits must be 4 or 8, got {bits}")
    if gs <= 0 or k % 4 or gs % 4:
        raise IRError(f"qlinear_dyn: group_size {gs} and K={k} must be multiples of 4")
    if qw.shape != (n, k) or qw.dtype != ("int8" if bits == 8 else "int4"):
        raise IRError(f"qlinear_dyn: weight typed {qw}, expected int{bits} [{n}, {k}]")
    if s.shape != (n, -(-k // gs)):
        raise IRError(f"qlinear_dyn: scales typed {s}, expected [{n}, {-(-k // gs)}]")
    if x.shape[-1] != k:
        raise IRError(f"qlinear_dyn: input has {x.shape[-1]} features, weight expects {k}")
    if x.dtype != "float32":
        raise IRError(f"qlinear_dyn: input must be float32, got {x.dtype}")
    return [TensorType((*x.shape[:-1], n), "float32")]


@register_op("qlinear_dyn", ("x", "qweight", "scales", "b?"), infer=_infer)
def qlinear_dyn(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    b: torch.Tensor | None = None,
    *,
    shape: Sequence[int],
    bits: int,
    group_size: int,
) -> torch.Tensor:
    """y = (sum_g int(xq . q)_g * s_w[g]) * s_a + b   xq = int8 rows of x quantized at run time"""
    n, k = (int(v) for v in shape)
    lead = x.shape[:-1]
    if x.device.type == "meta":
        return torch.empty((*lead, n), device="meta")
    xq, sa = quantize_rows(x.reshape(-1, k))
    q = dynamic_codes(qweight, bits, (n, k))
    g = -(-k // group_size)  # a last block shorter than the others is fine (zero-padded)
    pad = g * group_size - k
    xq, q = F.pad(xq, (0, pad)), F.pad(q, (0, pad))
    # the block sums are integers below 2**31: exact in float64
    acc = torch.einsum("mgr,ngr->mng", xq.reshape(-1, g, group_size).double(), q.reshape(n, g, group_size).double())
    sw = scales.to(torch.float32)
    y = torch.zeros(acc.shape[:2], dtype=torch.float32)
    for j in range(g):  # the kernels' order: one block after the other, fused multiply-add
        y = _fma(acc[:, :, j].to(torch.float32), sw[:, j], y)
    y = _fma(y, sa, b.to(torch.float32) if b is not None else torch.zeros((), dtype=torch.float32))
    return y.reshape(*lead, n)


def _fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """round(a * b + c) with one rounding, as an FMA instruction (LLVM contracts a * b + c into one).

    The float32 product is exact in float64 and TwoSum gives the float64 sum's exact error, so
    the fused result is the float64 sum rounded to float32, except when that sum falls exactly
    on a float32 midpoint while the exact value does not (double rounding): then it rounds
    towards the exact value."""
    p = a.double() * b.double()
    cd = c.double()
    s = p + cd
    bb = s - p
    err = (p - (s - bb)) + (cd - bb)  # s + err == a * b + c exactly
    r = s.to(torch.float32)
    inf = torch.full_like(r, float("inf"))
    lo = torch.where(r.double() <= s, r, torch.nextafter(r, -inf))
    hi = torch.nextafter(lo, inf)
    tie = (lo.double() + hi.double()) / 2 == s
    return torch.where(tie & (err > 0), hi, torch.where(tie & (err < 0), lo, r))


@register_dense_weight("qlinear_dyn")
def _dense(node: Node) -> torch.Tensor:
    """W[n, k] = q[n, k] * s_w[n, k // group_size]"""
    qv, sv = node.inputs[1], node.inputs[2]
    assert qv is not None and sv is not None
    n, k = (int(v) for v in node.attrs["shape"])
    gs = int(node.attrs["group_size"])
    q = dynamic_codes(qv.value, int(node.attrs["bits"]), (n, k)).to(torch.float32)
    return q * sv.value.to(torch.float32).repeat_interleave(gs, dim=1)[:, :k]
