"""Structured pruning: remove whole channels / neurons / attention heads and shrink every coupled tensor.

A *segment* ``(value, dim, offset, unit, count)`` says that unit ``u`` of a group covers
elements ``[offset + u*unit, offset + (u+1)*unit)`` of ``value`` along ``dim``.  Starting
from each prunable layer's output channels (``structure="channel"``) or from each
projection that a reshape splits into heads (``structure="head"``), segments are carried
through every op that touches them (elementwise ops with broadcasting, residual adds,
batch-/layer-norm, pooling, reshapes/flatten/transpose with the unit rescaled, concat
with offsets, matmul, attention, the next layer's input columns) and the couplings become
edges of a networkx graph; its connected components are the groups.  A group is pruned
only if every segment in it is understood and no segment touches a graph input or output;
otherwise the reason goes to the explain log.

Removing a unit slices every constant in its group (weights, biases, norm parameters),
re-types every activation, and rewrites shape attributes (reshape targets, normalized
shapes).  Importance is the group's weight magnitude (each segment's per-unit L2 norm,
mean-normalised, summed) or, with calibration data, the output energy each unit feeds
into the next layers (sum_j ||W[:, j]||^2 E[x_j^2]).  Optionally the next layer is
refit by least squares on the calibration inputs: W' = W H[:, K] (H[K, K])^-1.

Does not handle: grouped/depthwise convs, split, data-dependent indexing.  Layer norm
over pruned channels is coupled (its parameters and normalized_shape shrink) but its
statistics then cover fewer channels, which is approximate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import networkx as nx
import torch

from bitpress.compiler.calibrate import collect
from bitpress.compiler.ir import Graph, Node, Value
from bitpress.compiler.ops import get_op
from bitpress.compiler.pass_manager import CompileError, PassContext
from bitpress.compiler.rewrite import ExplainEvent
from bitpress.passes._common import layer_sqnr_db
from bitpress.passes.prune.unstructured import select_layers

__all__ = ["Group", "Segment", "find_groups", "prune_structured"]


@dataclass(frozen=True, order=True)
class Segment:
    """Unit u of a group covers [offset + u*unit, offset + (u+1)*unit) of `value` along `dim`."""

    value: str
    dim: int
    offset: int
    unit: int
    count: int

    def indices(self, units: Iterable[int]) -> list[int]:
        return [self.offset + u * self.unit + t for u in units for t in range(self.unit)]


@dataclass
class Group:
    """A connected component of coupled segments; `blocked` says why it cannot be pruned."""

    segments: list[Segment]
    count: int
    blocked: str | None = None

    def names(self) -> set[str]:
        return {s.value for s in self.segments}

    def label(self, g: Graph) -> str:
        """The group's name in logs: the first layer whose output units it removes."""
        for n in g.nodes:
            w = n.inputs[1] if n.op in ("linear", "conv2d", "conv1d") and len(n.inputs) > 1 else None
            if w is not None and any(s.value == w.name and s.dim == 0 for s in self.segments):
                return n.name
        return self.segments[0].value


class _Block(Exception):
    pass


_ELEMENTWISE = {
    "add", "sub", "mul", "div", "pow", "maximum", "minimum", "where", "neg", "exp", "log", "sqrt", "rsqrt",
    "abs", "sin", "cos", "tanh", "sigmoid", "relu", "silu", "erf", "reciprocal", "hardswish", "hardsigmoid",
    "sign", "floor", "ceil", "round", "identity", "gelu", "leaky_relu", "elu", "softplus", "clamp", "cast",
    "dropout", "expand", "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_not",
    "masked_fill",
}  # fmt: skip
_RESHAPES = {"reshape", "flatten", "unsqueeze", "squeeze"}
_POOLS = {"max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"}
_REDUCE = {"mean", "sum", "amax"}
# logical axes of attention operands by dim counted from the end
_SDPA_AXES: dict[str, dict[int, str]] = {
    "q": {-1: "E", -2: "L", -3: "H"},
    "k": {-1: "E", -2: "S", -3: "H"},
    "v": {-1: "Ev", -2: "S", -3: "H"},
    "out": {-1: "Ev", -2: "L", -3: "H"},
    "mask": {-1: "S", -2: "L", -3: "H"},
}


