"""Lowerings of the core op set (bitpress/compiler/ops.py) to Relax ops, for llvm and cuda.

Each lowering follows the op's torch reference semantics, which the interpreter runs:
dtype promotion follows the IR's inferred output types, shapes come from the IR (so
`-1` and broadcasting are already resolved), and weights that a kernel wants in another
layout are re-laid out once at build time (e.g. linear's W^T), never per call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tvm import relax, te, tirx
from tvm.relax import op as R

from bitpress.backends.tvm.lowering import LowerContext, register_lowering, tir_shape
from bitpress.compiler.ir import Node, to_torch_dtype

Args = list[Any]


def _dt(node: Node, i: int = 0) -> str:
    return str(to_torch_dtype(node.outputs[i].dtype)).removeprefix("torch.")


def _cast(x: Any, dtype: str) -> Any:
    return x if str(x.ty.dtype) == dtype else R.astype(x, dtype)


def _promoted(node: Node) -> str:
    ts = [to_torch_dtype(v.dtype) for v in node.inputs if v is not None]
    d = ts[0]
    for t in ts[1:]:
        d = torch.promote_types(d, t)
    return str(d).removeprefix("torch.")


def _scalar(value: float | int | bool, dtype: str) -> Any:
    return relax.const(np.array(value).astype(_np_dtype(dtype)), dtype)


def _np_dtype(dtype: str) -> Any:
    if dtype == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(dtype)


def _out_shape(node: Node, i: int = 0) -> tuple[Any, ...]:
    return tir_shape(node.outputs[i].shape)


def _axis(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _pair(v: Any, n: int = 2) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v) if len(v) == n else tuple(int(v[0]) for _ in range(n))
    return tuple(int(v) for _ in range(n))


# ---------------------------------------------------------------- elementwise

_ARITH: dict[str, Callable[[Any, Any], Any]] = {
    "add": R.add,
    "sub": R.subtract,
    "mul": R.multiply,
    "div": R.divide,
    "pow": R.power,
    "maximum": R.maximum,
    "minimum": R.minimum,
    "floor_divide": R.floor_divide,
    "remainder": R.floor_mod,
    "bitwise_and": R.bitwise_and,
    "bitwise_or": R.bitwise_or,
}
_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "eq": R.equal,
    "ne": R.not_equal,
    "lt": R.less,
    "le": R.less_equal,
    "gt": R.greater,
    "ge": R.greater_equal,
}


def _arith_lowering(fn: Callable[[Any, Any], Any]) -> Callable[[LowerContext, Node, Args], Any]:
    def lower(ctx: LowerContext, node: Node, args: Args) -> Any:
        """y = a (op) b   computed in the IR's output dtype"""
        d = _dt(node)
        a, b = _cast(args[0], d), _cast(args[1], d)
        if node.op == "floor_divide" and d.startswith("float"):
            return ctx.emit(R.floor(R.divide(a, b)))
        if node.op == "remainder" and d.startswith("float"):
            return ctx.emit(R.subtract(a, R.multiply(R.floor(R.divide(a, b)), b)))
        if node.op == "pow" and d.startswith("float"):
            e = ctx.value(node.inputs[1])
            if e is not None and e.numel() == 1:
                return _const_pow(ctx, a, float(e.item()), d)
        return ctx.emit(fn(a, b))

    return lower


def _const_pow(ctx: LowerContext, a: Any, e: float, d: str) -> Any:
    """a ** e for a scalar constant e: multiplications for small integer e (x**2 in RMSNorm),
    sqrt/rsqrt for +-0.5.  GPU pow is exp2(e * log2(a)), which is NaN for a < 0 even where
    the result is defined (an H100 gave NaN for SmolLM2's (-x)**2)."""
    if e == 0.5:
        return ctx.emit(R.sqrt(a))
    if e == -0.5:
        return ctx.emit(R.rsqrt(a))
    n = int(abs(e))
    if e != n * (1 if e >= 0 else -1) or not 1 <= n <= 8:
        return ctx.emit(R.power(a, _scalar(e, d)))
    y, sq, k = None, a, n
    while k:  # square-and-multiply
        if k & 1:
            y = sq if y is None else R.multiply(y, sq)
        k >>= 1
        if k:
            sq = R.multiply(sq, sq)
    assert y is not None
    return ctx.emit(R.divide(_scalar(1.0, d), y) if e < 0 else y)


def _compare_lowering(fn: Callable[[Any, Any], Any]) -> Callable[[LowerContext, Node, Args], Any]:
    def lower(ctx: LowerContext, node: Node, args: Args) -> Any:
        """y = a (cmp) b   compared in the promoted input dtype"""
        d = _promoted(node)
        return ctx.emit(fn(_cast(args[0], d), _cast(args[1], d)))

    return lower


for _name, _fn in _ARITH.items():
    register_lowering(_name)(_arith_lowering(_fn))
for _name, _fn in _COMPARE.items():
    register_lowering(_name)(_compare_lowering(_fn))


