"""TVM lowerings (llvm and cuda) of the wider op set: transposed and 3-d convolutions, 1-d/3-d
and adaptive pools, group norm, interpolation, cumsum, sort/topk, flip, scatter, var, and a few
more elementwise ops.

They are Relax ops (legalized through TOPI) or plain TE computes, so the same lowering serves
both targets.  Shapes come from the IR; every attribute is read as the reference semantics
in bitpress/compiler/ops.py define it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from tvm import te, tirx
from tvm.relax import op as R

from bitpress.backends.tvm.lower_core import _axis, _cast, _dims, _dt, _out_shape, _pair, _scalar
from bitpress.backends.tvm.lowering import LowerContext, register_lowering
from bitpress.compiler.ir import Node, to_torch_dtype

Args = list[Any]


def _in_shape(node: Node, i: int = 0) -> tuple[int, ...]:
    v = node.inputs[i]
    assert v is not None
    return tuple(v.shape)


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat"))


# ---------------------------------------------------------------- elementwise

_UNARY: dict[str, Callable[[Any], Any]] = {
    "atan": R.atan,
    "asin": R.asin,
    "acos": R.acos,
    "sinh": R.sinh,
    "cosh": R.cosh,
    "tan": R.tan,
    "trunc": R.trunc,
}


def _unary(fn: Callable[[Any], Any]) -> Callable[[LowerContext, Node, Args], Any]:
    def lower(ctx: LowerContext, node: Node, args: Args) -> Any:
        return ctx.emit(fn(_cast(args[0], _dt(node))))

    return lower


for _name, _fn in _UNARY.items():
    register_lowering(_name)(_unary(_fn))


@register_lowering("log1p")
def _log1p(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = log(1 + x)"""
    d = _dt(node)
    return ctx.emit(R.log(R.add(_cast(args[0], d), _scalar(1, d))))