def _norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _seg(v: Value, dim: int, like: Segment, offset: int | None = None, unit: int | None = None) -> tuple[Value, Segment]:
    return v, Segment(v.name, dim, like.offset if offset is None else offset, like.unit if unit is None else unit, like.count)


def _reshape_map(a: tuple[int, ...], b: tuple[int, ...], s: Segment, v: Value) -> tuple[Value, Segment]:
    """Carry a segment on dim s.dim of shape `a` through a row-major reshape to `b`."""
    span = math.prod(a[s.dim :])
    inner = math.prod(a[s.dim + 1 :])
    cands = [e for e in range(len(b)) if math.prod(b[e:]) == span]
    if not cands:
        raise _Block(f"reshape {list(a)} -> {list(b)} mixes the pruned dim with outer dims")
    e = max(cands)
    inner_out = math.prod(b[e + 1 :])
    if (s.offset * inner) % inner_out or (s.unit * inner) % inner_out:
        raise _Block(f"reshape {list(a)} -> {list(b)} splits a pruning unit of {s.unit}")
    return _seg(v, e, s, s.offset * inner // inner_out, s.unit * inner // inner_out)


def _broadcast(operands: list[Value], src: Value, s: Segment) -> list[tuple[Value, Segment]]:
    r = s.dim - src.ndim
    size = src.shape[s.dim]
    out = []
    for o in operands:
        if o is src:
            continue
        d = o.ndim + r
        if d < 0 or o.shape[d] == 1:
            continue
        if o.shape[d] != size:
            raise _Block(f"operand %{o.name} has size {o.shape[d]} on the pruned dim, not {size}")
        out.append(_seg(o, d, s))
    return out


def _at(node: Node, v: Value, s: Segment) -> tuple[str, list[Value | None], Value, bool, int]:
    """(op, inputs, output, whether `v` is an output, the pruned dim): what every _PROPAGATE rule reads."""
    return node.op, node.inputs, node.outputs[0], any(v is o for o in node.outputs), s.dim


def _through_elementwise(node: Node, v: Value, s: Segment) -> list[tuple[Value, Segment]]:
    _op, ins, out, _is_out, _d = _at(node, v, s)
    return _broadcast([x for x in ins if x is not None] + [out], v, s)


def _through_batch_norm(node: Node, v: Value, s: Segment) -> list[tuple[Value, Segment]]:
    _op, ins, out, is_out, d = _at(node, v, s)
    if d != 1:
        return [_seg(out if not is_out else ins[0], d, s)]  # type: ignore[arg-type]
    return [_seg(x, 0 if x.ndim == 1 else 1, s) for x in [*ins, out] if x is not None and x is not v]


def _through_layer_norm(node: Node, v: Value, s: Segment) -> list[tuple[Value, Segment]]:
    op, ins, out, is_out, d = _at(node, v, s)
    x = ins[0]
    assert x is not None
    ns = node.attrs.get("normalized_shape") or [x.shape[-1]]
    if v is not x and not is_out:  # a parameter
        d = x.ndim - len(ns) + d
    other = [_seg(t, d, s) for t in (x, out) if t is not v]
    if d >= x.ndim - len(ns):
        if len(ns) != 1:
            raise _Block(f"{op} over {len(ns)} dims")
        other += [_seg(p, 0, s) for p in ins[1:] if p is not None and p is not v]
    return other


def _through_pool(node: Node, v: Value, s: Segment) -> list[tuple[Value, Segment]]:
    op, ins, out, is_out, d = _at(node, v, s)
    if d > 1:
        raise _Block(f"{op} pools over the pruned dim")
    return [_seg(out if not is_out else ins[0], d, s)]  # type: ignore[arg-type]


def _through_softmax(node: Node, v: Value, s: Segment) -> list[tuple[Value, Segment]]:
    op, ins, out, is_out, d = _at(node, v, s)
    if d == _norm_dim(node.attrs.get("dim", -1), v.ndim):
        raise _Block(f"{op} normalizes over the pruned dim")
    return [_seg(out if not is_out else ins[0], d, s)]  # type: ignore[arg-type]


def _through_reshape(node: Node, v: Value, s: Segment) -> list[tuple[Value, Segment]]:
    _op, ins, out, is_out, _d = _at(node, v, s)
    x = ins[0]
    assert x is not None
    return [_reshape_map(x.shape, out.shape, s, out)] if not is_out else [_reshape_map(out.shape, x.shape, s, x)]


def _through_transpose(node: Node, v: Value, s: Segment) -> list[tuple[Value, Segment]]:
    op, ins, out, is_out, d = _at(node, v, s)
    x = ins[0]
    assert x is not None
    if op == "transpose":
        d0, d1 = _norm_dim(node.attrs["dim0"], x.ndim), _norm_dim(node.attrs["dim1"], x.ndim)
        perm = list(range(x.ndim))
        perm[d0], perm[d1] = d1, d0
    else:
        perm = [_norm_dim(p, x.ndim) for p in node.attrs["dims"]]
    return [_seg(out, perm.index(d), s)] if not is_out else [_seg(x, perm[d], s)]


def _through_slice(node: Node, v: Value, s: Segment) -> list[tuple[Value, Segment]]:
    op, ins, out, is_out, d = _at(node, v, s)
    x = ins[0]
    assert x is not None
    sd = _norm_dim(node.attrs.get("dim", 0), x.ndim)
    xd = d if not is_out else (d + (1 if op == "select" and d >= sd else 0))
    if xd == sd:
        raise _Block(f"{op} indexes the pruned dim")
    od = xd - (1 if op == "select" and xd > sd else 0)
    return [_seg(out, od, s)] if not is_out else [_seg(x, xd, s)]


def _through_cat(node: Node, v: Value, s: Segment) -> list[tuple[Value, Segment]]:
    _op, ins, out, is_out, d = _at(node, v, s)
    cd = _norm_dim(node.attrs.get("dim", 0), out.ndim)
    xs = [x for x in ins if x is not None]
    if d != cd:
        return [_seg(t, d, s) for t in [*xs, out] if t is not v]
    starts = [sum(x.shape[cd] for x in xs[:i]) for i in range(len(xs))]
    if not is_out:
        i = next(i for i, x in enumerate(xs) if x is v)
        return [_seg(out, d, s, offset=s.offset + starts[i])]
    lo, hi = s.offset, s.offset + s.unit * s.count
    for i, x in enumerate(xs):
        if starts[i] <= lo and hi <= starts[i] + x.shape[cd]:
            return [_seg(x, d, s, offset=lo - starts[i])]
    raise _Block("a pruning group straddles two concat inputs")


def _through_linear(node: Node, v: Value, s: Segment) -> list[tuple[Value, Segment]]:
    _op, ins, out, _is_out, d = _at(node, v, s)
    x, w, b = ins[0], ins[1], ins[2] if len(ins) > 2 else None
    assert x is not None and w is not None
    if v is x:
        return [_seg(w, 1, s)] if d == x.ndim - 1 else [_seg(out, d, s)]
    if v is w:
        if d == 1:
            return [_seg(x, x.ndim - 1, s)]
        return [_seg(t, t.ndim - 1, s) for t in (out, b) if t is not None]
    if v is b:
        return [_seg(t, 0 if t is w else t.ndim - 1, s) for t in (out, w)]
    if d == out.ndim - 1:
        return [_seg(t, 0, s) for t in (w, b) if t is not None]
    return [_seg(x, d, s)]


def _through_conv2d(node: Node, v: Value, s: Segment) -> list[tuple[Value, Segment]]:
    op, ins, out, _is_out, d = _at(node, v, s)
    if node.attrs.get("groups", 1) != 1:
        raise _Block("grouped convolution")
    x, w, b = ins[0], ins[1], ins[2] if len(ins) > 2 else None
    assert x is not None and w is not None
    if v is x:
        if d == 1:
            return [_seg(w, 1, s)]
        if d == 0:
            return [_seg(out, 0, s)]
    elif v is w:
        if d == 1:
            return [_seg(x, 1, s)]
        if d == 0:
            return [_seg(t, 1 if t is out else 0, s) for t in (out, b) if t is not None]
    elif v is b:
        return [_seg(out, 1, s), _seg(w, 0, s)]
    else:
        if d == 1:
            return [_seg(t, 0, s) for t in (w, b) if t is not None]
        if d == 0:
            return [_seg(x, 0, s)]
    raise _Block(f"{op} over a spatial dim")


def _through_matmul(node: Node, v: Value, s: Segment) -> list[tuple[Value, Segment]]:
    _op, ins, out, _is_out, d = _at(node, v, s)
    a, b = ins[0], ins[1]
    assert a is not None and b is not None
    if a.ndim < 2 or b.ndim < 2:
        raise _Block("matmul with a vector operand")
    role = "a" if v is a else "b" if v is b else "out"
    nd = v.ndim
    if d < nd - 2:
        batch = [x for x in (a, b, out) if x is not v]
        return [p for p in _broadcast([a, b, out], v, s) if any(p[0] is x for x in batch) and p[1].dim < p[0].ndim - 2]
    last = d == nd - 1
    pairs = {("a", True): (b, b.ndim - 2), ("b", False): (a, a.ndim - 1), ("a", False): (out, out.ndim - 2),
             ("out", False): (a, a.ndim - 2), ("b", True): (out, out.ndim - 1), ("out", True): (b, b.ndim - 1)}  # fmt: skip
    t, td = pairs[(role, last)]
    return [_seg(t, td, s)]


def _through_sdpa(node: Node, v: Value, s: Segment) -> list[tuple[Value, Segment]]:
    _op, ins, out, _is_out, d = _at(node, v, s)
    q, k = ins[0], ins[1]
    assert q is not None and k is not None
    operands = {"q": q, "k": k, "v": ins[2], "out": out, "mask": ins[3] if len(ins) > 3 else None}
    role = next(r for r, t in operands.items() if t is v)
    ax = _SDPA_AXES[role].get(d - v.ndim)
    if ax is None:
        raise _Block("attention batch dim")
    if ax == "H" and (q.ndim < 3 or k.ndim < 3 or q.shape[-3] != k.shape[-3]):
        raise _Block("grouped-query attention with unequal head counts")
    res = []
    for r, opnd in operands.items():
        if opnd is None or opnd is v:
            continue
        for rel, axis in _SDPA_AXES[r].items():
            td = opnd.ndim + rel
            if axis == ax and td >= 0 and not (r == "mask" and opnd.shape[td] == 1):
                res.append(_seg(opnd, td, s))
    return res


def _through_embedding(node: Node, v: Value, s: Segment) -> list[tuple[Value, Segment]]:
    _op, ins, out, _is_out, d = _at(node, v, s)
    w, idx = ins[0], ins[1]
    assert w is not None and idx is not None
    if v is w:
        if d == 0:
            raise _Block("embedding vocabulary dim")
        return [_seg(out, out.ndim - 1, s)]
    if d == out.ndim - 1:
        return [_seg(w, 1, s)]
    return [_seg(idx, d, s)]


def _through_reduce(node: Node, v: Value, s: Segment) -> list[tuple[Value, Segment]]:
    op, ins, out, is_out, d = _at(node, v, s)
    x = ins[0]
    assert x is not None
    dims = node.attrs.get("dim")
    if dims is None:
        raise _Block(f"{op} over all dims")
    rd = {_norm_dim(t, x.ndim) for t in (dims if isinstance(dims, (list, tuple)) else [dims])}
    keep = node.attrs.get("keepdim", False)
    kept = [i for i in range(x.ndim) if i not in rd]
    xd = d if not is_out or keep else kept[d]
    if xd in rd:
        raise _Block(f"{op} reduces over the pruned dim")
    od = xd if keep else kept.index(xd)
    return [_seg(out, od, s)] if not is_out else [_seg(x, xd, s)]


# how a pruned segment crosses each op: one rule per op (the sets above do not overlap)
_PROPAGATE: dict[str, Callable[[Node, Value, Segment], list[tuple[Value, Segment]]]] = {
    **dict.fromkeys(_ELEMENTWISE, _through_elementwise),
    "batch_norm": _through_batch_norm,
    "layer_norm": _through_layer_norm,
    "rms_norm": _through_layer_norm,
    **dict.fromkeys(_POOLS, _through_pool),
    "softmax": _through_softmax,
    "log_softmax": _through_softmax,
    **dict.fromkeys(_RESHAPES, _through_reshape),
    "transpose": _through_transpose,
    "permute": _through_transpose,
    "slice": _through_slice,
    "select": _through_slice,
    "cat": _through_cat,
    "linear": _through_linear,
    "conv2d": _through_conv2d,
    "conv1d": _through_conv2d,
    "matmul": _through_matmul,
    "sdpa": _through_sdpa,
    "embedding": _through_embedding,
    **dict.fromkeys(_REDUCE, _through_reduce),
}


def _propagate(node: Node, v: Value, s: Segment) -> list[tuple[Value, Segment]]:
    """Segments on the other operands of `node` coupled to segment `s` on its operand `v` (one rule per op, _PROPAGATE)."""
    rule = _PROPAGATE.get(node.op)
    if rule is None:
        raise _Block(f"op {node.op} is not understood by structured pruning")
    return rule(node, v, s)


def find_groups(g: Graph, sources: list[Segment]) -> tuple[nx.Graph, list[Group]]:
    """The coupling graph of segments reachable from `sources`, and its connected components."""
    values = {v.name: v for v in g.values()}
    io = {id(v) for v in g.inputs} | {id(v) for v in g.outputs}
    cg: nx.Graph = nx.Graph()
    for src in sources:
        if src in cg:
            continue
        cg.add_node(src)
        stack = [src]
        while stack:
            s = stack.pop()
            v = values[s.value]
            if id(v) in io:
                cg.nodes[s]["blocked"] = f"%{v.name} is a graph input or output"
                continue
            for node in ([v.producer] if v.producer is not None else []) + list(v.users):
                try:
                    nxt = _propagate(node, v, s)
                except _Block as e:
                    cg.nodes[s]["blocked"] = f"{node.name} ({node.op}): {e}"
                    continue
                for _, t in nxt:
                    if t not in cg:
                        stack.append(t)
                    cg.add_edge(s, t)
    groups = []
    for comp in nx.connected_components(cg):
        segs = sorted(comp)
        counts = {t.count for t in segs}
        reasons = [cg.nodes[t]["blocked"] for t in segs if "blocked" in cg.nodes[t]]
        blocked = reasons[0] if reasons else (f"inconsistent unit counts {sorted(counts)}" if len(counts) > 1 else None)
        groups.append(Group(segs, max(counts), blocked))
    # two groups may not claim overlapping elements of one tensor dim
    claims: dict[tuple[str, int], list[tuple[int, int, int]]] = {}
    for gi, grp in enumerate(groups):
        if grp.blocked:
            continue
        for t in grp.segments:
            claims.setdefault((t.value, t.dim), []).append((t.offset, t.offset + t.unit * t.count, gi))
    for spans in claims.values():
        for i, (lo, hi, gi) in enumerate(spans):
            for lo2, hi2, gj in spans[i + 1 :]:
                if gi != gj and lo < hi2 and lo2 < hi:
                    for k in (gi, gj):
                        groups[k].blocked = groups[k].blocked or "overlaps another group on the same tensor"
    return cg, groups


def _sources(g: Graph, structure: str, exclude: tuple[str, ...]) -> list[Segment]:
    layers = select_layers(g, exclude, 0)
    if structure == "channel":
        return [Segment(n.inputs[1].name, 0, 0, 1, n.inputs[1].shape[0]) for n in layers]  # type: ignore[union-attr]
    srcs = []
    names = {n.name for n in layers}
    for n in g.nodes:
        if n.op != "reshape" or n.inputs[0] is None:
            continue
        x, y = n.inputs[0], n.output
        p = x.producer
        if p is None or p.op != "linear" or p.name not in names or y.ndim != x.ndim + 1:
            continue
        if y.shape[:-2] == x.shape[:-1] and y.shape[-2] * y.shape[-1] == x.shape[-1] and y.shape[-2] > 1:
            w = p.inputs[1]
            assert w is not None
            srcs.append(Segment(w.name, 0, 0, y.shape[-1], y.shape[-2]))
    return srcs


def _unit_scores(t: torch.Tensor, s: Segment) -> torch.Tensor:
    """Per-unit sum of squares of tensor `t` over segment `s`."""
    x = t.detach().double().movedim(s.dim, 0)
    x = x[s.offset : s.offset + s.unit * s.count].reshape(s.count, -1)
    per: torch.Tensor = x.pow(2).sum(1)
    return per


def _col_energy(node: Node, st: Any) -> torch.Tensor:
    """sum_o W[o, j]^2 * E[x_j^2] per input channel j of a linear/conv consumer."""
    w = node.inputs[1]
    assert w is not None
    wt = w.value.detach().double()
    ex2 = (st.sqsum / max(st.rows, 1)).double()
    cols = wt.reshape(wt.shape[0], -1).pow(2).sum(0) * ex2
    per: torch.Tensor = cols.reshape(wt.shape[1], -1).sum(1)
    return per


def _importance(g: Graph, grp: Group, consumers: dict[str, Node], stats: dict[str, Any]) -> torch.Tensor:
    total = torch.zeros(grp.count, dtype=torch.float64)
    used = False
    if stats:
        for t in grp.segments:
            node = consumers.get(t.value)
            if node is None or t.dim != 1 or node.name not in stats:
                continue
            e = _col_energy(node, stats[node.name])
            per = e[t.offset : t.offset + t.unit * t.count].reshape(t.count, -1).sum(1)
            total += per / per.mean().clamp(min=1e-30)
            used = True
    if not used:
        for t in grp.segments:
            v = g.consts.get(t.value)
            if v is None or v.ndim < 2:
                continue
            per = _unit_scores(v.value, t)
            total += per / per.mean().clamp(min=1e-30)
    return total


def _consumers(g: Graph) -> dict[str, Node]:
    """Weight constant name -> the single linear/conv node using it as its weight."""
    out: dict[str, Node] = {}
    for n in g.nodes:
        if n.op in ("linear", "conv2d", "conv1d") and n.inputs[1] is not None and n.inputs[1].is_const:
            w = n.inputs[1]
            if len(w.users) == 1:
                out[w.name] = n
    return out


def _refit(w: torch.Tensor, h: torch.Tensor, keep_cols: torch.Tensor, damp: float) -> torch.Tensor:
    """argmin_W' ||W X - W' X_K||^2 = W H[:, K] (H[K, K] + damp I)^-1, rows of W as output channels."""
    w2 = w.double().reshape(w.shape[0], -1)
    hk = h.double()[keep_cols][:, keep_cols]
    lam = damp * float(torch.diag(hk).mean().clamp(min=1e-12))
    rhs = w2 @ h.double()[:, keep_cols]
    sol: torch.Tensor = torch.linalg.solve(hk + lam * torch.eye(hk.shape[0], dtype=hk.dtype), rhs.t()).t()
    return sol


def prune_structured(cfg: Any, g: Graph, ctx: PassContext) -> dict[str, Any]:
    """Find coupled groups, drop the least important units of each, shrink the graph in place."""
    structure = cfg.structure
    sources = _sources(g, structure, cfg.exclude)
    _, groups = find_groups(g, sources)
    consumers = _consumers(g)
    data = ctx.data()
    use_act = cfg.method == "wanda"
    if use_act or cfg.reconstruct:
        data = ctx.require_calibration("prune (structured, " + ("activation importance)" if use_act else "reconstruct=True)"))
    needs_h = cfg.reconstruct and bool(data)
    valid = [grp for grp in groups if not grp.blocked]
    for grp in groups:
        if grp.blocked:
            ctx.explain.add(ExplainEvent("prune", f"prune-{structure}-group", grp.label(g), "group", "declined", grp.blocked))
    touched = {consumers[t.value].name for grp in valid for t in grp.segments if t.value in consumers and t.dim == 1}
    stats: dict[str, Any] = {}
    if (use_act or needs_h) and touched and data:
        stats = collect(g, data, nodes=lambda n: n.name in touched, hessian=needs_h)
    removed: dict[tuple[str, int], set[int]] = {}
    summary: dict[str, Any] = {}
    for grp in valid:
        drop = int(grp.count * cfg.sparsity) // cfg.round_to * cfg.round_to
        drop = min(drop, grp.count - 1)
        if drop <= 0:
            continue
        imp = _importance(g, grp, consumers, stats if use_act else {})
        gone = sorted(imp.argsort()[:drop].tolist())
        for t in grp.segments:
            removed.setdefault((t.value, t.dim), set()).update(t.indices(gone))
        summary[grp.label(g)] = {"units": grp.count, "removed": drop, "unit": structure}
        ctx.explain.add(ExplainEvent("prune", f"prune-{structure}-group", grp.label(g), "group", "fired", f"removed {drop} of {grp.count}"))
    if not removed:
        return summary
    _shrink(g, removed, consumers, stats if needs_h else {}, cfg)
    return summary


def _keep(size: int, gone: set[int]) -> torch.Tensor:
    return torch.tensor([i for i in range(size) if i not in gone], dtype=torch.int64)


def _shrink(g: Graph, removed: dict[tuple[str, int], set[int]], consumers: dict[str, Node], hstats: dict[str, Any], cfg: Any) -> None:
    by_value: dict[str, dict[int, set[int]]] = {}
    for (name, dim), gone in removed.items():
        by_value.setdefault(name, {})[dim] = gone
    # constants: slice (refitting a consumer's kept input columns first when asked)
    for name, dims in by_value.items():
        v = g.consts.get(name)
        if v is None:
            continue
        t = v.value
        node = consumers.get(name)
        orig = t
        if node is not None and 1 in dims:
            keep_c = _keep(t.shape[1], dims[1])
            per = math.prod(t.shape[2:])
            cols = (keep_c[:, None] * per + torch.arange(per)).reshape(-1)
            st = hstats.get(node.name)
            if st is not None and st.hessian is not None:
                w_new = _refit(t, st.hessian, cols, cfg.damp).to(t.dtype).reshape(t.shape[0], len(keep_c), *t.shape[2:])
            else:
                w_new = t.index_select(1, keep_c)
            padded = torch.zeros(t.shape[0], t.shape[1] * per, dtype=torch.float64)
            padded[:, cols] = w_new.double().reshape(t.shape[0], -1)
            keep_o = _keep(t.shape[0], dims.get(0, set()))
            h = st.hessian if st is not None and st.hessian is not None else None
            sq = layer_sqnr_db(orig.reshape(t.shape[0], -1)[keep_o], padded[keep_o], h)
            node.meta["sqnr_db"] = round(sq, 2) if math.isfinite(sq) else sq
            t = w_new
        for dim, gone in dims.items():
            if dim == 1 and node is not None:
                continue
            t = t.index_select(dim, _keep(t.shape[dim], gone))
        new = g.add_const(t.contiguous(), name)
        g.replace_all_uses(v, new)
        g.remove_const(v)
        if node is not None:
            node.meta["structure"] = cfg.structure
            node.meta["shape_before"] = list(orig.shape)
    # activations: new shapes, then shape attributes, then re-inferred types checked against them
    new_shape: dict[str, tuple[int, ...]] = {}
    for name, dims in by_value.items():
        if name in g.consts:
            continue
        for n in g.nodes:
            for o in n.outputs:
                if o.name == name:
                    sh = list(o.shape)
                    for dim, gone in dims.items():
                        sh[dim] -= len(gone)
                    new_shape[name] = tuple(sh)
    for n in g.nodes:
        for o in n.outputs:
            want = new_shape.get(o.name, o.shape)
            if n.op in ("reshape", "expand"):
                n.attrs["shape"] = list(want)
            if n.op in ("layer_norm", "rms_norm") and n.attrs.get("normalized_shape") is not None:
                k = len(n.attrs["normalized_shape"])
                n.attrs["normalized_shape"] = list(want[-k:])
            if n.op == "sdpa" and n.attrs.get("scale") is None:
                q = n.inputs[0]
                assert q is not None
                n.attrs["scale"] = 1.0 / math.sqrt(q.shape[-1])
        types = get_op(n.op).infer([None if x is None else x.type for x in n.inputs], n.attrs)
        for o, ty in zip(n.outputs, types, strict=True):
            want = new_shape.get(o.name, o.shape)
            if ty.shape != want:
                raise CompileError(f"structured pruning: {n.name} ({n.op}) infers {ty}, expected shape {list(want)}")
            o.type = ty
    g.version += 1
