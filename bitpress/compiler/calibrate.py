"""Calibration: run data through the interpreter and collect statistics per node.

For each watched node, statistics of its first input (the activation entering a
linear/conv) and its output:

- per-input-channel abs-max, sum of squares and sum of |x| (SmoothQuant, AWQ, Wanda);
- min/max of the input and output (static activation ranges);
- optionally the Hessian proxy H = sum x x^T over input rows (GPTQ, SparseGPT, ASVD);
  convolutions use unfolded patches, so H is over the flattened kernel window;
- optionally a bounded sample of the inputs themselves (layer-wise error checks).

`collect` runs the whole graph once per batch and observes every selected node on the
graph as it is.  `sequential` is the layer-wise calibration of GPTQ / SparseGPT / Wanda:
it yields the statistics group by group (a group is e.g. one transformer block) and
calibrates each group on the activations produced by the earlier groups *after* the
caller has compressed them, caching the live values at each group boundary so that every
node runs about twice in total, not once per group.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from bitpress.compiler.interpreter import check_inputs, run
from bitpress.compiler.ir import Graph, Node
from bitpress.compiler.ops import get_op

__all__ = ["CalibrationGroup", "NodeStats", "block_key", "collect", "layer_rows", "sequential"]

_LAYER_OPS = ("linear", "conv2d", "conv1d")


@dataclass
class NodeStats:
    rows: int = 0
    absmax: torch.Tensor | None = None
    sqsum: torch.Tensor | None = None
    abssum: torch.Tensor | None = None
    in_min: float = float("inf")
    in_max: float = float("-inf")
    out_min: float = float("inf")
    out_max: float = float("-inf")
    hessian: torch.Tensor | None = None
    samples: list[torch.Tensor] = field(default_factory=list)
    out_absmax: torch.Tensor | None = None

    @property
    def rms(self) -> torch.Tensor:
        """Per-channel root mean square of the input (Wanda's ||X_j||_2 / sqrt(rows))."""
        assert self.sqsum is not None
        return (self.sqsum / max(self.rows, 1)).sqrt()

    @property
    def mean_abs(self) -> torch.Tensor:
        assert self.abssum is not None
        return self.abssum / max(self.rows, 1)

    def hessian_mean(self) -> torch.Tensor:
        assert self.hessian is not None
        return self.hessian / max(self.rows, 1)


def layer_rows(node: Node, x: torch.Tensor) -> torch.Tensor:
    """The input of a linear/conv as a matrix of rows [N, in_features] in weight-column order."""
    if node.op == "conv2d":
        w = node.inputs[1]
        assert w is not None
        kh, kw = w.type.static_shape()[2:4]
        a = node.attrs
        if a.get("groups", 1) != 1:
            return x.transpose(0, 1).reshape(x.shape[1], -1).t()
        return _patch_rows(x, kh, kw, a.get("stride", 1), a.get("padding", 0), a.get("dilation", 1))
    if node.op == "conv1d":
        return x.transpose(1, 2).reshape(-1, x.shape[1])
    return x.reshape(-1, x.shape[-1])


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _patch_rows(x: torch.Tensor, kh: int, kw: int, stride: Any, padding: Any, dilation: Any) -> torch.Tensor:
    """im2col: rows [N * OH * OW, C * kh * kw] (columns in (c, ky, kx) order, as W.reshape(O, -1)).

    One copy out of a strided view of the padded input (F.unfold's im2col loops are ~10x slower,
    and far slower still with threads competing for the cores)."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    if ph or pw:
        x = F.pad(x, (pw, pw, ph, ph))
    x = x.contiguous()
    n, c, h, w = x.shape
    oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    sn, sc, sy, sx = x.stride()
    v = x.as_strided((n, oh, ow, c, kh, kw), (sn, sy * sh, sx * sw, sc, sy * dh, sx * dw))
    return v.reshape(n * oh * ow, c * kh * kw)


def _selector(nodes: Iterable[str] | Callable[[Node], bool] | None) -> Callable[[Node], bool]:
    if nodes is None:
        return lambda n: n.op in _LAYER_OPS
    if callable(nodes):
        return nodes
    names = set(nodes)
    return lambda n: n.name in names


def _is_quiet(quiet: bool | None) -> bool:
    if quiet is None:
        return os.environ.get("BITPRESS_QUIET", "") not in ("", "0") or not sys.stderr.isatty()
    return quiet


class _Collector:
    """The observer that accumulates `NodeStats` for the nodes `want` selects."""

    def __init__(self, want: Callable[[Node], bool], hessian: bool, keep_inputs: int) -> None:
        self.want = want
        self.hessian = hessian
        self.keep_inputs = keep_inputs
        self.stats: dict[str, NodeStats] = {}
        # consecutive linears fed by the same tensor (q/k/v, gate/up) share one computation
        # of the row statistics and X^T X; one slot, so it holds at most one X^T X
        self._memo: tuple[torch.Tensor, tuple[torch.Tensor, ...]] | None = None

    def new_batch(self) -> None:
        self._memo = None

    def _row_stats(self, node: Node, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if node.op == "linear" and self._memo is not None and self._memo[0] is x:
            return self._memo[1]
        rows = layer_rows(node, x).double() if node.op in _LAYER_OPS else x.reshape(-1, x.shape[-1]).double()
        n = torch.tensor(float(rows.shape[0]))
        res: tuple[torch.Tensor, ...] = (n, rows.abs().amax(0), rows.pow(2).sum(0), rows.abs().sum(0))
        if self.hessian:
            res = (*res, rows.t() @ rows)
        self._memo = (x, res) if node.op == "linear" else None
        return res

    def observe(self, node: Node, args: list[Any], outs: list[torch.Tensor]) -> None:
        if not self.want(node) or not args or not isinstance(args[0], torch.Tensor) or not args[0].is_floating_point():
            return
        st = self.stats.setdefault(node.name, NodeStats())
        x = args[0].detach()
        rs = self._row_stats(node, x)
        st.rows += int(rs[0])
        am, sq, ab = rs[1], rs[2], rs[3]
        st.absmax = am.clone() if st.absmax is None else torch.maximum(st.absmax, am)
        st.sqsum = sq.clone() if st.sqsum is None else st.sqsum + sq
        st.abssum = ab.clone() if st.abssum is None else st.abssum + ab
        st.in_min, st.in_max = min(st.in_min, x.min().item()), max(st.in_max, x.max().item())
        y = outs[0]
        if isinstance(y, torch.Tensor) and y.is_floating_point():
            st.out_min, st.out_max = min(st.out_min, y.min().item()), max(st.out_max, y.max().item())
            yc = (
                y.abs().reshape(-1, y.shape[-1]).amax(0)
                if node.op not in ("conv2d",)
                else y.abs().transpose(0, 1).reshape(y.shape[1], -1).amax(1)
            )
            st.out_absmax = yc if st.out_absmax is None else torch.maximum(st.out_absmax, yc)
        if self.hessian:
            h = rs[4]
            st.hessian = h.clone() if st.hessian is None else st.hessian + h
        if self.keep_inputs and len(st.samples) < self.keep_inputs:
            st.samples.append(x.clone())


def collect(
    g: Graph,
    batches: Iterable[Sequence[torch.Tensor]],
    nodes: Iterable[str] | Callable[[Node], bool] | None = None,
    *,
    hessian: bool = False,
    keep_inputs: int = 0,
    quiet: bool | None = None,
) -> dict[str, NodeStats]:
    """Run `batches` through `g` and gather statistics for the selected nodes (default: linear/conv)."""
    col = _Collector(_selector(nodes), hessian, keep_inputs)
    it: Iterable[Sequence[torch.Tensor]] = batches
    if not _is_quiet(quiet):
        from tqdm import tqdm

        it = tqdm(list(batches), desc="calibrate", unit="batch", leave=False)
    for b in it:
        col.new_batch()
        run(g, tuple(b), observer=col.observe)
    return col.stats


# ----------------------------------------------------------------------------- sequential


def block_key(name: str) -> str:
    """The repeated block a node belongs to: its module path up to the last numeric component.

    ``"model.layers.3.mlp.up_proj" -> "model.layers.3"``, ``"layer1.0.conv2" -> "layer1.0"``,
    ``"2" -> "2"``; a path without a numeric component is its own block (``"fc1" -> "fc1"``).
    """
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].isdigit():
            return ".".join(parts[: i + 1])
    return name


@dataclass
class CalibrationGroup:
    """One step of `sequential`: a group's watched nodes (graph order) and their statistics.

    ``stats`` maps node name -> `NodeStats` for the nodes data reached (same as `collect`).
    """

    key: str
    nodes: list[Node]
    stats: dict[str, NodeStats]


def _member_of(members: Sequence[Node]) -> Callable[[Node], bool]:
    ids = frozenset(id(m) for m in members)
    return lambda n: id(n) in ids


def _const_state(g: Graph, nodes: Sequence[Node]) -> list[tuple[int, int, int]]:
    """Identity and in-place version of every constant the nodes read (detects changed weights)."""
    out = []
    for n in nodes:
        for v in n.inputs:
            if v is not None and v.is_const:
                t = g.store[v.name]
                out.append((id(v), id(t), t._version))
    return out


def sequential(
    g: Graph,
    batches: Iterable[Sequence[torch.Tensor]],
    nodes: Iterable[str] | Callable[[Node], bool] | None = None,
    *,
    group: Callable[[Node], str] | None = None,
    hessian: bool = False,
    keep_inputs: int = 0,
    quiet: bool | None = None,
) -> Iterator[CalibrationGroup]:
    """Layer-wise (sequential) calibration: statistics group by group on the partly compressed graph.

    The selected nodes (as in `collect`; default every linear/conv) are split into groups
    by ``group(node)`` (default `block_key` of the node's name, i.e. one group per
    transformer block / residual block).  A group must be contiguous among the selected
    nodes in graph order.  For each group in order the generator yields a
    `CalibrationGroup` whose statistics were gathered with every *earlier* group already
    in the state the caller left it in: between two steps the caller may replace the
    constant inputs of the yielded nodes (new weights via ``node.replace_input`` or
    ``g.set_const``, or in-place edits) and their meta, and the next group is then
    calibrated on the outputs of the modified layers, as GPTQ / SparseGPT / Wanda do.
    Constants of the nodes between the previous group's start and this group (e.g. the
    norm in front of q/k/v, which AWQ rescales) may change too; earlier ones may not
    (RuntimeError).

    Cost: the live values of every batch are cached at each group boundary (e.g. the
    residual stream), so each node runs once to observe and once more to produce the
    next boundary, and that second run is skipped when the caller changed no constant of
    the segment.  Nodes after the last selected node never run.  Memory: two boundaries'
    live values per batch plus the statistics of one group.

    The caller must not add, remove or reorder nodes while iterating (checked: raises
    RuntimeError); rewrite the graph after the loop.

    Example:
        >>> for step in sequential(g, batches, hessian=True):        # doctest: +SKIP
        ...     for node in step.nodes:
        ...         w_new = compress(node.inputs[1].value, step.stats[node.name].hessian)
        ...         node.replace_input(node.inputs[1], g.add_const(w_new, node.inputs[1].name))
    """
    want = _selector(nodes)
    key_of = group if group is not None else (lambda n: block_key(n.name))
    order = list(g.nodes)
    pos = {id(n): i for i, n in enumerate(order)}
    groups: list[tuple[str, list[Node]]] = []
    seen: set[str] = set()
    for n in order:
        if not want(n):
            continue
        k = key_of(n)
        if groups and groups[-1][0] == k:
            groups[-1][1].append(n)
            continue
        if k in seen:
            raise ValueError(
                f"sequential: group {k!r} is not contiguous in graph order (node {n.name} comes after group {groups[-1][0]!r})"
            )
        seen.add(k)
        groups.append((k, [n]))
    if not groups:
        return
    batch_list = [check_inputs(g, tuple(b)) for b in batches]
    # last position where each value is read (graph outputs are not needed here)
    last_use: dict[int, int] = {}
    for i, n in enumerate(order):
        for v in n.inputs:
            if v is not None and not v.is_const:
                last_use[id(v)] = i
    starts = [pos[id(nodes_[0])] for _, nodes_ in groups]
    stop = pos[id(groups[-1][1][-1])] + 1
    bounds = [*starts, stop]
    n_nodes = len(g)

    def run_segment(env: dict[int, Any], lo: int, hi: int, observer: _Collector | None) -> dict[int, Any]:
        """Run nodes [lo, hi) on `env` (live values at lo); returns the live values at hi."""
        env = dict(env)
        for i in range(lo, hi):
            n = order[i]
            args = [None if v is None else (g.store[v.name] if v.is_const else env[id(v)]) for v in n.inputs]
            try:
                res = get_op(n.op).ref(*args, **n.attrs)
            except Exception as e:
                raise RuntimeError(f"sequential: node {n.name} ({n.op}) failed: {type(e).__name__}: {e}") from None
            outs = list(res) if isinstance(res, (tuple, list)) else [res]
            if observer is not None:
                observer.observe(n, args, outs)
            for o, t in zip(n.outputs, outs, strict=True):
                if last_use.get(id(o), -1) > i:
                    env[id(o)] = t
            for v in n.inputs:
                if v is not None and not v.is_const and last_use.get(id(v), -1) == i:
                    env.pop(id(v), None)
        return env

    def check_structure() -> None:
        if len(g) != n_nodes or any(getattr(n, "_erased", False) for n in order):
            raise RuntimeError("sequential: the graph's nodes changed during calibration; only constants may change between steps")

    with torch.no_grad():
        # live values at the previous boundary too: a caller may fold into a node just before
        # its group (a norm's weight before q/k/v), which makes the cached boundary stale
        prev_envs: list[dict[int, Any]] = [{id(v): t for v, t in zip(g.inputs, b, strict=True)} for b in batch_list]
        prev_lo = 0
        envs = [run_segment(env0, 0, bounds[0], None) for env0 in prev_envs]
        steps: Iterable[int] = range(len(groups))
        if not _is_quiet(quiet):
            from tqdm import tqdm

            steps = tqdm(steps, desc="calibrate (sequential)", unit="group", leave=False)
        for gi in steps:
            key, members = groups[gi]
            lo, hi = bounds[gi], bounds[gi + 1]
            col = _Collector(_member_of(members), hessian, keep_inputs)
            earlier, before_prev, before = (_const_state(g, order[a:b]) for a, b in ((0, prev_lo), (prev_lo, lo), (lo, hi)))
            nxt = []
            for env in envs:
                col.new_batch()
                nxt.append(run_segment(env, lo, hi, col))
            col.new_batch()
            yield CalibrationGroup(key, list(members), col.stats)
            check_structure()
            if gi + 1 == len(groups):
                break
            if _const_state(g, order[:prev_lo]) != earlier:
                raise RuntimeError(
                    f"sequential: after group {key!r} a constant changed before the previous group's segment; "
                    "only the constants read from the previous group's start on may change"
                )
            if _const_state(g, order[prev_lo:lo]) != before_prev:
                envs = [run_segment(env, prev_lo, lo, None) for env in prev_envs]
                nxt = []  # the boundary changed: the segment must run again
            if not nxt or _const_state(g, order[lo:hi]) != before:
                nxt = [run_segment(env, lo, hi, None) for env in envs]
            prev_envs, prev_lo = envs, lo
            envs = nxt
