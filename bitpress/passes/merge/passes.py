"""The merge passes: Merge (checkpoint merging), FoldLoRA (adapter fold-in), MergeLinearChain.

Where they go: Merge and FoldLoRA rewrite weights, so they run first among the user's
passes (compression passes then see the merged weights).  MergeLinearChain is an exact
structural rewrite and may run anywhere before compression.

How Merge finds a graph constant's parameter.  The torch frontend names each constant by
its parameter's FQN ("fc1.weight"), but canonicalization runs before user passes and
rewrites some of them: batch-norm folding turns conv1.weight into a new constant
conv1.weight_4 = W * gamma / sqrt(var + eps), which depends on five parameters, and
merging the folded constant is not the same as folding the merged parameters (var enters
non-linearly).  So Merge works in parameter space: it merges the state dicts, writes the
merged parameters into a copy of the graph as imported (`ctx.source_graph`), replays the
exact canonicalization on that copy, aligns the copy node by node with the current graph
and copies the constants across.  When a model is given as a torch module, the merged
state is loaded into a copy of it and re-traced instead, so parameters the frontend folded
into other constants at import (BERT's position embeddings gathered at constant indices)
are merged too; from state dicts alone such parameters are reported (strict=True).  The
replay of the *unmerged* source must reproduce the current constants bit for bit; if an
earlier pass changed a weight or the structure, Merge fails naming it rather than silently
overwriting that pass's work.

Requires: the models share the graph's parameter names and shapes; Merge runs before
passes that change weights.  Ensures: the graph equals the imported model with merged
parameters, canonicalized; per-layer meta "merge" (the method) and "sqnr_db" (the merged
weight against the weight it replaced).
"""

from __future__ import annotations

import copy
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from bitpress.compiler.builder import B, const
from bitpress.compiler.ir import Graph, Node, Value
from bitpress.compiler.pass_manager import PassContext, PassResult, register_pass, rewrite_pass, sqnr_db
from bitpress.compiler.pattern import Pat, Reject, RuleSet, rule
from bitpress.passes.merge._io import check_compatible, check_source, describe, load_state_dict
from bitpress.passes.merge._lora import LoRAAdapter, parse_lora
from bitpress.passes.merge._methods import METHODS, NEEDS_BASE, merge_state_dicts

__all__ = ["FoldLoRA", "Merge", "MergeLinearChain", "fold_lora_rules", "linear_chain_rules"]

_FLOAT = ("float32", "float16", "bfloat16", "float64")
DEFAULT_DENSITY = {"ties": 0.2, "dare": 0.5, "dare-ties": 0.5, "breadcrumbs": 0.9}


# ----------------------------------------------------------------------------- Merge


