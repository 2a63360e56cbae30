"""SparseGPT (Frantar & Alistarh 2023): OBS-style pruning block by block with the inverse Hessian,
updating the weights not yet pruned to compensate (numerics in _algorithms.sparsegpt).

Unstructured or N:M only; calibrated block by block by default (`sequential="auto"`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from bitpress.passes.prune._algorithms import sparsegpt
from bitpress.passes.prune._method import PruneMethod, register_method

__all__ = ["SparseGpt"]


@register_method
class SparseGpt(PruneMethod):
    name: ClassVar[str] = "sparsegpt"
    sequential: ClassVar[str] = "block"
    structured: ClassVar[bool] = False

    def plan(self, cfg: Any, w: torch.Tensor, stats: Any, sparsity: float | None) -> torch.Tensor:
        nm = cfg.nm
        bs = max(cfg.block_size // nm[1], 1) * nm[1] if nm is not None else cfg.block_size
        return sparsegpt(w, stats.hessian, sparsity, nm, blocksize=bs, damp=cfg.damp).to(w.dtype)
