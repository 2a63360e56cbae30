"""AWQ (Lin et al. 2023), block by block, with the parent-output objective of the reference tools.

The layers that read one activation x (q/k/v, gate/up, o, down) share a per-input-channel scale
s: W_i' = W_i * s is quantized, x' = x / s is folded into x's producer, which is exact in real
arithmetic.  s is searched as in the reference implementations (AutoAWQ, llm-compressor):

    s = mean|x|^a  or  mean|x|^a / mean_w^(1 - a)        a on a 20-point grid over [0, 1]

(`family` "duo", the default, as llm-compressor; "paper"; or "both"; plus s = 1, plain RTN),
keeping the candidate whose quantized weights Q(W s) / s give the smallest squared error of the
group's *parent* output on the calibration batches: for q/k/v the attention block's output after
o_proj, for gate/up the MLP's output after down_proj (the first layers the group's outputs reach,
when everything in between is computed from x alone), else the group's own outputs.

Order, as llm-compressor's sequential pipeline: one block (`block_key`) at a time; within a block
every group's scale is searched on the float block, then the block's layers are quantized.  The
next block is calibrated on the float (scaled, hence equivalent) outputs, as llm-compressor does
(its pipeline disables quantization while AWQ calibrates), or with `quantized_inputs` on the
outputs of the quantized blocks (`Quantize(sequential="block")`; on SmolLM2 W4 g64 perplexity
40.61 against 40.43 on the float outputs).

Folding x' = x / s, by x's producer:
- a norm or a `mul` by a constant channel vector (a decomposed RMSNorm's weight): divide the
  constant;
- `mul(a, L(z))` with L a linear of the same block that only feeds it (SwiGLU: down_proj's input
  is silu(gate) * up): divide L's output rows (weights and bias);
- otherwise (e.g. o_proj under grouped-query attention, where v_proj's rows do not map 1:1 onto
  o_proj's input channels) the group keeps s = 1, as in llm-compressor; with `explicit=True` it
  gets an explicit `mul` by 1/s instead (a float op at run time), inserted before calibration
  starts with a vector of ones and removed again if the search keeps s = 1.  On SmolLM2 W4 g64
  the explicit o_proj scales cost perplexity (40.78 against 40.43 without them).

Requires: linear layers with constant weights.  Ensures: the float graph computes the same
function after every fold (up to float rounding); `Quantize`'s rules then store the codes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from bitpress.compiler.calibrate import NodeStats, block_key, sequential
from bitpress.compiler.ir import Graph, Node, Value
from bitpress.compiler.ops import get_op
from bitpress.compiler.rewrite import ExplainEvent
from bitpress.passes.quantize import _numerics as nq
from bitpress.passes.quantize._plan import QuantizeJob, QuantizeMethod, register_method

__all__ = ["Awq", "Region", "awq_sequential", "fold_input_scale", "parent_region", "rescale_stats", "search_scale"]

_LAYER_OPS = ("linear", "conv2d", "conv1d")


# ----------------------------------------------------------------------------- the parent region


@dataclass
class Region:
    """The nodes (graph order) from a group of layers to the outputs the AWQ objective compares."""

    x: Value
    group: list[Node]
    nodes: list[Node]
    outputs: list[Value]
    parent: str  # "self" or the names of the terminal layers

    def run(self, g: Graph, x: torch.Tensor, weights: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        """Evaluate the region on input x, with the group's weights replaced by `weights[id(node)]`."""
        env: dict[int, Any] = {id(self.x): x}
        for n in self.nodes:
            args: list[torch.Tensor | None] = []
            for j, v in enumerate(n.inputs):
                if v is None:
                    args.append(None)
                elif j == 1 and id(n) in weights:
                    args.append(weights[id(n)])
                else:
                    args.append(g.store[v.name] if v.is_const else env[id(v)])
            res = get_op(n.op).ref(*args, **n.attrs)
            for o, t in zip(n.outputs, res if isinstance(res, (tuple, list)) else [res], strict=True):
                env[id(o)] = t
        return [env[id(o)] for o in self.outputs]


