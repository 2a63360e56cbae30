"""Binarization math on one weight matrix W [out, in]: returns codes and scales, never floats in disguise.

Column importance `d` (the calibration E[x_i^2], the diagonal of H) turns every scale fit
into the minimizer of the output error sum_i d_i (w_i - q_i)^2 instead of the weight error.
"""

from __future__ import annotations

import itertools
import math

import torch

from bitpress.passes._common import lapack_single_thread

__all__ = [
    "partial_binarize",
    "power_of_two",
    "residual_binarize",
    "shiftadd_binarize",
    "ternarize",
]


def _grouped(t: torch.Tensor, group_size: int) -> torch.Tensor:
    """[..., in] -> [..., n_groups, G], zero-padded (group_size <= 0: one group)."""
    n = t.shape[-1]
    g = n if group_size <= 0 else group_size
    ng = math.ceil(n / g)
    pad = ng * g - n
    if pad:
        t = torch.cat([t, t.new_zeros(*t.shape[:-1], pad)], -1)
    return t.reshape(*t.shape[:-1], ng, g)


def _ungroup(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.reshape(*t.shape[:-2], -1)[..., :n]


def _importance(in_f: int, d: torch.Tensor | None, group_size: int) -> torch.Tensor:
    """Per-column weights [1, n_groups, G]: d (or ones), zero on padding."""
    base = torch.ones(in_f, dtype=torch.float64) if d is None else d.double().clamp(min=0) + 1e-12
    return _grouped(base, group_size)[None]


def _combos(k: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product((-1.0, 1.0), repeat=k)), dtype=torch.float64)


def _nearest_signs(wg: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Best sign planes given scales: per element the closest of the 2^k values sum_k alpha_k s_k.  -> [k, out, ng, G]"""
    k = alpha.shape[0]
    s = _combos(k)  # [C, k]
    vals = torch.einsum("kog,ck->ogc", alpha, s)  # [out, ng, C]
    idx = (wg[..., None] - vals[:, :, None, :]).abs().argmin(-1)  # [out, ng, G]
    return s[idx].permute(3, 0, 1, 2)


def _error(wg: torch.Tensor, dg: torch.Tensor, alpha: torch.Tensor, signs: torch.Tensor) -> float:
    q = (alpha[..., None] * signs).sum(0)
    return float((dg * (wg - q) ** 2).sum())


def _fit_scales(wg: torch.Tensor, dg: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Weighted least squares per (row, group): (S^T D S) alpha = S^T D w."""
    sd = signs * dg  # [k, out, ng, G]
    a = torch.einsum("kong,jong->onkj", sd, signs)
    rhs = torch.einsum("kong,ong->onk", sd, wg)
    k = signs.shape[0]
    a = a + 1e-9 * torch.eye(k, dtype=a.dtype) * a.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True)[..., None]
    return torch.linalg.solve(a, rhs).permute(2, 0, 1)


