"""Wanda (Sun et al. 2023): score |W_ij| * ||X_j||_2 from calibration, compared within each output row."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from bitpress.passes.prune._algorithms import keep_mask, wanda_scores
from bitpress.passes.prune._method import PruneMethod, register_method

__all__ = ["Wanda"]


@register_method
class Wanda(PruneMethod):
    name: ClassVar[str] = "wanda"

    def plan(self, cfg: Any, w: torch.Tensor, stats: Any, sparsity: float | None) -> torch.Tensor:
        return w * keep_mask(wanda_scores(w, stats.sqsum), sparsity, cfg.nm, per_row=True)
