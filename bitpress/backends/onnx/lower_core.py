"""ONNX lowerings of the core op set (bitpress/compiler/ops.py), one per op.

The IR follows torch semantics, ONNX wants matching operand types: operands are cast
to the type torch would compute in (the IR output type, or for comparisons the
promoted operand type).  Shapes are static, so every shape-only op lowers to a Reshape
to the IR output shape, and every shape-valued ONNX input is an int64 initializer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from bitpress.backends.onnx.lowering import OnnxLowerContext, onnx_dtype, register_onnx_lowering
from bitpress.compiler.ir import Node, to_torch_dtype

Names = list[str | None]


def _in_dtype(node: Node, i: int) -> str:
    v = node.inputs[i]
    assert v is not None
    return v.dtype


def _in_shape(node: Node, i: int) -> tuple[int, ...]:
    v = node.inputs[i]
    assert v is not None
    return v.shape


def _out_dtype(node: Node, i: int = 0) -> str:
    return node.outputs[i].dtype


def _is_float(dtype: str) -> bool:
    return dtype in ("float32", "float16", "bfloat16", "float64")


def _name(x: str | None) -> str:
    assert x is not None
    return x


def _axis(dim: int, ndim: int) -> int:
    return dim + ndim if dim < 0 else dim


def _promoted(node: Node) -> str:
    """The dtype torch computes a binary op in (0-d operands rank below dimensioned ones)."""
    # only the rank matters for promotion: symbolic dims stand in as 2
    metas = [
        torch.empty([d if isinstance(d, int) else 2 for d in v.shape], dtype=to_torch_dtype(v.dtype), device="meta")
        for v in node.inputs
        if v is not None
    ]
    return str(torch.result_type(metas[0], metas[1])).removeprefix("torch.")


def _operands(ctx: OnnxLowerContext, node: Node, inputs: Names, dtype: str) -> list[str]:
    return [ctx.cast(_name(x), _in_dtype(node, i), dtype) for i, x in enumerate(inputs)]


# ----------------------------------------------------------------------------- elementwise

_ARITH = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow", "maximum": "Max", "minimum": "Min"}
_COMPARE = {"eq": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual"}


def _arith(onnx_op: str) -> Any:
    def lower(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
        dtype = _out_dtype(node)
        if dtype == "bool" and onnx_op in ("Add", "Mul", "Max", "Min"):
            # torch: bool + bool = or, bool * bool = and
            op = {"Add": "Or", "Max": "Or", "Mul": "And", "Min": "And"}[onnx_op]
            return ctx.add_node(op, _operands(ctx, node, inputs, "bool"))
        return ctx.add_node(onnx_op, _operands(ctx, node, inputs, dtype))

    return lower


def _compare(onnx_op: str) -> Any:
    def lower(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
        return ctx.add_node(onnx_op, _operands(ctx, node, inputs, _promoted(node)))

    return lower


for _op, _onnx in _ARITH.items():
    register_onnx_lowering(_op)(_arith(_onnx))
for _op, _onnx in _COMPARE.items():
    register_onnx_lowering(_op)(_compare(_onnx))


@register_onnx_lowering("ne")
def lower_ne(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """a != b -> Not(Equal(a, b))"""
    eq = ctx.add_node("Equal", _operands(ctx, node, inputs, _promoted(node)))
    return ctx.add_node("Not", eq)


@register_onnx_lowering("logical_and")
def lower_logical_and(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    return ctx.add_node("And", _operands(ctx, node, inputs, "bool"))


@register_onnx_lowering("logical_or")
def lower_logical_or(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    return ctx.add_node("Or", _operands(ctx, node, inputs, "bool"))


def _bitwise(bool_op: str, int_op: str) -> Any:
    def lower(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
        dtype = _out_dtype(node)
        return ctx.add_node(bool_op if dtype == "bool" else int_op, _operands(ctx, node, inputs, dtype))

    return lower


register_onnx_lowering("bitwise_and")(_bitwise("And", "BitwiseAnd"))
register_onnx_lowering("bitwise_or")(_bitwise("Or", "BitwiseOr"))


@register_onnx_lowering("floor_divide")
def lower_floor_divide(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """floats: floor(a / b);  integers: (a - mod(a, b)) / b   (mod takes the divisor's sign)"""
    dtype = _out_dtype(node)
    a, b = _operands(ctx, node, inputs, dtype)
    if _is_float(dtype):
        return ctx.add_node("Floor", ctx.add_node("Div", [a, b]))
    m = ctx.add_node("Mod", [a, b], fmod=0)[0]
    return ctx.add_node("Div", [ctx.add_node("Sub", [a, m])[0], b])


@register_onnx_lowering("remainder")
def lower_remainder(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """r = fmod(a, b) + b where fmod(a, b) != 0 and its sign differs from b's  (Python's %)"""
    dtype = _out_dtype(node)
    a, b = _operands(ctx, node, inputs, dtype)
    if not _is_float(dtype):
        return ctx.add_node("Mod", [a, b], fmod=0)
    m = ctx.add_node("Mod", [a, b], fmod=1)[0]
    zero = ctx.scalar(0, dtype, "zero")
    nonzero = ctx.add_node("Not", ctx.add_node("Equal", [m, zero]))[0]
    flip = ctx.add_node("Xor", [ctx.add_node("Less", [m, zero])[0], ctx.add_node("Less", [b, zero])[0]])[0]
    fix = ctx.add_node("And", [nonzero, flip])[0]
    return ctx.add_node("Where", [fix, ctx.add_node("Add", [m, b])[0], m])


_UNARY = {
    "neg": "Neg",
    "exp": "Exp",
    "log": "Log",
    "sqrt": "Sqrt",
    "abs": "Abs",
    "sin": "Sin",
    "cos": "Cos",
    "tanh": "Tanh",
    "sigmoid": "Sigmoid",
    "relu": "Relu",
    "erf": "Erf",
    "reciprocal": "Reciprocal",
    "hardswish": "HardSwish",
    "sign": "Sign",
    "floor": "Floor",
    "ceil": "Ceil",
    "round": "Round",
    "identity": "Identity",
}


def _unary(onnx_op: str) -> Any:
    def lower(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
        dtype = _out_dtype(node)
        x = ctx.cast(_name(inputs[0]), _in_dtype(node, 0), dtype)
        if onnx_op in ("Floor", "Ceil", "Round") and not _is_float(dtype):
            return ctx.add_node("Identity", [x])  # integers are already whole
        if onnx_op == "Relu" and not _is_float(dtype):
            return ctx.add_node("Max", [x, ctx.scalar(0, dtype, "zero")])  # onnxruntime has no integer Relu
        return ctx.add_node(onnx_op, [x])

    return lower


for _op, _onnx in _UNARY.items():
    register_onnx_lowering(_op)(_unary(_onnx))


@register_onnx_lowering("rsqrt")
def lower_rsqrt(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    x = ctx.cast(_name(inputs[0]), _in_dtype(node, 0), _out_dtype(node))
    return ctx.add_node("Reciprocal", ctx.add_node("Sqrt", [x]))


@register_onnx_lowering("silu")
def lower_silu(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """silu(x) -> x * sigmoid(x)"""
    x = _name(inputs[0])
    return ctx.add_node("Mul", [x, ctx.add_node("Sigmoid", [x])[0]])


@register_onnx_lowering("hardsigmoid")
def lower_hardsigmoid(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    return ctx.add_node("HardSigmoid", [_name(inputs[0])], alpha=1.0 / 6.0, beta=0.5)


@register_onnx_lowering("logical_not")
def lower_logical_not(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    return ctx.add_node("Not", [ctx.cast(_name(inputs[0]), _in_dtype(node, 0), "bool")])


@register_onnx_lowering("gelu")
def lower_gelu(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    return ctx.add_node("Gelu", [_name(inputs[0])], approximate=str(node.attrs.get("approximate", "none")))


@register_onnx_lowering("leaky_relu")
def lower_leaky_relu(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    return ctx.add_node("LeakyRelu", [_name(inputs[0])], alpha=float(node.attrs.get("negative_slope", 0.01)))


@register_onnx_lowering("elu")
def lower_elu(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    return ctx.add_node("Elu", [_name(inputs[0])], alpha=float(node.attrs.get("alpha", 1.0)))


@register_onnx_lowering("softplus")
def lower_softplus(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """softplus(x) = x where beta*x > threshold, else log(1 + exp(beta*x)) / beta"""
    x = _name(inputs[0])
    dtype = _out_dtype(node)
    beta, threshold = float(node.attrs.get("beta", 1.0)), float(node.attrs.get("threshold", 20.0))
    bx = x if beta == 1.0 else ctx.add_node("Mul", [x, ctx.scalar(beta, dtype, "beta")])[0]
    sp = ctx.add_node("Softplus", [bx])[0]
    if beta != 1.0:
        sp = ctx.add_node("Div", [sp, ctx.scalar(beta, dtype, "beta")])[0]
    big = ctx.add_node("Greater", [bx, ctx.scalar(threshold, dtype, "threshold")])[0]
    return ctx.add_node("Where", [big, x, sp])


@register_onnx_lowering("clamp")
def lower_clamp(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    dtype = _out_dtype(node)
    x = ctx.cast(_name(inputs[0]), _in_dtype(node, 0), dtype)
    lo, hi = node.attrs.get("min"), node.attrs.get("max")
    if dtype == "bool":
        raise ValueError("clamp of a bool tensor")
    lo_n = ctx.scalar(lo, dtype, "min") if lo is not None else None
    hi_n = ctx.scalar(hi, dtype, "max") if hi is not None else None
    if lo is not None and hi is not None and lo > hi:
        # torch: min > max gives max everywhere
        return ctx.add_node("Max", [ctx.add_node("Min", [x, _name(hi_n)])[0], _name(hi_n)])
    return ctx.add_node("Clip", [x, lo_n, hi_n])


@register_onnx_lowering("where")
def lower_where(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    dtype = _out_dtype(node)
    cond = ctx.cast(_name(inputs[0]), _in_dtype(node, 0), "bool")
    a = ctx.cast(_name(inputs[1]), _in_dtype(node, 1), dtype)
    b = ctx.cast(_name(inputs[2]), _in_dtype(node, 2), dtype)
    return ctx.add_node("Where", [cond, a, b])


@register_onnx_lowering("cast")
def lower_cast(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    src, dst = _in_dtype(node, 0), _out_dtype(node)
    if src == dst:
        return ctx.add_node("Identity", [_name(inputs[0])])
    return ctx.add_node("Cast", [_name(inputs[0])], to=onnx_dtype(dst))


@register_onnx_lowering("dropout")
def lower_dropout(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """inference: dropout(x) = x"""
    return ctx.add_node("Identity", [_name(inputs[0])])


# ----------------------------------------------------------------------------- linear algebra


@register_onnx_lowering("linear")
def lower_linear(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """linear(x, W, b) = x @ W^T + b   (Gemm with transB for 2-D x: W is stored once, untransposed)"""
    x, w, b = _name(inputs[0]), _name(inputs[1]), inputs[2] if len(inputs) > 2 else None
    xs, ws = _in_shape(node, 0), _in_shape(node, 1)
    if len(ws) != 2:
        raise ValueError(f"linear weight must be 2-D, got {list(ws)}")
    if len(xs) == 2:
        return ctx.add_node("Gemm", [x, w, b], transB=1)
    wt = ctx.add_node("Transpose", [w], perm=[1, 0], name_hint=f"{node.name}.wT")[0]
    y = ctx.add_node("MatMul", [x, wt])[0]
    if b is None:
        return [y]
    return ctx.add_node("Add", [y, b])


@register_onnx_lowering("matmul")
def lower_matmul(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    return ctx.add_node("MatMul", _operands(ctx, node, inputs, _out_dtype(node)))


def _pair(v: Any, n: int) -> list[int]:
    if isinstance(v, (list, tuple)):
        return [int(x) for x in v] if len(v) == n else [int(v[0])] * n
    return [int(v)] * n


@register_onnx_lowering("conv1d")
@register_onnx_lowering("conv2d")
def lower_conv(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """conv(x, W) + b with explicit pads ('same' padding puts the odd pixel at the end, as torch does)"""
    nd = 1 if node.op == "conv1d" else 2
    ws = _in_shape(node, 1)
    stride = _pair(node.attrs.get("stride", 1), nd)
    dilation = _pair(node.attrs.get("dilation", 1), nd)
    padding = node.attrs.get("padding", 0)
    if padding == "valid":
        begin = end = [0] * nd
    elif padding == "same":
        total = [d * (k - 1) for d, k in zip(dilation, ws[2:])]
        begin = [t // 2 for t in total]
        end = [t - t // 2 for t in total]
    else:
        begin = end = _pair(padding, nd)
    return ctx.add_node(
        "Conv",
        [_name(inputs[0]), _name(inputs[1]), inputs[2] if len(inputs) > 2 else None],
        kernel_shape=list(ws[2:]),
        strides=stride,
        dilations=dilation,
        pads=begin + end,
        group=int(node.attrs.get("groups", 1)),
    )


@register_onnx_lowering("embedding")
def lower_embedding(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """embedding(W, idx) = Gather(W, idx, axis=0)"""
    return ctx.add_node("Gather", [_name(inputs[0]), _name(inputs[1])], axis=0)


# ----------------------------------------------------------------------------- normalization


def _ones_or(ctx: OnnxLowerContext, x: str | None, shape: Sequence[int], dtype: str, value: float, hint: str) -> str:
    if x is not None:
        return x
    return ctx.add_initializer(torch.full(tuple(shape), value, dtype=to_torch_dtype(dtype)), hint)


@register_onnx_lowering("batch_norm")
def lower_batch_norm(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """y = (x - mean) / sqrt(var + eps) * w + b"""
    c = _in_shape(node, 0)[1]
    dtype = _out_dtype(node)
    w = _ones_or(ctx, inputs[1], (c,), dtype, 1.0, f"{node.name}.weight")
    b = _ones_or(ctx, inputs[2], (c,), dtype, 0.0, f"{node.name}.bias")
    return ctx.add_node(
        "BatchNormalization", [_name(inputs[0]), w, b, _name(inputs[3]), _name(inputs[4])], epsilon=float(node.attrs.get("eps", 1e-5))
    )


def _norm_shape(node: Node) -> tuple[int, ...]:
    ns = node.attrs.get("normalized_shape")
    xs = _in_shape(node, 0)
    return tuple(int(s) for s in ns) if ns is not None else (xs[-1],)


@register_onnx_lowering("layer_norm")
def lower_layer_norm(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    shape = _norm_shape(node)
    dtype = _out_dtype(node)
    w = _ones_or(ctx, inputs[1] if len(inputs) > 1 else None, shape, dtype, 1.0, f"{node.name}.weight")
    b = inputs[2] if len(inputs) > 2 else None
    return ctx.add_node("LayerNormalization", [_name(inputs[0]), w, b], axis=-len(shape), epsilon=float(node.attrs.get("eps", 1e-5)))


@register_onnx_lowering("rms_norm")
def lower_rms_norm(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """rms_norm(x) = x / sqrt(mean(x^2 over the normalized dims) + eps) * w   (RMSNormalization is opset 23)"""
    x = _name(inputs[0])
    dtype = _out_dtype(node)
    shape = _norm_shape(node)
    nd = len(_in_shape(node, 0))
    eps = node.attrs.get("eps")
    if eps is None:
        eps = float(torch.finfo(to_torch_dtype(dtype)).eps)
    axes = ctx.ints(list(range(nd - len(shape), nd)), "axes")
    ms = ctx.add_node("ReduceMean", [ctx.add_node("Mul", [x, x])[0], axes], keepdims=1)[0]
    r = ctx.add_node("Reciprocal", ctx.add_node("Sqrt", ctx.add_node("Add", [ms, ctx.scalar(eps, dtype, "eps")])))[0]
    y = ctx.add_node("Mul", [x, r])[0]
    w = inputs[1] if len(inputs) > 1 else None
    return [y] if w is None else ctx.add_node("Mul", [y, w])


@register_onnx_lowering("softmax")
def lower_softmax(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    return ctx.add_node("Softmax", [_name(inputs[0])], axis=int(node.attrs.get("dim", -1)))


@register_onnx_lowering("log_softmax")
def lower_log_softmax(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    return ctx.add_node("LogSoftmax", [_name(inputs[0])], axis=int(node.attrs.get("dim", -1)))


@register_onnx_lowering("sdpa")
def lower_sdpa(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """sdpa(q, k, v, mask) = softmax(q k^T * scale + mask) v   (Attention is opset 23)"""
    q, k, v = _name(inputs[0]), _name(inputs[1]), _name(inputs[2])
    mask = inputs[3] if len(inputs) > 3 else None
    qs, ks = _in_shape(node, 0), _in_shape(node, 1)
    dtype = _out_dtype(node)
    L, S, E = qs[-2], ks[-2], qs[-1]
    scale = node.attrs.get("scale")
    scale = 1.0 / math.sqrt(E) if scale is None else float(scale)
    if node.attrs.get("enable_gqa") and len(qs) >= 3 and qs[-3] != ks[-3]:
        rep = qs[-3] // ks[-3]
        k = _repeat_heads(ctx, k, ks, rep)
        v = _repeat_heads(ctx, v, _in_shape(node, 2), rep)
    nd = len(ks)
    kt = ctx.add_node("Transpose", [k], perm=[*range(nd - 2), nd - 1, nd - 2])[0]
    scores = ctx.add_node("MatMul", [q, kt])[0]
    scores = ctx.add_node("Mul", [scores, ctx.scalar(scale, dtype, "scale")])[0]
    if node.attrs.get("is_causal"):
        keep = torch.ones(L, S, dtype=torch.bool).tril()
        bias = torch.zeros(L, S, dtype=to_torch_dtype(dtype)).masked_fill(~keep, float("-inf"))
        scores = ctx.add_node("Add", [scores, ctx.add_initializer(bias, "causal_mask")])[0]
    if mask is not None:
        if _in_dtype(node, 3) == "bool":
            neg = ctx.scalar(float("-inf"), dtype, "neg_inf")
            scores = ctx.add_node("Where", [mask, scores, neg])[0]
        else:
            scores = ctx.add_node("Add", [scores, ctx.cast(mask, _in_dtype(node, 3), dtype)])[0]
    probs = ctx.add_node("Softmax", [scores], axis=-1)[0]
    return ctx.add_node("MatMul", [probs, v])


def _repeat_heads(ctx: OnnxLowerContext, x: str, shape: tuple[int, ...], rep: int) -> str:
    """(..., H, S, E) -> (..., H*rep, S, E), each head repeated `rep` times in place (repeat_interleave)."""
    lead, h, s, e = shape[:-3], shape[-3], shape[-2], shape[-1]
    u = ctx.add_node("Unsqueeze", [x, ctx.ints([len(shape) - 2], "axes")])[0]
    ex = ctx.add_node("Expand", [u, ctx.ints([*lead, h, rep, s, e], "shape")])[0]
    return ctx.add_node("Reshape", [ex, ctx.ints([*lead, h * rep, s, e], "shape")])[0]


# ----------------------------------------------------------------------------- pooling


@register_onnx_lowering("max_pool2d")
def lower_max_pool2d(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    k = _pair(node.attrs["kernel_size"], 2)
    stride = _pair(node.attrs.get("stride") or k, 2)
    pad = _pair(node.attrs.get("padding", 0), 2)
    return ctx.add_node(
        "MaxPool",
        [_name(inputs[0])],
        kernel_shape=k,
        strides=stride,
        pads=pad + pad,
        dilations=_pair(node.attrs.get("dilation", 1), 2),
        ceil_mode=int(bool(node.attrs.get("ceil_mode", False))),
    )


@register_onnx_lowering("avg_pool2d")
def lower_avg_pool2d(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    k = _pair(node.attrs["kernel_size"], 2)
    stride = _pair(node.attrs.get("stride") or k, 2)
    pad = _pair(node.attrs.get("padding", 0), 2)
    divisor = node.attrs.get("divisor_override")
    include = bool(node.attrs.get("count_include_pad", True)) or divisor is not None
    y = ctx.add_node(
        "AveragePool",
        [_name(inputs[0])],
        kernel_shape=k,
        strides=stride,
        pads=pad + pad,
        ceil_mode=int(bool(node.attrs.get("ceil_mode", False))),
        count_include_pad=int(include),
    )
    if divisor is None:
        return y
    # sum over the window / divisor = mean over k*k cells * (k*k / divisor)
    return ctx.add_node("Mul", [y[0], ctx.scalar(k[0] * k[1] / float(divisor), _out_dtype(node), "divisor")])


@register_onnx_lowering("adaptive_avg_pool2d")
def lower_adaptive_avg_pool2d(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """Even bins: AveragePool; uneven bins: P_h @ x @ P_w^T with row-averaging matrices P."""
    x = _name(inputs[0])
    xs = _in_shape(node, 0)
    h, w = xs[-2], xs[-1]
    oh, ow = node.outputs[0].shape[-2:]
    if (oh, ow) == (1, 1):
        return ctx.add_node("GlobalAveragePool", [x])
    if h % oh == 0 and w % ow == 0:
        k = [h // oh, w // ow]
        return ctx.add_node("AveragePool", [x], kernel_shape=k, strides=k)
    dtype = to_torch_dtype(_out_dtype(node))
    pw = ctx.add_initializer(_bins(w, ow, dtype).T.contiguous(), "pool_w")
    ph = ctx.add_initializer(_bins(h, oh, dtype), "pool_h")
    return ctx.add_node("MatMul", [ph, ctx.add_node("MatMul", [x, pw])[0]])


def _bins(n: int, out: int, dtype: torch.dtype) -> torch.Tensor:
    """(out, n) matrix averaging torch's adaptive bins [floor(i*n/out), ceil((i+1)*n/out))."""
    m = torch.zeros(out, n, dtype=torch.float64)
    for i in range(out):
        lo, hi = (i * n) // out, -((-(i + 1) * n) // out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m.to(dtype)


# ----------------------------------------------------------------------------- reductions


def _dims(node: Node, key: str = "dim") -> list[int]:
    nd = len(_in_shape(node, 0))
    dim = node.attrs.get(key)
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return list(range(nd))
    dims = [dim] if isinstance(dim, int) else list(dim)
    return [_axis(int(d), nd) for d in dims]


def _reduce(onnx_op: str) -> Any:
    def lower(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
        dtype = _out_dtype(node)
        x = ctx.cast(_name(inputs[0]), _in_dtype(node, 0), dtype)
        if len(_in_shape(node, 0)) == 0:
            return ctx.add_node("Identity", [x])
        keep = int(bool(node.attrs.get("keepdim", False)))
        return ctx.add_node(onnx_op, [x, ctx.ints(_dims(node), "axes")], keepdims=keep)

    return lower


register_onnx_lowering("mean")(_reduce("ReduceMean"))
register_onnx_lowering("sum")(_reduce("ReduceSum"))
register_onnx_lowering("amax")(_reduce("ReduceMax"))


@register_onnx_lowering("argmax")
def lower_argmax(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """torch.argmax: the first maximal index; dim=None searches the flattened tensor."""
    x = _name(inputs[0])
    dim = node.attrs.get("dim")
    keep = int(bool(node.attrs.get("keepdim", False)))
    if dim is None:
        flat = ctx.add_node("Reshape", [x, ctx.ints([-1], "shape")])[0]
        idx = ctx.add_node("ArgMax", [flat], axis=0, keepdims=0)[0]
        return ctx.add_node("Reshape", [idx, ctx.ints(list(node.outputs[0].shape), "shape")])
    return ctx.add_node("ArgMax", [x], axis=int(dim), keepdims=keep)


# ----------------------------------------------------------------------------- shape


def _reshape_to_output(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """Every view-like op is a Reshape to the IR output shape (one symbolic dim: -1)."""
    return ctx.add_node("Reshape", [_name(inputs[0]), ctx.ints(ctx.reshape_target(node.outputs[0].shape), "shape")])


for _op in ("reshape", "flatten", "unsqueeze", "squeeze"):
    register_onnx_lowering(_op)(_reshape_to_output)


@register_onnx_lowering("permute")
def lower_permute(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    nd = len(_in_shape(node, 0))
    return ctx.add_node("Transpose", [_name(inputs[0])], perm=[_axis(int(d), nd) for d in node.attrs["dims"]])


@register_onnx_lowering("transpose")
def lower_transpose(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    nd = len(_in_shape(node, 0))
    perm = list(range(nd))
    a, b = _axis(int(node.attrs["dim0"]), nd), _axis(int(node.attrs["dim1"]), nd)
    perm[a], perm[b] = perm[b], perm[a]
    return ctx.add_node("Transpose", [_name(inputs[0])], perm=perm)


@register_onnx_lowering("expand")
def lower_expand(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    return ctx.add_node("Expand", [_name(inputs[0]), ctx.ints(list(node.outputs[0].shape), "shape")])


@register_onnx_lowering("repeat")
def lower_repeat(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """repeat(x, reps) = Tile(x viewed with leading 1s to len(reps) dims, reps)"""
    reps = [int(r) for r in node.attrs["repeats"]]
    xs = _in_shape(node, 0)
    x = _name(inputs[0])
    if len(reps) > len(xs):
        x = ctx.add_node("Reshape", [x, ctx.ints([1] * (len(reps) - len(xs)) + list(xs), "shape")])[0]
    return ctx.add_node("Tile", [x, ctx.ints(reps, "repeats")])


@register_onnx_lowering("slice")
def lower_slice(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    xs = _in_shape(node, 0)
    dim = _axis(int(node.attrs.get("dim", 0)), len(xs))
    size = xs[dim]
    start, end, step = node.attrs.get("start"), node.attrs.get("end"), int(node.attrs.get("step", 1))
    # torch clamps out-of-range bounds (start/end are python-slice semantics)
    s, e, _ = slice(start, end, step).indices(size)
    e = max(e, s)
    return ctx.add_node(
        "Slice", [_name(inputs[0]), ctx.ints([s], "starts"), ctx.ints([e], "ends"), ctx.ints([dim], "axes"), ctx.ints([step], "steps")]
    )


@register_onnx_lowering("select")
def lower_select(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    xs = _in_shape(node, 0)
    dim = _axis(int(node.attrs["dim"]), len(xs))
    index = int(node.attrs["index"])
    index = index + xs[dim] if index < 0 else index
    idx = ctx.add_initializer(np.asarray(index, dtype=np.int64), "index")
    return ctx.add_node("Gather", [_name(inputs[0]), idx], axis=dim)


@register_onnx_lowering("cat")
def lower_cat(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    dtype = _out_dtype(node)
    return ctx.add_node("Concat", _operands(ctx, node, inputs, dtype), axis=int(node.attrs.get("dim", 0)))


@register_onnx_lowering("stack")
def lower_stack(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    dtype = _out_dtype(node)
    nd = len(node.outputs[0].shape)
    dim = _axis(int(node.attrs.get("dim", 0)), nd)
    axes = ctx.ints([dim], "axes")
    parts = [ctx.add_node("Unsqueeze", [x, axes])[0] for x in _operands(ctx, node, inputs, dtype)]
    return ctx.add_node("Concat", parts, axis=dim)


@register_onnx_lowering("split")
def lower_split(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    sizes = [int(s) for s in node.attrs["sizes"]]
    return ctx.add_node("Split", [_name(inputs[0]), ctx.ints(sizes, "split")], n_outputs=len(sizes), axis=int(node.attrs.get("dim", 0)))


@register_onnx_lowering("index_select")
def lower_index_select(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    idx = ctx.cast(_name(inputs[1]), _in_dtype(node, 1), "int64")
    if len(_in_shape(node, 1)) == 0:  # torch keeps the dim for a 0-d index
        idx = ctx.add_node("Reshape", [idx, ctx.ints([1], "shape")])[0]
    return ctx.add_node("Gather", [_name(inputs[0]), idx], axis=int(node.attrs.get("dim", 0)))


@register_onnx_lowering("gather")
def lower_gather(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """torch.gather(x, dim, idx): idx may be smaller than x off `dim`; slice x down to it first."""
    xs, ids = _in_shape(node, 0), _in_shape(node, 1)
    dim = _axis(int(node.attrs.get("dim", 0)), len(xs))
    x = _name(inputs[0])
    axes = [a for a in range(len(xs)) if a != dim and ids[a] != xs[a]]
    if axes:
        x = ctx.add_node(
            "Slice", [x, ctx.ints([0] * len(axes), "starts"), ctx.ints([ids[a] for a in axes], "ends"), ctx.ints(axes, "axes")]
        )[0]
    idx = ctx.cast(_name(inputs[1]), _in_dtype(node, 1), "int64")
    return ctx.add_node("GatherElements", [x, idx], axis=dim)


def _trilu(upper: int) -> Any:
    def lower(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
        k = ctx.add_initializer(np.asarray(int(node.attrs.get("diagonal", 0)), dtype=np.int64), "k")
        return ctx.add_node("Trilu", [_name(inputs[0]), k], upper=upper)

    return lower


register_onnx_lowering("tril")(_trilu(0))
register_onnx_lowering("triu")(_trilu(1))


@register_onnx_lowering("masked_fill")
def lower_masked_fill(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    dtype = _out_dtype(node)
    value = node.attrs.get("value", 0.0)
    mask = ctx.cast(_name(inputs[1]), _in_dtype(node, 1), "bool")
    fill = ctx.scalar(value if _is_float(dtype) else int(value), dtype, "fill")
    return ctx.add_node("Where", [mask, fill, _name(inputs[0])])


@register_onnx_lowering("pad")
def lower_pad(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """torch pads (last dim first: l, r, ...) -> ONNX pads [begin per axis..., end per axis...]"""
    pad = [int(p) for p in node.attrs["pad"]]
    nd = len(_in_shape(node, 0))
    begin, end = [0] * nd, [0] * nd
    for i in range(len(pad) // 2):
        begin[nd - 1 - i], end[nd - 1 - i] = pad[2 * i], pad[2 * i + 1]
    mode = str(node.attrs.get("mode", "constant"))
    onnx_mode = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}.get(mode)
    if onnx_mode is None:
        raise ValueError(f"pad mode {mode!r} has no ONNX form")
    dtype = _out_dtype(node)
    value = node.attrs.get("value", 0.0) or 0.0
    cval = ctx.scalar(value if _is_float(dtype) else int(value), dtype, "pad_value") if onnx_mode == "constant" else None
    return ctx.add_node("Pad", [_name(inputs[0]), ctx.ints(begin + end, "pads"), cval], mode=onnx_mode)


@register_onnx_lowering("index")
def lower_index(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """x[..., i_0, ..., i_k] = GatherND(x with the indexed axes moved first, stack(broadcast(i)))

    Like numpy, the broadcast index dims replace the indexed axes in place when those are
    adjacent, and lead the result otherwise.
    """
    xs = _in_shape(node, 0)
    nd = len(xs)
    k = len(inputs) - 1
    dims = [_axis(int(d), nd) for d in (node.attrs.get("dims") or range(k))]
    for i in range(k):
        if _in_dtype(node, i + 1) == "bool":
            raise ValueError("boolean-mask indexing has a data-dependent shape")
    rest = [d for d in range(nd) if d not in dims]
    x = _name(inputs[0])
    if dims + rest != list(range(nd)):
        x = ctx.add_node("Transpose", [x], perm=dims + rest)[0]
    bshape = list(torch.broadcast_shapes(*[_in_shape(node, i + 1) for i in range(k)]))
    parts = []
    for i in range(k):
        idx = ctx.cast(_name(inputs[i + 1]), _in_dtype(node, i + 1), "int64")
        idx = ctx.add_node("Expand", [idx, ctx.ints(bshape, "shape")])[0]
        parts.append(ctx.add_node("Unsqueeze", [idx, ctx.ints([len(bshape)], "axes")])[0])
    idx = parts[0] if k == 1 else ctx.add_node("Concat", parts, axis=-1)[0]
    y = ctx.add_node("GatherND", [x, idx])[0]  # shape: bshape + [xs[d] for d in rest]
    nb = len(bshape)
    adjacent = sorted(dims) == list(range(min(dims), min(dims) + k))
    if not adjacent or min(dims) == 0:
        return [y]
    lead = min(dims)  # axes of `rest` that come before the indexed block
    perm = [nb + j for j in range(lead)] + list(range(nb)) + [nb + j for j in range(lead, len(rest))]
    return ctx.add_node("Transpose", [y], perm=perm)
