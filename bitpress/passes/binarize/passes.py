"""Binarization (`Binarize`) and shift-add reparameterization (`ShiftAdd`) of linear layers.

Binarize methods: "sign" (BWN/XNOR-Net: sign + per-channel or per-group scale),
"multi-basis" (k residual binaries, scales refit by alternating least squares), "ternary"
(TWN, two sign planes), "partial" (PB-LLM: a ratio of salient weights per row kept in int8,
the rest binarized with GPTQ-style Hessian-guided reconstruction when calibration data
exist).  `activations="sign"` also binarizes the layer inputs (XNOR-popcount kernels).

ShiftAdd methods: "binary-coded" (ShiftAddLLM: k binaries with power-of-two group scales)
and "power-of-two" (every weight a signed power of two, codes packed 2 or 4 bits).

Place these after canonicalization, instead of quantization on the same layers.  With
calibration (or example) inputs the scale fits minimize output error (weights by E[x_i^2]).

Requires: constant float 2-D linear weights not shared with another node.
Ensures: packed storage (uint1 planes, uint2/uint4 codes, int8 exponents); per-layer meta
"bits", "params", "sqnr_db" (output SQNR on the calibration inputs, weight SQNR without).
Does not handle: conv layers (left alone), binary activations for the partial/shift ops.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from bitpress.compiler.builder import B, const
from bitpress.compiler.calibrate import NodeStats, collect
from bitpress.compiler.ir import Graph, Node, TensorType, Value, pack_bits
from bitpress.compiler.pass_manager import PassContext, PassResult, register_pass, rewrite_pass
from bitpress.compiler.pattern import Pat, Reject, RuleSet, rule
from bitpress.formats.binary import binary_weight, partial_weight, shift_weight, shiftadd_weight
from bitpress.passes._common import as_patterns, excluded, layer_sqnr_db, per_channel_group_size, shared_weight
from bitpress.passes.binarize import _binarizers as bz

__all__ = ["Binarize", "BinarizePlan", "ShiftAdd", "binarize_rules", "shift_add_rules"]


def _float_weight(v: Value) -> bool:
    return v.dtype in ("float32", "float16", "bfloat16", "float64")


@dataclass(frozen=True)
class BinarizePlan:
    """The pass options plus calibration statistics per layer (what the rules read)."""

    method: str
    bases: int
    group_size: int
    salient_ratio: float
    activations: str
    bits: int
    exclude: tuple[str, ...]
    damp: float
    stats: Mapping[str, NodeStats] = field(default_factory=dict)

    def importance(self, name: str) -> torch.Tensor | None:
        st = self.stats.get(name)
        return None if st is None or st.sqsum is None else st.sqsum / max(st.rows, 1)

    def hessian(self, name: str) -> torch.Tensor | None:
        st = self.stats.get(name)
        return None if st is None or st.hessian is None else st.hessian_mean()


def _packed(bits: torch.Tensor, name: str) -> Value:
    return const(pack_bits(bits.to(torch.int64), 1), name, TensorType(tuple(bits.shape), "uint1"))


def _guard(w: Value, node: Node, cfg: BinarizePlan) -> Reject | None:
    if excluded(node.name, cfg.exclude):
        return Reject("excluded by the pass options")
    if shared_weight(w, node):
        return Reject("weight shared with another node")
    if w.shape[1] < 8:
        return Reject(f"only {w.shape[1]} input features: packing would not shrink it")
    return None


def _h_for_error(cfg: BinarizePlan, name: str, in_f: int) -> torch.Tensor | None:
    h = cfg.hessian(name)
    if h is not None:
        return h
    d = cfg.importance(name)
    return None if d is None else torch.diag(d)


def _meta(y: Value, **meta: Any) -> Value:
    assert y.producer is not None
    y.producer.meta.update(meta)
    return y


@rule(Pat.op("linear", x=Pat.var(), w=Pat.const(ndim=2, where=_float_weight), b=Pat.any()), name="binarize-linear")
def binarize_linear(x: Value, w: Value, b: Value | None, *, node: Node, cfg: BinarizePlan) -> Value | Reject | None:
    """linear(x, W, b) -> binary_linear(x, pack(B), s, b)   with W ~= sum_k s_k (2 B_k - 1) (sign, multi-basis, ternary)"""
    if cfg.method == "partial":
        return None
    why = _guard(w, node, cfg)
    if why is not None:
        return why
    out_f, in_f = w.shape
    d = cfg.importance(node.name)
    if cfg.method == "ternary":
        bits, scales = bz.ternarize(w.value, cfg.group_size, d)
    else:
        bits, scales = bz.residual_binarize(w.value, 1 if cfg.method == "sign" else cfg.bases, cfg.group_size, d)
    k = bits.shape[0]
    w_hat = binary_weight(pack_bits(bits.to(torch.int64), 1), scales, out_f, in_f, k, cfg.group_size)
    sq = layer_sqnr_db(w.value, w_hat, _h_for_error(cfg, node.name, in_f), 3)
    y = B.binary_linear(
        x,
        _packed(bits, w.name + ".signs"),
        const(scales, w.name + ".scales"),
        b,
        name=node.name,
        out_features=out_f,
        in_features=in_f,
        bases=k,
        group_size=cfg.group_size,
        act=cfg.activations,
    )
    return _meta(y, bits=k, params=out_f * in_f, sqnr_db=sq, method=cfg.method, act_bits=1 if cfg.activations == "sign" else None)


@rule(Pat.op("linear", x=Pat.var(), w=Pat.const(ndim=2, where=_float_weight), b=Pat.any()), name="partial-binarize-linear")
def partial_binarize_linear(x: Value, w: Value, b: Value | None, *, node: Node, cfg: BinarizePlan) -> Value | Reject | None:
    """linear(x, W, b) -> partial_binary_linear(x, pack(B), s, v, idx, t, b)   with W ~= s (2 B - 1) + sparse(v t, idx)"""
    if cfg.method != "partial":
        return None
    why = _guard(w, node, cfg)
    if why is not None:
        return why
    out_f, in_f = w.shape
    h = cfg.hessian(node.name)
    bits, scales, values, idx, vscale = bz.partial_binarize(w.value, cfg.salient_ratio, cfg.group_size, h, cfg.damp)
    index = idx.to(torch.int16 if in_f <= 32767 else torch.int32)
    signs = pack_bits(bits.to(torch.int64), 1)
    w_hat = partial_weight(signs, scales, values, index, vscale, out_f, in_f, cfg.group_size)
    sq = layer_sqnr_db(w.value, w_hat, _h_for_error(cfg, node.name, in_f), 3)
    y = B.partial_binary_linear(
        x,
        _packed(bits, w.name + ".signs"),
        const(scales, w.name + ".scales"),
        const(values, w.name + ".salient"),
        const(index, w.name + ".salient_index"),
        const(vscale, w.name + ".salient_scale"),
        b,
        name=node.name,
        out_features=out_f,
        in_features=in_f,
        group_size=cfg.group_size,
    )
    stored = signs.numel() + scales.numel() * 4 + values.numel() + index.numel() * index.element_size() + vscale.numel() * 4
    return _meta(y, bits=round(8 * stored / (out_f * in_f), 3), params=out_f * in_f, sqnr_db=sq, method="partial", salient=values.shape[1])


binarize_rules = RuleSet([binarize_linear, partial_binarize_linear])


@rule(Pat.op("linear", x=Pat.var(), w=Pat.const(ndim=2, where=_float_weight), b=Pat.any()), name="shift-add-linear")
def shift_add_linear(x: Value, w: Value, b: Value | None, *, node: Node, cfg: BinarizePlan) -> Value | Reject:
    """linear(x, W, b) -> shiftadd_linear(x, pack(B), e, b)   with W ~= sum_k 2^e_k (2 B_k - 1);  or shift_linear: w = ±2^(E - c)"""
    why = _guard(w, node, cfg)
    if why is not None:
        return why
    out_f, in_f = w.shape
    h = _h_for_error(cfg, node.name, in_f)
    if cfg.method == "power-of-two":
        codes, base = bz.power_of_two(w.value, cfg.bits, cfg.group_size)
        packed = pack_bits(codes, cfg.bits)
        w_hat = shift_weight(packed, base, out_f, in_f, cfg.bits, cfg.group_size)
        ctype = TensorType((out_f, in_f), f"uint{cfg.bits}")
        y = B.shift_linear(
            x,
            const(packed, w.name + ".codes", ctype),
            const(base, w.name + ".base"),
            b,
            name=node.name,
            out_features=out_f,
            in_features=in_f,
            bits=cfg.bits,
            group_size=cfg.group_size,
        )
        return _meta(y, bits=cfg.bits, params=out_f * in_f, sqnr_db=layer_sqnr_db(w.value, w_hat, h, 3), method="power-of-two")
    bits, exps = bz.shiftadd_binarize(w.value, cfg.bases, cfg.group_size, cfg.importance(node.name))
    k = bits.shape[0]
    w_hat = shiftadd_weight(pack_bits(bits.to(torch.int64), 1), exps, out_f, in_f, k, cfg.group_size)
    y = B.shiftadd_linear(
        x,
        _packed(bits, w.name + ".signs"),
        const(exps, w.name + ".exponents"),
        b,
        name=node.name,
        out_features=out_f,
        in_features=in_f,
        bases=k,
        group_size=cfg.group_size,
    )
    return _meta(y, bits=k, params=out_f * in_f, sqnr_db=layer_sqnr_db(w.value, w_hat, h, 3), method="binary-coded")


shift_add_rules = RuleSet([shift_add_linear])


def _calibrate(g: Graph, ctx: PassContext, exclude: tuple[str, ...], hessian: bool) -> dict[str, NodeStats]:
    data = ctx.data()
    if not data:
        return {}

    def want(n: Node) -> bool:
        return n.op == "linear" and not excluded(n.name, exclude)

    return collect(g, data, want, hessian=hessian)


_BIN_METHODS = ("sign", "multi-basis", "partial", "ternary")


def _check_common(p: Any, pass_name: str) -> None:
    object.__setattr__(p, "group_size", per_channel_group_size(pass_name, p.group_size))
    object.__setattr__(p, "exclude", as_patterns(p.exclude))


def _format_group_size(group_size: int | None) -> int:
    """The binary formats' `group_size` attribute: 0 there is one group per output row."""
    return 0 if group_size is None else group_size


