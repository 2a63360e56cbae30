"""Weight-pruning algorithms on one layer's weight matrix W [out, in] (conv: [out, in*kh*kw]).

* magnitude: drop the smallest |W| (per layer; N:M per group of M input columns);
* Wanda (Sun et al. 2023): score |W_ij| * ||X_j||_2, compared within each output row;
* SparseGPT (Frantar & Alistarh 2023): OBS-style pruning column block by column block,
  choosing the mask by w^2 / [H^-1]_jj^2 and updating the not-yet-pruned weights to
  compensate, with H = X^T X from calibration.

`layer_error` measures what the layer's output loses on the calibration rows:
||(W - W') X||^2 = tr(D H D^T) with D = W - W'.
"""

from __future__ import annotations

import torch

__all__ = [
    "keep_mask",
    "magnitude_scores",
    "sparsegpt",
    "wanda_scores",
]


def magnitude_scores(w: torch.Tensor) -> torch.Tensor:
    """score_ij = |W_ij|"""
    return w.abs()


def wanda_scores(w: torch.Tensor, sqsum: torch.Tensor) -> torch.Tensor:
    """score_ij = |W_ij| * ||X_j||_2   (X_j: input column j over all calibration rows)"""
    return w.abs() * sqsum.to(w.dtype).clamp(min=0).sqrt().reshape(1, -1)


def keep_mask(scores: torch.Tensor, sparsity: float | None, nm: tuple[int, int] | None, per_row: bool) -> torch.Tensor:
    """The boolean mask of weights to keep: top (1 - sparsity) scores per layer or per row, or top N of every M."""
    out, k = scores.shape
    if nm is not None:
        n, m = nm
        g = scores.reshape(out, k // m, m)
        idx = g.topk(n, dim=-1).indices
        return torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True).reshape(out, k)
    assert sparsity is not None
    if per_row:
        drop = int(k * sparsity)
        if drop == 0:
            return torch.ones_like(scores, dtype=torch.bool)
        idx = scores.topk(drop, dim=1, largest=False).indices
        return torch.ones_like(scores, dtype=torch.bool).scatter_(1, idx, False)
    drop = int(scores.numel() * sparsity)
    if drop == 0:
        return torch.ones_like(scores, dtype=torch.bool)
    flat = scores.reshape(-1)
    idx = flat.topk(drop, largest=False).indices
    return torch.ones_like(flat, dtype=torch.bool).scatter_(0, idx, False).reshape(out, k)


def sparsegpt(
    w: torch.Tensor,
    h: torch.Tensor,
    sparsity: float | None,
    nm: tuple[int, int] | None,
    *,
    blocksize: int = 128,
    damp: float = 0.01,
) -> torch.Tensor:
    """SparseGPT: prune `w` [out, in] to `sparsity` (or N:M) and reconstruct the rest against H = X^T X.

    Follows the reference algorithm: within each block of columns the mask is chosen by
    w^2 / [H^-1]_jj^2 (for N:M, every M columns as they are reached); each pruned column's
    error is spread over the later columns through the Cholesky factor of H^-1.
    """
    w = w.detach().to(torch.float32).clone()
    cols = w.shape[1]
    h = h.detach().to(torch.float64).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    mean_diag = float(torch.diag(h).mean())
    hinv = None
    for attempt in range(6):
        try:
            hd = h + torch.eye(cols, dtype=h.dtype) * (damp * (10**attempt)) * mean_diag
            chol = torch.linalg.cholesky(hd)
            hinv = torch.linalg.cholesky(torch.cholesky_inverse(chol), upper=True)
            break
        except torch.linalg.LinAlgError:  # type: ignore[attr-defined]
            continue
    if hinv is None:
        raise ValueError("SparseGPT: the calibration Hessian is not positive definite even with heavy damping")
    hinv = hinv.to(torch.float32)
    prune_n = (nm[1] - nm[0]) if nm is not None else 0
    m = nm[1] if nm is not None else 0
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        w1 = w[:, i1:i2].clone()
        q1 = torch.zeros_like(w1)
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        d1 = torch.diag(hinv1)
        if nm is None:
            assert sparsity is not None
            tmp = w1.pow(2) / d1.reshape(1, -1).pow(2)
            k = int(tmp.numel() * sparsity)
            mask1 = torch.zeros_like(w1, dtype=torch.bool)
            if k > 0:
                mask1.view(-1)[tmp.reshape(-1).topk(k, largest=False).indices] = True
        else:
            mask1 = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(count):
            col = w1[:, i]
            d = hinv1[i, i]
            if nm is not None and i % m == 0:
                tmp = w1[:, i : i + m].pow(2) / d1[i : i + m].reshape(1, -1).pow(2)
                mask1.scatter_(1, i + tmp.topk(prune_n, dim=1, largest=False).indices, True)
            q = col.clone()
            q[mask1[:, i]] = 0.0
            q1[:, i] = q
            e = (col - q) / d
            w1[:, i:] -= e.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w
