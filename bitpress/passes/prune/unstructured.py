"""Unstructured and N:M pruning of linear / conv weights (magnitude, Wanda, SparseGPT).

Where it goes: after canonicalization (batch-norm folded into convs) and before
quantization.  For each selected layer the pass computes a new weight with the chosen
method, records the layer's error on the calibration rows (``sqnr_db``) and sparsity in
the node's meta, then packs linear layers into a compressed sparse op with the rules in
`pack_rules`:

* ``"N:M"`` -> ``nm_linear`` (values + packed in-group indices);
* a fraction -> ``sparse_linear`` (row-padded CSR) where that stores fewer bytes than the
  dense matrix, otherwise the layer stays a dense ``linear`` holding zeros and the report
  says so (``meta["format"] = "dense"``).

Convolutions keep dense storage (with zeros): there is no sparse conv kernel.

Calibration: Wanda and SparseGPT need it (``ctx.calibration``); magnitude does not, but
when data is present it is used to measure each layer's output error.  Hessians are
gathered group by group with `bitpress.compiler.calibrate.sequential`, each group
calibrated on the outputs of the groups already pruned, with the group inputs cached:
``sequential="block"`` (a transformer layer or residual block, as the SparseGPT
and Wanda reference code and llm-compressor do) or ``"layer"`` (the layers of a block that
share an input: q/k/v, then o, then gate/up, then down, so o_proj sees pruned q/k/v);
groups are split where their Hessians exceed `hessian_budget_mb`.  ``sequential="none"``
calibrates chunks of layers that fit the budget by re-running the graph from its inputs
(one chunk: every layer sees the dense model).  ``"auto"`` (default) is "block" for
SparseGPT and "layer" for Wanda and magnitude: on SmolLM2-135M at 2:4, Wanda gained from
"layer" (perplexity 128.6 -> 125.1) and SparseGPT lost (58.5 -> 61.1), one measurement
each (benchmarks/RESULTS.md, issue 5).

Per-layer sparsity (``allocation``): ``"uniform"`` (every layer at ``sparsity``),
``"global"`` (one threshold on the method's score across all layers), or
``"sensitivity"`` (each layer's output error measured at several sparsities; a greedy
allocation meets the global budget with the least summed relative error).

Requires: weights are constants.  Ensures: every pruned linear/conv has meta
``sparsity``, ``sqnr_db``, ``format``; N:M groups hold at most N nonzeros.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bitpress.compiler.builder import B, const
from bitpress.compiler.calibrate import block_key, collect, sequential
from bitpress.compiler.ir import Graph, Node, Value
from bitpress.compiler.pass_manager import PassContext
from bitpress.compiler.pattern import Pat, Reject, RuleSet, rule
from bitpress.formats.sparse import ell_bytes, ell_pays_off, encode_ell, encode_nm, is_nm_sparse
from bitpress.passes._common import hessian_chunks, layer_sqnr_db

# the methods register themselves on import, one file each (see _method.py), in this order
# isort: off
from bitpress.passes.prune import magnitude as _magnitude  # noqa: F401
from bitpress.passes.prune import wanda as _wanda  # noqa: F401
from bitpress.passes.prune import sparsegpt as _sparsegpt  # noqa: F401

# isort: on
from bitpress.passes.prune._algorithms import keep_mask, magnitude_scores, wanda_scores
from bitpress.passes.prune._method import METHODS

__all__ = ["PackConfig", "pack_rules", "prune_unstructured", "select_layers"]

PRUNABLE_OPS = ("linear", "conv2d", "conv1d")


def select_layers(g: Graph, exclude: Sequence[str], min_params: int) -> list[Node]:
    """The linear/conv nodes with constant weights that the pass may prune."""
    out = []
    for n in g.nodes:
        if n.op not in PRUNABLE_OPS or n.inputs[1] is None or not n.inputs[1].is_const:
            continue
        w = n.inputs[1]
        if not w.dtype.startswith("float") or w.numel < min_params:
            continue
        if n.op != "linear" and n.attrs.get("groups", 1) != 1:
            continue
        if any(fnmatch.fnmatchcase(n.name, p) for p in exclude):
            continue
        out.append(n)
    return out


def _matrix(n: Node) -> torch.Tensor:
    w = n.inputs[1]
    assert w is not None
    return w.value.reshape(w.shape[0], -1)


def _calibration_groups(nodes: list[Node], mode: str, budget_bytes: int) -> Callable[[Node], str]:
    """Group key per layer for `sequential`: its block (`block_key`), or in mode "layer" the
    layers of a block that read the same input (q/k/v, then o, then gate/up, then down);
    split wherever a group's Hessians would exceed the budget."""
    keys: dict[str, str] = {}
    cur: tuple[str, str] | None = None
    part, used = 0, 0
    for n in nodes:
        x = n.inputs[0]
        k = (block_key(n.name), x.name if mode == "layer" and x is not None else "")
        cost = _matrix(n).shape[1] ** 2 * 8
        if k != cur or used + cost > budget_bytes:
            cur, part, used = k, part + 1, 0
        keys[n.name] = f"{k[0]}#{part}"
        used += cost
    return lambda n: keys[n.name]


