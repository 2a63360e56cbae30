"""Low-rank math: (activation-whitened) truncated SVD, rank rules and budget allocation.

Whitening (SVD-LLM / ASVD): with the input covariance H = E[x x^T] = S S^T the output
error of a weight error E is ||E X^T||^2 / n = tr(E H E^T) = ||E S||_F^2, so truncating
the SVD of W S (not of W) minimizes the output error at a given rank; W' = (W S)_r S^-1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from bitpress.passes._common import lapack_single_thread

__all__ = [
    "Whitening",
    "allocate_budget",
    "factor",
    "max_useful_rank",
    "rank_for_energy",
    "whitening",
]


class Whitening:
    """S and S^-1 from a damped input covariance H = Q diag(l) Q^T: S = Q diag(sqrt l)."""

    def __init__(self, h: torch.Tensor, damp: float = 0.01):
        h = h.double()
        h = 0.5 * (h + h.t())
        with lapack_single_thread():
            lam, q = torch.linalg.eigh(h)
        floor = damp * max(float(lam.clamp(min=0).mean()), 1e-12)
        lam = lam.clamp(min=0) + floor
        self.s = q * lam.sqrt()
        self.s_inv = (q / lam.sqrt()).t()
        self.h = h


def whitening(h: torch.Tensor | None, damp: float = 0.01) -> Whitening | None:
    return None if h is None else Whitening(h, damp)


def _gram_svd(m: torch.Tensor, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD (top `rank`) of a float64 matrix through the eigendecomposition of its smaller Gram matrix.

    LAPACK's SVD of a 1536 x 576 matrix is ~50x slower here than eigh of the 576 x 576 Gram
    matrix; in float64 the squared condition number costs nothing for the components we keep.
    """
    tall = m.shape[0] >= m.shape[1]
    gram = m.t() @ m if tall else m @ m.t()
    with lapack_single_thread():
        lam, q = torch.linalg.eigh(gram)
    lam, q = lam.flip(0).clamp(min=0), q.flip(1)
    s = lam.sqrt()
    k = len(s) if rank is None else rank
    s, q = s[:k], q[:, :k]
    inv = torch.where(s > s[:1] * 1e-12, 1.0 / s.clamp(min=1e-300), torch.zeros_like(s))
    if tall:
        return (m @ q) * inv, s, q.t()
    return q, s, (q.t() @ m) * inv[:, None]


def singular_values(w: torch.Tensor, wh: Whitening | None) -> torch.Tensor:
    m = w.double() if wh is None else w.double() @ wh.s
    return _gram_svd(m)[1]


def factor(w: torch.Tensor, rank: int, wh: Whitening | None) -> tuple[torch.Tensor, torch.Tensor]:
    """W [out, in] ~= B @ A with A [rank, in], B [out, rank]; sqrt(sigma) split evenly so both quantize alike."""
    m = w.double() if wh is None else w.double() @ wh.s
    u, s, vh = _gram_svd(m, rank)
    root = s[:rank].sqrt()
    a = root[:, None] * vh[:rank]
    if wh is not None:
        a = a @ wh.s_inv
    b = u[:, :rank] * root[None, :]
    return a.to(w.dtype).contiguous(), b.to(w.dtype).contiguous()


def max_useful_rank(out_f: int, in_f: int) -> int:
    """The largest rank whose two factors hold fewer parameters than the dense matrix."""
    return max(0, math.ceil(out_f * in_f / (out_f + in_f)) - 1)


def rank_for_energy(sv: torch.Tensor, energy: float) -> int:
    """Smallest r keeping `energy` of sum sigma^2 (of W, or of W S for activation-aware)."""
    e = sv.double().pow(2)
    cum = torch.cumsum(e, 0) / e.sum().clamp(min=1e-30)
    return int(torch.searchsorted(cum, torch.tensor(energy, dtype=torch.float64)).item()) + 1


def allocate_budget(spectra: Mapping[str, tuple[torch.Tensor, int, int]], budget: float) -> dict[str, int]:
    """Ranks for a global parameter budget (fraction of the layers' dense parameters).

    Each singular component j of layer l costs (in + out) parameters and removes
    sigma_j^2 / sum(sigma^2) of that layer's relative output error; components are taken
    greedily by gain per parameter (prefixes per layer, since sigma is sorted).  Layers
    whose rank would not shrink them are kept dense and charged their dense size.
    """
    total = sum(o * i for _, o, i in spectra.values())
    allowed = budget * total
    cands: list[tuple[float, str, int]] = []
    for name, (sv, o, i) in spectra.items():
        e = sv.double().pow(2)
        rel = (e / e.sum().clamp(min=1e-30)).tolist()
        for j, g in enumerate(rel[: max_useful_rank(o, i)]):
            cands.append((g / (o + i), name, j))
    cands.sort(key=lambda c: -c[0])
    ranks = dict.fromkeys(spectra, 0)
    used = 0.0
    for _, name, _j in cands:
        _, o, i = spectra[name]
        if used + (o + i) > allowed:
            continue
        ranks[name] += 1
        used += o + i
    return {k: max(r, 1) for k, r in ranks.items()}
