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

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from bitpress.compiler.builder import const, emit
from bitpress.compiler.ir import Graph, Node, TensorType, Value, pack_bits
from bitpress.compiler.pass_manager import PassContext, PassResult, register_pass, rewrite_pass
from bitpress.compiler.pattern import Pat, Reject, RuleSet, rule
from bitpress.formats.quantized import weight_dtype, zeros_dtype
from bitpress.passes._common import SEQUENTIAL_MODES, as_patterns, excluded, group_columns

# the methods register themselves on import, one file each (see _plan.py); the order here is the
# order Quantize's error messages list them in
# isort: off
from bitpress.passes.quantize import rtn as _rtn  # noqa: F401
from bitpress.passes.quantize import smoothquant as _smoothquant  # noqa: F401
from bitpress.passes.quantize import awq as _awq  # noqa: F401
from bitpress.passes.quantize import gptq as _gptq  # noqa: F401

# isort: on
from bitpress.passes.quantize._plan import METHODS, LayerPlan, Plans, QuantizeJob
from bitpress.passes.quantize.activations import check_act_scope, quantize_activations
from bitpress.passes.quantize.dynamic import dynamic_rules
from bitpress.passes.quantize.nm import quantize_nm_layers

__all__ = ["Quantize", "quantize_rules"]

_OBSERVERS = ("minmax", "percentile", "mse")


# ----------------------------------------------------------------------------- the rules


def _packed_const(codes: torch.Tensor, bits: int, symmetric: bool, name: str) -> Value:
    dt = weight_dtype(bits, symmetric)
    if bits == 8:
        return const(codes.to(torch.int8 if symmetric else torch.uint8), name)
    return const(pack_bits(codes, bits), name, TensorType(tuple(codes.shape), dt))


def _zeros_const(zeros: torch.Tensor, bits: int, name: str) -> Value:
    if bits == 8:
        return const(zeros.to(torch.uint8), name)
    return const(pack_bits(zeros, bits), name, TensorType(tuple(zeros.shape), zeros_dtype(bits)))


def _weight_only(x: Value, w: Value, b: Value | None, node: Node, cfg: Plans, op: str, conv_attrs: dict[str, Any]) -> Value | Reject | None:
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


def _meta(plan: LayerPlan, w: Value) -> dict[str, Any]:
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
def quantize_linear_weight(x: Value, w: Value, b: Value | None, *, node: Node, cfg: Plans) -> Value | Reject | None:
    """linear(x, W, b) -> qlinear(x, pack(q), s, z, b)   with W ~= (q - z) * s per group"""
    return _weight_only(x, w, b, node, cfg, "qlinear", {})


@rule(Pat.op("conv2d", x=Pat.var(), w=Pat.const(ndim=4), b=Pat.any()), name="quantize-conv-weight")
def quantize_conv_weight(x: Value, w: Value, b: Value | None, *, node: Node, cfg: Plans) -> Value | Reject | None:
    """conv2d(x, W, b) -> qconv2d(x, pack(q), s, z, b)   with W ~= (q - z) * s per group of C*kh*kw"""
    return _weight_only(x, w, b, node, cfg, "qconv2d", _conv_attrs(node))


def _w8a8(x: Value, w: Value, node: Node, cfg: Plans, op: str, conv_attrs: dict[str, Any]) -> Value | Reject | None:
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
def quantize_linear_w8a8(x: Value, w: Value, *, node: Node, cfg: Plans) -> Value | Reject | None:
    """linear(x, W, b) -> dq(qlinear_w8a8(q(x), Wq, m, r, bq))   int8 x int8 -> int32, requantized to int8"""
    return _w8a8(x, w, node, cfg, "qlinear_w8a8", {})


@rule(Pat.op("conv2d", x=Pat.var(dtype="float32"), w=Pat.const(ndim=4), b=Pat.any()), name="quantize-conv-w8a8")
def quantize_conv_w8a8(x: Value, w: Value, *, node: Node, cfg: Plans) -> Value | Reject | None:
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
        if self.method not in METHODS:
            raise ValueError(f"Quantize: method must be one of {tuple(METHODS)}, got {self.method!r}")
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
        object.__setattr__(self, "exclude", as_patterns(self.exclude))
        if self.first_last not in ("same", "skip") and self.first_last not in (2, 3, 4, 8):
            raise ValueError(f"Quantize: first_last must be 'same', 'skip' or 2/3/4/8, got {self.first_last!r}")
        if not 0 <= self.damp < 1:
            raise ValueError(f"Quantize: damp must be in [0, 1), got {self.damp}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"Quantize: alpha must be in [0, 1], got {self.alpha}")
        if self.sequential is not None and self.sequential not in SEQUENTIAL_MODES:
            raise ValueError(f"Quantize: sequential must be None, 'layer', 'block' or 'none', got {self.sequential!r}")
        if self.block_size < 1 or self.calib_samples < 1:
            raise ValueError("Quantize: block_size and calib_samples must be >= 1")
        METHODS[self.method].check(self)

    # -- helpers
    @property
    def _sequential(self) -> str:
        """The calibration order in effect: `sequential`, or the method's default."""
        return self.sequential or METHODS[self.method].sequential

    def _sym(self, bits: int) -> bool:
        return self.symmetric if self.symmetric is not None else bits == 8

    def _gs(self, k: int) -> int:
        return group_columns(self.group_size, k)

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
            pat = next((p for p in self.exclude if excluded(n.name, (p,))), None)
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
        cfg = Plans()
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
        method = METHODS[self.method]
        data_aware = method.needs_data or self._static_act is not None or self.bits == "auto"
        batches = ctx.require_calibration(f"{self.name} (method={self.method})") if data_aware else ctx.calibration
        method.plan(QuantizeJob(self, method, g, nodes, batches, bits_of, cfg, ctx))
        return rewrite_pass(g, quantize_rules, ctx=ctx, cfg=cfg, name=self.name)