def _set_weight(g: Graph, n: Node, w_new: torch.Tensor) -> None:
    """Give `n` a new weight constant (the old one may be shared, e.g. tied embeddings)."""
    old = n.inputs[1]
    assert old is not None
    new = g.add_const(w_new.reshape(old.shape).to(old.value.dtype).contiguous(), old.name)
    n.replace_input(old, new)


def _scores(method: str, w: torch.Tensor, stats: Any) -> torch.Tensor:
    if method == "magnitude":
        return magnitude_scores(w)
    return wanda_scores(w, stats.sqsum)


def _allocate(cfg: Any, g: Graph, ctx: PassContext, nodes: list[Node]) -> dict[str, float]:
    """Per-layer sparsity for fractional targets (see the module docstring)."""
    target = float(cfg.sparsity)
    if cfg.allocation == "uniform" or not nodes:
        return {n.name: target for n in nodes}
    data = ctx.data()
    score_method = "magnitude" if cfg.method == "magnitude" or not data else "wanda"
    stats_all: dict[str, Any] = {}
    curves: dict[str, list[tuple[float, float]]] = {}
    if data and (score_method == "wanda" or cfg.allocation == "sensitivity"):
        sensitivity = cfg.allocation == "sensitivity"
        for chunk in hessian_chunks(nodes, cfg.hessian_budget_mb << 20):
            names = {n.name for n in chunk}
            st = collect(g, data, nodes=names, hessian=sensitivity)
            for n in chunk:
                s = st.get(n.name)
                if s is not None and sensitivity:
                    curves[n.name] = _error_curve(cfg, score_method, _matrix(n), s, target)
                    s.hessian = None  # only the error curve is kept
                stats_all[n.name] = s
    sizes = {n.name: _matrix(n).numel() for n in nodes}
    if cfg.allocation == "global":
        scores = {n.name: _scores(score_method, _matrix(n).float(), stats_all.get(n.name)).reshape(-1) for n in nodes}
        allv = torch.cat(list(scores.values()))
        k = int(allv.numel() * target)
        if k == 0:
            return {n.name: 0.0 for n in nodes}
        thr = allv.kthvalue(k).values
        return {name: min(float((s <= thr).float().mean()), cfg.max_layer_sparsity) for name, s in scores.items()}
    # sensitivity: greedy on relative error per pruned weight, levels every 5%
    for n in nodes:
        if n.name not in curves:
            curves[n.name] = _error_curve(cfg, "magnitude", _matrix(n), None, target)
    level = {name: 0 for name in curves}
    budget = target * sum(sizes.values())
    pruned = sum(curves[name][0][0] * sizes[name] for name in curves)
    while pruned < budget:
        best, best_cost = None, math.inf
        for name, curve in curves.items():
            i = level[name]
            if i + 1 >= len(curve):
                continue
            ds = (curve[i + 1][0] - curve[i][0]) * sizes[name]
            de = curve[i + 1][1] - curve[i][1]
            cost = de / max(ds, 1e-12)
            if cost < best_cost:
                best, best_cost = name, cost
        if best is None:
            break
        i = level[best]
        pruned += (curves[best][i + 1][0] - curves[best][i][0]) * sizes[best]
        level[best] = i + 1
    return {name: curves[name][level[name]][0] for name in curves}


def _error_curve(cfg: Any, method: str, w: torch.Tensor, stats: Any, target: float) -> list[tuple[float, float]]:
    """[(sparsity, relative output error)] at levels around `target`, every 5%."""
    lo = max(0.0, target - cfg.allocation_range)
    hi = min(cfg.max_layer_sparsity, target + cfg.allocation_range)
    levels = [round(lo + 0.05 * i, 4) for i in range(round((hi - lo) / 0.05) + 1)]
    h = stats.hessian if stats is not None else None
    scores = _scores(method, w.float(), stats) if method == "wanda" else magnitude_scores(w.float())
    curve = []
    for s in levels:
        w_new = w * keep_mask(scores, s, None, per_row=method == "wanda")
        db = layer_sqnr_db(w, w_new, h)
        curve.append((s, 0.0 if math.isinf(db) else 10 ** (-db / 10)))
    return curve


