"""Magnitude pruning: drop the smallest |W| (per layer; N:M per group of M input columns).  No data needed."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from bitpress.passes.prune._algorithms import keep_mask, magnitude_scores
from bitpress.passes.prune._method import PruneMethod, register_method

__all__ = ["Magnitude"]


@register_method
class Magnitude(PruneMethod):
    name: ClassVar[str] = "magnitude"
    needs_data: ClassVar[bool] = False

    def plan(self, cfg: Any, w: torch.Tensor, stats: Any, sparsity: float | None) -> torch.Tensor:
        return w * keep_mask(magnitude_scores(w), sparsity, cfg.nm, per_row=False)