@register_pass
@dataclass(frozen=True)
class Merge:
    """Merge fine-tuned checkpoints of the compiled model's architecture into its weights.

    Args:
        models: fine-tuned models: torch modules, state dicts or .safetensors/.pt paths.
        base: the common pre-trained model for task-vector methods; None uses the compiled
            model's own weights.  Not used by average, greedy-soup and slerp.
        method: average | greedy-soup | task-arithmetic | ties | dare | dare-ties | breadcrumbs | slerp.
        density: fraction of each task vector kept (ties: top magnitudes; dare: keep
            probability, drop rate 1 - density; breadcrumbs: kept band).  Default per method:
            ties 0.2, dare 0.5, breadcrumbs 0.9.
        scale: lambda multiplying the merged task vector.
        weights: one per model (average: normalized; others: multiply each task vector).
        seed: DARE's random masks.
        outliers: breadcrumbs: fraction of largest-magnitude entries dropped.
        t: slerp: interpolation from models[0] (t=0) to models[1] (t=1).
        evaluate: greedy-soup: callable(state_dict) -> score, higher is better.
        strict: when Merge cannot re-trace (no torch module among `models`), fail on float
            parameters that are not constants of the imported graph (unused by forward(),
            or folded into other constants at import); False skips them.

    Example:
        >>> cm = bp.compile(base_model, (x,), passes=[bp.passes.Merge(models=[ft_a, ft_b], method="ties", density=0.2)])
    """

    name: ClassVar[str] = "merge"
    models: Sequence[Any]
    base: Any = None
    method: str = "average"
    density: float | None = None
    scale: float = 1.0
    weights: Sequence[float] | None = None
    seed: int = 0
    outliers: float = 0.01
    t: float = 0.5
    evaluate: Callable[[dict[str, torch.Tensor]], float] | None = field(default=None, compare=False)
    strict: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: unknown merge method {self.method!r}; known: {', '.join(METHODS)}")
        if isinstance(self.models, (str, os.PathLike, Mapping, torch.nn.Module)) or not isinstance(self.models, Sequence):
            raise ValueError("models: expected a list of models (modules, state dicts or checkpoint paths)")
        object.__setattr__(self, "models", tuple(self.models))
        if not self.models:
            raise ValueError("models: give at least one model to merge")
        for i, m in enumerate(self.models):
            check_source(m, f"models[{i}]")
        if self.base is not None:
            if self.method not in NEEDS_BASE:
                raise ValueError(f"base: method {self.method!r} does not use a base model; leave it out")
            check_source(self.base, "base")
        if self.method == "slerp" and len(self.models) != 2:
            raise ValueError(f"models: slerp merges exactly two models, got {len(self.models)}")
        if self.density is None:
            object.__setattr__(self, "density", DEFAULT_DENSITY.get(self.method, 1.0))
        d = float(self.density)  # type: ignore[arg-type]
        if not 0.0 < d <= 1.0:
            raise ValueError(f"density: must be in (0, 1], got {self.density}")
        if not 0.0 <= self.outliers < 1.0 or (self.method == "breadcrumbs" and self.outliers + d > 1.0):
            raise ValueError(f"outliers: must be in [0, 1) with outliers + density <= 1, got {self.outliers} (density {d})")
        if not math.isfinite(self.scale):
            raise ValueError(f"scale: must be finite, got {self.scale}")
        if not 0.0 <= self.t <= 1.0:
            raise ValueError(f"t: slerp interpolation must be in [0, 1], got {self.t}")
        if self.weights is not None:
            if self.method in ("greedy-soup", "slerp"):
                raise ValueError(f"weights: method {self.method!r} takes no weights")
            w = [float(x) for x in self.weights]
            if len(w) != len(self.models) or not all(math.isfinite(x) for x in w):
                raise ValueError(f"weights: need {len(self.models)} finite numbers (one per model), got {list(self.weights)}")
            if self.method == "average" and (min(w) < 0 or sum(w) <= 0):
                raise ValueError(f"weights: average needs non-negative weights with a positive sum, got {w}")
            object.__setattr__(self, "weights", tuple(w))
        if self.method == "greedy-soup" and not callable(self.evaluate):
            raise ValueError("evaluate: greedy-soup needs evaluate=<callable(state_dict) -> score, higher is better>")
        if not isinstance(self.seed, int):
            raise ValueError(f"seed: must be an int, got {self.seed!r}")

    def apply(self, g: Graph, ctx: PassContext) -> PassResult:
        source = ctx.source_graph if ctx.source_graph is not None else g
        models = [load_state_dict(m, describe(m, i)) for i, m in enumerate(self.models)]
        base = load_state_dict(self.base, "base") if self.base is not None else None
        names = [describe(m, i) for i, m in enumerate(self.models)]
        if base is not None:
            check_compatible(base, "base", list(zip(names, models, strict=True)))
            ref = base
        else:
            check_compatible(models[0], names[0], list(zip(names[1:], models[1:], strict=True)))
            ref = models[0]
        # With a module in hand, re-trace it with the merged state: parameters the frontend
        # folded into other constants at import (e.g. position embeddings gathered at constant
        # indices) are then merged too.  Without one, replay the merged parameters on the
        # imported graph, where such parameters cannot be found (strict fails on them).
        module = next((m for m in self.models if isinstance(m, torch.nn.Module)), None)
        retrace = module is not None and bool(ctx.example_inputs) and (base is not None or self.method not in NEEDS_BASE)
        keys, unused = _match_parameters(ref, models, source, strict=self.strict and not retrace)
        if base is None and self.method in NEEDS_BASE:
            base = {k: source.consts[k].value for k in keys}
        merged, stats = merge_state_dicts(
            models,
            base,
            method=self.method,
            weights=self.weights,
            density=float(self.density),  # type: ignore[arg-type]
            scale=self.scale,
            seed=self.seed,
            outliers=self.outliers,
            t=self.t,
            evaluate=self.evaluate,
            keys=list(ref) if retrace else keys,
        )
        if retrace:
            assert module is not None
            new_values = replay_graph(g, source, _retrace(module, merged, ctx.example_inputs))
        else:
            new_values = replay_parameters(g, source, {k: merged[k].to(source.consts[k].value.dtype) for k in keys})
        old = {name: g.store[name] for name in new_values}
        for name, t in new_values.items():
            g.set_const(g.consts[name], t)
        for node in g.nodes:
            changed = [v for v in node.inputs if v is not None and v.is_const and v.name in new_values]
            if changed:
                main = max(changed, key=lambda v: v.numel)
                node.meta["merge"] = self.method
                node.meta["sqnr_db"] = _json_db(sqnr_db(old[main.name], new_values[main.name]))
        stats = {"method": self.method, "parameters": len(merged), "constants_changed": len(new_values), "retraced": retrace, **stats}
        if unused:
            stats["parameters_not_in_graph"] = unused
        return PassResult(g, bool(new_values), stats)