def residual_binarize(
    w: torch.Tensor, bases: int, group_size: int, d: torch.Tensor | None = None, refine: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """W ~= sum_k alpha_k (2 B_k - 1): greedy residual binaries, then alternating least squares.

    Returns (bits bool [k, out, in], scales float32 [k, out, n_groups]).  Each greedy step and
    each refinement step does not increase the (weighted) error, so k + 1 bases never lose to k.
    """
    in_f = w.shape[1]
    wg = _grouped(w.double(), group_size)
    dg = _importance(in_f, d, group_size)
    r = wg.clone()
    alphas, signs = [], []
    for _ in range(bases):
        s = torch.where(r >= 0, 1.0, -1.0).double()
        a = (dg * r.abs()).sum(-1) / dg.sum(-1)
        r = r - a[..., None] * s
        alphas.append(a)
        signs.append(s)
    alpha, sg = torch.stack(alphas), torch.stack(signs)
    best = _error(wg, dg, alpha, sg)
    for _ in range(refine if bases > 1 else 0):
        a2 = _fit_scales(wg, dg, sg)
        s2 = _nearest_signs(wg, a2)
        a2 = _fit_scales(wg, dg, s2)
        e = _error(wg, dg, a2, s2)
        if not e < best:
            break
        alpha, sg, best = a2, s2, e
    bits = _ungroup(sg > 0, in_f)
    return bits, alpha.float()


def ternarize(w: torch.Tensor, group_size: int, d: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """TWN: t = alpha * {-1, 0, +1} with threshold 0.7 mean|w|, stored as two sign planes with scales alpha / 2."""
    in_f = w.shape[1]
    wg = _grouped(w.double(), group_size)
    dg = _importance(in_f, d, group_size)
    delta = 0.7 * (dg * wg.abs()).sum(-1, keepdim=True) / dg.sum(-1, keepdim=True)
    keep = wg.abs() > delta
    alpha = (dg * wg.abs() * keep).sum(-1) / (dg * keep).sum(-1).clamp(min=1e-30)
    pos, neg = keep & (wg > 0), keep & (wg < 0)
    b1 = ~neg  # +1 for t in {+1, 0}
    b2 = pos  # +1 only for t = +1
    bits = _ungroup(torch.stack([b1, b2]), in_f)
    return bits, torch.stack([alpha / 2, alpha / 2]).float()


def _pow2(a: torch.Tensor) -> torch.Tensor:
    return torch.round(torch.log2(a.clamp(min=2.0**-126))).clamp(-128, 127)


def shiftadd_binarize(
    w: torch.Tensor, bases: int, group_size: int, d: torch.Tensor | None = None, refine: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """ShiftAddLLM: W ~= sum_k 2^e_k (2 B_k - 1); greedy residual with power-of-two scales, then
    alternate (signs given scales, scales by least squares rounded to powers of two), keeping the best.

    Returns (bits bool [k, out, in], exponents int8 [k, out, n_groups]).
    """
    in_f = w.shape[1]
    wg = _grouped(w.double(), group_size)
    dg = _importance(in_f, d, group_size)
    r = wg.clone()
    exps, signs = [], []
    for _ in range(bases):
        s = torch.where(r >= 0, 1.0, -1.0).double()
        e = _pow2((dg * r.abs()).sum(-1) / dg.sum(-1))
        r = r - torch.exp2(e)[..., None] * s
        exps.append(e)
        signs.append(s)
    ex, sg = torch.stack(exps), torch.stack(signs)
    sg = _nearest_signs(wg, torch.exp2(ex))
    best = _error(wg, dg, torch.exp2(ex), sg)
    for _ in range(refine):
        a = _fit_scales(wg, dg, sg)
        # a negative least-squares scale only flips signs, which the nearest-sign step re-picks
        e2 = _pow2(a.abs())
        sg2 = _nearest_signs(wg, torch.exp2(e2))
        err = _error(wg, dg, torch.exp2(e2), sg2)
        if not err < best:
            break
        ex, sg, best = e2, sg2, err
    return _ungroup(sg > 0, in_f), ex.to(torch.int8)


def power_of_two(w: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every weight a signed power of two: w ~= (-1)^s 2^(E_g - c), c in [0, 2^(bits-1)), nearest in value.

    Returns (codes uint8 [out, in] = s << (bits-1) | c, base int8 [out, n_groups]).
    """
    in_f = w.shape[1]
    levels = 1 << (bits - 1)
    wg = _grouped(w.double(), group_size)
    mag = wg.abs()
    top = _pow2(mag.amax(-1))  # [out, ng]
    lo = torch.floor(torch.log2(mag.clamp(min=1e-300)))
    cand = torch.stack([lo, lo + 1])  # exponents bracketing |w|
    cand = torch.minimum(torch.maximum(cand, (top - levels + 1)[None, ..., None]), top[None, ..., None])
    pick = (torch.exp2(cand) - mag[None]).abs().argmin(0, keepdim=True)
    e = cand.gather(0, pick)[0]
    c = (top[..., None] - e).clamp(0, levels - 1).long()
    s = (wg < 0).long()
    codes = _ungroup((s << (bits - 1)) | c, in_f).to(torch.uint8)
    return codes, top.to(torch.int8)


def _salient(w: torch.Tensor, m: int, hinv_diag: torch.Tensor | None) -> torch.Tensor:
    metric = w.double().abs() if hinv_diag is None else w.double() ** 2 / hinv_diag.double()[None] ** 2
    return metric.topk(m, dim=1).indices.sort(dim=1).values


def partial_binarize(
    w: torch.Tensor, ratio: float, group_size: int, h: torch.Tensor | None = None, damp: float = 0.01, block: int = 128
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PB-LLM: keep `ratio` salient weights per row (int8), binarize the rest; with a Hessian
    H = E[x x^T], salience is w^2 / [H^-1]_ii^2 and the binarization error is propagated to
    the not yet quantized columns as in GPTQ (Hessian-guided reconstruction).

    Returns (bits bool [out, in], scales float32 [out, n_groups], values int8 [out, m],
    index int64 [out, m], value_scale float32 [out]).  The salient entries are stored as the
    difference to what the binary plane holds there, so y = x (binary)^T + x (sparse)^T.
    """
    out_f, in_f = w.shape
    m = max(1, round(ratio * in_f))
    W = w.double().clone()
    if h is not None:
        H = h.double().clone()
        dead = H.diagonal() <= 0
        H[dead, dead] = 1.0
        W[:, dead] = 0.0
        H += damp * H.diagonal().mean() * torch.eye(in_f, dtype=H.dtype)
        with lapack_single_thread():
            hinv = torch.cholesky_inverse(torch.linalg.cholesky(H))
            u = torch.linalg.cholesky(hinv, upper=True)
        idx = _salient(W, m, hinv.diagonal())
    else:
        idx = _salient(W, m, None)
        u = None
    sal = torch.zeros(out_f, in_f, dtype=torch.bool).scatter_(1, idx, True)
    gs = group_size if group_size > 0 else in_f
    ng = math.ceil(in_f / gs)
    scales = torch.zeros(out_f, ng, dtype=torch.float64)
    Q = torch.zeros_like(W)

    def group_scale(cols: slice, ww: torch.Tensor, gi: int) -> None:
        keep = ~sal[:, cols]
        cnt = keep.sum(1)
        a = (ww.abs() * keep).sum(1) / cnt.clamp(min=1)
        scales[:, gi] = torch.where(cnt > 0, a, ww.abs().mean(1))

    if u is None:
        for gi in range(ng):
            cols = slice(gi * gs, min((gi + 1) * gs, in_f))
            group_scale(cols, W[:, cols], gi)
            sgn = torch.where(W[:, cols] >= 0, 1.0, -1.0).double()
            Q[:, cols] = torch.where(sal[:, cols], W[:, cols], scales[:, gi : gi + 1] * sgn)
    else:
        blk = gs if group_size > 0 else block
        if group_size <= 0:
            group_scale(slice(0, in_f), W, 0)
        for b0 in range(0, in_f, blk):
            b1 = min(b0 + blk, in_f)
            W1 = W[:, b0:b1].clone()
            E1 = torch.zeros_like(W1)
            if group_size > 0:
                group_scale(slice(b0, b1), W1, b0 // gs)
            for j in range(b1 - b0):
                i = b0 + j
                col = W1[:, j]
                a = scales[:, i // gs]
                q = torch.where(sal[:, i], col, a * torch.where(col >= 0, 1.0, -1.0))
                Q[:, i] = q
                err = (col - q) / u[i, i]
                W1[:, j:] -= err[:, None] * u[i, i:b1][None, :]
                E1[:, j] = err
            W[:, b1:] -= E1 @ u[b0:b1, b1:]
    sign_bits = Q >= 0
    binary = torch.where(sign_bits, 1.0, -1.0).double() * scales.repeat_interleave(gs, dim=1)[:, :in_f]
    delta = (Q - binary).gather(1, idx)
    vscale = delta.abs().amax(1).clamp(min=1e-30) / 127.0
    values = torch.round(delta / vscale[:, None]).clamp(-127, 127).to(torch.int8)
    return sign_bits, scales.float(), values, idx, vscale.float()
