"""Quantization numerics: fitting scales/zeros, RTN with MSE clipping, GPTQ, AWQ, SmoothQuant.

Everything works on a weight matrix W [N, K] (a conv kernel flattened to [O, C*kh*kw]);
groups run along K, `group_size=K` is per-channel and `group_size=0` per-tensor.  Scales
are rounded to float16 (their storage type) before codes are computed, so the stored
model dequantizes to exactly the weights the error was measured on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bitpress.formats.integer import quant_multiplier  # re-exported: the pass computes its W8A8 multipliers with it

__all__ = [
    "QWeight",
    "act_qparams",
    "fit_params",
    "gptq",
    "quant_multiplier",
    "rtn",
    "smooth_scales",
]

_FP16_MAX = 65504.0
_MIN_SCALE = 1e-7


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    if symmetric:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


@dataclass
class QWeight:
    """Integer codes [N, K], float16 scales [Ns, G], integer zeros [Ns, G] (None: symmetric)."""

    codes: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    bits: int
    group_size: int

    def dequantize(self) -> torch.Tensor:
        k = self.codes.shape[1]
        g = torch.arange(k) // self.group_size
        s = self.scales.float()[:, g]
        q = self.codes.double()
        if self.zeros is None:
            return (q * s.double()).float()
        return ((q - self.zeros.double()[:, g]) * s.double()).float()


def fit_params(w: torch.Tensor, bits: int, symmetric: bool, clip: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale (float16-representable) and integer zero per row of `w` [R, C] from its (clipped) range."""
    qmin, qmax = qrange(bits, symmetric)
    if symmetric:
        amax = w.abs().amax(1) * clip
        s = (amax / qmax).clamp(_MIN_SCALE, _FP16_MAX).half().float()
        return s, None
    lo = w.amin(1).clamp(max=0) * clip
    hi = w.amax(1).clamp(min=0) * clip
    s = ((hi - lo) / (qmax - qmin)).clamp(_MIN_SCALE, _FP16_MAX).half().float()
    z = torch.round(-lo / s).clamp(qmin, qmax)
    return s, z


def quantize_rows(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None, bits: int, symmetric: bool) -> torch.Tensor:
    qmin, qmax = qrange(bits, symmetric)
    q = torch.round(w / s[:, None])
    if z is not None:
        q = q + z[:, None]
    return q.clamp(qmin, qmax)


