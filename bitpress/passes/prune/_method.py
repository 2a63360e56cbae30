"""Pruning methods as strategies: one file each (magnitude.py, wanda.py, sparsegpt.py), one `plan` entry point.

`plan(cfg, w, stats, sparsity)` returns the pruned copy of one layer's weight matrix W [out, in]
(conv: [out, in*kh*kw]) for the Prune pass `cfg` (its `nm` and options), the layer's
calibration statistics and its target sparsity (None for N:M).  Layer selection, sparsity
allocation, sequential calibration, error reports and storage formats are shared
(unstructured.py), so a new method is one new file:

    @register_method
    class MyMethod(PruneMethod):
        name = "mine"
        def plan(self, cfg, w, stats, sparsity):
            return w * keep_mask(my_scores(w, stats), sparsity, cfg.nm, per_row=True)
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from bitpress.compiler.registry import Registry

__all__ = ["METHODS", "PruneMethod", "register_method"]


class PruneMethod:
    name: ClassVar[str]
    needs_data: ClassVar[bool] = True  # calibration is required
    sequential: ClassVar[str] = "layer"  # what Prune(sequential="auto") means for this method
    structured: ClassVar[bool] = True  # may rank whole channels/heads (structure="channel" | "head")

    def plan(self, cfg: Any, w: torch.Tensor, stats: Any, sparsity: float | None) -> torch.Tensor:
        """The pruned copy of `w` (float32) at `sparsity` (or `cfg.nm`)."""
        raise NotImplementedError


METHODS: Registry[PruneMethod] = Registry("pruning method")


def register_method(cls: type[PruneMethod]) -> type[PruneMethod]:
    """Make `cls` selectable as `Prune(method=cls.name)`."""
    METHODS.register(cls.name, cls())
    return cls
