"""Pruning: magnitude, Wanda, SparseGPT (unstructured or N:M) and structured channel/head removal.

Order: after canonicalization, before quantization.  ``Prune(structure=None)`` zeroes
weights and stores linear layers compressed (``nm_linear`` for N:M, ``sparse_linear``
row-padded CSR where it pays off, otherwise dense with the sparsity reported);
``Prune(structure="channel" | "head")`` removes whole units and shrinks every coupled
tensor, leaving plain (smaller) linear/conv ops that later passes such as Quantize
consume unchanged.

Example:
    >>> import torch, bitpress as bp
    >>> m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    >>> x = torch.randn(16, 64)
    >>> cm = bp.compile(m, (x,), passes=[bp.passes.Prune(method="wanda", sparsity="2:4")], calibration=[(x,)])
    >>> cm.graph.find("0").op
    'nm_linear'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from bitpress.compiler.ir import Graph
from bitpress.compiler.pass_manager import PassContext, PassResult, register_pass, rewrite_pass
from bitpress.passes._common import SEQUENTIAL_MODES, as_patterns
from bitpress.passes.prune._method import METHODS
from bitpress.passes.prune.structured import find_groups, prune_structured
from bitpress.passes.prune.unstructured import PackConfig, pack_rules, prune_unstructured

__all__ = ["Prune", "find_groups", "pack_rules"]

_NM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@register_pass
@dataclass(frozen=True)
class Prune:
    """Prune weights (unstructured / N:M) or whole channels and attention heads.

    Args:
        method: "magnitude" | "wanda" | "sparsegpt" (structured: "magnitude" ranks units by
            weight norm, "wanda" by the calibration activation energy they feed forward).
        sparsity: fraction of weights (or of channels/heads) removed, or "N:M" (at most N
            nonzeros in every M consecutive input weights).
        structure: None (weights), "channel" or "head".
        allocation: per-layer sparsity: "uniform", "global" (one score threshold over all
            layers) or "sensitivity" (greedy on measured layer error under the global budget).
        format: "auto" (compressed storage where it stores fewer bytes) or "dense".
        exclude: fnmatch patterns of layer names left alone (e.g. "*lm_head*").
        reconstruct: structured only: refit the next layer by least squares on calibration data.
        sequential: calibrate each group of layers on the outputs of the groups already
            pruned: "block" (a transformer/residual block, as SparseGPT and Wanda do),
            "layer" (within a block too: o_proj sees pruned q/k/v, down_proj pruned gate/up),
            "none" (every layer on the unpruned model) or "auto" (default: "block" for
            SparseGPT, "layer" otherwise; measured best on SmolLM2, see benchmarks/RESULTS.md).
            True/False mean "block"/"none".
    """

    name: ClassVar[str] = "prune"
    method: str = "magnitude"
    sparsity: float | str = 0.5
    structure: str | None = None
    allocation: str = "uniform"
    format: str = "auto"
    exclude: tuple[str, ...] = ()
    min_params: int = 0
    reconstruct: bool = False
    round_to: int = 1
    block_size: int = 128
    damp: float = 0.01
    hessian_budget_mb: int = 512
    sequential: str | bool = "auto"
    allocation_range: float = 0.3
    max_layer_sparsity: float = 0.95
    blocksize: int | None = None  # the old name of block_size (Quantize's spelling), still accepted

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"Prune: method must be one of {list(METHODS)}, got {self.method!r}")
        if self.structure not in (None, "channel", "head"):
            raise ValueError(f"Prune: structure must be None, 'channel' or 'head', got {self.structure!r}")
        if self.allocation not in ("uniform", "global", "sensitivity"):
            raise ValueError(f"Prune: allocation must be 'uniform', 'global' or 'sensitivity', got {self.allocation!r}")
        if self.format not in ("auto", "dense"):
            raise ValueError(f"Prune: format must be 'auto' or 'dense', got {self.format!r}")
        object.__setattr__(self, "exclude", as_patterns(self.exclude))
        if self.blocksize is not None:
            object.__setattr__(self, "block_size", self.blocksize)
        if isinstance(self.sparsity, str):
            m = _NM.match(self.sparsity)
            if m is None:
                raise ValueError(f"Prune: sparsity must be a fraction in [0, 1) or 'N:M' like '2:4', got {self.sparsity!r}")
            n, mm = int(m.group(1)), int(m.group(2))
            if not (0 < n < mm <= 16):
                raise ValueError(f"Prune: sparsity {self.sparsity!r} needs 0 < N < M <= 16")
            if self.structure is not None:
                raise ValueError(f"Prune: sparsity {self.sparsity!r} (N:M) cannot be combined with structure={self.structure!r}")
        else:
            if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) or not 0.0 <= float(self.sparsity) < 1.0:
                raise ValueError(f"Prune: sparsity must be a fraction in [0, 1) or 'N:M', got {self.sparsity!r}")
            object.__setattr__(self, "sparsity", float(self.sparsity))
        if self.structure is not None and not METHODS[self.method].structured:
            structured = [k for k, m in METHODS.items() if m.structured]
            raise ValueError(f"Prune: method {self.method!r} is unstructured; use {' or '.join(map(repr, structured))} with structure=")
        if self.structure is None and self.reconstruct:
            raise ValueError("Prune: reconstruct=True applies to structured pruning only (SparseGPT reconstructs by itself)")
        if isinstance(self.sequential, bool):
            object.__setattr__(self, "sequential", "block" if self.sequential else "none")
        if self.sequential != "auto" and self.sequential not in SEQUENTIAL_MODES:
            raise ValueError(f"Prune: sequential must be 'auto', 'block', 'layer' or 'none', got {self.sequential!r}")
        if self.round_to < 1 or self.block_size < 1 or self.damp < 0 or self.hessian_budget_mb < 1:
            raise ValueError("Prune: round_to, block_size and hessian_budget_mb must be >= 1 and damp >= 0")

    @property
    def nm(self) -> tuple[int, int] | None:
        """(N, M) for an "N:M" sparsity, else None."""
        if isinstance(self.sparsity, str):
            m = _NM.match(self.sparsity)
            assert m is not None
            return int(m.group(1)), int(m.group(2))
        return None

    def apply(self, g: Graph, ctx: PassContext) -> PassResult:
        stats: dict[str, Any]
        if self.structure is not None:
            before = g.weight_bytes()
            groups = prune_structured(self, g, ctx)
            stats = {"groups_pruned": len(groups), "bytes_before": before, "bytes_after": g.weight_bytes()}
            return PassResult(g, bool(groups), stats)
        layers = prune_unstructured(self, g, ctx)
        stats = {"layers": len(layers)}
        if self.format != "dense" and layers:
            res = rewrite_pass(g, pack_rules, ctx=ctx, cfg=PackConfig(self.nm, self.format), name=self.name)
            stats["packed"] = res.stats.get("rewrites", 0)
        return PassResult(g, bool(layers), stats)