@register_lowering("logical_and")
def _logical_and(ctx: LowerContext, node: Node, args: Args) -> Any:
    return ctx.emit(R.logical_and(_cast(args[0], "bool"), _cast(args[1], "bool")))


@register_lowering("logical_or")
def _logical_or(ctx: LowerContext, node: Node, args: Args) -> Any:
    return ctx.emit(R.logical_or(_cast(args[0], "bool"), _cast(args[1], "bool")))


@register_lowering("logical_not")
def _logical_not(ctx: LowerContext, node: Node, args: Args) -> Any:
    return ctx.emit(R.logical_not(_cast(args[0], "bool")))


_UNARY: dict[str, Callable[[Any], Any]] = {
    "neg": R.negative,
    "exp": R.exp,
    "log": R.log,
    "sqrt": R.sqrt,
    "rsqrt": R.rsqrt,
    "abs": R.abs,
    "sin": R.sin,
    "cos": R.cos,
    "tanh": R.tanh,
    "sigmoid": R.sigmoid,
    "relu": R.nn.relu,
    "silu": R.nn.silu,
    "erf": R.erf,
    "sign": R.sign,
    "floor": R.floor,
    "ceil": R.ceil,
}


def _unary_lowering(fn: Callable[[Any], Any]) -> Callable[[LowerContext, Node, Args], Any]:
    def lower(ctx: LowerContext, node: Node, args: Args) -> Any:
        """y = f(x)   elementwise, in the IR's output dtype"""
        return ctx.emit(fn(_cast(args[0], _dt(node))))

    return lower


for _name, _ufn in _UNARY.items():
    register_lowering(_name)(_unary_lowering(_ufn))


