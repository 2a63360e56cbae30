"""Low-rank factorization (`LowRank`) and low-rank error compensation (`Compensate`).

`LowRank` replaces `linear(x, W, b)` by two real thin linears `linear(linear(x, A), B, b)`
(both stay quantizable).  Plain SVD truncates W; activation-aware SVD truncates W S where
S S^T is the calibration input covariance, so it minimizes output error.  Ranks come from
a ratio (float, of min(in, out)), an absolute int, an energy threshold, or a global
parameter budget allocated by measured sensitivity.  Place it before quantization.

`Compensate` runs after quantization/pruning/binarization: for each node whose dense
weight can be rebuilt (`dense.py`), it adds `linear(linear(x, A), B)` with B A the
best rank-r approximation of the residual W - W_compressed in the activation-weighted
space (EoRA / LoRC).

Requires: constant 2-D weights; calibration (or example) inputs for "asvd"/Compensate.
Ensures: a factored layer holds fewer parameters than before; per-layer meta "rank",
"params" and "sqnr_db" (output SQNR on the calibration inputs).
Does not handle: conv layers, weights shared with another node (tied embeddings).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from bitpress.compiler.builder import B, const, emit
from bitpress.compiler.calibrate import collect
from bitpress.compiler.ir import Graph, Node, Value
from bitpress.compiler.pass_manager import PassContext, PassResult, register_pass, rewrite_pass
from bitpress.compiler.pattern import Pat, Reject, Rule, RuleSet, rule
from bitpress.formats.dense import dense_weight, dense_weight_ops
from bitpress.passes._common import excluded, layer_sqnr_db, shared_weight
from bitpress.passes.lowrank import _factor as lr

__all__ = ["Compensate", "LowRank", "compensate_rules", "lowrank_rules"]


def _float_weight(v: Value) -> bool:
    return v.dtype in ("float32", "float16", "bfloat16", "float64")


def _set_meta(v: Value, **meta: Any) -> None:
    assert v.producer is not None
    v.producer.meta.update({k: x for k, x in meta.items() if x is not None})


# ----------------------------------------------------------------------------- factor-linear


@dataclass(frozen=True)
class LowRankPlan:
    """What the rule reads: the pass options plus per-layer ranks and input covariances."""

    method: str
    rank: float | int | None
    energy: float | None
    exclude: tuple[str, ...]
    damp: float
    ranks: Mapping[str, int] = field(default_factory=dict)
    hessians: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def rank_for(self, name: str, w: torch.Tensor, wh: lr.Whitening | None) -> int:
        if name in self.ranks:
            return self.ranks[name]
        if self.energy is not None:
            return lr.rank_for_energy(lr.singular_values(w, wh), self.energy)
        assert self.rank is not None
        if isinstance(self.rank, float):
            return max(1, round(self.rank * min(w.shape)))
        return int(self.rank)


@rule(Pat.op("linear", x=Pat.var(), w=Pat.const(ndim=2, where=_float_weight), b=Pat.any()), name="factor-linear")
def factor_linear(x: Value, w: Value, b: Value | None, *, node: Node, cfg: LowRankPlan) -> Value | Reject | None:
    """linear(x, W, b) -> linear(linear(x, A), B, b)   with W ~= B A at rank r (SVD of W, or of W S for asvd)"""
    if node.meta.get("rank") is not None:
        return None  # already a factor
    if excluded(node.name, cfg.exclude):
        return Reject("excluded by the pass options")
    if shared_weight(w, node):
        return Reject("weight shared with another node")
    h = cfg.hessians.get(node.name)
    if cfg.method == "asvd" and h is None:
        return Reject("no calibration statistics reached this layer")
    wh = lr.whitening(h, cfg.damp) if cfg.method == "asvd" else None
    out_f, in_f = w.shape
    r = min(cfg.rank_for(node.name, w.value, wh), out_f, in_f)
    if r * (out_f + in_f) >= out_f * in_f:
        return Reject(f"rank {r} does not shrink {list(w.shape)} ({r * (out_f + in_f)} >= {out_f * in_f} parameters)")
    a, bm = lr.factor(w.value, r, wh)
    sq = layer_sqnr_db(w.value, bm.double() @ a.double(), h, 3)
    inner = B.linear(x, const(a, w.name + ".lowrank_a"), None, name=node.name + ".lowrank_a")
    _set_meta(inner, rank=r, sqnr_db=sq)
    y = B.linear(inner, const(bm, w.name + ".lowrank_b"), b, name=node.name)
    _set_meta(y, rank=r, sqnr_db=sq)
    return y


lowrank_rules = RuleSet([factor_linear])


_METHODS = ("svd", "asvd")


@register_pass
@dataclass(frozen=True)
class LowRank:
    """Factor linear layers into two thin linears (truncated SVD or activation-aware SVD).

    Args:
        method: "svd" (weight error) or "asvd" (output error: whitened by the input covariance).
        rank: float = fraction of min(in, out), int = absolute rank (used when no energy/budget).
        energy: keep the smallest rank holding this fraction of sum(sigma^2) per layer.
        budget: global: keep this fraction of the factorable layers' parameters, ranks by sensitivity.
        exclude: fnmatch patterns of node names to leave alone.

    Example:
        >>> cm = bp.compile(model, (x,), passes=[bp.passes.LowRank(method="asvd", rank=0.25)], calibration=[(x,)])
    """

    name: ClassVar[str] = "low-rank"
    method: str = "svd"
    rank: float | int | None = 0.25
    energy: float | None = None
    budget: float | None = None
    exclude: tuple[str, ...] = ()
    damp: float = 0.01

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(f"low-rank: unknown method {self.method!r}; choose one of {', '.join(_METHODS)}")
        if self.energy is not None and self.budget is not None:
            raise ValueError("low-rank: give either energy or budget, not both")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise ValueError(f"low-rank: energy must be in (0, 1], got {self.energy}")
        if self.budget is not None and not 0.0 < self.budget < 1.0:
            raise ValueError(f"low-rank: budget must be in (0, 1), got {self.budget}")
        if self.energy is None and self.budget is None:
            r = self.rank
            if isinstance(r, bool) or not isinstance(r, (int, float)):
                raise ValueError(f"low-rank: rank must be a float fraction or an int, got {r!r}")
            if isinstance(r, float) and not 0.0 < r <= 1.0:
                raise ValueError(f"low-rank: a float rank is a fraction of min(in, out) in (0, 1], got {r}")
            if isinstance(r, int) and r < 1:
                raise ValueError(f"low-rank: rank must be >= 1, got {r}")
        if not isinstance(self.exclude, tuple):
            object.__setattr__(self, "exclude", tuple(self.exclude))

    def _candidates(self, g: Graph) -> list[Node]:
        out = []
        for n in g.nodes:
            w = n.inputs[1] if n.op == "linear" and len(n.inputs) > 1 else None
            if w is None or not w.is_const or w.ndim != 2 or not _float_weight(w) or n.meta.get("rank") is not None:
                continue
            if excluded(n.name, self.exclude) or shared_weight(w, n):
                continue
            out.append(n)
        return out

    def apply(self, g: Graph, ctx: PassContext) -> PassResult:
        cands = self._candidates(g)
        hessians: dict[str, torch.Tensor] = {}
        if self.method == "asvd":  # plain SVD (also with a budget) needs no statistics
            names = {n.name for n in cands}
            data = ctx.require_calibration(self.name)
            stats = collect(g, data, lambda n: n.name in names, hessian=True)
            hessians = {k: s.hessian_mean() for k, s in stats.items() if s.hessian is not None}
        ranks: dict[str, int] = {}
        if self.budget is not None:
            spectra = {}
            for n in cands:
                w = n.inputs[1]
                assert w is not None
                wh = lr.whitening(hessians.get(n.name), self.damp) if self.method == "asvd" else None
                spectra[n.name] = (lr.singular_values(w.value, wh), w.shape[0], w.shape[1])
            ranks = lr.allocate_budget(spectra, self.budget)
        plan = LowRankPlan(self.method, self.rank, self.energy, self.exclude, self.damp, ranks, hessians)
        res = rewrite_pass(g, lowrank_rules, ctx=ctx, cfg=plan, name=self.name)
        if ranks:
            res.stats["ranks"] = dict(ranks)
        return res


# ----------------------------------------------------------------------------- compensate


@dataclass(frozen=True)
class CompensatePlan:
    rank: float | int
    method: str
    damp: float
    exclude: tuple[str, ...]
    reference: Mapping[str, torch.Tensor]
    hessians: Mapping[str, torch.Tensor]


def _compensate(x: Value, *, node: Node, cfg: CompensatePlan) -> Value | Reject | None:
    """op(x, Wq...) -> op(x, Wq...) + linear(linear(x, A), B)   with B A ~= (W - Wq) at rank r in the activation-weighted space"""
    if node.meta.get("compensated") is not None:
        return None
    if excluded(node.name, cfg.exclude):
        return Reject("excluded by the pass options")
    wq = dense_weight(node)
    if wq is None:
        return Reject("weights are not constants")
    w = cfg.reference.get(node.name)
    if w is None or tuple(w.shape) != tuple(wq.shape):
        return Reject("no original layer of the same shape to compensate towards")
    if x.shape[-1] != wq.shape[1] or tuple(node.outputs[0].shape) != (*x.shape[:-1], wq.shape[0]):
        return Reject(f"output {list(node.outputs[0].shape)} is not x @ W^T for W {list(wq.shape)}")
    resid = w.double() - wq.double()
    if not bool(resid.abs().max() > 0):
        return Reject("no compression error to compensate")
    out_f, in_f = wq.shape
    r = max(1, round(cfg.rank * min(out_f, in_f))) if isinstance(cfg.rank, float) else min(int(cfg.rank), out_f, in_f)
    h = cfg.hessians.get(node.name)
    wh = lr.whitening(h, cfg.damp) if cfg.method == "asvd" else None
    a, bm = lr.factor(resid.float(), r, wh)
    before = layer_sqnr_db(w, wq, h, 3)
    after = layer_sqnr_db(w, wq.double() + bm.double() @ a.double(), h, 3)
    main = emit(node.op, *node.inputs, name=node.name, **node.attrs)
    assert main.producer is not None
    main.producer.meta.update(node.meta)
    main.producer.meta.update(compensated=r, sqnr_db=after, sqnr_db_uncompensated=before)
    corr = B.linear(x, const(a.to(torch.float32), node.name + ".comp_a.weight"), None, name=node.name + ".comp_a")
    corr = B.linear(corr, const(bm.to(torch.float32), node.name + ".comp_b.weight"), None, name=node.name + ".comp_b")
    _set_meta(corr, rank=r)
    assert corr.producer is not None and corr.producer.inputs[0] is not None and corr.producer.inputs[0].producer is not None
    corr.producer.inputs[0].producer.meta["rank"] = r
    return B.add(main, corr, name=node.name + ".compensated")


def compensate_rules(ops: tuple[str, ...] | None = None) -> RuleSet:
    """The compensation rule over every op with a registered dense weight (built when the pass runs)."""
    ops = ops or dense_weight_ops()
    r: Rule = rule(Pat.op(ops, Pat.var("x")), name="compensate-residual")(_compensate)
    return RuleSet([r])


def reference_weights(ctx: PassContext) -> dict[str, torch.Tensor]:
    """Weights of the uncompressed model after canonicalization (batch-norm folded), by node name."""
    src = ctx.source_graph
    if src is None:
        return {}

    def compute() -> dict[str, torch.Tensor]:
        from bitpress.passes.canonicalize import canonicalize_pipeline

        g = src.clone()
        quiet = PassContext(example_inputs=ctx.example_inputs)
        for p in canonicalize_pipeline():
            g = p.apply(g, quiet).graph
        out = {}
        for n in g.nodes:
            w = dense_weight(n)
            if w is not None:
                out[n.name] = w
        return out

    return ctx.analysis("bitpress.lowrank.reference-weights", src, compute)


@register_pass
@dataclass(frozen=True)
class Compensate:
    """Add a rank-r correction of each compressed layer's residual (after quantize/prune/binarize).

    Args:
        rank: int rank, or float fraction of min(in, out).
        method: "asvd" (activation-weighted residual, default; EoRA) or "svd" (weight residual; LoRC).

    Example:
        >>> passes = [bp.passes.Quantize(method="rtn", bits=3), bp.passes.Compensate(rank=16)]
    """

    name: ClassVar[str] = "compensate"
    rank: float | int = 16
    method: str = "asvd"
    damp: float = 0.01
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(f"compensate: unknown method {self.method!r}; choose one of {', '.join(_METHODS)}")
        r = self.rank
        if isinstance(r, bool) or not isinstance(r, (int, float)) or r <= 0 or (isinstance(r, float) and r > 1.0):
            raise ValueError(f"compensate: rank must be an int >= 1 or a fraction in (0, 1], got {r!r}")
        if not isinstance(self.exclude, tuple):
            object.__setattr__(self, "exclude", tuple(self.exclude))

    def apply(self, g: Graph, ctx: PassContext) -> PassResult:
        ops = dense_weight_ops()
        ref = reference_weights(ctx)
        if not ref:
            raise ValueError("compensate: needs the uncompressed model (run it inside bp.compile, which keeps the source graph)")
        hessians: dict[str, torch.Tensor] = {}
        if self.method == "asvd":
            data = ctx.require_calibration(self.name)
            want = {n.name for n in g.nodes if n.op in ops and n.name in ref and n.meta.get("compensated") is None}
            stats = collect(g, data, lambda n: n.name in want, hessian=True)
            hessians = {k: s.hessian_mean() for k, s in stats.items() if s.hessian is not None}
        plan = CompensatePlan(self.rank, self.method, self.damp, self.exclude, ref, hessians)
        return rewrite_pass(g, compensate_rules(ops), ctx=ctx, cfg=plan, name=self.name)