@register_pass
@dataclass(frozen=True)
class Binarize:
    """Binarize linear layers into packed sign planes with scales.

    Args:
        method: "sign" | "multi-basis" | "partial" | "ternary".
        bases: sign planes for "multi-basis".
        group_size: scales per `group_size` input columns (None: per output channel; the old
            spelling 0 is accepted with a DeprecationWarning).
        salient_ratio: "partial": fraction of each row kept in int8.
        activations: "none" | "sign" (binary activations, XNOR-popcount; sign/multi-basis/ternary).
        data_aware: fit scales to output error with calibration statistics (False: plain BWN/TWN fits,
            e.g. to reproduce a model trained with straight-through estimation exactly).
        exclude: fnmatch patterns of node names to leave in float.

    Example:
        >>> cm = bp.compile(model, (x,), passes=[bp.passes.Binarize(method="partial", salient_ratio=0.05)], calibration=[(x,)])
    """

    name: ClassVar[str] = "binarize"
    method: str = "sign"
    bases: int = 2
    group_size: int | None = None
    salient_ratio: float = 0.05
    activations: str = "none"
    data_aware: bool = True
    exclude: tuple[str, ...] = ()
    damp: float = 0.01

    def __post_init__(self) -> None:
        if self.method not in _BIN_METHODS:
            raise ValueError(f"binarize: unknown method {self.method!r}; choose one of {', '.join(_BIN_METHODS)}")
        if isinstance(self.bases, bool) or not isinstance(self.bases, int) or not 1 <= self.bases <= 8:
            raise ValueError(f"binarize: bases must be an int in [1, 8], got {self.bases!r}")
        if not 0.0 < self.salient_ratio < 1.0:
            raise ValueError(f"binarize: salient_ratio must be in (0, 1), got {self.salient_ratio}")
        if self.activations not in ("none", "sign"):
            raise ValueError(f"binarize: activations must be 'none' or 'sign', got {self.activations!r}")
        if self.activations == "sign" and self.method == "partial":
            raise ValueError("binarize: activations='sign' is not supported with method 'partial'")
        _check_common(self, "binarize")
        if self.activations == "sign" and self.group_size is not None and self.group_size % 32:
            raise ValueError(f"binarize: binary activations need group_size 0 or a multiple of 32 (XNOR words), got {self.group_size}")

    def apply(self, g: Graph, ctx: PassContext) -> PassResult:
        stats = _calibrate(g, ctx, self.exclude, hessian=self.method == "partial") if self.data_aware else {}
        plan = BinarizePlan(
            self.method,
            self.bases,
            _format_group_size(self.group_size),
            self.salient_ratio,
            self.activations,
            1,
            self.exclude,
            self.damp,
            stats,
        )
        return rewrite_pass(g, binarize_rules, ctx=ctx, cfg=plan, name=self.name)