def _json_db(x: float) -> float | str:
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def _match_parameters(
    ref: Mapping[str, torch.Tensor], models: Sequence[Mapping[str, torch.Tensor]], source: Graph, *, strict: bool
) -> tuple[list[str], list[str]]:
    """Float parameters that name a constant of the imported graph, and those that do not."""
    floats = [k for k, v in ref.items() if v.is_floating_point()]
    present = [k for k in floats if k in source.consts]
    shapes = [
        f"{k} {list(ref[k].shape)} vs graph {list(source.consts[k].shape)}"
        for k in present
        if tuple(ref[k].shape) != source.consts[k].shape
    ]
    if shapes:
        raise ValueError(f"models do not match the compiled model ({len(shapes)} shape difference(s)): " + "; ".join(shapes))
    if not present:
        sample = ", ".join(sorted(source.consts)[:5])
        raise ValueError(
            f"none of the models' {len(floats)} parameters name a constant of the graph (graph constants: {sample}, ...): a different architecture?"
        )
    absent = [k for k in floats if k not in source.consts and not _is_alias(k, present, ref, models)]
    if absent and strict:
        raise ValueError(
            f"{len(absent)} parameter(s) of the models are not constants of the compiled graph: {', '.join(absent)} "
            "(a different architecture, parameters forward() does not use, or parameters folded into other constants at import: "
            "pass the models as torch modules so Merge re-traces them, or strict=False to skip these)"
        )
    return present, absent


def _is_alias(k: str, present: Sequence[str], ref: Mapping[str, torch.Tensor], models: Sequence[Mapping[str, torch.Tensor]]) -> bool:
    """A tied parameter (e.g. lm_head.weight = embed.weight): equal to a used one in every model."""
    return any(ref[p].shape == ref[k].shape and all(torch.equal(m[p], m[k]) for m in [ref, *models]) for p in present)


