"""The quantization methods' common ground: a method is a strategy with one `plan(job)` entry point.

A `QuantizeJob` is one Quantize run over the chosen dense layers: the pass's options, the graph,
the layers, the calibration batches and the plans being filled.  A method (rtn.py, gptq.py,
awq.py, smoothquant.py) registers itself with `@register_method` and decides in `plan(job)` how
statistics are gathered (one pass, layer by layer, block by block, with an exact equalizing
rewrite first, ...) and, in `codes`, how one layer's weight becomes integer codes.  Everything
else (bit allocation, W8A8 requantization parameters, the error report, the rewrite rules) is
shared, so a new method is one new file:

    @register_method
    class MyMethod(QuantizeMethod):
        name = "mine"
        def codes(self, job, n, w, st, bits, group_size, symmetric):
            return my_rounding(w, bits, group_size, symmetric), "mine"

N:M sparse layers are quantized by nm.py with RTN codes, or GPTQ with the mask fixed for a
method whose `nm_codes` is "gptq"; `nm_note` is what the explain log says about them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from bitpress.compiler.calibrate import NodeStats, collect, layer_rows
from bitpress.compiler.ir import Graph, Node
from bitpress.compiler.pass_manager import PassContext, sqnr_db
from bitpress.compiler.registry import Registry
from bitpress.compiler.rewrite import ExplainEvent
from bitpress.formats.integer import requantize
from bitpress.passes.quantize import _numerics as nq

__all__ = ["METHODS", "LayerPlan", "Plans", "QuantizeJob", "QuantizeMethod", "register_method"]

_MAX_ROWS = 1024


@dataclass
class LayerPlan:
    """What the rules need for one layer, computed before rewriting (rules stay pure)."""

    qw: nq.QWeight
    symmetric: bool
    sqnr_db: float
    sqnr_on: str
    method: str
    act: dict[str, Any] | None = None  # W8A8: x/y scales+zps, multiplier, shift, int32 bias


@dataclass
class Plans:
    plans: dict[str, LayerPlan] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


class QuantizeMethod:
    """A quantization method.  Subclasses set `name` and override `plan` and/or `codes`."""

    name: ClassVar[str]
    needs_data: ClassVar[bool] = True  # calibration is required (RTN: only for act_bits / bits="auto")
    hessian: ClassVar[bool] = False  # collect Hessians in the one-pass flow
    sequential: ClassVar[str] = "layer"  # the calibration order when Quantize(sequential=None)
    nm_codes: ClassVar[str] = "rtn"  # codes of N:M sparse layers: "rtn" or "gptq" (mask fixed)
    nm_note: ClassVar[str | None] = None  # explain-log note on N:M layers (e.g. a step they skip)

    def check(self, q: Any) -> None:
        """Reject options this method cannot honour (ValueError naming the option)."""

    def plan(self, job: QuantizeJob) -> None:
        """Fill `job.plans` for `job.nodes`; the default: statistics from one pass over the model."""
        job.plan_all(job.collect())

    def codes(
        self, job: QuantizeJob, n: Node, w: torch.Tensor, st: NodeStats | None, bits: int, group_size: int, symmetric: bool
    ) -> tuple[nq.QWeight, str]:
        """Integer codes of one layer's weight matrix [N, K] and the method name the report shows."""
        return nq.rtn(w, bits, group_size, symmetric, job.q.weight_clip), "rtn"


METHODS: Registry[QuantizeMethod] = Registry("quantization method")


def register_method(cls: type[QuantizeMethod]) -> type[QuantizeMethod]:
    """Make `cls` selectable as `Quantize(method=cls.name)`."""
    METHODS.register(cls.name, cls())
    return cls