def parent_region(g: Graph, group: Sequence[Node]) -> Region:
    """The group's layers plus everything their outputs feed up to the next layers of the block.

    Falls back to the group alone (parent "self") when the outputs leave the block, reach a graph
    output, or meet a value that is not computed from x (a residual add).
    """
    x = group[0].inputs[0]
    assert x is not None
    alone = Region(x, list(group), list(group), [n.outputs[0] for n in group], "self")
    block = block_key(group[0].name)
    graph_outs = {id(v) for v in g.outputs}
    inside: dict[int, Node] = {id(n): n for n in group}
    terminals: list[Node] = []
    work = [o for n in group for o in n.outputs]
    while work:
        v = work.pop()
        if id(v) in graph_outs:
            return alone
        for u in v.users:
            if id(u) in inside:
                continue
            if block_key(u.name) != block:
                return alone
            inside[id(u)] = u
            if u.op in _LAYER_OPS:
                terminals.append(u)
            else:
                work.extend(u.outputs)
    if not terminals:
        return alone
    made = {id(o) for n in inside.values() for o in n.outputs}
    terminal_ids = {id(t) for t in terminals}
    for n in inside.values():
        for j, inp in enumerate(n.inputs):
            if inp is None or inp.is_const:
                continue
            # computed values must come from x or the region; a terminal layer's weights must be constants
            if (j > 0 and id(n) in terminal_ids) or (inp is not x and id(inp) not in made):
                return alone
    pos = {id(n): i for i, n in enumerate(g.nodes)}
    nodes = sorted(inside.values(), key=lambda n: pos[id(n)])
    return Region(x, list(group), nodes, [t.outputs[0] for t in terminals], ",".join(t.name for t in terminals))


# ----------------------------------------------------------------------------- the scale search


def search_scale(
    g: Graph,
    region: Region,
    xs: Sequence[torch.Tensor],
    mean_abs: torch.Tensor,
    specs: Sequence[tuple[int, int, bool]],
    *,
    grid: int = 20,
    family: str = "duo",
) -> tuple[torch.Tensor, float, float]:
    """The scale s minimising the region's output error; returns (s, error at s, error at s = 1),
    errors relative to the region outputs' energy.  The search quantizes with min-max groups, as
    the reference does (clipping is chosen afterwards on the scaled weights)."""
    ws = [n.inputs[1].value.float() for n in region.group]  # type: ignore[union-attr]
    with torch.no_grad():
        refs = [region.run(g, x, {}) for x in xs]
    denom = sum(float(r.double().pow(2).sum()) for outs in refs for r in outs) or 1.0
    m = mean_abs.float().clamp(min=1e-8)
    ratios = [i / (grid - 1) for i in range(grid)]  # a in [0, 1], both ends included
    cands = [torch.ones_like(m)]  # s = 1: plain RTN, the baseline
    if family in ("paper", "both"):
        cands += [m.pow(a) for a in ratios[1:]]
    if family in ("duo", "both"):
        wn = [nq._group_normalised_abs(w, gs) for w, (_, gs, _) in zip(ws, specs, strict=True)]
        wm = torch.cat(wn).mean(0).clamp(min=1e-8)
        cands += [m.pow(a) / (wm.pow(1 - a) + 1e-4) for a in ratios]
    best_s, best, base = torch.ones_like(m), math.inf, math.inf
    for s in cands:
        s = s.clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        qws = {
            id(n): (nq.rtn(w * s, bits, gs, sym, observer="minmax").dequantize() / s).to(w.dtype)
            for n, w, (bits, gs, sym) in zip(region.group, ws, specs, strict=True)
        }
        err = 0.0
        with torch.no_grad():
            for x, ref in zip(xs, refs, strict=True):
                err += sum(float((o - r).double().pow(2).sum()) for o, r in zip(region.run(g, x, qws), ref, strict=True))
        if math.isinf(base):
            base = err  # the first candidate is a = 0: s = 1, plain RTN
        if err < best:
            best, best_s = err, s
    return best_s, best / denom, base / denom


# ----------------------------------------------------------------------------- folding x / s


def _channel_const(v: Value, c: int) -> bool:
    return v.is_const and v.numel == c and (v.ndim == 1 or all(d == 1 for d in v.shape[:-1])) and len(v.users) == 1


def _fold_site(g: Graph, x: Value, group: Sequence[Node], quantized: Callable[[Node], bool]) -> Callable[[torch.Tensor], str] | None:
    """How x / s can be absorbed by x's producer without a new node, or None."""
    p = x.producer
    ids = {id(n) for n in group}
    c = x.shape[-1]
    if p is None or any(id(u) not in ids for u in x.users) or any(o is x for o in g.outputs):
        return None
    if p.op in ("rms_norm", "layer_norm") and len(p.inputs) > 1 and p.inputs[1] is not None and _channel_const(p.inputs[1], c):
        nb = p.inputs[2] if p.op == "layer_norm" and len(p.inputs) > 2 else None
        if nb is not None and not _channel_const(nb, c):
            return None
        consts = [v for v in (p.inputs[1], nb) if v is not None]
        return lambda s: _divide_consts(g, p, consts, s)
    if p.op == "mul" and len(p.inputs) == 2:
        a, b = p.inputs
        for v in (a, b):
            if v is not None and _channel_const(v, c):
                return lambda s, v=v: _divide_consts(g, p, [v], s)  # type: ignore[misc]
        for v in (a, b):
            lin = v.producer if v is not None else None
            if (
                lin is not None
                and lin.op == "linear"
                and len(v.users) == 1  # type: ignore[union-attr]
                and lin.inputs[1] is not None
                and lin.inputs[1].is_const
                and len(lin.inputs[1].users) == 1
                and lin.inputs[1].shape[0] == c
                and v.ndim >= 1  # type: ignore[union-attr]
                and v.shape[-1] == c  # type: ignore[union-attr]
                and block_key(lin.name) == block_key(group[0].name)
                and not quantized(lin)
            ):
                return lambda s, lin=lin: _divide_rows(g, lin, s)  # type: ignore[misc]
    return None