def replay_parameters(g: Graph, source: Graph, updates: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """New values for `g`'s constants when the source graph's parameters take `updates`.

    Writes `updates` into a copy of `source` and hands it to `replay_graph`.
    """
    after = source.clone()
    for k, t in updates.items():
        after.set_const(after.consts[k], t)
    return replay_graph(g, source, after)


def replay_graph(g: Graph, before: Graph, after: Graph) -> dict[str, torch.Tensor]:
    """New values for `g`'s constants, `g` being `before` after canonicalization (or as is).

    `after` is `before` with other weights (same structure).  Replays canonicalization on
    both when `g` was canonicalized, aligns them with `g` node by node and returns {constant
    of g: new tensor} for the constants that change.  Fails, naming them, when `g`'s weights
    or structure were changed by a pass other than canonicalization.
    """
    from bitpress.passes.canonicalize import canonicalize_pipeline

    for canonicalized in (False, True):
        b, a = before.clone(), after.clone()
        if canonicalized:
            for p in canonicalize_pipeline():
                quiet = PassContext(quiet=True)
                b = p.apply(b, quiet).graph
                a = p.apply(a, quiet).graph
        m_before = _align(b, g)
        if m_before is None:
            continue
        m_after = _align(a, g)
        if m_after is None:
            raise ValueError(
                "the merged model's graph has another structure than the compiled one (a different architecture, or a merged scalar became 0 or 1)"
            )
        edited = [name for name, v in m_before.items() if not torch.equal(g.store[name], v.value)]
        if edited:
            shown = ", ".join(edited[:5]) + (f" (+{len(edited) - 5} more)" if len(edited) > 5 else "")
            raise ValueError(f"weights {shown} were changed by an earlier pass: put Merge/FoldLoRA before other weight-changing passes")
        return {name: v.value for name, v in m_after.items() if not torch.equal(g.store[name], v.value)}
    raise ValueError("the graph no longer has the imported model's structure (an earlier pass rewrote it): put Merge before other passes")


def _retrace(module: torch.nn.Module, state: Mapping[str, torch.Tensor], example_inputs: tuple[torch.Tensor, ...]) -> Graph:
    """Import a copy of `module` holding `state`: constants the frontend folded from parameters are recomputed."""
    from bitpress.compiler.frontend import import_module

    m = copy.deepcopy(module)
    m.load_state_dict(dict(state), strict=True)
    return import_module(m.eval(), example_inputs)


def _align(a: Graph, b: Graph) -> dict[str, Value] | None:
    """Map each constant of `b` to the constant of `a` at the same place, if the graphs have the same structure."""
    an, bn = list(a.nodes), list(b.nodes)
    if len(an) != len(bn) or len(a.inputs) != len(b.inputs) or len(a.outputs) != len(b.outputs):
        return None
    key: dict[int, tuple[Any, ...]] = {}
    for i, (u, v) in enumerate(zip(a.inputs, b.inputs, strict=True)):
        if u.type != v.type:
            return None
        key[id(u)] = key[id(v)] = ("input", i)
    mapping: dict[str, Value] = {}

    def same(u: Value | None, v: Value | None) -> bool:
        if u is None or v is None:
            return u is v
        if u.is_const or v.is_const:
            return u.is_const and v.is_const and u.type == v.type and mapping.setdefault(v.name, u) is u
        return id(u) in key and key.get(id(u)) == key.get(id(v))

    for j, (x, y) in enumerate(zip(an, bn, strict=True)):
        if x.op != y.op or len(x.inputs) != len(y.inputs) or x.attrs != y.attrs or len(x.outputs) != len(y.outputs):
            return None
        if not all(same(u, v) for u, v in zip(x.inputs, y.inputs, strict=True)):
            return None
        for k, (u, v) in enumerate(zip(x.outputs, y.outputs, strict=True)):
            key[id(u)] = key[id(v)] = ("node", j, k)
    if not all(same(u, v) for u, v in zip(a.outputs, b.outputs, strict=True)):
        return None
    return mapping


# ----------------------------------------------------------------------------- LoRA fold-in


@dataclass(frozen=True)
class LoRAConfig:
    """The adapters a FoldLoRA run folds, by the name of the weight they adapt."""

    adapters: Mapping[str, LoRAAdapter]


_DERIVED = re.compile(r"_\d+$")


@rule(Pat.op("linear", x=Pat.var(), w=Pat.const(ndim=2, dtype=_FLOAT), b=Pat.any()), name="fold-lora-linear")
def fold_lora_linear(x: Value, w: Value, b: Value | None, *, cfg: LoRAConfig, node: Node) -> Value | Reject | None:
    """linear(x, W, b) -> linear(x, W + s B A, b)"""
    if "lora_rank" in node.meta:
        return None  # already folded (its new constant is named W_<n>)
    ad = cfg.adapters.get(w.name)
    if ad is None:
        origin = _DERIVED.sub("", w.name)
        if origin in cfg.adapters:
            return Reject(
                f"%{w.name} was derived from {origin} by an earlier rewrite (e.g. batch-norm folding); fold the adapter into the state dict first (fold_lora_state_dict)"
            )
        return None
    if tuple(w.shape) != (ad.b.shape[0], ad.a.shape[1]):
        return Reject(f"weight {list(w.shape)} but B @ A is {[ad.b.shape[0], ad.a.shape[1]]}")
    new = (w.value.double() + ad.delta()).to(w.value.dtype)
    out: Value = B.linear(x, const(new, w.name), b, name=node.name)
    assert out.producer is not None
    out.producer.meta.update(node.meta)
    out.producer.meta.update({"lora_rank": ad.rank, "lora_from": ad.target, "sqnr_db": _json_db(sqnr_db(w.value, new))})
    return out


fold_lora_rules = RuleSet([fold_lora_linear])


@register_pass
@dataclass(frozen=True)
class FoldLoRA:
    """Fold LoRA adapters into the linear weights they adapt: W <- W + scale * B @ A.

    Args:
        adapters: a state dict, module or .safetensors/.pt path holding `<module>.lora_A[.name].weight`
            [r, in] and `<module>.lora_B[.name].weight` [out, r] (PEFT; also kohya's lora_down/lora_up).
        scale: the multiplier s (default 1).
        alpha: PEFT's lora_alpha: s = alpha / r per adapter (give scale or alpha, not both).

    Requires: each adapted weight is a linear's constant still named by its parameter
    (run FoldLoRA first; a weight rewritten by batch-norm folding is declined, with the
    reason in the explain log).  Ensures: every adapter was folded, or a ValueError lists
    those that were not; the rewritten layers carry meta "lora_rank" and "sqnr_db"
    (the folded weight against the base weight).

    Example:
        >>> cm = bp.compile(base_model, (x,), passes=[bp.passes.FoldLoRA("adapter_model.safetensors", alpha=16)])
    """

    name: ClassVar[str] = "fold-lora"
    adapters: Any
    scale: float | None = None
    alpha: float | None = None

    def __post_init__(self) -> None:
        check_source(self.adapters, "adapters")
        if self.scale is not None and self.alpha is not None:
            raise ValueError("scale: give either scale= or alpha= (scale = alpha / r), not both")
        for key in ("scale", "alpha"):
            v = getattr(self, key)
            if v is not None and not math.isfinite(v):
                raise ValueError(f"{key}: must be finite, got {v}")

    def apply(self, g: Graph, ctx: PassContext) -> PassResult:
        adapters = parse_lora(load_state_dict(self.adapters, "adapters"), scale=self.scale, alpha=self.alpha)
        first = len(ctx.explain.events)
        res = rewrite_pass(g, fold_lora_rules, ctx=ctx, cfg=LoRAConfig(adapters), name=self.name)
        done = {n.meta["lora_from"] for n in g.nodes if "lora_from" in n.meta}
        missing = [k for k in adapters if k not in done]
        if missing:
            why = {e.reason for e in ctx.explain.events[first:] if e.outcome == "declined" and e.rule == "fold-lora-linear"}
            raise ValueError(
                f"{len(missing)} adapter(s) matched no linear weight of the graph: {', '.join(missing)}"
                + (f" ({'; '.join(sorted(why))})" if why else "")
            )
        return PassResult(res.graph, res.modified, {"adapters": len(adapters), **res.stats})


# ----------------------------------------------------------------------------- exact structural merge


@dataclass(frozen=True)
class LinearChainConfig:
    allow_growth: bool = False


_CHAIN = Pat.op(
    "linear",
    x=Pat.op("linear", bind="h", x=Pat.var("x0"), w=Pat.const("w1", ndim=2, dtype=_FLOAT), b=Pat.any("b1")),
    w=Pat.const("w2", ndim=2, dtype=_FLOAT),
    b=Pat.any("b2"),
)


@rule(_CHAIN, name="merge-linear-linear")
def merge_linear_linear(
    h: Value, x0: Value, w1: Value, b1: Value | None, w2: Value, b2: Value | None, *, cfg: LinearChainConfig, node: Node
) -> Value | Reject:
    """linear(linear(x, W1, b1), W2, b2) -> linear(x, W2 W1, W2 b1 + b2)"""
    # Sound because nothing non-linear sits between the two: (W1 x + b1) W2^T + b2 regroups exactly.
    if len(h.users) != 1 or any(o is h for o in h.producer.graph.outputs):  # type: ignore[union-attr]
        return Reject("the inner linear's output has other users")
    if (b1 is not None and not b1.is_const) or (b2 is not None and not b2.is_const):
        return Reject("a bias is not a constant")
    o, mid = w2.shape
    i = w1.shape[1]
    if o * i > mid * (i + o) and not cfg.allow_growth:
        return Reject(
            f"the merged weight [{o},{i}] has more parameters than the chain ({mid}*({i}+{o})): the chain is a cheaper factorization"
        )
    dtype = w2.value.dtype
    wm = w2.value.double() @ w1.value.double()
    bias = None
    if b1 is not None or b2 is not None:
        bm = torch.zeros(o, dtype=torch.float64)
        if b1 is not None:
            bm = bm + w2.value.double() @ b1.value.double()
        if b2 is not None:
            bm = bm + b2.value.double()
        bias = const(bm.to(dtype), node.name + ".bias")
    out: Value = B.linear(x0, const(wm.to(dtype), node.name + ".weight"), bias, name=node.name)
    assert out.producer is not None and h.producer is not None
    out.producer.meta["merged_from"] = [h.producer.name, node.name]
    return out


linear_chain_rules = RuleSet([merge_linear_linear])


@register_pass
@dataclass(frozen=True)
class MergeLinearChain:
    """Fold consecutive linear layers with nothing non-linear between them into one (exact).

    Declines (explain log) when the inner output has other users, or when the merged weight
    would have more parameters than the two factors (set allow_growth=True to merge anyway).
    Run canonicalization first so identities and inference dropout between them are gone.
    """

    name: ClassVar[str] = "merge-linear-chain"
    allow_growth: bool = False

    def apply(self, g: Graph, ctx: PassContext) -> PassResult:
        return rewrite_pass(g, linear_chain_rules, ctx=ctx, cfg=LinearChainConfig(self.allow_growth), name=self.name)