@dataclass
class QuantizeJob:
    """One Quantize run over dense layers: what a method's `plan` reads and fills."""

    q: Any  # the Quantize pass: its fields are the options
    method: QuantizeMethod
    g: Graph
    nodes: list[Node]
    batches: list[tuple[torch.Tensor, ...]]
    bits_of: dict[str, int | None]
    plans: Plans
    ctx: PassContext

    def collect(self, hessian: bool | None = None) -> dict[str, NodeStats]:
        """Statistics of every job layer from one pass over the graph as it is now."""
        if not self.batches:
            return {}
        h = self.method.hessian if hessian is None else hessian
        return collect(self.g, self.batches, {n.name for n in self.nodes}, hessian=h, keep_inputs=self.q.calib_samples)

    def plan_all(self, stats: dict[str, NodeStats]) -> None:
        """Plan every layer from `stats` (allocating bits first when bits="auto")."""
        rows = {n.name: calib_rows(n, stats.get(n.name)) for n in self.nodes}
        if self.q.bits == "auto":
            self.allocate(rows)
        for n in self.nodes:
            self.plans.plans[n.name] = self.layer_plan(n, stats.get(n.name), rows[n.name])

    def allocate_on_float_model(self) -> None:
        """bits="auto" for methods that change the graph while planning: sensitivities from the float model."""
        if self.q.bits == "auto":
            stats = self.collect(hessian=False)
            self.allocate({n.name: calib_rows(n, stats.get(n.name)) for n in self.nodes})

    def bits(self, n: Node) -> int:
        b = self.bits_of.get(n.name)
        if b is not None:
            return b
        return int(self.q.bits) if self.q.bits != "auto" else max(self.q.candidate_bits)

    def layer_plan(self, n: Node, st: NodeStats | None, xr: torch.Tensor | str | None = "from-stats") -> LayerPlan:
        """Codes, scales and (W8A8) integer requantization parameters of one layer, with its error
        measured on `xr` (its calibration rows, by default taken from `st`)."""
        q = self.q
        if isinstance(xr, str):
            xr = calib_rows(n, st)
        w = weight_matrix(n)
        forced = self.bits_of.get(n.name)
        bits = forced if forced is not None else (int(q.bits) if q.bits != "auto" else 8)
        sym = True if q.act_bits == 8 else q._sym(bits)  # int8 dots (static or dynamic) need symmetric codes
        gs = w.shape[1] if q._static_act == 8 and q.group_size != 0 else q._gs(w.shape[1])
        qw, method = self.method.codes(self, n, w, st, bits, gs, sym)
        deq = qw.dequantize()
        act = None
        b = n.inputs[2].value.float() if len(n.inputs) > 2 and n.inputs[2] is not None else None
        if q._static_act == 8:
            act = _act_plan(q, n, st, xr, w, qw, b)
        if xr is not None:
            ref = xr @ w.t() + (b if b is not None else 0)
            got = _w8a8_rows(xr, qw, act) if act is not None else xr @ deq.t() + (b if b is not None else 0)
            s, on = sqnr_db(ref, got), "outputs"
        else:
            s, on = sqnr_db(w, deq), "weights"
        return LayerPlan(qw, sym, s, on, method, act)

    def allocate(self, rows: dict[str, torch.Tensor | None]) -> None:
        """bits="auto": greedy widening of the layer with the best error drop per added bit, under avg_bits."""
        q = self.q
        cands = sorted(q.candidate_bits)
        free = [n for n in self.nodes if self.bits_of[n.name] is None]
        err: dict[str, dict[int, float]] = {}
        for n in free:
            w = weight_matrix(n)
            xr = rows[n.name]
            ref = xr @ w.t() if xr is not None else w
            denom = float(ref.pow(2).sum()) or 1.0
            err[n.name] = {}
            for b in cands:
                dq = nq.rtn(w, b, q._gs(w.shape[1]), q._sym(b), q.weight_clip).dequantize()
                out = xr @ dq.t() if xr is not None else dq
                err[n.name][b] = float((out - ref).pow(2).sum()) / denom
        params = {n.name: weight_matrix(n).numel() for n in free}
        total = sum(params.values())
        assert q.avg_bits is not None
        budget = q.avg_bits * total
        choice = {n.name: cands[0] for n in free}
        used = cands[0] * total
        while True:
            best, best_gain = None, 0.0
            for name, b in choice.items():
                i = cands.index(b)
                if i + 1 == len(cands):
                    continue
                nb = cands[i + 1]
                cost = params[name] * (nb - b)
                if used + cost > budget + 1e-9:
                    continue
                gain = (err[name][b] - err[name][nb]) / cost
                if best is None or gain > best_gain:
                    best, best_gain = name, gain
            if best is None:
                break
            nb = cands[cands.index(choice[best]) + 1]
            used += params[best] * (nb - choice[best])
            choice[best] = nb
        for name, b in choice.items():
            self.bits_of[name] = b
            self.ctx.explain.add(
                ExplainEvent(q.name, "allocate-bits", name, "linear", "fired", f"{b} bits (relative error {err[name][b]:.3g})")
            )