@register_lowering("round")
def _round(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = round_half_even(x)   (torch.round; tir.round rounds half away from zero)"""
    x = args[0]
    if not _dt(node).startswith(("float", "bfloat")):
        return ctx.emit(R.astype(x, _dt(node)))
    return ctx.emit_te(lambda t: te.compute(t.shape, lambda *i: tirx.nearbyint(t(*i)), name="round"), x, primfunc_name_hint="round")


@register_lowering("reciprocal")
def _reciprocal(ctx: LowerContext, node: Node, args: Args) -> Any:
    d = _dt(node)
    return ctx.emit(R.divide(_scalar(1, d), _cast(args[0], d)))


@register_lowering("identity")
@register_lowering("dropout")
def _identity(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = x"""
    return args[0]


@register_lowering("gelu", targets=("llvm",))
def _gelu_cpu(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = 0.5 x (1 + erf(x / sqrt 2))   with TVM's vectorizable rational erf (|error| ~1e-7)

    tir.erf becomes a scalar libm call per element on llvm, which made the GELU epilogue
    of MiniLM's FFN cost 4x its GEMM; the polynomial vectorizes inside the fused kernel.
    """
    if node.attrs.get("approximate", "none") == "tanh" or str(args[0].ty.dtype) != "float32":
        return _gelu(ctx, node, args)
    from tvm import topi

    def gelu(x: Any) -> Any:
        e = topi.fast_erf(te.compute(x.shape, lambda *i: x(*i) * tirx.const(0.7071067811865476, "float32"), name="gelu_scale"))
        return te.compute(x.shape, lambda *i: tirx.const(0.5, "float32") * x(*i) * (tirx.const(1.0, "float32") + e(*i)), name="gelu")

    return ctx.emit_te(gelu, args[0], primfunc_name_hint="gelu")


@register_lowering("gelu", targets=("cuda",))
def _gelu(ctx: LowerContext, node: Node, args: Args) -> Any:
    tanh = node.attrs.get("approximate", "none") == "tanh"
    return ctx.emit(R.nn.gelu_tanh(args[0]) if tanh else R.nn.gelu(args[0]))


@register_lowering("leaky_relu")
def _leaky_relu(ctx: LowerContext, node: Node, args: Args) -> Any:
    return ctx.emit(R.nn.leakyrelu(args[0], float(node.attrs.get("negative_slope", 0.01))))


@register_lowering("elu")
def _elu(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = x if x > 0 else alpha * (exp(x) - 1)"""
    x, d = args[0], _dt(node)
    alpha = float(node.attrs.get("alpha", 1.0))
    neg = R.multiply(_scalar(alpha, d), R.subtract(R.exp(x), _scalar(1, d)))
    return ctx.emit(R.where(R.greater(x, _scalar(0, d)), x, neg))


@register_lowering("softplus")
def _softplus(ctx: LowerContext, node: Node, args: Args) -> Any:
    return ctx.emit(R.nn.softplus(args[0], float(node.attrs.get("beta", 1.0)), float(node.attrs.get("threshold", 20.0))))


@register_lowering("hardswish")
def _hardswish(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = x * clip(x + 3, 0, 6) / 6"""
    x, d = args[0], _dt(node)
    return ctx.emit(R.divide(R.multiply(x, R.clip(R.add(x, _scalar(3, d)), 0, 6)), _scalar(6, d)))


@register_lowering("hardsigmoid")
def _hardsigmoid(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = clip(x + 3, 0, 6) / 6"""
    x, d = args[0], _dt(node)
    return ctx.emit(R.divide(R.clip(R.add(x, _scalar(3, d)), 0, 6), _scalar(6, d)))


@register_lowering("clamp")
def _clamp(ctx: LowerContext, node: Node, args: Args) -> Any:
    lo, hi = node.attrs.get("min"), node.attrs.get("max")
    d = _dt(node)
    x = _cast(args[0], d)
    if lo is not None:
        x = R.maximum(x, _scalar(lo, d))
    if hi is not None:
        x = R.minimum(x, _scalar(hi, d))
    return ctx.emit(x)


@register_lowering("where")
def _where(ctx: LowerContext, node: Node, args: Args) -> Any:
    d = _dt(node)
    return ctx.emit(R.where(_cast(args[0], "bool"), _cast(args[1], d), _cast(args[2], d)))


@register_lowering("cast")
def _cast_op(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = cast(x)   float -> int truncates toward zero, -> bool is x != 0 (as in torch)"""
    d = _dt(node)
    x = args[0]
    if d == "bool":
        return ctx.emit(R.not_equal(x, _scalar(0, str(x.ty.dtype))))
    return ctx.emit(_cast(x, d))


@register_lowering("masked_fill")
def _masked_fill(ctx: LowerContext, node: Node, args: Args) -> Any:
    d = _dt(node)
    return ctx.emit(R.where(_cast(args[1], "bool"), _scalar(node.attrs.get("value", 0.0), d), args[0]))


# ---------------------------------------------------------------- linear algebra


@register_lowering("linear", targets=("llvm",))
def _linear_cpu(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y[.., n] = sum_k x[.., k] * W'[n / nb, k, n % nb] + b[n]

    W' = W packed at build time into column strips of nb outputs, each strip [K, nb]
    contiguous: the cpu-gemm schedule's vectorized nb-wide tile then streams its weights
    from consecutive cache lines (no page-strided reads), and each strip is read once.
    """
    x, _, b = args
    wv = node.inputs[1]
    if not wv.is_const or wv.ndim != 2 or wv.dtype != "float32" or str(x.ty.dtype) != "float32":
        return _linear(ctx, node, args)
    n, k = wv.shape
    nb = _strip_width(ctx, n)
    if nb == 0:
        return _linear(ctx, node, args)
    y = _dense_packed(ctx, node, x, ctx.store_param(wv, pack=nb), k, nb)
    if b is not None:
        y = ctx.emit(R.add(y, b))
    return y


def _strip_width(ctx: LowerContext, n: int) -> int:
    """Columns per packed weight strip: two vectors of the target (16 floats on AVX2, 32 on
    AVX-512), so the register tile (rows x strip) fits its vector registers; 0 if none divides n."""
    lanes = ctx.isa.vector_bits // 32 if ctx.isa is not None else 8
    return next((c for c in (2 * lanes, lanes, 8) if n % c == 0), 0)


def _dense_packed(ctx: LowerContext, node: Node, x: Any, wp: Any, k: int, nb: int) -> Any:
    out_shape = _out_shape(node)
    if any(not isinstance(d, int) for d in out_shape[:-1]):
        return _dense_packed_rows(ctx, x, wp, k, nb, out_shape)

    def dense(data: Any, weight: Any) -> Any:
        rk = te.reduce_axis((0, k), "rk")
        return te.compute(
            out_shape,
            lambda *i: te.sum(data[(*i[:-1], rk)] * weight[i[-1] // nb, rk, i[-1] % nb], axis=rk),
            name="dense_packed",
        )

    y = ctx.emit_te(dense, x, wp, primfunc_name_hint="dense_packed")
    ctx.schedule_hint("dense_packed", rule="cpu-gemm", n_tile=nb, m_tiles=(8, 6, 4, 3, 2))
    return y


def _dense_packed_rows(ctx: LowerContext, x: Any, wp: Any, k: int, nb: int, out_shape: tuple[Any, ...]) -> Any:
    """A symbolic row count (the batch): the GEMM runs on the rows padded to a multiple of the
    register tile's height (copies of the last row) and the output takes the first m rows, so
    every tile is full and needs no guard (a guarded tile keeps its accumulators in memory)."""
    n = int(out_shape[-1])
    m = math.prod(out_shape[:-1])
    unit = 8 if ctx.isa is not None and ctx.isa.vector_registers >= 32 else 4
    mp = (m + unit - 1) // unit * unit
    x2 = ctx.emit(R.reshape(x, (m, k))) if len(out_shape) != 2 else x

    def dense(data: Any, weight: Any) -> Any:
        rk = te.reduce_axis((0, k), "rk")
        full = te.compute(
            (mp, n),
            lambda i, j: te.sum(data[tirx.min(i, m - 1), rk] * weight[j // nb, rk, j % nb], axis=rk),
            name="dense_packed",
        )
        return te.compute((m, n), lambda i, j: full[i, j], name="rows")

    y = ctx.emit_te(dense, x2, wp, primfunc_name_hint="dense_packed_rows")
    ctx.schedule_hint("dense_packed_rows", rule="cpu-gemm", n_tile=nb, m_tiles=(8, 6, 4, 3, 2), m_multiple=unit)
    return ctx.emit(R.reshape(y, out_shape)) if len(out_shape) != 2 else y


@register_lowering("linear", targets=("cuda",))
def _linear(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = x @ W^T + b   (a constant W is stored transposed, [K, N], so N is contiguous)"""
    x, w, b = args
    wv = node.inputs[1]
    if wv.is_const and wv.ndim == 2:
        w_kn = ctx.store_param(wv, transpose=True)
    else:
        w_kn = R.permute_dims(w)
    y = ctx.emit(R.matmul(x, w_kn))
    if b is not None:
        y = ctx.emit(R.add(y, b))
    return y


@register_lowering("matmul", targets=("llvm",))
def _matmul_cpu(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = a @ B   (a constant 2-D B is packed into column strips as for linear)"""
    bv = node.inputs[1]
    a_shape = node.inputs[0].shape
    if bv.is_const and bv.ndim == 2 and len(a_shape) >= 2 and bv.dtype == "float32" and node.inputs[0].dtype == "float32":
        k, n = bv.shape
        nb = _strip_width(ctx, n)
        if nb:
            return _dense_packed(ctx, node, args[0], ctx.store_param(bv, pack=-nb), k, nb)
    return _matmul(ctx, node, args)


@register_lowering("matmul", targets=("cuda",))
def _matmul(ctx: LowerContext, node: Node, args: Args) -> Any:
    return ctx.emit(R.matmul(args[0], args[1]))


def _conv_padding(node: Node, n: int) -> tuple[int, ...]:
    p = node.attrs.get("padding", 0)
    if isinstance(p, str):
        if p == "valid":
            return (0,) * (2 * n)
        if p == "same":
            w = node.inputs[1].shape[2:]
            dil = _pair(node.attrs.get("dilation", 1), n)
            total = [dil[i] * (w[i] - 1) for i in range(n)]
            return tuple(t // 2 for t in total) + tuple(t - t // 2 for t in total)
        raise ValueError(f"padding={p!r} is not supported")
    pp = _pair(p, n)
    return pp + pp


@register_lowering("conv2d", targets=("llvm",))
def _conv2d_cpu(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y[n,o,h,w] = sum_{c,i,j} pad(x)[n, c, h*s + i*d, w*s + j*d] * W'[c, i, j, o] + b[o]

    W' = W laid out [C, KH, KW, O] at build time, so the output channel (the vectorized
    axis of the cpu-gemm schedule) is contiguous in the weight.
    """
    x, _, b = args
    wv = node.inputs[1]
    if not wv.is_const or int(node.attrs.get("groups", 1)) != 1 or str(x.ty.dtype) != "float32":
        return _conv2d(ctx, node, args)
    from tvm import topi

    st, dil = _pair(node.attrs.get("stride", 1)), _pair(node.attrs.get("dilation", 1))
    pad = _conv_padding(node, 2)  # (top, left, bottom, right)
    wt = ctx.store_param(wv, perm=(1, 2, 3, 0))
    out_shape = _out_shape(node)
    cin, kh, kw = wv.shape[1], wv.shape[2], wv.shape[3]

    def conv(data: Any, weight: Any) -> Any:
        padded = topi.nn.pad(data, [0, 0, pad[0], pad[1]], [0, 0, pad[2], pad[3]]) if any(pad) else data
        rc, ry, rx = te.reduce_axis((0, cin), "rc"), te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")
        return te.compute(
            out_shape,
            lambda n, o, h, q: te.sum(
                padded[n, rc, h * st[0] + ry * dil[0], q * st[1] + rx * dil[1]] * weight[rc, ry, rx, o], axis=[rc, ry, rx]
            ),
            name="conv2d_direct",
        )

    y = ctx.emit_te(conv, x, wt, primfunc_name_hint="conv2d_direct")
    # vectorize over output channels (axis 1), register-tile the output row (axis 3)
    ctx.schedule_hint("conv2d_direct", rule="cpu-gemm", n_axis=1, m_axis=3, m_tiles=(7, 4, 6, 3, 2))
    if b is not None:
        y = ctx.emit(R.add(y, R.reshape(b, (1, -1, 1, 1))))
    return y


@register_lowering("conv2d", targets=("cuda",))
def _conv2d(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = conv2d(x, W) + b   (NCHW / OIHW)"""
    x, w, b = args
    y = ctx.emit(
        R.nn.conv2d(
            x,
            w,
            strides=_pair(node.attrs.get("stride", 1)),
            padding=_conv_padding(node, 2),
            dilation=_pair(node.attrs.get("dilation", 1)),
            groups=int(node.attrs.get("groups", 1)),
        )
    )
    if b is not None:
        y = ctx.emit(R.add(y, R.reshape(b, (1, -1, 1, 1))))
    return y


@register_lowering("conv1d")
def _conv1d(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = conv1d(x, W) + b   (NCW / OIW)"""
    x, w, b = args
    y = ctx.emit(
        R.nn.conv1d(
            x,
            w,
            strides=_pair(node.attrs.get("stride", 1), 1),
            padding=_conv_padding(node, 1),
            dilation=_pair(node.attrs.get("dilation", 1), 1),
            groups=int(node.attrs.get("groups", 1)),
        )
    )
    if b is not None:
        y = ctx.emit(R.add(y, R.reshape(b, (1, -1, 1))))
    return y


@register_lowering("embedding")
def _embedding(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = W[idx]"""
    # "clip" keeps an out-of-range id from reading outside the table (torch raises there)
    return ctx.emit(R.take(args[0], args[1], axis=0, mode="clip"))


# ---------------------------------------------------------------- normalization


@register_lowering("batch_norm")
def _batch_norm(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = x * s + t   with s = w / sqrt(var + eps), t = b - mean * s  (folded at build time when constant)"""
    x, w, b, mean, var = args
    eps = float(node.attrs.get("eps", 1e-5))
    c = node.inputs[0].shape[1]
    shape = (1, c) + (1,) * (len(node.inputs[0].shape) - 2)
    vals = [ctx.value(v) for v in node.inputs[1:]]
    if all(v is not None or node.inputs[i + 1] is None for i, v in enumerate(vals)):
        wv, bv, mv, vv = vals
        s = (wv if wv is not None else torch.ones(c)) / torch.sqrt(vv + eps)
        t = (bv if bv is not None else torch.zeros(c)) - mv * s
        return ctx.emit(R.add(R.multiply(x, ctx.const(s.reshape(shape))), ctx.const(t.reshape(shape))))
    d = _dt(node)
    y = R.divide(R.subtract(x, R.reshape(mean, shape)), R.sqrt(R.add(R.reshape(var, shape), _scalar(eps, d))))
    if w is not None:
        y = R.multiply(y, R.reshape(w, shape))
    if b is not None:
        y = R.add(y, R.reshape(b, shape))
    return ctx.emit(y)


def _norm_axes(node: Node) -> list[int]:
    ns = node.attrs.get("normalized_shape")
    n = len(ns) if ns is not None else 1
    nd = len(node.inputs[0].shape)
    return list(range(nd - n, nd))


@register_lowering("layer_norm")
def _layer_norm(ctx: LowerContext, node: Node, args: Args) -> Any:
    x, w, b = args
    axes = _norm_axes(node)
    shp = tuple(node.inputs[0].shape[a] for a in axes)
    d = _dt(node)
    gamma = w if w is not None else ctx.const(torch.ones(shp, dtype=to_torch_dtype(node.outputs[0].dtype)))
    beta = b if b is not None else ctx.const(torch.zeros(shp, dtype=to_torch_dtype(node.outputs[0].dtype)))
    del d
    return ctx.emit(R.nn.layer_norm(x, gamma, beta, axes=axes, epsilon=float(node.attrs.get("eps", 1e-5))))


@register_lowering("rms_norm")
def _rms_norm(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = x / sqrt(mean(x^2) + eps) * w   (eps defaults to finfo(dtype).eps, as torch)"""
    x, w = args
    axes = _norm_axes(node)
    shp = tuple(node.inputs[0].shape[a] for a in axes)
    tdt = to_torch_dtype(node.outputs[0].dtype)
    eps = node.attrs.get("eps")
    eps = float(torch.finfo(tdt).eps) if eps is None else float(eps)
    weight = w if w is not None else ctx.const(torch.ones(shp, dtype=tdt))
    return ctx.emit(R.nn.rms_norm(x, weight, axes=axes, epsilon=eps))


@register_lowering("softmax")
def _softmax(ctx: LowerContext, node: Node, args: Args) -> Any:
    return ctx.emit(R.nn.softmax(args[0], axis=int(node.attrs.get("dim", -1))))


@register_lowering("log_softmax")
def _log_softmax(ctx: LowerContext, node: Node, args: Args) -> Any:
    return ctx.emit(R.nn.log_softmax(args[0], axis=int(node.attrs.get("dim", -1))))


def _opaque_mask_bias(ctx: LowerContext, mask: Any, d: str) -> Any:
    """where(mask, 0, -inf) as a kernel of its own: marked opaque so FuseOps keeps the bool
    loads out of the attention matmul's epilogue (see _sdpa)."""

    def fn(m: Any) -> Any:
        zero, ninf = tirx.const(0.0, d), tirx.const(-np.inf, d)
        return te.compute(m.shape, lambda *i: tirx.Select(m(*i), zero, ninf), name="mask_bias")

    call = ctx.emit_te(fn, mask, primfunc_name_hint="mask_bias")
    expr = ctx.bb.lookup_binding(call) if hasattr(ctx.bb, "lookup_binding") else None
    gv = (expr if expr is not None else call).args[0]
    func = ctx.bb.get()[gv]
    ctx.bb.update_func(gv, func.with_attr("op_pattern", 8))  # kOpaque
    return call


@register_lowering("sdpa")
def _sdpa(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = softmax(q k^T * scale + mask) v   (kv heads repeated for GQA; causal mask top-left aligned)"""
    q, k, v, mask = args
    qs, ks = node.inputs[0].shape, node.inputs[1].shape
    d = _dt(node)
    L, S, E = qs[-2], ks[-2], qs[-1]
    scale = node.attrs.get("scale")
    scale = 1.0 / math.sqrt(E) if scale is None else float(scale)
    if len(qs) >= 3 and qs[-3] != ks[-3]:
        if not node.attrs.get("enable_gqa", False) or qs[-3] % ks[-3]:
            raise ValueError(f"query has {qs[-3]} heads, key {ks[-3]}: needs enable_gqa and a divisible head count")
        rep = qs[-3] // ks[-3]
        k = R.repeat(k, rep, axis=len(ks) - 3)
        v = R.repeat(v, rep, axis=len(ks) - 3)
    perm = [*list(range(len(ks) - 2)), len(ks) - 1, len(ks) - 2]
    s = ctx.emit(R.multiply(R.matmul(q, R.permute_dims(k, perm)), _scalar(scale, d)))
    # Boolean masks become additive 0 / -inf biases (the same softmax input for finite scores):
    # a bool operand in the matmul's fused epilogue gets vectorized byte loads that CUDA
    # rejects as misaligned ("misaligned address" on an H100), while a float bias does not.
    bias = np.zeros((L, S), dtype=np.float32)
    if node.attrs.get("is_causal", False):
        bias[~np.tril(np.ones((L, S), dtype=bool))] = -np.inf
    const_mask = ctx.value(node.inputs[3]) if len(node.inputs) > 3 else None
    folded = const_mask is not None and const_mask.dtype == torch.bool
    if folded:
        assert const_mask is not None
        bias = bias + np.where(const_mask.numpy(), 0.0, -np.inf).astype(np.float32)
        mask = None
    if folded or node.attrs.get("is_causal", False):
        s = ctx.emit(R.add(s, _cast(ctx.const(torch.from_numpy(bias), f"{node.name}.mask_bias"), d)))
    if mask is not None:
        if str(mask.ty.dtype) == "bool":
            s = ctx.emit(R.add(s, _opaque_mask_bias(ctx, mask, d)))
        else:
            s = ctx.emit(R.add(s, _cast(mask, d)))
    p = ctx.emit(R.nn.softmax(s, axis=-1))
    return ctx.emit(R.matmul(p, v))


# ---------------------------------------------------------------- pooling


@register_lowering("max_pool2d")
def _max_pool2d(ctx: LowerContext, node: Node, args: Args) -> Any:
    k = _pair(node.attrs["kernel_size"])
    st = node.attrs.get("stride")
    s = _pair(st) if st not in (None, [], ()) else k
    p = _pair(node.attrs.get("padding", 0))
    return ctx.emit(
        R.nn.max_pool2d(
            args[0],
            pool_size=k,
            strides=s,
            padding=p + p,
            dilation=_pair(node.attrs.get("dilation", 1)),
            ceil_mode=bool(node.attrs.get("ceil_mode", False)),
        )
    )


@register_lowering("avg_pool2d")
def _avg_pool2d(ctx: LowerContext, node: Node, args: Args) -> Any:
    k = _pair(node.attrs["kernel_size"])
    st = node.attrs.get("stride")
    s = _pair(st) if st not in (None, [], ()) else k
    p = _pair(node.attrs.get("padding", 0))
    cip = bool(node.attrs.get("count_include_pad", True))
    y = R.nn.avg_pool2d(
        args[0], pool_size=k, strides=s, padding=p + p, ceil_mode=bool(node.attrs.get("ceil_mode", False)), count_include_pad=cip
    )
    div = node.attrs.get("divisor_override")
    if div is not None:
        if not cip and any(p):
            raise ValueError("divisor_override with count_include_pad=False and padding is not supported")
        y = R.multiply(y, _scalar(k[0] * k[1] / float(div), _dt(node)))
    return ctx.emit(y)


@register_lowering("adaptive_avg_pool2d")
def _adaptive_avg_pool2d(ctx: LowerContext, node: Node, args: Args) -> Any:
    return ctx.emit(R.nn.adaptive_avg_pool2d(args[0], output_size=_out_shape(node)[-2:]))


# ---------------------------------------------------------------- reductions


def _dims(node: Node, key: str = "dim") -> list[int] | None:
    dim = node.attrs.get(key)
    nd = len(node.inputs[0].shape)
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return None
    dims = dim if isinstance(dim, (list, tuple)) else [dim]
    return [_axis(int(a), nd) for a in dims]


@register_lowering("mean")
def _mean(ctx: LowerContext, node: Node, args: Args) -> Any:
    return ctx.emit(R.mean(_cast(args[0], _dt(node)), axis=_dims(node), keepdims=bool(node.attrs.get("keepdim", False))))


@register_lowering("sum")
def _sum(ctx: LowerContext, node: Node, args: Args) -> Any:
    return ctx.emit(R.sum(_cast(args[0], _dt(node)), axis=_dims(node), keepdims=bool(node.attrs.get("keepdim", False))))


@register_lowering("amax")
def _amax(ctx: LowerContext, node: Node, args: Args) -> Any:
    return ctx.emit(R.max(args[0], axis=_dims(node), keepdims=bool(node.attrs.get("keepdim", False))))


@register_lowering("argmax")
def _argmax(ctx: LowerContext, node: Node, args: Args) -> Any:
    dim = node.attrs.get("dim")
    x = args[0]
    if dim is None:
        y = ctx.emit(R.argmax(R.reshape(x, (-1,)), axis=0))
        return ctx.emit(R.reshape(_cast(y, _dt(node)), _out_shape(node)))
    y = ctx.emit(R.argmax(x, axis=int(dim), keepdims=bool(node.attrs.get("keepdim", False))))
    return ctx.emit(_cast(y, _dt(node)))


# ---------------------------------------------------------------- shape


def _reshape_to_out(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = reshape(x, shape(y))   (shape from the IR, so -1 is resolved)"""
    return ctx.emit(R.reshape(args[0], _out_shape(node)))


for _name in ("reshape", "flatten", "unsqueeze", "squeeze"):
    register_lowering(_name)(_reshape_to_out)


@register_lowering("permute")
def _permute(ctx: LowerContext, node: Node, args: Args) -> Any:
    nd = len(node.inputs[0].shape)
    return ctx.emit(R.permute_dims(args[0], [_axis(int(a), nd) for a in node.attrs["dims"]]))


@register_lowering("transpose")
def _transpose(ctx: LowerContext, node: Node, args: Args) -> Any:
    nd = len(node.inputs[0].shape)
    perm = list(range(nd))
    a, b = _axis(int(node.attrs["dim0"]), nd), _axis(int(node.attrs["dim1"]), nd)
    perm[a], perm[b] = perm[b], perm[a]
    return ctx.emit(R.permute_dims(args[0], perm))


@register_lowering("expand")
def _expand(ctx: LowerContext, node: Node, args: Args) -> Any:
    return ctx.emit(R.broadcast_to(args[0], _out_shape(node)))


@register_lowering("repeat")
def _repeat(ctx: LowerContext, node: Node, args: Args) -> Any:
    reps = [int(r) for r in node.attrs["repeats"]]
    x = args[0]
    nd = len(node.inputs[0].shape)
    if len(reps) > nd:
        x = R.reshape(x, (1,) * (len(reps) - nd) + tuple(node.inputs[0].shape))
    return ctx.emit(R.tile(x, reps))


@register_lowering("slice")
def _slice(ctx: LowerContext, node: Node, args: Args) -> Any:
    shape = node.inputs[0].shape
    dim = _axis(int(node.attrs.get("dim", 0)), len(shape))
    start, end, step = node.attrs.get("start"), node.attrs.get("end"), int(node.attrs.get("step", 1))
    # normalise like Python slicing so TVM never sees an out-of-range bound
    start, end, step = slice(start, end, step).indices(shape[dim])
    return ctx.emit(R.strided_slice(args[0], axes=[dim], begin=[start], end=[end], strides=[step], assume_inbound=True))


@register_lowering("select")
def _select(ctx: LowerContext, node: Node, args: Args) -> Any:
    shape = node.inputs[0].shape
    dim = _axis(int(node.attrs["dim"]), len(shape))
    i = int(node.attrs["index"])
    i = i + shape[dim] if i < 0 else i
    y = R.strided_slice(args[0], axes=[dim], begin=[i], end=[i + 1], assume_inbound=True)
    return ctx.emit(R.reshape(y, _out_shape(node)))


@register_lowering("cat")
def _cat(ctx: LowerContext, node: Node, args: Args) -> Any:
    d = _dt(node)
    xs = [_cast(a, d) for a, v in zip(args, node.inputs, strict=True) if v is not None and not (isinstance(v.numel, int) and v.numel == 0)]
    nd = len(node.outputs[0].shape)
    if len(xs) == 1:
        return ctx.emit(R.reshape(xs[0], _out_shape(node)))
    return ctx.emit(R.concat(xs, axis=_axis(int(node.attrs.get("dim", 0)), nd)))


@register_lowering("stack")
def _stack(ctx: LowerContext, node: Node, args: Args) -> Any:
    nd = len(node.outputs[0].shape)
    dim = _axis(int(node.attrs.get("dim", 0)), nd)
    d = _dt(node)
    xs = [R.expand_dims(_cast(a, d), axis=dim) for a in args]
    return ctx.emit(R.concat(xs, axis=dim))


@register_lowering("split")
def _split(ctx: LowerContext, node: Node, args: Args) -> list[Any]:
    """(y_0, ..., y_n) = split(x, sizes, dim)"""
    nd = len(node.inputs[0].shape)
    dim = _axis(int(node.attrs.get("dim", 0)), nd)
    sizes = [int(s) for s in node.attrs["sizes"]]
    outs = []
    pos = 0
    for s in sizes:
        outs.append(ctx.emit(R.strided_slice(args[0], axes=[dim], begin=[pos], end=[pos + s], assume_inbound=True)))
        pos += s
    return outs


@register_lowering("index_select")
def _index_select(ctx: LowerContext, node: Node, args: Args) -> Any:
    nd = len(node.inputs[0].shape)
    return ctx.emit(R.take(args[0], args[1], axis=_axis(int(node.attrs.get("dim", 0)), nd), mode="clip"))


@register_lowering("gather")
def _gather(ctx: LowerContext, node: Node, args: Args) -> Any:
    nd = len(node.inputs[0].shape)
    return ctx.emit(R.gather_elements(args[0], args[1], axis=_axis(int(node.attrs.get("dim", 0)), nd)))


@register_lowering("tril")
def _tril(ctx: LowerContext, node: Node, args: Args) -> Any:
    return ctx.emit(R.tril(args[0], int(node.attrs.get("diagonal", 0))))


@register_lowering("triu")
def _triu(ctx: LowerContext, node: Node, args: Args) -> Any:
    return ctx.emit(R.triu(args[0], int(node.attrs.get("diagonal", 0))))


@register_lowering("pad")
def _pad(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = pad(x)   torch's pad list runs last dim first, (before, after) pairs"""
    pad = [int(p) for p in node.attrs["pad"]]
    mode = node.attrs.get("mode", "constant")
    nd = len(node.inputs[0].shape)
    width = [0] * (2 * nd)
    for i in range(len(pad) // 2):
        ax = nd - 1 - i
        width[2 * ax], width[2 * ax + 1] = pad[2 * i], pad[2 * i + 1]
    if any(p < 0 for p in width):
        raise ValueError("negative padding (cropping) is not supported")
    if mode not in ("constant", "reflect", "replicate", "circular"):
        raise ValueError(f"pad mode {mode!r} is not supported (constant, reflect, replicate, circular)")
    if mode in ("replicate", "circular"):
        shape = node.inputs[0].shape

        def edge(x: Any) -> Any:
            def at(*i: Any) -> Any:
                if mode == "circular":  # wrap around: the left pad reads the end of the axis
                    src = [tirx.floormod(i[a] - width[2 * a] + shape[a], shape[a]) for a in range(nd)]
                else:
                    src = [tirx.max(tirx.min(i[a] - width[2 * a], shape[a] - 1), 0) for a in range(nd)]
                return x(*src)

            return te.compute(_out_shape(node), at, name=f"pad_{mode}")

        return ctx.emit_te(edge, args[0], primfunc_name_hint=f"pad_{mode}")
    return ctx.emit(R.nn.pad(args[0], width, pad_mode=mode, pad_value=float(node.attrs.get("value", 0.0) or 0.0)))


@register_lowering("index")
def _index(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = x[..., idx_0, ..., idx_k]   (numpy advanced indexing: indices broadcast; their dims go
    where the first indexed axis was when the indexed axes are adjacent, else in front)"""
    xs = node.inputs[0].shape
    nd = len(xs)
    idx_shapes = [v.shape for v in node.inputs[1:]]
    dims = [_axis(int(d), nd) for d in (node.attrs.get("dims") or range(len(idx_shapes)))]
    if any(v.dtype == "bool" for v in node.inputs[1:]):
        raise ValueError("boolean-mask indexing has a data-dependent shape and is not supported")
    nb = max(len(s) for s in idx_shapes)
    adjacent = dims == list(range(dims[0], dims[0] + len(dims)))
    first = dims[0] if adjacent else 0
    rest = [a for a in range(nd) if a not in dims]

    def compute(x: Any, *idx: Any) -> Any:
        def at(*o: Any) -> Any:
            b = o[first : first + nb]
            others = list(o[:first]) + list(o[first + nb :])
            src: list[Any] = [None] * nd
            for a, v in zip(rest, others, strict=True):
                src[a] = v
            for k, (a, t) in enumerate(zip(dims, idx, strict=True)):
                s = idx_shapes[k]
                sub = [0 if s[j] == 1 else b[nb - len(s) + j] for j in range(len(s))]
                i = t(*sub).astype("int64")
                src[a] = tirx.Select(i < 0, i + xs[a], i)
            return x(*src)

        return te.compute(_out_shape(node), at, name="index")

    return ctx.emit_te(compute, args[0], *args[1:], primfunc_name_hint="index")
