"""The `quantize` pass: RTN (MSE clipping), SmoothQuant, AWQ, GPTQ, mixed precision.

Where it goes: after canonicalization (batch-norm folded into convs) and after pruning /
low-rank passes; it is the last weight-changing pass.

How it works, in explicit steps:

1. pick the layers: `linear` with a constant 2-D float weight and `conv2d` (groups=1) with a
   constant kernel, minus `exclude` patterns and the first/last-layer policy;
2. calibration statistics (`bitpress.compiler.calibrate.collect`), when the method needs
   data: per-channel |x| statistics, Hessians (GPTQ) and a few input samples;
3. exact equivalence rewrites: SmoothQuant and AWQ multiply each group of layers sharing
   an input by a per-input-channel scale s (W' = W * s) and divide the input by s, folded
   into the preceding rms_norm / layer_norm weights when only this group reads it, else as
   an explicit `mul(x, 1/s)` node;
4. `bits="auto"`: per-layer sensitivity (relative output error at each candidate width,
   measured on calibration inputs) and a greedy allocation under `avg_bits`;
5. the weight codes (RTN, or GPTQ from the Hessian), then the rewrite rules
   `quantize-linear-weight`, `quantize-conv-weight` (weight-only: packed codes + float16
   scales + packed zeros) or `quantize-linear-w8a8`, `quantize-conv-w8a8` (static int8
   activations, integer requantization).

Every quantized node records meta "bits", "group_size", "method" and "sqnr_db" (the
layer's output SQNR on calibration inputs, or the weight SQNR when there is no data).

Does not handle: grouped/depthwise convs (declined, named in the explain log), matmuls
between two activations, sub-8-bit activations.  SmoothQuant/AWQ equalize linear layers
only (convs are quantized without the scale search).  GPTQ calibrates layer by layer on
the already quantized model (`sequential`, via `calibrate.sequential`); the other methods
take their statistics from one pass over the float model (AWQ/SmoothQuant scalings are
exact, so only their rounding differs from the float model).

Requires: constant weights.  Ensures: stored weight bytes = packed codes + scales + zeros.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from bitpress.compiler.builder import const, emit
from bitpress.compiler.calibrate import NodeStats, block_key, collect, layer_rows, sequential
from bitpress.compiler.ir import Graph, Node, TensorType, Value, pack_bits
from bitpress.compiler.pass_manager import PassContext, PassResult, register_pass, rewrite_pass, sqnr_db
from bitpress.compiler.pattern import Pat, Reject, RuleSet, rule
from bitpress.compiler.rewrite import ExplainEvent
from bitpress.formats.quantized import requantize, weight_dtype, zeros_dtype
from bitpress.passes.quantize import _numerics as nq
from bitpress.passes.quantize.activations import check_act_scope, quantize_activations
from bitpress.passes.quantize.awq import awq_sequential, fold_input_scale, rescale_stats
from bitpress.passes.quantize.dynamic import dynamic_rules
from bitpress.passes.quantize.nm import quantize_nm_layers

__all__ = ["Quantize", "quantize_rules"]

_METHODS = ("rtn", "smoothquant", "awq", "gptq")
_OBSERVERS = ("minmax", "percentile", "mse")
_MAX_ROWS = 1024


# ----------------------------------------------------------------------------- plans


@dataclass
class _LayerPlan:
    """What the rules need for one layer, computed before rewriting (rules stay pure)."""

    qw: nq.QWeight
    symmetric: bool
    sqnr_db: float
    sqnr_on: str
    method: str
    act: dict[str, Any] | None = None  # W8A8: x/y scales+zps, multiplier, shift, int32 bias


@dataclass
class _Plans:
    plans: dict[str, _LayerPlan] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def _packed_const(codes: torch.Tensor, bits: int, symmetric: bool, name: str) -> Value:
    dt = weight_dtype(bits, symmetric)
    if bits == 8:
        return const(codes.to(torch.int8 if symmetric else torch.uint8), name)
    return const(pack_bits(codes, bits), name, TensorType(tuple(codes.shape), dt))


def _zeros_const(zeros: torch.Tensor, bits: int, name: str) -> Value:
    if bits == 8:
        return const(zeros.to(torch.uint8), name)
    return const(pack_bits(zeros, bits), name, TensorType(tuple(zeros.shape), zeros_dtype(bits)))


def _weight_only(
    x: Value, w: Value, b: Value | None, node: Node, cfg: _Plans, op: str, conv_attrs: dict[str, Any]
) -> Value | Reject | None:
    plan = cfg.plans.get(node.name)
    if plan is None:
        why = cfg.skipped.get(node.name)
        return Reject(why) if why else None
    if plan.act is not None:
        return None
    qw = plan.qw
    if qw.codes.shape != (w.shape[0], math.prod(w.shape[1:])):
        return Reject(f"planned codes {tuple(qw.codes.shape)} do not fit weight {w.shape}")
    codes = qw.codes.reshape(w.shape)
    q = _packed_const(codes, qw.bits, plan.symmetric, f"{w.name}.q")
    s = const(qw.scales.to(torch.float16), f"{w.name}.scales")
    z = None if qw.zeros is None else _zeros_const(qw.zeros, qw.bits, f"{w.name}.zeros")
    y = emit(
        op,
        x,
        q,
        s,
        z,
        b,
        name=node.name,
        shape=list(w.shape),
        bits=qw.bits,
        group_size=qw.group_size,
        signed=plan.symmetric,
        **conv_attrs,
    )
    assert y.producer is not None
    y.producer.meta.update(_meta(plan, w))
    return y


def _meta(plan: _LayerPlan, w: Value) -> dict[str, Any]:
    return {
        "bits": plan.qw.bits,
        "group_size": plan.qw.group_size,
        "method": plan.method,
        "sqnr_db": round(plan.sqnr_db, 3) if math.isfinite(plan.sqnr_db) else plan.sqnr_db,
        "sqnr_on": plan.sqnr_on,
        "params": w.numel,
        **({"act_bits": 8} if plan.act is not None else {}),
    }


def _conv_attrs(node: Node) -> dict[str, Any]:
    return {k: node.attrs[k] for k in ("stride", "padding", "dilation", "groups") if k in node.attrs}


@rule(Pat.op("linear", x=Pat.var(), w=Pat.const(ndim=2), b=Pat.any()), name="quantize-linear-weight")
def quantize_linear_weight(x: Value, w: Value, b: Value | None, *, node: Node, cfg: _Plans) -> Value | Reject | None:
    """linear(x, W, b) -> qlinear(x, pack(q), s, z, b)   with W ~= (q - z) * s per group"""
    return _weight_only(x, w, b, node, cfg, "qlinear", {})


@rule(Pat.op("conv2d", x=Pat.var(), w=Pat.const(ndim=4), b=Pat.any()), name="quantize-conv-weight")
def quantize_conv_weight(x: Value, w: Value, b: Value | None, *, node: Node, cfg: _Plans) -> Value | Reject | None:
    """conv2d(x, W, b) -> qconv2d(x, pack(q), s, z, b)   with W ~= (q - z) * s per group of C*kh*kw"""
    return _weight_only(x, w, b, node, cfg, "qconv2d", _conv_attrs(node))


def _w8a8(x: Value, w: Value, node: Node, cfg: _Plans, op: str, conv_attrs: dict[str, Any]) -> Value | Reject | None:
    plan = cfg.plans.get(node.name)
    if plan is None or plan.act is None:
        return None
    a = plan.act
    xq = emit("quantize_act", x, name=f"{node.name}.quantize_in", scale=a["x_scale"], zero_point=a["x_zp"])
    wq = const(plan.qw.codes.reshape(w.shape).to(torch.int8), f"{w.name}.q")
    m = const(a["multiplier"], f"{w.name}.multiplier")
    r = const(a["shift"], f"{w.name}.shift")
    bq = None if a["bias"] is None else const(a["bias"], f"{w.name}.bias_q")
    acc = emit(op, xq, wq, m, r, bq, name=node.name, x_zero_point=a["x_zp"], out_zero_point=a["y_zp"], **conv_attrs)
    assert acc.producer is not None
    acc.producer.meta.update(_meta(plan, w))
    return emit("dequantize_act", acc, name=f"{node.name}.dequantize_out", scale=a["y_scale"], zero_point=a["y_zp"])


@rule(Pat.op("linear", x=Pat.var(dtype="float32"), w=Pat.const(ndim=2), b=Pat.any()), name="quantize-linear-w8a8")
def quantize_linear_w8a8(x: Value, w: Value, *, node: Node, cfg: _Plans) -> Value | Reject | None:
    """linear(x, W, b) -> dq(qlinear_w8a8(q(x), Wq, m, r, bq))   int8 x int8 -> int32, requantized to int8"""
    return _w8a8(x, w, node, cfg, "qlinear_w8a8", {})


@rule(Pat.op("conv2d", x=Pat.var(dtype="float32"), w=Pat.const(ndim=4), b=Pat.any()), name="quantize-conv-w8a8")
def quantize_conv_w8a8(x: Value, w: Value, *, node: Node, cfg: _Plans) -> Value | Reject | None:
    """conv2d(x, W, b) -> dq(qconv2d_w8a8(q(x), Wq, m, r, bq))   int8 x int8 -> int32, requantized to int8"""
    return _w8a8(x, w, node, cfg, "qconv2d_w8a8", _conv_attrs(node))


quantize_rules = RuleSet([quantize_linear_w8a8, quantize_conv_w8a8, quantize_linear_weight, quantize_conv_weight])


# ----------------------------------------------------------------------------- the pass


@register_pass
@dataclass(frozen=True)
class Quantize:
    """Quantize weights (and optionally activations) of linear and conv layers.

    Args:
        method: "rtn" (round to nearest; `weight_clip="mse"` searches the clipping range per
            group), "awq" (activation-aware input-channel scaling, then RTN), "gptq" (Hessian
            error compensation), "smoothquant" (migrate activation outliers into the weights,
            then static W8A8; needs `bits=8`, `act_bits=8`).
        bits: 8, 4, 3, 2, or "auto" (mixed precision under `avg_bits`).
        group_size: columns per scale; None or -1 per output channel, 0 per tensor.  A last
            group shorter than the others is fine (576 = 4 * 128 + 64).
        symmetric: signed codes without zero points; None means True at 8 bits, else False.
        act_bits: None (weight-only) or 8 (static int8 activations, integer requantization).
        act_dynamic: with act_bits=8: quantize each activation row to int8 at run time (no
            calibration) and run int8 x int8 block dots with 4- or 8-bit symmetric weights in
            groups (llama.cpp's Q4_0 x Q8 scheme; qlinear_dyn, see dynamic.py).
        act_scope: with act_bits=8, "layers" (the layers' inputs and outputs) or "all" (also the
            activations between them, QDQ pairs with calibrated ranges: see activations.py).
        observer: activation range observer for act_bits=8: "minmax", "percentile", "mse".
        weight_clip: weight range per group: "minmax" or "mse" (clipping ratio search).
        exclude: fnmatch patterns of module paths left in float ("*lm_head*").
        first_last: first and last quantizable layers: "same", "skip" (float) or a bit width.
        avg_bits: bits="auto" budget in code bits per weight (scales not counted).
        candidate_bits: widths bits="auto" may choose from.
        damp, block_size, act_order: GPTQ (damping as a fraction of mean diag(H)).
        sequential: calibration order.  GPTQ: "layer" (its default; the reference GPTQ's
            true-sequential mode: the layers of a block that read one input, q/k/v, then o,
            then gate/up, then down, each calibrated on the outputs of every layer already
            quantized), "block" (one transformer / residual block at a time) or "none"
            (every Hessian from the float model).  AWQ always searches block by block;
            "none" (its default, as llm-compressor) calibrates every block on the float
            model, "layer"/"block" on the outputs of the blocks already quantized.
        alpha: SmoothQuant migration strength.
        calib_samples: calibration batches kept per layer for searches and error reports.

    Example:
        >>> import bitpress as bp
        >>> q = bp.passes.Quantize(method="gptq", bits=4, group_size=128)
    """

    name: ClassVar[str] = "quantize"
    method: str = "rtn"
    bits: int | str = 4
    group_size: int | None = 128
    symmetric: bool | None = None
    act_bits: int | None = None
    act_scope: str = "layers"
    observer: str = "minmax"
    weight_clip: str = "mse"
    exclude: tuple[str, ...] = ()
    first_last: str | int = "same"
    avg_bits: float | None = None
    candidate_bits: tuple[int, ...] = (2, 3, 4, 8)
    damp: float = 0.01
    block_size: int = 128
    act_order: bool = False
    alpha: float = 0.5
    calib_samples: int = 4
    sequential: str | None = None
    act_dynamic: bool = False

    @property
    def _static_act(self) -> int | None:
        """act_bits of static (calibrated) activation quantization: None when weight-only or dynamic."""
        return None if self.act_dynamic else self.act_bits

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(f"Quantize: method must be one of {_METHODS}, got {self.method!r}")
        if self.bits != "auto" and self.bits not in (2, 3, 4, 8):
            raise ValueError(f"Quantize: bits must be 2, 3, 4, 8 or 'auto', got {self.bits!r}")
        if self.bits == "auto":
            if self.avg_bits is None:
                raise ValueError("Quantize: bits='auto' needs avg_bits (the budget in bits per weight)")
            if not set(self.candidate_bits) <= {2, 3, 4, 8} or not self.candidate_bits:
                raise ValueError(f"Quantize: candidate_bits must be a subset of (2, 3, 4, 8), got {self.candidate_bits}")
            if not min(self.candidate_bits) <= self.avg_bits <= max(self.candidate_bits):
                raise ValueError(f"Quantize: avg_bits {self.avg_bits} outside candidate_bits {self.candidate_bits}")
        elif self.avg_bits is not None:
            raise ValueError("Quantize: avg_bits only applies to bits='auto'")
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size < -1):
            raise ValueError(f"Quantize: group_size must be None, -1, 0 or a positive int, got {self.group_size!r}")
        check_act_scope(self.act_scope, self.act_bits)
        if self.act_bits not in (None, 8):
            raise ValueError(f"Quantize: act_bits must be None or 8, got {self.act_bits!r}")
        if self.method == "smoothquant" and self.act_bits != 8:
            raise ValueError("Quantize: method='smoothquant' quantizes activations: set act_bits=8 (and bits=8)")
        if self.act_dynamic:
            if self.act_bits != 8 or self.bits not in (4, 8):
                raise ValueError(
                    f"Quantize: act_dynamic=True needs act_bits=8 and bits=4 or 8, got act_bits={self.act_bits!r}, bits={self.bits!r}"
                )
            if self.symmetric is False or self.group_size == 0 or self.act_scope != "layers" or self.method == "smoothquant":
                raise ValueError(
                    "Quantize: act_dynamic=True takes symmetric weights per group or per channel (group_size != 0), act_scope='layers', method rtn/awq/gptq"
                )
        elif self.act_bits == 8:
            if self.bits != 8:
                raise ValueError(f"Quantize: act_bits=8 needs bits=8 weights, got bits={self.bits!r}")
            if self.group_size not in (None, -1, 0):
                raise ValueError(f"Quantize: act_bits=8 needs per-channel weights: set group_size=None (got {self.group_size})")
            if self.symmetric is False:
                raise ValueError("Quantize: act_bits=8 uses symmetric int8 weights; symmetric=False is not supported")
        if self.observer not in _OBSERVERS:
            raise ValueError(f"Quantize: observer must be one of {_OBSERVERS}, got {self.observer!r}")
        if self.weight_clip not in ("minmax", "mse"):
            raise ValueError(f"Quantize: weight_clip must be 'minmax' or 'mse', got {self.weight_clip!r}")
        if isinstance(self.exclude, str):
            object.__setattr__(self, "exclude", (self.exclude,))
        if self.first_last not in ("same", "skip") and self.first_last not in (2, 3, 4, 8):
            raise ValueError(f"Quantize: first_last must be 'same', 'skip' or 2/3/4/8, got {self.first_last!r}")
        if not 0 <= self.damp < 1:
            raise ValueError(f"Quantize: damp must be in [0, 1), got {self.damp}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"Quantize: alpha must be in [0, 1], got {self.alpha}")
        if self.sequential not in (None, "layer", "block", "none"):
            raise ValueError(f"Quantize: sequential must be None, 'layer', 'block' or 'none', got {self.sequential!r}")
        if self.method == "awq" and self._static_act is not None:
            raise ValueError("Quantize: method='awq' is weight-only (act_bits=None); for static W8A8 use method='smoothquant'")
        if self.block_size < 1 or self.calib_samples < 1:
            raise ValueError("Quantize: block_size and calib_samples must be >= 1")

    # -- helpers
    @property
    def _sequential(self) -> str:
        """The calibration order in effect: `sequential`, or the method's default."""
        return self.sequential or ("none" if self.method == "awq" else "layer")

    def _sym(self, bits: int) -> bool:
        return self.symmetric if self.symmetric is not None else bits == 8

    def _gs(self, k: int) -> int:
        if self.group_size is None or self.group_size == -1:
            return k
        return self.group_size

    def _candidates(self, g: Graph, skipped: dict[str, str]) -> list[Node]:
        cands: list[Node] = []
        for n in g.nodes:
            if n.op not in ("linear", "conv2d"):
                continue
            w = n.inputs[1]
            if w is None or not w.is_const or not w.dtype.startswith("float") or w.ndim != (2 if n.op == "linear" else 4):
                continue
            if n.op == "conv2d" and n.attrs.get("groups", 1) != 1:
                skipped[n.name] = f"grouped conv (groups={n.attrs['groups']}) is not quantized"
                continue
            x = n.inputs[0]
            if x is None or not x.dtype.startswith("float"):
                continue
            pat = next((p for p in self.exclude if fnmatch.fnmatchcase(n.name, p)), None)
            if pat is not None:
                skipped[n.name] = f"excluded by pattern {pat!r}"
                continue
            cands.append(n)
        return cands

    # -- the pass
    def apply(self, g: Graph, ctx: PassContext) -> PassResult:
        # N:M sparse layers (Prune first) become nm_qlinear: packed codes + packed indices
        nm = quantize_nm_layers(self, g, ctx)
        res = self._apply_dense(g, ctx)
        if self.act_scope == "all":
            res = quantize_activations(res, self, ctx)
        if self.act_dynamic:
            dyn = rewrite_pass(res.graph, dynamic_rules, ctx=ctx, name=self.name)
            res = PassResult(dyn.graph, res.modified or dyn.modified, res.stats)
        return PassResult(res.graph, res.modified or nm > 0, {**res.stats, "nm_layers": nm}) if nm else res

    def _apply_dense(self, g: Graph, ctx: PassContext) -> PassResult:
        cfg = _Plans()
        nodes = self._candidates(g, cfg.skipped)
        bits_of: dict[str, int | None] = {n.name: None for n in nodes}
        if nodes and self.first_last != "same":
            for n in {nodes[0].name: nodes[0], nodes[-1].name: nodes[-1]}.values():
                if self.first_last == "skip":
                    cfg.skipped[n.name] = "first/last layer kept in float (first_last='skip')"
                    nodes.remove(n)
                elif self._static_act is None:
                    bits_of[n.name] = int(self.first_last)
        if not nodes:
            return rewrite_pass(g, quantize_rules, ctx=ctx, cfg=cfg, name=self.name)
        data_aware = self.method != "rtn" or self._static_act is not None or self.bits == "auto"
        batches = ctx.require_calibration(f"{self.name} (method={self.method})") if data_aware else ctx.calibration
        seq = self._sequential
        if self.method == "gptq" and seq != "none" and batches:
            if self.bits == "auto":  # sensitivities are measured on the float model
                stats = self._collect(g, nodes, batches, hessian=False)
                self._allocate(nodes, {n.name: _rows(n, stats.get(n.name)) for n in nodes}, bits_of, ctx)
            self._gptq_sequential(g, nodes, batches, bits_of, cfg)
            return rewrite_pass(g, quantize_rules, ctx=ctx, cfg=cfg, name=self.name)
        if self.method == "awq" and batches:
            self._awq(g, nodes, batches, bits_of, cfg, ctx, quantized_inputs=seq != "none")
            return rewrite_pass(g, quantize_rules, ctx=ctx, cfg=cfg, name=self.name)
        stats = self._collect(g, nodes, batches)
        if self.method == "smoothquant":
            self._equalize(g, nodes, stats, ctx)
            if self._static_act is not None:  # activation ranges must be those of the smoothed inputs
                stats = self._collect(g, nodes, batches)
        rows = {n.name: _rows(n, stats.get(n.name)) for n in nodes}
        if self.bits == "auto":
            self._allocate(nodes, rows, bits_of, ctx)
        for n in nodes:
            cfg.plans[n.name] = self._plan(n, stats.get(n.name), rows[n.name], bits_of[n.name])
        return rewrite_pass(g, quantize_rules, ctx=ctx, cfg=cfg, name=self.name)

    def _collect(
        self, g: Graph, nodes: list[Node], batches: list[tuple[torch.Tensor, ...]], hessian: bool | None = None
    ) -> dict[str, NodeStats]:
        if not batches:
            return {}
        names = {n.name for n in nodes}
        h = self.method == "gptq" if hessian is None else hessian
        return collect(g, batches, names, hessian=h, keep_inputs=self.calib_samples)

    def _gptq_sequential(
        self, g: Graph, nodes: list[Node], batches: list[tuple[torch.Tensor, ...]], bits_of: dict[str, int | None], cfg: _Plans
    ) -> None:
        """GPTQ group by group: each group's Hessians come from inputs that already went through
        every earlier layer's quantized weights.  Between groups a layer's weight constant is
        its dequantized codes (what the final qlinear computes); the rewrite rules then store
        the planned codes themselves."""
        key_of: dict[str, str] = {}
        cur, part = "", 0
        for n in nodes:
            x = n.inputs[0]
            k = block_key(n.name) + (f"/{x.name}" if self._sequential == "layer" and x is not None else "")
            if k != cur:  # a new part whenever the key changes keeps every group contiguous
                cur, part = k, part + 1
            key_of[n.name] = f"{k}#{part}"
        names = {n.name for n in nodes}
        groups = sequential(g, batches, names, group=lambda n: key_of[n.name], hessian=True, keep_inputs=self.calib_samples)
        for step in groups:
            for n in step.nodes:
                st = step.stats.get(n.name)
                plan = self._plan(n, st, _rows(n, st), bits_of[n.name])
                cfg.plans[n.name] = plan
                w = n.inputs[1]
                assert w is not None
                n.replace_input(w, g.add_const(plan.qw.dequantize().reshape(w.shape).to(w.value.dtype), w.name))
        g.prune_consts()

    def _awq(
        self,
        g: Graph,
        nodes: list[Node],
        batches: list[tuple[torch.Tensor, ...]],
        bits_of: dict[str, int | None],
        cfg: _Plans,
        ctx: PassContext,
        quantized_inputs: bool,
    ) -> None:
        """AWQ block by block (awq.py)."""
        if self.bits == "auto":  # sensitivities are measured on the float model
            stats = self._collect(g, nodes, batches)
            self._allocate(nodes, {n.name: _rows(n, stats.get(n.name)) for n in nodes}, bits_of, ctx)

        def spec(n: Node) -> tuple[int, int, bool]:
            b = self._bits(n, bits_of)
            return b, self._gs(n.inputs[1].shape[1]), self._sym(b)  # type: ignore[union-attr]

        def explain(n: Node, why: str) -> None:
            ctx.explain.add(ExplainEvent(self.name, "awq-scale-input-channels", n.name, n.op, "fired", why))

        plans = awq_sequential(
            g,
            nodes,
            batches,
            spec=spec,
            plan=lambda n, st: self._plan(n, st, _rows(n, st), bits_of[n.name]),
            explain=explain,
            quantized_inputs=quantized_inputs,
        )
        cfg.plans.update(plans)

    def _bits(self, n: Node, bits_of: dict[str, int | None]) -> int:
        b = bits_of.get(n.name)
        if b is not None:
            return b
        return int(self.bits) if self.bits != "auto" else max(self.candidate_bits)

    # -- step 3: SmoothQuant input-channel scaling (an exact rewrite before rounding)
    def _equalize(self, g: Graph, nodes: list[Node], stats: dict[str, NodeStats], ctx: PassContext) -> None:
        groups: dict[int, list[Node]] = {}
        for n in nodes:
            if n.op == "linear" and n.inputs[0] is not None and n.name in stats:
                groups.setdefault(id(n.inputs[0]), []).append(n)
        for grp in groups.values():
            x = grp[0].inputs[0]
            assert x is not None
            st = stats[grp[0].name]
            assert st.absmax is not None
            s = nq.smooth_scales(st.absmax, [n.inputs[1].value.float() for n in grp], self.alpha)  # type: ignore[union-attr]
            where = fold_input_scale(g, x, grp, s)
            for n in grp:
                why = f"W' = W * s, x' = x / s ({where}); s = max|x|^{self.alpha} / max|W|^{1 - self.alpha}"
                ctx.explain.add(ExplainEvent(self.name, "smooth-input-channels", n.name, n.op, "fired", why))
                rescale_stats(stats[n.name], s)

    # -- step 4: bits="auto"
    def _allocate(self, nodes: list[Node], rows: dict[str, torch.Tensor | None], bits_of: dict[str, int | None], ctx: PassContext) -> None:
        cands = sorted(self.candidate_bits)
        free = [n for n in nodes if bits_of[n.name] is None]
        err: dict[str, dict[int, float]] = {}
        for n in free:
            w = _wmat(n)
            xr = rows[n.name]
            ref = xr @ w.t() if xr is not None else w
            denom = float(ref.pow(2).sum()) or 1.0
            err[n.name] = {}
            for b in cands:
                dq = nq.rtn(w, b, self._gs(w.shape[1]), self._sym(b), self.weight_clip).dequantize()
                out = xr @ dq.t() if xr is not None else dq
                err[n.name][b] = float((out - ref).pow(2).sum()) / denom
        params = {n.name: _wmat(n).numel() for n in free}
        total = sum(params.values())
        assert self.avg_bits is not None
        budget = self.avg_bits * total
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
            bits_of[name] = b
            ctx.explain.add(
                ExplainEvent(self.name, "allocate-bits", name, "linear", "fired", f"{b} bits (relative error {err[name][b]:.3g})")
            )

    # -- step 5: codes, scales and (W8A8) integer requantization parameters
    def _plan(self, n: Node, st: NodeStats | None, xr: torch.Tensor | None, forced_bits: int | None) -> _LayerPlan:
        w = _wmat(n)
        bits = forced_bits if forced_bits is not None else (int(self.bits) if self.bits != "auto" else 8)
        sym = True if self.act_bits == 8 else self._sym(bits)  # int8 dots (static or dynamic) need symmetric codes
        gs = w.shape[1] if self._static_act == 8 and self.group_size != 0 else self._gs(w.shape[1])
        if self.method == "gptq" and st is not None and st.hessian is not None:
            qw = nq.gptq(
                w,
                st.hessian_mean(),
                bits,
                gs,
                sym,
                damp=self.damp,
                block_size=self.block_size,
                act_order=self.act_order,
                observer=self.weight_clip,
            )
            method = "gptq"
        else:
            # AWQ: clipping ranges chosen for the layer's output error, sum_j E[x_j^2] (w_j - q_j)^2
            # (AWQ's clip search, with the diagonal of the input second moment); x is already x / s
            imp = st.sqsum.float() / max(st.rows, 1) if self.method == "awq" and st is not None and st.sqsum is not None else None
            qw = nq.rtn(w, bits, gs, sym, self.weight_clip, importance=imp)
            method = {"gptq": "rtn", "smoothquant": "smoothquant+rtn", "awq": "awq+rtn"}.get(self.method, "rtn")
        deq = qw.dequantize()
        act = None
        b = n.inputs[2].value.float() if len(n.inputs) > 2 and n.inputs[2] is not None else None
        if self._static_act == 8:
            act = self._act_plan(n, st, xr, w, qw, b)
        if xr is not None:
            ref = xr @ w.t() + (b if b is not None else 0)
            got = _w8a8_rows(xr, qw, act) if act is not None else xr @ deq.t() + (b if b is not None else 0)
            s, on = sqnr_db(ref, got), "outputs"
        else:
            s, on = sqnr_db(w, deq), "weights"
        return _LayerPlan(qw, sym, s, on, method, act)

    def _act_plan(
        self, n: Node, st: NodeStats | None, xr: torch.Tensor | None, w: torch.Tensor, qw: nq.QWeight, b: torch.Tensor | None
    ) -> dict[str, Any]:
        if st is None:
            raise ValueError(f"node {n.name}: act_bits=8 needs calibration statistics")
        xs = torch.cat([t.flatten() for t in st.samples]) if st.samples else torch.empty(0)
        x_scale, x_zp = nq.act_qparams(xs, st.in_min, st.in_max, self.observer)
        ys = xr @ w.t() + (b if b is not None else 0) if xr is not None else torch.empty(0)
        y_scale, y_zp = nq.act_qparams(ys, st.out_min, st.out_max, self.observer)
        w_scale = qw.scales.float()[:, 0].expand(w.shape[0])
        real = (torch.tensor(x_scale, dtype=torch.float64) * w_scale.double()) / y_scale
        m, r = nq.quant_multiplier(real)
        bias = None
        if b is not None:
            bias = torch.round(b.double() / (x_scale * w_scale.double())).clamp(-(2**31), 2**31 - 1).to(torch.int32)
        return {"x_scale": x_scale, "x_zp": x_zp, "y_scale": y_scale, "y_zp": y_zp, "multiplier": m, "shift": r, "bias": bias}


def _wmat(n: Node) -> torch.Tensor:
    w = n.inputs[1]
    assert w is not None
    return w.value.float().reshape(w.shape[0], -1)


def _rows(n: Node, st: NodeStats | None) -> torch.Tensor | None:
    """Calibration input rows of a layer in weight-column order (at most _MAX_ROWS, evenly spaced)."""
    if st is None or not st.samples:
        return None
    r = torch.cat([layer_rows(n, t.float()) for t in st.samples])
    if r.shape[0] > _MAX_ROWS:
        r = r[torch.linspace(0, r.shape[0] - 1, _MAX_ROWS).long()]
    return r


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
