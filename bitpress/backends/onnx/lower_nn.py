"""ONNX lowerings of the wider op set: transposed and 3-d convolutions, 1-d/3-d and adaptive
pools, group norm, Resize, CumSum, TopK/sort, flip, scatter, var, and a few more elementwise ops.

Same conventions as lower_core: operands cast to the dtype torch computes in, shapes static
(taken from the IR), every shape-valued input an int64 initializer.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from bitpress.backends.onnx.lower_core import _axis, _bins, _dims, _in_dtype, _in_shape, _is_float, _name, _out_dtype, _pair
from bitpress.backends.onnx.lowering import OnnxLowerContext, register_onnx_lowering
from bitpress.compiler.ir import Node, to_torch_dtype

Names = list[str | None]

# ----------------------------------------------------------------------------- elementwise

_UNARY = {"atan": "Atan", "asin": "Asin", "acos": "Acos", "sinh": "Sinh", "cosh": "Cosh", "tan": "Tan"}


def _unary(onnx_op: str) -> Any:
    def lower(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
        return ctx.add_node(onnx_op, [ctx.cast(_name(inputs[0]), _in_dtype(node, 0), _out_dtype(node))])

    return lower


for _op, _onnx in _UNARY.items():
    register_onnx_lowering(_op)(_unary(_onnx))


def _x(ctx: OnnxLowerContext, node: Node, inputs: Names) -> str:
    return ctx.cast(_name(inputs[0]), _in_dtype(node, 0), _out_dtype(node))


@register_onnx_lowering("log1p")
def lower_log1p(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """log1p(x) = Log(x + 1)"""
    return ctx.add_node("Log", ctx.add_node("Add", [_x(ctx, node, inputs), ctx.scalar(1.0, _out_dtype(node), "one")]))


@register_onnx_lowering("expm1")
def lower_expm1(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """expm1(x) = Exp(x) - 1"""
    return ctx.add_node("Sub", [ctx.add_node("Exp", [_x(ctx, node, inputs)])[0], ctx.scalar(1.0, _out_dtype(node), "one")])


@register_onnx_lowering("trunc")
def lower_trunc(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """trunc(x) = x - fmod(x, 1)"""
    x = _x(ctx, node, inputs)
    if not _is_float(_out_dtype(node)):
        return ctx.add_node("Identity", [x])
    return ctx.add_node("Sub", [x, ctx.add_node("Mod", [x, ctx.scalar(1.0, _out_dtype(node), "one")], fmod=1)[0]])


@register_onnx_lowering("isnan")
def lower_isnan(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    x = _name(inputs[0])
    if not _is_float(_in_dtype(node, 0)):
        return ctx.add_node("Not", ctx.add_node("Equal", [x, x]))
    return ctx.add_node("IsNaN", [x])


@register_onnx_lowering("isinf")
def lower_isinf(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    x = _name(inputs[0])
    if not _is_float(_in_dtype(node, 0)):
        return ctx.add_node("Not", ctx.add_node("Equal", [x, x]))
    return ctx.add_node("IsInf", [x])


@register_onnx_lowering("bitwise_not")
def lower_bitwise_not(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    return ctx.add_node("Not" if _in_dtype(node, 0) == "bool" else "BitwiseNot", [_name(inputs[0])])


@register_onnx_lowering("fmod")
def lower_fmod(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """fmod(a, b) = Mod(a, b, fmod=1)   (the sign of a)"""
    d = _out_dtype(node)
    return ctx.add_node("Mod", [ctx.cast(_name(inputs[i]), _in_dtype(node, i), d) for i in (0, 1)], fmod=1)


# ----------------------------------------------------------------------------- reductions


def _keep(node: Node) -> int:
    return int(bool(node.attrs.get("keepdim", False)))


def _reduce(onnx_op: str) -> Any:
    def lower(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
        x = _x(ctx, node, inputs)
        if len(_in_shape(node, 0)) == 0:
            return ctx.add_node("Identity", [x])
        return ctx.add_node(onnx_op, [x, ctx.ints(_dims(node), "axes")], keepdims=_keep(node))

    return lower


register_onnx_lowering("prod")(_reduce("ReduceProd"))
register_onnx_lowering("amin")(_reduce("ReduceMin"))


@register_onnx_lowering("any")
@register_onnx_lowering("all")
def lower_any_all(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """any = ReduceMax(x != 0), all = ReduceMin(x != 0)   (over int32 0/1)"""
    nz = ctx.cast(ctx.cast(_name(inputs[0]), _in_dtype(node, 0), "bool"), "bool", "int32")
    red = ctx.add_node("ReduceMax" if node.op == "any" else "ReduceMin", [nz, ctx.ints(_dims(node), "axes")], keepdims=_keep(node))
    return [ctx.cast(red[0], "int32", "bool")]


@register_onnx_lowering("argmin")
def lower_argmin(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    x = _name(inputs[0])
    dim = node.attrs.get("dim")
    if dim is None:
        flat = ctx.add_node("Reshape", [x, ctx.ints([-1], "shape")])[0]
        idx = ctx.add_node("ArgMin", [flat], axis=0, keepdims=0)[0]
        return ctx.add_node("Reshape", [idx, ctx.ints(list(node.outputs[0].shape), "shape")])
    return ctx.add_node("ArgMin", [x], axis=int(dim), keepdims=_keep(node))


@register_onnx_lowering("var")
def lower_var(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """var(x) = ReduceSum((x - mean)^2) / (n - correction)"""
    d = _out_dtype(node)
    x = _x(ctx, node, inputs)
    axes = _dims(node)
    shape = _in_shape(node, 0)
    n = math.prod(shape[a] for a in axes)
    ax = ctx.ints(axes, "axes")
    c = ctx.add_node("Sub", [x, ctx.add_node("ReduceMean", [x, ax], keepdims=1)[0]])[0]
    ss = ctx.add_node("ReduceSum", [ctx.add_node("Mul", [c, c])[0], ax], keepdims=_keep(node))[0]
    return ctx.add_node("Div", [ss, ctx.scalar(max(n - float(node.attrs.get("correction", 1.0)), 0.0), d, "dof")])


@register_onnx_lowering("cumsum")
def lower_cumsum(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    nd = len(_in_shape(node, 0))
    axis = ctx.add_initializer(torch.tensor(_axis(int(node.attrs.get("dim", 0)), nd), dtype=torch.int64), "axis")
    return ctx.add_node("CumSum", [_x(ctx, node, inputs), axis])


# ----------------------------------------------------------------------------- data movement


@register_onnx_lowering("flip")
def lower_flip(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """flip = Slice(x, -1, -inf, step -1) on each flipped axis"""
    nd = len(_in_shape(node, 0))
    axes = [_axis(int(d), nd) for d in node.attrs["dims"]]
    big = -(2**62)
    return ctx.add_node(
        "Slice",
        [
            _name(inputs[0]),
            ctx.ints([-1] * len(axes), "starts"),
            ctx.ints([big] * len(axes), "ends"),
            ctx.ints(axes, "axes"),
            ctx.ints([-1] * len(axes), "steps"),
        ],
    )


@register_onnx_lowering("topk")
def lower_topk(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    nd = len(_in_shape(node, 0))
    axis = _axis(int(node.attrs.get("dim", -1)), nd)
    k = ctx.ints([int(node.attrs["k"])], "k")
    return ctx.add_node("TopK", [_name(inputs[0]), k], n_outputs=2, axis=axis, largest=int(bool(node.attrs.get("largest", True))), sorted=1)


@register_onnx_lowering("sort")
def lower_sort(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """sort = TopK with k = the axis length"""
    shape = _in_shape(node, 0)
    axis = _axis(int(node.attrs.get("dim", -1)), len(shape))
    k = ctx.ints([shape[axis]], "k")
    largest = int(bool(node.attrs.get("descending", False)))
    return ctx.add_node("TopK", [_name(inputs[0]), k], n_outputs=2, axis=axis, largest=largest, sorted=1)


_SCATTER_REDUCE = {"none": "none", "sum": "add", "prod": "mul", "amax": "max", "amin": "min"}


@register_onnx_lowering("scatter")
def lower_scatter(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    reduce = str(node.attrs.get("reduce", "none"))
    if reduce not in _SCATTER_REDUCE:
        raise ValueError(f"scatter reduce={reduce!r} is not supported ({sorted(_SCATTER_REDUCE)})")
    nd = len(_in_shape(node, 0))
    d = _out_dtype(node)
    src = ctx.cast(_name(inputs[2]), _in_dtype(node, 2), d)
    idx = ctx.cast(_name(inputs[1]), _in_dtype(node, 1), "int64")
    return ctx.add_node(
        "ScatterElements", [_name(inputs[0]), idx, src], axis=_axis(int(node.attrs.get("dim", 0)), nd), reduction=_SCATTER_REDUCE[reduce]
    )


@register_onnx_lowering("index_put")
def lower_index_put(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """y = ScatterND(x, stack(broadcast(idx), -1), broadcast(values))   (leading indexed axes)"""
    xs = _in_shape(node, 0)
    k = len(inputs) - 2
    dims = [_axis(int(a), len(xs)) for a in (node.attrs.get("dims") or range(k))]
    if dims != list(range(k)):
        raise ValueError(f"index_put on axes {dims} is not supported (only leading axes)")
    bshape = list(torch.broadcast_shapes(*[_in_shape(node, i + 2) for i in range(k)]))
    parts = []
    for i in range(k):
        idx = ctx.cast(_name(inputs[i + 2]), _in_dtype(node, i + 2), "int64")
        idx = ctx.add_node("Expand", [idx, ctx.ints(bshape, "shape")])[0]
        parts.append(ctx.add_node("Unsqueeze", [idx, ctx.ints([len(bshape)], "axes")])[0])
    ind = parts[0] if k == 1 else ctx.add_node("Concat", parts, axis=len(bshape))[0]
    vals = ctx.cast(_name(inputs[1]), _in_dtype(node, 1), _out_dtype(node))
    vals = ctx.add_node("Expand", [vals, ctx.ints(bshape + list(xs[k:]), "shape")])[0]
    red = "add" if node.attrs.get("accumulate", False) else "none"
    return ctx.add_node("ScatterND", [_name(inputs[0]), ind, vals], reduction=red)


# ----------------------------------------------------------------------------- convolution


def _conv_pads(node: Node, n: int) -> list[int]:
    padding = node.attrs.get("padding", 0)
    if padding == "valid":
        return [0] * (2 * n)
    if padding == "same":
        ws = _in_shape(node, 1)
        dil = _pair(node.attrs.get("dilation", 1), n)
        total = [d * (k - 1) for d, k in zip(dil, ws[2:], strict=True)]
        return [t // 2 for t in total] + [t - t // 2 for t in total]
    p = _pair(padding, n)
    return p + p


@register_onnx_lowering("conv3d")
def lower_conv3d(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    ws = _in_shape(node, 1)
    return ctx.add_node(
        "Conv",
        [_name(inputs[0]), _name(inputs[1]), inputs[2] if len(inputs) > 2 else None],
        kernel_shape=list(ws[2:]),
        strides=_pair(node.attrs.get("stride", 1), 3),
        dilations=_pair(node.attrs.get("dilation", 1), 3),
        pads=_conv_pads(node, 3),
        group=int(node.attrs.get("groups", 1)),
    )


@register_onnx_lowering("conv_transpose1d")
@register_onnx_lowering("conv_transpose2d")
def lower_conv_transpose(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """ConvTranspose: the weight is [C_in, C_out / groups, k...] in torch and ONNX alike"""
    n = 1 if node.op == "conv_transpose1d" else 2
    ws = _in_shape(node, 1)
    p = _pair(node.attrs.get("padding", 0), n)
    return ctx.add_node(
        "ConvTranspose",
        [_name(inputs[0]), _name(inputs[1]), inputs[2] if len(inputs) > 2 else None],
        kernel_shape=list(ws[2:]),
        strides=_pair(node.attrs.get("stride", 1), n),
        dilations=_pair(node.attrs.get("dilation", 1), n),
        pads=p + p,
        output_padding=_pair(node.attrs.get("output_padding", 0), n),
        group=int(node.attrs.get("groups", 1)),
    )


# ----------------------------------------------------------------------------- normalization


@register_onnx_lowering("group_norm")
def lower_group_norm(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """group_norm = ((x as [N, G, -1]) - mean) / sqrt(var + eps), back to x's shape, * w + b"""
    shape = _in_shape(node, 0)
    d = _out_dtype(node)
    g = int(node.attrs.get("num_groups", 1))
    x = ctx.add_node("Reshape", [_name(inputs[0]), ctx.ints([shape[0], g, -1], "shape")])[0]
    ax = ctx.ints([2], "axes")
    c = ctx.add_node("Sub", [x, ctx.add_node("ReduceMean", [x, ax], keepdims=1)[0]])[0]
    var = ctx.add_node("ReduceMean", [ctx.add_node("Mul", [c, c])[0], ax], keepdims=1)[0]
    std = ctx.add_node("Sqrt", [ctx.add_node("Add", [var, ctx.scalar(float(node.attrs.get("eps", 1e-5)), d, "eps")])[0]])[0]
    y = ctx.add_node("Reshape", [ctx.add_node("Div", [c, std])[0], ctx.ints(list(shape), "shape")])[0]
    cshape = [shape[1]] + [1] * (len(shape) - 2)
    w = inputs[1] if len(inputs) > 1 else None
    b = inputs[2] if len(inputs) > 2 else None
    if w is not None:
        y = ctx.add_node("Mul", [y, ctx.add_node("Reshape", [w, ctx.ints(cshape, "shape")])[0]])[0]
    if b is not None:
        y = ctx.add_node("Add", [y, ctx.add_node("Reshape", [b, ctx.ints(cshape, "shape")])[0]])[0]
    return [y]


