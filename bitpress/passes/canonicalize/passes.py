"""The canonicalization passes and their rules (all exact rewrites)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from bitpress.compiler.builder import B, const
from bitpress.compiler.interpreter import InterpreterError
from bitpress.compiler.ir import Graph, Node, TensorType, Value
from bitpress.compiler.ops import get_op
from bitpress.compiler.pass_manager import Pass, PassContext, PassResult, register_pass, rewrite_pass
from bitpress.compiler.pattern import Pat, Reject, RuleSet, rule
from bitpress.compiler.rewrite import common_subexpression_elimination, dead_code_elimination

# ----------------------------------------------------------------------------- identities


@rule(Pat.op(("identity", "dropout"), x=Pat.var()), name="drop-identity")
def drop_identity(x: Value) -> Value:
    """identity(x) -> x ;  dropout(x) -> x   (inference)"""
    return x


@rule(Pat.op(("reshape", "expand"), x=Pat.var()), name="drop-noop-reshape")
def drop_noop_reshape(x: Value, *, node: Node) -> Value | None:
    """reshape(x, shape(x)) -> x"""
    return x if x.shape == node.output.shape else None


@rule(Pat.op("reshape", x=Pat.op(("reshape", "flatten", "unsqueeze", "squeeze"), x=Pat.var("inner"))), name="merge-reshapes")
def merge_reshapes(inner: Value, *, node: Node) -> Value:
    """reshape(reshape(x)) -> reshape(x)   (row-major order is preserved)"""
    return B.reshape(inner, shape=list(node.output.shape))


@rule(Pat.op("cast", x=Pat.var()), name="drop-noop-cast")
def drop_noop_cast(x: Value, *, node: Node) -> Value | None:
    """cast(x, dtype(x)) -> x"""
    return x if x.dtype == node.attrs["dtype"] else None


@rule(Pat.op("slice", x=Pat.var()), name="drop-full-slice")
def drop_full_slice(x: Value, *, node: Node) -> Value | None:
    """slice(x, 0:n:1) -> x"""
    return x if x.shape == node.output.shape and node.attrs.get("step", 1) == 1 else None


def _is_scalar(v: Value, value: float) -> bool:
    return v.is_const and v.numel == 1 and v.value.is_floating_point() and float(v.value.reshape(())) == value


@rule(Pat.op(("mul", "div"), a=Pat.var(), b=Pat.const()), name="drop-mul-one")
def drop_mul_one(a: Value, b: Value, *, node: Node) -> Value | None:
    """x * 1 -> x ;  x / 1 -> x"""
    return a if _is_scalar(b, 1.0) and node.output.type == a.type else None


@rule(Pat.op(("add", "sub"), a=Pat.var(), b=Pat.const()), name="drop-add-zero")
def drop_add_zero(a: Value, b: Value, *, node: Node) -> Value | None:
    """x + 0 -> x ;  x - 0 -> x"""
    return a if _is_scalar(b, 0.0) and node.output.type == a.type else None


identity_rules = RuleSet([drop_identity, drop_noop_reshape, merge_reshapes, drop_noop_cast, drop_full_slice, drop_mul_one, drop_add_zero])


@register_pass
@dataclass(frozen=True)
class DropIdentity:
    """Remove ops that compute their input: identity, inference dropout, no-op reshapes/casts/slices, x*1, x+0."""

    name: ClassVar[str] = "drop-identity"

    def apply(self, g: Graph, ctx: PassContext) -> PassResult:
        return rewrite_pass(g, identity_rules, ctx=ctx, name=self.name)


# ----------------------------------------------------------------------------- batch-norm folding


def _bn_scale_shift(w: Value | None, b: Value | None, mean: Value, var: Value, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    m, v = mean.value.double(), var.value.double()
    gamma = w.value.double() if w is not None else torch.ones_like(m)
    beta = b.value.double() if b is not None else torch.zeros_like(m)
    scale = gamma / torch.sqrt(v + eps)
    return scale, beta - m * scale


_BN: dict[str, Any] = dict(w=Pat.any("bn_w"), b=Pat.any("bn_b"), mean=Pat.const(), var=Pat.const())


@rule(Pat.op("batch_norm", x=Pat.op(("conv2d", "conv1d"), bind="y", x=Pat.var(), w=Pat.const(), b=Pat.any()), **_BN), name="fold-bn-conv")
def fold_bn_conv(
    y: Value, x: Value, w: Value, b: Value | None, bn_w: Value | None, bn_b: Value | None, mean: Value, var: Value, *, node: Node
) -> Value | Reject:
    """batch_norm(conv(x, W, b)) -> conv(x, W * s, (b - mean) * s + beta)   with s = gamma / sqrt(var + eps)"""
    if len(y.users) != 1:
        return Reject("the conv output has other users")
    if (bn_w is not None and not bn_w.is_const) or (bn_b is not None and not bn_b.is_const):
        return Reject("batch-norm affine parameters are not constants")
    scale, shift = _bn_scale_shift(bn_w, bn_b, mean, var, float(node.attrs.get("eps", 1e-5)))
    conv = y.producer
    assert conv is not None
    wf = (w.value.double() * scale.reshape(-1, *([1] * (w.ndim - 1)))).to(w.value.dtype)
    bias = b.value.double() if b is not None else torch.zeros_like(scale)
    bf = (bias * scale + shift).to(w.value.dtype)
    return B.__getattr__(conv.op)(x, const(wf, w.name), const(bf, conv.name + ".bias"), name=conv.name, **conv.attrs)


@rule(Pat.op("batch_norm", x=Pat.op("linear", bind="y", x=Pat.var(), w=Pat.const(), b=Pat.any()), **_BN), name="fold-bn-linear")
def fold_bn_linear(
    y: Value, x: Value, w: Value, b: Value | None, bn_w: Value | None, bn_b: Value | None, mean: Value, var: Value, *, node: Node
) -> Value | Reject:
    """batch_norm(linear(x, W, b)) -> linear(x, s W, (b - mean) s + beta)   (features on dim 1)"""
    if len(y.users) != 1:
        return Reject("the linear output has other users")
    if y.ndim != 2:
        return Reject(f"batch_norm over a {y.ndim}-d linear output normalizes a non-feature axis")
    if (bn_w is not None and not bn_w.is_const) or (bn_b is not None and not bn_b.is_const):
        return Reject("batch-norm affine parameters are not constants")
    scale, shift = _bn_scale_shift(bn_w, bn_b, mean, var, float(node.attrs.get("eps", 1e-5)))
    wf = (w.value.double() * scale[:, None]).to(w.value.dtype)
    bias = b.value.double() if b is not None else torch.zeros_like(scale)
    return B.linear(x, const(wf, w.name), const((bias * scale + shift).to(w.value.dtype), y.name + ".bias"), name=y.name)


fold_batch_norm_rules = RuleSet([fold_bn_conv, fold_bn_linear])


@register_pass
@dataclass(frozen=True)
class FoldBatchNorm:
    """Fold inference batch-norm into the conv/linear before it (exact up to float rounding).

    Requires: constant weights and statistics; the conv output feeds only the batch-norm.
    """

    name: ClassVar[str] = "fold-batch-norm"

    def apply(self, g: Graph, ctx: PassContext) -> PassResult:
        return rewrite_pass(g, fold_batch_norm_rules, ctx=ctx, name=self.name)


# ----------------------------------------------------------------------------- constant folding, CSE, DCE


@register_pass
@dataclass(frozen=True)
class FoldConstants:
    """Evaluate nodes whose inputs are all constants (unless the result would grow the store a lot)."""

    name: ClassVar[str] = "fold-constants"
    max_growth: int = 4

    def apply(self, g: Graph, ctx: PassContext) -> PassResult:
        n = 0
        for node in list(g.nodes):
            if node._erased or not get_op(node.op).pure:
                continue
            ins = [v for v in node.inputs if v is not None]
            if not ins or not all(v.is_const for v in ins):
                continue
            if not all(o.type.is_static for o in node.outputs):
                continue  # a constant broadcast to a symbolic shape (zeros(batch, ..)): sized at run time
            out_numel = sum(o.numel for o in node.outputs)
            if out_numel > self.max_growth * max(sum(v.numel for v in ins), 1) and out_numel > 4096:
                continue
            if any(v.dtype not in ("float32", "float64", "int64", "int32", "bool", "float16", "bfloat16", "int8", "uint8") for v in ins):
                continue
            try:
                res = get_op(node.op).ref(*[None if v is None else v.value for v in node.inputs], **node.attrs)
            except Exception as e:
                raise InterpreterError(f"fold-constants: node {node.name} ({node.op}) failed: {e}") from None
            outs = list(res) if isinstance(res, (tuple, list)) else [res]
            for o, t in zip(node.outputs, outs, strict=True):
                if TensorType.of(t) != o.type:
                    break
            else:
                for o, t in zip(node.outputs, outs, strict=True):
                    g.replace_all_uses(o, g.add_const(t.contiguous(), node.name))
                g.erase_node(node)
                ctx.explain.add(_event(self.name, node))
                n += 1
        if n:
            dead_code_elimination(g)
        return PassResult(g, n > 0, {"folded": n})


def _event(pass_name: str, node: Node) -> Any:
    from bitpress.compiler.rewrite import ExplainEvent

    return ExplainEvent(pass_name, pass_name, node.name, node.op, "fired", "op(consts) -> const")


@register_pass
@dataclass(frozen=True)
class CommonSubexpressionElimination:
    """Merge pure nodes computing the same op on the same inputs with the same attributes."""

    name: ClassVar[str] = "cse"

    def apply(self, g: Graph, ctx: PassContext) -> PassResult:
        n = common_subexpression_elimination(g)
        return PassResult(g, n > 0, {"merged": n})


@register_pass
@dataclass(frozen=True)
class DeadCodeElimination:
    """Remove nodes whose results nobody uses, and unused constants."""

    name: ClassVar[str] = "dce"

    def apply(self, g: Graph, ctx: PassContext) -> PassResult:
        before = g.weight_bytes()
        n = dead_code_elimination(g)
        return PassResult(g, n > 0 or g.weight_bytes() != before, {"removed": n})


def canonicalize_pipeline() -> list[Pass]:
    """The exact clean-up run before compression passes, in order."""
    return [DropIdentity(), FoldConstants(), FoldBatchNorm(), CommonSubexpressionElimination(), DeadCodeElimination()]