def weight_matrix(n: Node) -> torch.Tensor:
    w = n.inputs[1]
    assert w is not None
    return w.value.float().reshape(w.shape[0], -1)


def calib_rows(n: Node, st: NodeStats | None) -> torch.Tensor | None:
    """Calibration input rows of a layer in weight-column order (at most _MAX_ROWS, evenly spaced)."""
    if st is None or not st.samples:
        return None
    r = torch.cat([layer_rows(n, t.float()) for t in st.samples])
    if r.shape[0] > _MAX_ROWS:
        r = r[torch.linspace(0, r.shape[0] - 1, _MAX_ROWS).long()]
    return r


def _act_plan(
    q: Any, n: Node, st: NodeStats | None, xr: torch.Tensor | None, w: torch.Tensor, qw: nq.QWeight, b: torch.Tensor | None
) -> dict[str, Any]:
    if st is None:
        raise ValueError(f"node {n.name}: act_bits=8 needs calibration statistics")
    xs = torch.cat([t.flatten() for t in st.samples]) if st.samples else torch.empty(0)
    x_scale, x_zp = nq.act_qparams(xs, st.in_min, st.in_max, q.observer)
    ys = xr @ w.t() + (b if b is not None else 0) if xr is not None else torch.empty(0)
    y_scale, y_zp = nq.act_qparams(ys, st.out_min, st.out_max, q.observer)
    w_scale = qw.scales.float()[:, 0].expand(w.shape[0])
    real = (torch.tensor(x_scale, dtype=torch.float64) * w_scale.double()) / y_scale
    m, r = nq.quant_multiplier(real)
    bias = None
    if b is not None:
        bias = torch.round(b.double() / (x_scale * w_scale.double())).clamp(-(2**31), 2**31 - 1).to(torch.int32)
    return {"x_scale": x_scale, "x_zp": x_zp, "y_scale": y_scale, "y_zp": y_zp, "multiplier": m, "shift": r, "bias": bias}


def _w8a8_rows(xr: torch.Tensor, qw: nq.QWeight, act: dict[str, Any]) -> torch.Tensor:
    """The W8A8 integer path on calibration rows, dequantized: what the rewritten layer computes."""
    sx = torch.tensor(act["x_scale"], dtype=torch.float32)
    xq = (torch.round(xr.float() / sx) + act["x_zp"]).clamp(-128, 127)
    acc = ((xq.double() - act["x_zp"]) @ qw.codes.double().t()).to(torch.int64)
    if act["bias"] is not None:
        acc = acc + act["bias"].to(torch.int64)
    y = requantize(acc, act["multiplier"], act["shift"], int(act["y_zp"]))
    out: torch.Tensor = (y.to(torch.int32) - int(act["y_zp"])).float() * torch.tensor(float(act["y_scale"]), dtype=torch.float32)
    return out