# ----------------------------------------------------------------------------- pooling


def _pool(onnx_op: str, n: int) -> Any:
    def lower(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
        k = _pair(node.attrs["kernel_size"], n)
        stride = _pair(node.attrs.get("stride") or k, n)
        pad = _pair(node.attrs.get("padding", 0), n)
        attrs: dict[str, Any] = {"kernel_shape": k, "strides": stride, "pads": pad + pad, "ceil_mode": int(bool(node.attrs.get("ceil_mode", False)))}  # fmt: skip
        divisor = node.attrs.get("divisor_override")
        if onnx_op == "MaxPool":
            attrs["dilations"] = _pair(node.attrs.get("dilation", 1), n)
        else:
            attrs["count_include_pad"] = int(bool(node.attrs.get("count_include_pad", True)) or divisor is not None)
        y = ctx.add_node(onnx_op, [_name(inputs[0])], **attrs)
        if divisor is None:
            return y
        return ctx.add_node("Mul", [y[0], ctx.scalar(math.prod(k) / float(divisor), _out_dtype(node), "divisor")])

    return lower


register_onnx_lowering("max_pool1d")(_pool("MaxPool", 1))
register_onnx_lowering("max_pool3d")(_pool("MaxPool", 3))
register_onnx_lowering("avg_pool1d")(_pool("AveragePool", 1))
register_onnx_lowering("avg_pool3d")(_pool("AveragePool", 3))


@register_onnx_lowering("adaptive_avg_pool1d")
def lower_adaptive_avg_pool1d(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """even bins: AveragePool; uneven: x @ P^T with P averaging torch's bins"""
    n, o = _in_shape(node, 0)[-1], node.outputs[0].shape[-1]
    if n % o == 0:
        return ctx.add_node("AveragePool", [_name(inputs[0])], kernel_shape=[n // o], strides=[n // o])
    p = ctx.add_initializer(_bins(n, o, to_torch_dtype(_out_dtype(node))).T.contiguous(), "pool")
    return ctx.add_node("MatMul", [_name(inputs[0]), p])


@register_onnx_lowering("adaptive_avg_pool3d")
def lower_adaptive_avg_pool3d(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """each spatial axis in turn: x @ P^T along it (averaging is separable)"""
    x = _name(inputs[0])
    ins, outs = _in_shape(node, 0)[-3:], node.outputs[0].shape[-3:]
    if all(i % o == 0 for i, o in zip(ins, outs, strict=True)):
        k = [i // o for i, o in zip(ins, outs, strict=True)]
        return ctx.add_node("AveragePool", [x], kernel_shape=k, strides=k)
    dt = to_torch_dtype(_out_dtype(node))
    for ax in (4, 3, 2):  # move the axis last, average, move it back
        perm = [0, 1, 2, 3, 4]
        perm[ax], perm[4] = perm[4], perm[ax]
        p = ctx.add_initializer(_bins(ins[ax - 2], outs[ax - 2], dt).T.contiguous(), "pool")
        t = ctx.add_node("Transpose", [x], perm=perm)[0] if ax != 4 else x
        t = ctx.add_node("MatMul", [t, p])[0]
        x = ctx.add_node("Transpose", [t], perm=perm)[0] if ax != 4 else t
    return [x]


@register_onnx_lowering("adaptive_max_pool2d")
def lower_adaptive_max_pool2d(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """max is separable: ReduceMax over each column bin, then each row bin (torch's bins)"""
    x = _name(inputs[0])
    (h, w), (oh, ow) = _in_shape(node, 0)[-2:], node.outputs[0].shape[-2:]
    if h % oh == 0 and w % ow == 0:
        k = [h // oh, w // ow]
        return ctx.add_node("MaxPool", [x], kernel_shape=k, strides=k)
    for axis, n, o in ((3, w, ow), (2, h, oh)):
        parts = []
        for i in range(o):
            lo, hi = (i * n) // o, -((-(i + 1) * n) // o)
            s = ctx.add_node("Slice", [x, ctx.ints([lo], "starts"), ctx.ints([hi], "ends"), ctx.ints([axis], "axes")])[0]
            parts.append(ctx.add_node("ReduceMax", [s, ctx.ints([axis], "axes")], keepdims=1)[0])
        x = ctx.add_node("Concat", parts, axis=axis)[0]
    return [x]


# ----------------------------------------------------------------------------- resampling


@register_onnx_lowering("interpolate")
def lower_interpolate(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """Resize to the output shape; torch's modes in ONNX's terms (1-d inputs resized as [N, C, 1, L])"""
    mode = str(node.attrs.get("mode", "nearest"))
    ac = bool(node.attrs.get("align_corners", False))
    coord = "align_corners" if ac else "half_pixel"
    attrs: dict[str, Any]
    if mode == "nearest":
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    elif mode == "nearest_exact":
        attrs = {"mode": "nearest", "coordinate_transformation_mode": "half_pixel", "nearest_mode": "round_prefer_ceil"}
    elif mode == "linear":
        attrs = {"mode": "linear", "coordinate_transformation_mode": coord}
    elif mode == "cubic":
        attrs = {"mode": "cubic", "coordinate_transformation_mode": coord, "cubic_coeff_a": -0.75}
    else:
        raise ValueError(f"interpolate mode {mode!r} is not supported (nearest, nearest_exact, linear, cubic)")
    shape = list(_in_shape(node, 0))
    out = list(node.outputs[0].shape)
    if len(shape) > 4 and mode != "nearest":
        raise ValueError(f"interpolate mode {mode!r} over {len(shape) - 2} spatial dims has no onnxruntime kernel")
    x = _name(inputs[0])
    if len(shape) == 3:
        x = ctx.add_node("Reshape", [x, ctx.ints([shape[0], shape[1], 1, shape[2]], "shape")])[0]
        y = ctx.add_node("Resize", [x, "", "", ctx.ints([out[0], out[1], 1, out[2]], "sizes")], **attrs)[0]
        return ctx.add_node("Reshape", [y, ctx.ints(out, "shape")])
    return ctx.add_node("Resize", [x, "", "", ctx.ints(out, "sizes")], **attrs)