def dequantize_rows(q: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
    return ((q - z[:, None]) if z is not None else q) * s[:, None]


def fit_params_mse(
    w: torch.Tensor, bits: int, symmetric: bool, *, grid: int = 20, max_shrink: float = 0.8, importance: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per row, the clipping ratio in (1 - max_shrink, 1] minimising sum_c imp_c (w - Q(w))^2."""
    best_s, best_z = fit_params(w, bits, symmetric)
    imp = importance if importance is not None else torch.ones(w.shape[1], dtype=w.dtype)
    best_err = ((dequantize_rows(quantize_rows(w, best_s, best_z, bits, symmetric), best_s, best_z) - w).pow(2) * imp).sum(1)
    for i in range(1, grid):
        clip = 1.0 - max_shrink * i / grid
        s, z = fit_params(w, bits, symmetric, clip)
        err = ((dequantize_rows(quantize_rows(w, s, z, bits, symmetric), s, z) - w).pow(2) * imp).sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s = torch.where(better, s, best_s)
        if best_z is not None and z is not None:
            best_z = torch.where(better, z, best_z)
    return best_s, best_z


def _fit(
    w: torch.Tensor, bits: int, symmetric: bool, observer: str, importance: torch.Tensor | None, mse_grid: int = 20
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if observer == "mse":
        return fit_params_mse(w, bits, symmetric, importance=importance, grid=mse_grid)
    return fit_params(w, bits, symmetric)


def _groups(k: int, group_size: int) -> list[tuple[int, int]]:
    return [(a, min(a + group_size, k)) for a in range(0, k, group_size)]


def rtn(
    w: torch.Tensor,
    bits: int,
    group_size: int,
    symmetric: bool,
    observer: str = "mse",
    importance: torch.Tensor | None = None,
    mse_grid: int = 20,
) -> QWeight:
    """Round-to-nearest with per-group ranges (observer 'mse': clipping searched per group)."""
    w = w.float()
    n, k = w.shape
    if group_size == 0:  # per-tensor: one scale for all
        s, z = _fit(w.reshape(1, -1), bits, symmetric, observer, None)
        q = quantize_rows(w.reshape(1, -1), s, z, bits, symmetric).reshape(n, k)
        return QWeight(q.long(), s.reshape(1, 1).half(), None if z is None else z.reshape(1, 1).long(), bits, k)
    gs = min(group_size, k)
    groups = _groups(k, gs)
    q = torch.empty(n, k)
    ss = torch.empty(n, len(groups))
    zz = torch.empty(n, len(groups)) if not symmetric else None
    for j, (a, b) in enumerate(groups):
        imp = importance[a:b] if importance is not None else None
        s, z = _fit(w[:, a:b], bits, symmetric, observer, imp, mse_grid)
        q[:, a:b] = quantize_rows(w[:, a:b], s, z, bits, symmetric)
        ss[:, j] = s
        if zz is not None and z is not None:
            zz[:, j] = z
    return QWeight(q.long(), ss.half(), None if zz is None else zz.long(), bits, gs)


def gptq(
    w: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    group_size: int,
    symmetric: bool,
    *,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
    observer: str = "minmax",
) -> QWeight:
    """GPTQ (Frantar et al. 2022): quantize columns in order, spreading each column's error over
    the not-yet-quantized ones with the inverse Hessian's Cholesky factor; lazy block updates.

    Group ranges are fitted on the error-updated weights when a group starts (natural order) or
    on the original weights up front (act_order: "static groups", so groups stay contiguous).
    """
    W = w.double().clone()
    n, k = W.shape
    H = hessian.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    gs = k if group_size in (0, -1) or group_size >= k else group_size
    per_tensor = group_size == 0
    groups = _groups(k, gs)
    ng = len(groups)
    ss = torch.empty(n, ng, dtype=torch.float64)
    zz = torch.empty(n, ng, dtype=torch.float64) if not symmetric else None
    tensor_params: tuple[torch.Tensor, torch.Tensor | None] | None = None
    if per_tensor:
        s, z = _fit(W.float().reshape(1, -1), bits, symmetric, observer, None)
        tensor_params = (s.double(), None if z is None else z.double())
    static = act_order or per_tensor
    if act_order and not per_tensor:
        for j, (a, b) in enumerate(groups):
            s, z = _fit(W[:, a:b].float(), bits, symmetric, observer, None)
            ss[:, j] = s.double()
            if zz is not None and z is not None:
                zz[:, j] = z.double()
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(k)
    W = W[:, perm]
    H = H[perm][:, perm]
    Hinv = _inverse_cholesky(H, damp)
    Q = torch.zeros_like(W)
    qmin, qmax = qrange(bits, symmetric)
    col_group = (perm // gs).tolist()
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            g = col_group[col]
            if per_tensor:
                assert tensor_params is not None
                s, z = tensor_params
                s, z = s.expand(n), None if z is None else z.expand(n)
            else:
                if not static and col == groups[g][0]:
                    cur = torch.cat([W1[:, i:], W[:, i2:]], 1)[:, : groups[g][1] - groups[g][0]]
                    s_, z_ = _fit(cur.float(), bits, symmetric, observer, None)
                    ss[:, g] = s_.double()
                    if zz is not None and z_ is not None:
                        zz[:, g] = z_.double()
                s, z = ss[:, g], None if zz is None else zz[:, g]
            wcol = W1[:, i]
            q = torch.round(wcol / s) + (z if z is not None else 0)
            q = q.clamp(qmin, qmax)
            Q[:, col] = q
            deq = (q - (z if z is not None else 0)) * s
            err = (wcol - deq) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] @ Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    inv = torch.argsort(perm)
    Q = Q[:, inv]
    if per_tensor:
        assert tensor_params is not None
        s, z = tensor_params
        return QWeight(Q.long(), s.reshape(1, 1).half(), None if z is None else z.reshape(1, 1).long(), bits, k)
    return QWeight(Q.long(), ss.half(), None if zz is None else zz.long(), bits, gs)


def _inverse_cholesky(H: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1; damping grows 10x per retry
    when H is numerically singular (few calibration rows, duplicated features)."""
    k = H.shape[0]
    mean_diag = torch.mean(torch.diag(H))
    for attempt in range(4):
        Hd = H + max(damp, 1e-6) * 10**attempt * mean_diag * torch.eye(k, dtype=H.dtype)
        L, info = torch.linalg.cholesky_ex(Hd)
        if int(info) == 0:
            U, info2 = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if int(info2) == 0:
                return U
    raise ValueError("GPTQ: the Hessian is not positive definite even with 1000x damping")


def _group_normalised_abs(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """|W| / max|W| over each row's group (AutoAWQ's weight statistic)."""
    out = torch.empty_like(w)
    gs = w.shape[1] if group_size <= 0 else group_size
    for a, b in _groups(w.shape[1], gs):
        blk = w[:, a:b].abs()
        out[:, a:b] = blk / (blk.amax(1, keepdim=True) + 1e-6)
    return out


def smooth_scales(act_absmax: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    """SmoothQuant (Xiao et al. 2022): s_j = max|X_j|^alpha / max_i max|W_i[:, j]|^(1 - alpha)."""
    wmax = torch.stack([w.abs().amax(0) for w in weights]).amax(0).float().clamp(min=1e-5)
    s = act_absmax.float().clamp(min=1e-5).pow(alpha) / wmax.pow(1 - alpha)
    return s.clamp(min=1e-5)


def act_qparams(samples: torch.Tensor, lo: float, hi: float, observer: str, percentile: float = 99.99) -> tuple[float, int]:
    """Asymmetric int8 (scale, zero point) for an activation tensor; scale is a float32 value."""
    if observer == "percentile" and samples.numel():
        flat = samples.float().flatten()
        if flat.numel() > 1 << 22:
            flat = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[: 1 << 22]]
        q = torch.quantile(flat, torch.tensor([1 - percentile / 100, percentile / 100]))
        lo, hi = float(q[0]), float(q[1])
    elif observer == "mse" and samples.numel():
        flat = samples.float().flatten()
        best, best_err = (lo, hi), math.inf
        for i in range(20):
            c = 1.0 - 0.04 * i
            s, zp = _act_params(lo * c, hi * c)
            qq = (torch.round(flat / s) + zp).clamp(-128, 127)
            err = float(((qq - zp) * s - flat).pow(2).sum())
            if err < best_err:
                best, best_err = (lo * c, hi * c), err
        lo, hi = best
    return _act_params(lo, hi)


def _act_params(lo: float, hi: float) -> tuple[float, int]:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    s = max((hi - lo) / 255.0, 1e-8)
    s = float(torch.tensor(s, dtype=torch.float32))
    zp = int(max(-128, min(127, round(-128 - lo / s))))
    return s, zp