def prune_unstructured(cfg: Any, g: Graph, ctx: PassContext) -> dict[str, Any]:
    """Prune the selected layers in place (weights replaced); returns per-layer stats."""
    nodes = select_layers(g, cfg.exclude, cfg.min_params)
    if cfg.nm is not None:
        m_ = cfg.nm[1]
        keep = []
        for n in nodes:
            if _matrix(n).shape[1] % m_:
                ctx.explain.add(_event(n, f"input size {_matrix(n).shape[1]} is not a multiple of M={m_}"))
            else:
                keep.append(n)
        nodes = keep
    data = ctx.data()
    method = METHODS[cfg.method]
    if method.needs_data:
        data = ctx.require_calibration(f"prune ({cfg.method})")
    alloc = _allocate(cfg, g, ctx, nodes) if cfg.nm is None else {n.name: None for n in nodes}
    layers: dict[str, Any] = {}

    def prune_layer(n: Node, st: Any) -> None:
        if st is None and method.needs_data:
            ctx.explain.add(_event(n, "no calibration data reached this layer"))
            return
        w = _matrix(n)
        s = alloc[n.name]
        w_new = method.plan(cfg, w.float(), st, s).to(w.dtype)
        sq = layer_sqnr_db(w, w_new, st.hessian if st is not None else None)
        _set_weight(g, n, w_new)
        n.meta["sparsity"] = round(float((w_new == 0).float().mean()), 4)
        n.meta["sqnr_db"] = round(sq, 2) if math.isfinite(sq) else sq
        n.meta["prune"] = cfg.method + (f" {cfg.nm[0]}:{cfg.nm[1]}" if cfg.nm else "")
        n.meta["format"] = "dense"
        layers[n.name] = {"sparsity": n.meta["sparsity"], "sqnr_db": sq, "target": s}

    mode = cfg.sequential if cfg.sequential != "auto" else method.sequential
    if data and mode != "none":
        # each group is calibrated on the outputs of the groups already pruned
        names = {n.name for n in nodes}
        groups = _calibration_groups(nodes, mode, cfg.hessian_budget_mb << 20)
        for step in sequential(g, data, nodes=names, group=groups, hessian=True):
            for n in step.nodes:
                prune_layer(n, step.stats.get(n.name))
    else:
        for chunk in hessian_chunks(nodes, cfg.hessian_budget_mb << 20):
            stats: dict[str, Any] = {}
            if data:
                stats = collect(g, data, nodes={n.name for n in chunk}, hessian=True)
            for n in chunk:
                prune_layer(n, stats.get(n.name))
    g.prune_consts()
    return layers


def _event(n: Node, reason: str) -> Any:
    from bitpress.compiler.rewrite import ExplainEvent

    return ExplainEvent("prune", "prune-layer", n.name, n.op, "declined", reason)


# ----------------------------------------------------------------------------- packing rules


@dataclass(frozen=True)
class PackConfig:
    """How pruned linear layers are stored: `nm` for N:M, `format` "auto" | "dense" | "ell"."""

    nm: tuple[int, int] | None
    format: str = "auto"


@rule(Pat.op("linear", x=Pat.var(), w=Pat.const(ndim=2), b=Pat.any()), name="pack-nm-linear")
def pack_nm_linear(x: Value, w: Value, b: Value | None, *, node: Node, cfg: PackConfig) -> Value | Reject | None:
    """linear(x, W, b) -> nm_linear(x, values(W), indices(W), b)   when every M-group of W has <= N nonzeros"""
    if cfg.nm is None or "prune" not in node.meta or cfg.format == "dense":
        return None
    n, m = cfg.nm
    if not is_nm_sparse(w.value, n, m):
        return Reject(f"weight is not {n}:{m} sparse")
    values, idx, itype = encode_nm(w.value, n, m)
    y: Value = B.nm_linear(
        x, const(values, w.name + ".values"), const(idx, w.name + ".indices", itype), b, name=node.name, n=n, m=m, in_features=w.shape[1]
    )
    assert y.producer is not None
    y.producer.meta = dict(node.meta, format=f"{n}:{m}", params=int(values.numel()))
    return y


@rule(Pat.op("linear", x=Pat.var(), w=Pat.const(ndim=2), b=Pat.any()), name="pack-sparse-linear")
def pack_sparse_linear(x: Value, w: Value, b: Value | None, *, node: Node, cfg: PackConfig) -> Value | Reject | None:
    """linear(x, W, b) -> sparse_linear(x, values(W), cols(W), b)   when row-padded CSR stores fewer bytes than W"""
    if cfg.nm is not None or "prune" not in node.meta or cfg.format == "dense":
        return None
    if not ell_pays_off(w.value):
        dense = w.numel * w.value.element_size()
        return Reject(f"CSR would take {ell_bytes(w.value)} bytes >= dense {dense}; kept dense")
    values, cols = encode_ell(w.value)
    y: Value = B.sparse_linear(
        x, const(values, w.name + ".values"), const(cols, w.name + ".cols"), b, name=node.name, in_features=w.shape[1]
    )
    assert y.producer is not None
    y.producer.meta = dict(node.meta, format="csr", params=int((w.value != 0).sum()))
    return y


pack_rules = RuleSet([pack_nm_linear, pack_sparse_linear])