@register_lowering("expm1")
def _expm1(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = exp(x) - 1"""
    d = _dt(node)
    return ctx.emit(R.subtract(R.exp(_cast(args[0], d)), _scalar(1, d)))


@register_lowering("isnan")
def _isnan(ctx: LowerContext, node: Node, args: Args) -> Any:
    x = args[0]
    return ctx.emit(R.isnan(x) if _is_float(str(x.ty.dtype)) else R.not_equal(x, x))


@register_lowering("isinf")
def _isinf(ctx: LowerContext, node: Node, args: Args) -> Any:
    x = args[0]
    return ctx.emit(R.isinf(x) if _is_float(str(x.ty.dtype)) else R.not_equal(x, x))


@register_lowering("bitwise_not")
def _bitwise_not(ctx: LowerContext, node: Node, args: Args) -> Any:
    x = args[0]
    return ctx.emit(R.logical_not(x) if str(x.ty.dtype) == "bool" else R.bitwise_not(x))


@register_lowering("fmod")
def _fmod(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = a - trunc(a / b) * b   (the sign of a, as C fmod)"""
    d = _dt(node)
    a, b = _cast(args[0], d), _cast(args[1], d)
    if _is_float(d):
        return ctx.emit(R.subtract(a, R.multiply(R.trunc(R.divide(a, b)), b)))
    return ctx.emit(R.mod(a, b))


# ---------------------------------------------------------------- reductions


def _keep(node: Node) -> bool:
    return bool(node.attrs.get("keepdim", False))


@register_lowering("amin")
def _amin(ctx: LowerContext, node: Node, args: Args) -> Any:
    return ctx.emit(R.min(args[0], axis=_dims(node), keepdims=_keep(node)))


@register_lowering("prod")
def _prod(ctx: LowerContext, node: Node, args: Args) -> Any:
    return ctx.emit(R.prod(_cast(args[0], _dt(node)), axis=_dims(node), keepdims=_keep(node)))


@register_lowering("any")
@register_lowering("all")
def _any_all(ctx: LowerContext, node: Node, args: Args) -> Any:
    """any = max(x != 0), all = min(x != 0)   (over int8 0/1)"""
    x = args[0]
    nz = R.astype(R.not_equal(x, _scalar(0, str(x.ty.dtype))) if str(x.ty.dtype) != "bool" else x, "int8")
    red = R.max if node.op == "any" else R.min
    return ctx.emit(R.astype(red(nz, axis=_dims(node), keepdims=_keep(node)), "bool"))


@register_lowering("argmin")
def _argmin(ctx: LowerContext, node: Node, args: Args) -> Any:
    dim = node.attrs.get("dim")
    x = args[0]
    if dim is None:
        y = ctx.emit(R.argmin(R.reshape(x, (-1,)), axis=0))
        return ctx.emit(R.reshape(_cast(y, _dt(node)), _out_shape(node)))
    y = ctx.emit(R.argmin(x, axis=int(dim), keepdims=_keep(node)))
    return ctx.emit(_cast(y, _dt(node)))


@register_lowering("var")
def _var(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = sum((x - mean(x))^2) / (n - correction)"""
    d = _dt(node)
    shape = _in_shape(node)
    axes = _dims(node) or list(range(len(shape)))
    n = math.prod(shape[a] for a in axes)
    x = _cast(args[0], d)
    c = R.subtract(x, R.mean(x, axis=axes, keepdims=True))
    ss = R.sum(R.multiply(c, c), axis=axes, keepdims=_keep(node))
    return ctx.emit(R.divide(ss, _scalar(max(n - float(node.attrs.get("correction", 1.0)), 0.0), d)))


@register_lowering("cumsum")
def _cumsum(ctx: LowerContext, node: Node, args: Args) -> Any:
    nd = len(_in_shape(node))
    return ctx.emit(R.cumsum(_cast(args[0], _dt(node)), axis=_axis(int(node.attrs.get("dim", 0)), nd), dtype=_dt(node)))


# ---------------------------------------------------------------- data movement


@register_lowering("flip")
def _flip(ctx: LowerContext, node: Node, args: Args) -> Any:
    nd = len(_in_shape(node))
    y = args[0]
    for d in node.attrs["dims"]:
        y = R.flip(y, axis=_axis(int(d), nd))
    return ctx.emit(y)


@register_lowering("topk")
def _topk(ctx: LowerContext, node: Node, args: Args) -> list[Any]:
    nd = len(_in_shape(node))
    axis = _axis(int(node.attrs.get("dim", -1)), nd)
    both = ctx.emit(R.topk(args[0], k=int(node.attrs["k"]), axis=axis, ret_type="both", largest=bool(node.attrs.get("largest", True)), dtype="int64"))  # fmt: skip
    return [ctx.emit(both[0]), ctx.emit(both[1])]


@register_lowering("sort")
def _sort(ctx: LowerContext, node: Node, args: Args) -> list[Any]:
    """(values, indices) = (take_along(x, argsort(x)), argsort(x))   (TOPI's argsort is stable)"""
    nd = len(_in_shape(node))
    axis = _axis(int(node.attrs.get("dim", -1)), nd)
    idx = ctx.emit(R.argsort(args[0], axis=axis, descending=bool(node.attrs.get("descending", False)), dtype="int64"))
    return [ctx.emit(R.gather_elements(args[0], idx, axis=axis)), idx]


_SCATTER_REDUCE = {"none": "update", "sum": "add", "prod": "mul", "amax": "max", "amin": "min"}


@register_lowering("scatter")
def _scatter(ctx: LowerContext, node: Node, args: Args) -> Any:
    reduce = str(node.attrs.get("reduce", "none"))
    if reduce not in _SCATTER_REDUCE:
        raise ValueError(f"scatter reduce={reduce!r} is not supported ({sorted(_SCATTER_REDUCE)})")
    nd = len(_in_shape(node))
    d = _dt(node)
    return ctx.emit(
        R.scatter_elements(
            args[0], args[1], _cast(args[2], d), axis=_axis(int(node.attrs.get("dim", 0)), nd), reduction=_SCATTER_REDUCE[reduce]
        )
    )


@register_lowering("index_put")
def _index_put(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = x; y[idx_0, .., idx_k-1] (+)= values   (the indexed axes must be the leading ones)"""
    xs = _in_shape(node)
    k = len(args) - 2
    dims = [_axis(int(a), len(xs)) for a in (node.attrs.get("dims") or range(k))]
    if dims != list(range(k)):
        raise ValueError(f"index_put on axes {dims} is not supported (only leading axes)")
    ishapes = [_in_shape(node, i + 2) for i in range(k)]
    bshape = _broadcast(ishapes)
    last = len(bshape)  # ONNX layout: indices [*batch, k]
    idx = R.concat([R.expand_dims(R.broadcast_to(_cast(a, "int64"), bshape), last) for a in args[2:]], axis=last)
    upd = R.broadcast_to(_cast(args[1], _dt(node)), tuple(bshape) + xs[k:])
    red = "add" if node.attrs.get("accumulate", False) else "update"
    return ctx.emit(R.scatter_nd(args[0], idx, upd, reduction=red))


def _broadcast(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    import torch

    return tuple(torch.broadcast_shapes(*shapes))


# ---------------------------------------------------------------- convolution


def _conv_pad(node: Node, n: int) -> tuple[int, ...]:
    p = node.attrs.get("padding", 0)
    if isinstance(p, str):
        if p == "valid":
            return (0,) * (2 * n)
        w = _in_shape(node, 1)[2:]
        dil = _pair(node.attrs.get("dilation", 1), n)
        total = [dil[i] * (w[i] - 1) for i in range(n)]
        return tuple(t // 2 for t in total) + tuple(t - t // 2 for t in total)
    pp = _pair(p, n)
    return pp + pp


def _add_bias(ctx: LowerContext, y: Any, b: Any, nd: int) -> Any:
    if b is None:
        return y
    return ctx.emit(R.add(y, R.reshape(b, (1, -1) + (1,) * (nd - 2))))


@register_lowering("conv3d")
def _conv3d(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = conv3d(x, W) + b   (NCDHW / OIDHW)"""
    x, w, b = args
    y = ctx.emit(
        R.nn.conv3d(
            x,
            w,
            strides=_pair(node.attrs.get("stride", 1), 3),
            padding=_conv_pad(node, 3),
            dilation=_pair(node.attrs.get("dilation", 1), 3),
            groups=int(node.attrs.get("groups", 1)),
        )
    )
    return _add_bias(ctx, y, b, 5)


def _conv_transpose(n: int) -> Callable[[LowerContext, Node, Args], Any]:
    def lower(ctx: LowerContext, node: Node, args: Args) -> Any:
        """y = conv_transpose(x, W) + b   (W laid out [C_in, C_out / groups, k...], as torch)"""
        x, w, b = args
        fn = R.nn.conv1d_transpose if n == 1 else R.nn.conv2d_transpose
        pad = _pair(node.attrs.get("padding", 0), n)
        y = ctx.emit(
            fn(
                x,
                w,
                strides=_pair(node.attrs.get("stride", 1), n),
                padding=pad + pad,
                output_padding=_pair(node.attrs.get("output_padding", 0), n),
                dilation=_pair(node.attrs.get("dilation", 1), n),
                groups=int(node.attrs.get("groups", 1)),
            )
        )
        return _add_bias(ctx, y, b, n + 2)

    return lower


register_lowering("conv_transpose1d")(_conv_transpose(1))
register_lowering("conv_transpose2d")(_conv_transpose(2))


# ---------------------------------------------------------------- normalization


@register_lowering("group_norm")
def _group_norm(ctx: LowerContext, node: Node, args: Args) -> Any:
    import torch

    x, w, b = args
    shape = _in_shape(node)
    c = shape[1]
    tdt = to_torch_dtype(node.outputs[0].dtype)
    gamma = w if w is not None else ctx.const(torch.ones(c, dtype=tdt))
    beta = b if b is not None else ctx.const(torch.zeros(c, dtype=tdt))
    if len(shape) == 2:  # (N, C): statistics over each group's channels only
        x = R.reshape(x, (*shape, 1))
    y = R.nn.group_norm(
        x,
        gamma,
        beta,
        num_groups=int(node.attrs.get("num_groups", 1)),
        channel_axis=1,
        axes=list(range(2, max(len(shape), 3))),
        epsilon=float(node.attrs.get("eps", 1e-5)),
    )
    return ctx.emit(R.reshape(y, shape) if len(shape) == 2 else y)


# ---------------------------------------------------------------- pooling


def _pool_common(node: Node, n: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    k = _pair(node.attrs["kernel_size"], n)
    st = node.attrs.get("stride")
    s = _pair(st, n) if st not in (None, [], ()) else k
    p = _pair(node.attrs.get("padding", 0), n)
    return k, s, p + p


def _max_pool(n: int) -> Callable[[LowerContext, Node, Args], Any]:
    fn = R.nn.max_pool1d if n == 1 else R.nn.max_pool3d

    def lower(ctx: LowerContext, node: Node, args: Args) -> Any:
        k, s, p = _pool_common(node, n)
        dil = _pair(node.attrs.get("dilation", 1), n)
        return ctx.emit(fn(args[0], pool_size=k, strides=s, padding=p, dilation=dil, ceil_mode=bool(node.attrs.get("ceil_mode", False))))

    return lower


def _avg_pool(n: int) -> Callable[[LowerContext, Node, Args], Any]:
    fn = R.nn.avg_pool1d if n == 1 else R.nn.avg_pool3d

    def lower(ctx: LowerContext, node: Node, args: Args) -> Any:
        k, s, p = _pool_common(node, n)
        cip = bool(node.attrs.get("count_include_pad", True))
        y = fn(args[0], pool_size=k, strides=s, padding=p, ceil_mode=bool(node.attrs.get("ceil_mode", False)), count_include_pad=cip)
        div = node.attrs.get("divisor_override")
        if div is not None:
            if not cip and any(p):
                raise ValueError("divisor_override with count_include_pad=False and padding is not supported")
            y = R.multiply(y, _scalar(math.prod(k) / float(div), _dt(node)))
        return ctx.emit(y)

    return lower


register_lowering("max_pool1d")(_max_pool(1))
register_lowering("max_pool3d")(_max_pool(3))
register_lowering("avg_pool1d")(_avg_pool(1))
register_lowering("avg_pool3d")(_avg_pool(3))


@register_lowering("adaptive_avg_pool1d")
def _adaptive_avg_pool1d(ctx: LowerContext, node: Node, args: Args) -> Any:
    return ctx.emit(R.nn.adaptive_avg_pool1d(args[0], output_size=_out_shape(node)[-1:]))


@register_lowering("adaptive_avg_pool3d")
def _adaptive_avg_pool3d(ctx: LowerContext, node: Node, args: Args) -> Any:
    return ctx.emit(R.nn.adaptive_avg_pool3d(args[0], output_size=_out_shape(node)[-3:]))


@register_lowering("adaptive_max_pool2d")
def _adaptive_max_pool2d(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y[.., i, j] = max of x over rows [floor(i H / OH), ceil((i + 1) H / OH)) and likewise columns"""
    shape = _in_shape(node)
    out = _out_shape(node)
    (h, w), (oh, ow) = shape[-2:], out[-2:]
    kh, kw = max(-(-(i + 1) * h // oh) - i * h // oh for i in range(oh)), max(-(-(j + 1) * w // ow) - j * w // ow for j in range(ow))
    d = _dt(node)

    def fn(x: Any) -> Any:
        ry, rx = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")

        def at(*i: Any) -> Any:
            y0, x0 = tirx.floordiv(i[-2] * h, oh), tirx.floordiv(i[-1] * w, ow)
            y1, x1 = tirx.floordiv((i[-2] + 1) * h + oh - 1, oh), tirx.floordiv((i[-1] + 1) * w + ow - 1, ow)
            yy, xx = tirx.min(y0 + ry, h - 1), tirx.min(x0 + rx, w - 1)
            inside = tirx.all(y0 + ry < y1, x0 + rx < x1)
            return te.max(tirx.Select(inside, x(*i[:-2], yy, xx), tirx.min_value(d)), axis=[ry, rx])

        return te.compute(out, at, name="adaptive_max_pool2d")

    return ctx.emit_te(fn, args[0], primfunc_name_hint="adaptive_max_pool2d")


# ---------------------------------------------------------------- resampling

_COORD = {False: "half_pixel", True: "align_corners"}


@register_lowering("interpolate")
def _interpolate(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = resize(x, size)   1-d and 2-d (a 1-d input is resized as [N, C, 1, L])

    torch's modes in TOPI's terms: nearest = asymmetric + floor, nearest_exact = half-pixel +
    round-half-up, linear/cubic = half-pixel (or align_corners), cubic with a = -0.75."""
    mode = str(node.attrs.get("mode", "nearest"))
    size = [int(s) for s in node.attrs["size"]]
    shape = _in_shape(node)
    if len(size) not in (1, 2):
        raise ValueError(f"interpolate over {len(size)} spatial dims is not supported (1 or 2)")
    ac = bool(node.attrs.get("align_corners", False))
    if mode == "nearest":
        kw = {"method": "nearest_neighbor", "coordinate_transformation_mode": "asymmetric", "rounding_method": "floor"}
    elif mode == "nearest_exact":
        kw = {"method": "nearest_neighbor", "coordinate_transformation_mode": "half_pixel", "rounding_method": "round_prefer_ceil"}
    elif mode == "linear":
        kw = {"method": "linear", "coordinate_transformation_mode": _COORD[ac]}
    elif mode == "cubic":
        kw = {"method": "cubic", "coordinate_transformation_mode": _COORD[ac], "cubic_alpha": -0.75}
    else:
        raise ValueError(f"interpolate mode {mode!r} is not supported (nearest, nearest_exact, linear, cubic)")
    x = args[0]
    if len(size) == 1:
        x = R.reshape(x, (*shape[:2], 1, shape[2]))
        size = [1, *size]
    y = R.image.resize2d(x, size, layout="NCHW", **kw)
    return ctx.emit(R.reshape(y, _out_shape(node)) if len(shape) == 3 else y)