def _divide_consts(g: Graph, p: Node, consts: Sequence[Value], s: torch.Tensor) -> str:
    for v in consts:
        t = v.value
        p.replace_input(v, g.add_const((t.float() / s.reshape(t.shape)).to(t.dtype), f"{v.name}.scaled"))
    g.prune_consts()
    return f"folded into {p.op} {p.name}"


def _divide_rows(g: Graph, lin: Node, s: torch.Tensor) -> str:
    for j in (1, 2):
        v = lin.inputs[j] if len(lin.inputs) > j else None
        if v is None:
            continue
        t = v.value
        view = (-1, 1) if j == 1 else (-1,)
        lin.replace_input(v, g.add_const((t.float() / s.reshape(view)).to(t.dtype), f"{v.name}.scaled"))
    g.prune_consts()
    return f"folded into the output rows of {lin.name}"


def _scale_weights(g: Graph, group: Sequence[Node], s: torch.Tensor) -> None:
    for n in group:
        w = n.inputs[1]
        assert w is not None
        view = (1, -1) if w.ndim == 2 else (1, -1, 1, 1)
        n.replace_input(w, g.add_const((w.value.float() * s.reshape(view)).to(w.value.dtype), f"{w.name}.scaled"))


def insert_scale_mul(g: Graph, x: Value, group: Sequence[Node], s: torch.Tensor) -> Value:
    """x' = x * (1 / s) as an explicit node that feeds only the group."""
    first = next(n for n in g.nodes if n in set(group))
    with g.inserting_before(first):
        inv = g.add_const((1.0 / s).to(torch.float32), f"{first.name}.input_scale")
        y = g.call("mul", [x, inv], name=f"{first.name}.input_scale")
    for n in group:
        n.replace_input(x, y)
    return y


def fold_input_scale(g: Graph, x: Value, group: Sequence[Node], s: torch.Tensor) -> str:
    """W_i' = W_i * s for every layer of the group and x' = x / s, folded where possible."""
    s = s.float()
    site = _fold_site(g, x, group, lambda n: False)
    _scale_weights(g, group, s)
    if site is not None:
        return site(s)
    y = insert_scale_mul(g, x, group, s)
    g.prune_consts()
    return f"explicit mul {y.name}"


# ----------------------------------------------------------------------------- the sequential pass


def rescale_stats(st: NodeStats, s: torch.Tensor) -> None:
    """A layer's input statistics after x' = x / s."""
    st.samples = [t / s.to(t.dtype) for t in st.samples]
    if st.abssum is not None:
        st.abssum = st.abssum / s.double()
    if st.absmax is not None:
        st.absmax = st.absmax / s.double()
    if st.sqsum is not None:
        st.sqsum = st.sqsum / s.double().pow(2)


def _mappings(nodes: Sequence[Node]) -> list[list[Node]]:
    groups: dict[int, list[Node]] = {}
    for n in nodes:
        if n.op == "linear" and n.inputs[0] is not None:
            groups.setdefault(id(n.inputs[0]), []).append(n)
    return list(groups.values())