_SHIFT_METHODS = ("binary-coded", "power-of-two")


@register_pass
@dataclass(frozen=True)
class ShiftAdd:
    """Reparameterize linear layers so products become shifts and adds.

    Args:
        method: "binary-coded" (ShiftAddLLM: `bases` binaries with power-of-two group scales)
            or "power-of-two" (each weight a signed power of two; `bits` = 2 or 4 per code).
        group_size: columns per scale/exponent group (None: per output channel; the old spelling 0
            is accepted with a DeprecationWarning).

    Example:
        >>> cm = bp.compile(model, (x,), passes=[bp.passes.ShiftAdd(bases=3, group_size=64)])
    """

    name: ClassVar[str] = "shift-add"
    method: str = "binary-coded"
    bases: int = 3
    group_size: int | None = 128
    bits: int = 4
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in _SHIFT_METHODS:
            raise ValueError(f"shift-add: unknown method {self.method!r}; choose one of {', '.join(_SHIFT_METHODS)}")
        if isinstance(self.bases, bool) or not isinstance(self.bases, int) or not 1 <= self.bases <= 8:
            raise ValueError(f"shift-add: bases must be an int in [1, 8], got {self.bases!r}")
        if self.bits not in (2, 4):
            raise ValueError(f"shift-add: bits must be 2 or 4, got {self.bits!r}")
        _check_common(self, "shift-add")

    def apply(self, g: Graph, ctx: PassContext) -> PassResult:
        stats = _calibrate(g, ctx, self.exclude, hessian=False)
        plan = BinarizePlan(
            self.method, self.bases, _format_group_size(self.group_size), 0.05, "none", self.bits, self.exclude, 0.01, stats
        )
        return rewrite_pass(g, shift_add_rules, ctx=ctx, cfg=plan, name=self.name)