def awq_sequential(
    g: Graph,
    nodes: list[Node],
    batches: list[tuple[torch.Tensor, ...]],
    *,
    spec: Callable[[Node], tuple[int, int, bool]],
    plan: Callable[[Node, NodeStats | None], Any],
    explain: Callable[[Node, str], None],
    quantized_inputs: bool = False,
    family: str = "duo",
    explicit: bool = False,
) -> dict[str, Any]:
    """AWQ block by block; `plan(node, stats)` quantizes one layer (returns a plan with `.qw`).

    Returns the plans by node name.  With `quantized_inputs` the layers' weight constants hold
    their dequantized codes as soon as their block is done, so later blocks calibrate on the
    quantized model (as `_gptq_sequential`); by default later blocks see the float (scaled, so
    equivalent) model, as in llm-compressor, whose pipeline disables quantization while AWQ
    calibrates.
    """
    plans: dict[str, Any] = {}
    # groups that cannot fold x / s into a producer get a mul by ones now: the graph may not
    # change structure while `sequential` runs, only its constants
    names = {n.name for n in nodes}
    added: list[Value] = []
    skip: set[int] = set()
    for grp in _mappings(nodes):
        x = grp[0].inputs[0]
        assert x is not None
        if _fold_site(g, x, grp, lambda n: False) is None:  # a foldable linear is in the same block: quantized later
            if not explicit:
                skip.add(id(grp[0]))
                continue
            added.append(insert_scale_mul(g, x, grp, torch.ones(x.shape[-1])))
    for step in sequential(g, batches, names, group=lambda n: block_key(n.name), keep_inputs=len(batches)):
        for grp in _mappings([n for n in step.nodes if n.name in step.stats]):
            st = step.stats[grp[0].name]
            x = grp[0].inputs[0]
            assert x is not None and st.abssum is not None
            if id(grp[0]) in skip:
                for n in grp:
                    explain(n, "kept s = 1: x's producer cannot absorb 1 / s (explicit=False)")
                continue
            region = parent_region(g, grp)
            s, err, base = search_scale(g, region, st.samples, st.mean_abs, [spec(n) for n in grp], family=family)
            if bool((s == 1).all()):
                for n in grp:
                    explain(n, f"kept s = 1 (plain RTN is best: output error {base:.3g} relative, objective {region.parent})")
                continue
            site = _fold_site(g, x, grp, lambda n: n.name in plans)
            assert site is not None, f"AWQ: no place to fold the input scale of {grp[0].name}"
            _scale_weights(g, grp, s)
            where = site(s)
            for n in grp:
                explain(n, f"W' = W * s, x' = x / s ({where}); objective {region.parent}, output error {base:.3g} -> {err:.3g} (relative)")
                rescale_stats(step.stats[n.name], s)
        for n in step.nodes:
            p = plan(n, step.stats.get(n.name))
            plans[n.name] = p
            w = n.inputs[1]
            assert w is not None
            if quantized_inputs:
                n.replace_input(w, g.add_const(p.qw.dequantize().reshape(w.shape).to(w.value.dtype), w.name))
        g.prune_consts()
    for y in added:  # drop the multiplications the search left at one
        p = y.producer
        assert p is not None
        inv = p.inputs[1]
        if inv is not None and bool((inv.value == 1).all()):
            g.replace_all_uses(y, p.inputs[0])  # type: ignore[arg-type]
            g.erase_node(p)
    g.prune_consts()
    return plans


# ----------------------------------------------------------------------------- the method


@register_method
class Awq(QuantizeMethod):
    """AWQ as a Quantize method: the scale search block by block (`awq_sequential`), then RTN codes
    whose clipping is chosen for the layer's output error."""

    name: ClassVar[str] = "awq"
    sequential: ClassVar[str] = "none"  # as llm-compressor: every block calibrated on the float model
    nm_note: ClassVar[str | None] = "N:M layer: no input-channel scaling; its codes come from RTN"

    def check(self, q: Any) -> None:
        if q._static_act is not None:
            raise ValueError("Quantize: method='awq' is weight-only (act_bits=None); for static W8A8 use method='smoothquant'")

    def plan(self, job: QuantizeJob) -> None:
        if not job.batches:
            job.plan_all(job.collect())
            return
        job.allocate_on_float_model()
        q = job.q

        def spec(n: Node) -> tuple[int, int, bool]:
            b = job.bits(n)
            return b, q._gs(n.inputs[1].shape[1]), q._sym(b)  # type: ignore[union-attr]

        def explain(n: Node, why: str) -> None:
            job.ctx.explain.add(ExplainEvent(q.name, "awq-scale-input-channels", n.name, n.op, "fired", why))

        plans = awq_sequential(
            job.g,
            job.nodes,
            job.batches,
            spec=spec,
            plan=job.layer_plan,
            explain=explain,
            quantized_inputs=q._sequential != "none",
        )
        job.plans.plans.update(plans)

    def codes(
        self, job: QuantizeJob, n: Node, w: torch.Tensor, st: NodeStats | None, bits: int, group_size: int, symmetric: bool
    ) -> tuple[nq.QWeight, str]:
        # clipping ranges chosen for the layer's output error, sum_j E[x_j^2] (w_j - q_j)^2 (AWQ's clip
        # search, with the diagonal of the input second moment); x is already x / s
        imp = st.sqsum.float() / max(st.rows, 1) if st is not None and st.sqsum is not None else None
        return nq.rtn(w, bits, group_size, symmetric, job.q.weight_clip, importance=imp), "awq+rtn"
