"""Op registry: each op's input slots, type inference and reference (torch) semantics.

Adding an op is one registration:

    @register_op("relu", inputs=("x",))
    def relu(x):
        return torch.relu(x)

Inputs are tensors (named slots; `b?` is optional, `*xs` variadic); everything else is
an attribute, passed to the reference as a keyword.  Type inference defaults to running
the reference on meta tensors, so only ops whose output shape depends on data or on
packed storage need their own `infer`.  The reference semantics are the oracle that
every backend is tested against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bitpress.compiler.ir import IRError, SymDim, TensorType, from_torch_dtype, is_packed, to_torch_dtype
from bitpress.compiler.registry import DuplicateKeyError, Registry
from bitpress.compiler.symbolic import has_symbolic, make_dim, sym_expr

__all__ = ["OpDef", "get_op", "has_op", "op_names", "register_op"]

InferFn = Callable[[Sequence[TensorType | None], dict[str, Any]], list[TensorType]]


@dataclass(frozen=True)
class OpDef:
    name: str
    slots: tuple[str, ...]
    optional: frozenset[str]
    variadic: bool
    ref: Callable[..., Any]
    infer_fn: InferFn | None
    pure: bool
    doc: str

    def infer(self, types: Sequence[TensorType | None], attrs: dict[str, Any]) -> list[TensorType]:
        if self.infer_fn is not None:
            return self.infer_fn(types, attrs)
        key = (tuple(types), _freeze(attrs))
        cache = _INFER_CACHE.setdefault(self.name, {})
        hit = cache.get(key)
        if hit is not None:
            return hit
        if any(t is not None and not t.is_static for t in types) or has_symbolic(attrs):
            res = _infer_symbolic(self, types, attrs)
        else:
            args = [None if t is None else torch.empty(_storage_shape(t), dtype=to_torch_dtype(t.dtype), device="meta") for t in types]
            out = self.ref(*args, **attrs)
            res = [TensorType.of(o) for o in (out if isinstance(out, (tuple, list)) else (out,))]
        if len(cache) < 100_000:
            cache[key] = res
        return res


_REGISTRY: Registry[OpDef] = Registry("op")
_INFER_CACHE: dict[str, dict[Any, list[TensorType]]] = {}


def _storage_shape(t: TensorType) -> tuple[int, ...]:
    from bitpress.compiler.ir import is_packed

    return (t.nbytes,) if is_packed(t.dtype) else t.static_shape()


def _infer_symbolic(op: OpDef, types: Sequence[TensorType | None], attrs: dict[str, Any]) -> list[TensorType]:
    """Type inference over symbolic dims: the reference runs on fake tensors whose sizes are
    torch SymInts (torch's ShapeEnv), and the output sizes come back as expressions.

    Each name gets a hint (a size torch may use to decide branches) inside its range and
    unlike any static size, so a branch on a size is not silently taken for all sizes.
    """
    import sympy
    from torch._dynamo.source import ConstantSource
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv

    env = ShapeEnv(duck_shape=False)
    syms: dict[str, Any] = {}  # our name -> SymInt
    back: dict[Any, Any] = {}  # torch symbol -> our sympy symbol
    ranges: dict[str, tuple[int, int | None]] = {}
    hint_base = [1009]

    def symint(name: str, lo: int, hi: int | None) -> Any:
        if name not in syms:
            hint = hint_base[0]
            hint_base[0] += 10
            if hi is not None and hint > hi:
                hint = max(lo, 2, hi - len(syms))
            s = env.create_symbol(hint, source=ConstantSource(name), dynamic_dim=DimDynamic.DYNAMIC)
            syms[name] = env.create_symintnode(s, hint=hint)
            back[s] = sympy.Symbol(name, integer=True, positive=True)
            ranges[name] = (lo, hi)
        return syms[name]

    def to_sym(d: Any) -> Any:
        if not isinstance(d, SymDim):
            return d
        if d.is_symbol:
            return symint(d.expr, d.min, d.max)
        e = sym_expr(d)
        val: Any = sympy.Integer(0)
        for s in e.free_symbols:
            symint(str(s), 1, None)
        val = e.subs({sympy.Symbol(n, integer=True, positive=True): syms[n].node.expr for n in syms})
        return env.create_symintnode(val, hint=None)

    def conv_attr(x: Any) -> Any:
        if isinstance(x, SymDim):
            return to_sym(x)
        if isinstance(x, list):
            return [conv_attr(v) for v in x]
        if isinstance(x, tuple):
            return tuple(conv_attr(v) for v in x)
        return x

    def from_sym(d: Any) -> Any:
        if isinstance(d, torch.SymInt):
            e = d.node.expr
            return make_dim(e.xreplace(back), ranges)
        return int(d)

    # bind every input's names first (in order), so hints follow the input order
    for t in types:
        if t is not None:
            for d in t.shape:
                to_sym(d)
    with FakeTensorMode(shape_env=env, allow_non_fake_inputs=True):
        args = [
            None
            if t is None
            else torch.empty([to_sym(d) for d in ((t.nbytes,) if is_packed(t.dtype) else t.shape)], dtype=to_torch_dtype(t.dtype))
            for t in types
        ]
        out = op.ref(*args, **{k: conv_attr(v) for k, v in attrs.items()})
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [TensorType(tuple(from_sym(d) for d in o.shape), from_torch_dtype(o.dtype)) for o in outs]


def _freeze(x: Any) -> Any:
    if isinstance(x, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in x.items()))
    if isinstance(x, (list, tuple)):
        return tuple(_freeze(v) for v in x)
    return x


def register_op(
    name: str,
    inputs: Sequence[str],
    *,
    infer: InferFn | None = None,
    pure: bool = True,
    replace: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `fn` as the reference semantics of op `name` (see the module docstring)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY and not replace:  # the registry's duplicate policy (tests swap _REGISTRY for a plain dict copy)
            raise DuplicateKeyError(f"op {name!r} is already registered")
        slots, optional, variadic = [], set(), False
        for s in inputs:
            if s.startswith("*"):
                variadic = True
                s = s[1:]
            if s.endswith("?"):
                s = s[:-1]
                optional.add(s)
            slots.append(s)
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _REGISTRY[name] = OpDef(name, tuple(slots), frozenset(optional), variadic, fn, infer, pure, doc)
        _INFER_CACHE.pop(name, None)
        return fn

    return deco


def get_op(name: str) -> OpDef:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise IRError(f"unknown op {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def has_op(name: str) -> bool:
    return name in _REGISTRY


def op_names() -> list[str]:
    return sorted(_REGISTRY)


# ============================================================================ core op set

# -- elementwise


def _binary(name: str, fn: Callable[[Any, Any], Any]) -> None:
    register_op(name, ("a", "b"))(lambda a, b: fn(a, b))


_BINARY_FNS: dict[str, Callable[[Any, Any], Any]] = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "div": torch.div,
    "pow": lambda a, b: torch.pow(a, b.item()) if b.ndim == 0 and b.device.type != "meta" and a.is_floating_point() else torch.pow(a, b),
    "maximum": torch.maximum,
    "minimum": torch.minimum,
    "eq": torch.eq,
    "ne": torch.ne,
    "lt": torch.lt,
    "le": torch.le,
    "gt": torch.gt,
    "ge": torch.ge,
    "logical_and": torch.logical_and,
    "logical_or": torch.logical_or,
    "bitwise_and": torch.bitwise_and,
    "bitwise_or": torch.bitwise_or,
    "floor_divide": torch.floor_divide,
    "remainder": torch.remainder,
}
for _n, _f in _BINARY_FNS.items():
    _binary(_n, _f)


def _unary(name: str, fn: Callable[[Any], Any]) -> None:
    register_op(name, ("x",))(lambda x: fn(x))


_UNARY_FNS: dict[str, Callable[[Any], Any]] = {
    "neg": torch.neg,
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt,
    "abs": torch.abs,
    "sin": torch.sin,
    "cos": torch.cos,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "silu": F.silu,
    "erf": torch.erf,
    "reciprocal": torch.reciprocal,
    "logical_not": torch.logical_not,
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "sign": torch.sign,
    "floor": torch.floor,
    "ceil": torch.ceil,
    "round": torch.round,
    "identity": lambda x: x,
}
for _n, _f1 in _UNARY_FNS.items():
    _unary(_n, _f1)


@register_op("gelu", ("x",))
def _gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """y = x * Phi(x)  (tanh approximation when approximate='tanh')"""
    return F.gelu(x, approximate=approximate)


@register_op("leaky_relu", ("x",))
def _leaky_relu(x: torch.Tensor, negative_slope: float = 0.01) -> torch.Tensor:
    return F.leaky_relu(x, negative_slope)


@register_op("elu", ("x",))
def _elu(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    return F.elu(x, alpha)


@register_op("softplus", ("x",))
def _softplus(x: torch.Tensor, beta: float = 1.0, threshold: float = 20.0) -> torch.Tensor:
    return F.softplus(x, beta, threshold)


@register_op("clamp", ("x",))
def _clamp(x: torch.Tensor, min: float | None = None, max: float | None = None) -> torch.Tensor:
    return torch.clamp(x, min, max)


@register_op("where", ("cond", "a", "b"))
def _where(cond: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(cond, a, b)


@register_op("cast", ("x",))
def _cast(x: torch.Tensor, dtype: str) -> torch.Tensor:
    return x.to(to_torch_dtype(dtype))


@register_op("dropout", ("x",))
def _dropout(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """inference: y = x"""
    return x


# -- linear algebra


@register_op("linear", ("x", "w", "b?"))
def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ W^T + b"""
    return F.linear(x, w, b)


@register_op("matmul", ("a", "b"))
def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a, b)


@register_op("conv1d", ("x", "w", "b?"))
def _conv1d(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1
) -> torch.Tensor:
    return F.conv1d(x, w, b, _tup(stride), _tup(padding), _tup(dilation), groups)


@register_op("conv2d", ("x", "w", "b?"))
def _conv2d(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1
) -> torch.Tensor:
    """y = conv2d(x, W) + b"""
    return F.conv2d(x, w, b, _tup(stride), _tup(padding), _tup(dilation), groups)


def _tup(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


@register_op("embedding", ("w", "idx"))
def _embedding(w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """y = W[idx]"""
    return F.embedding(idx, w)


# -- normalization


@register_op("batch_norm", ("x", "w?", "b?", "mean", "var"))
def _batch_norm(
    x: torch.Tensor, w: torch.Tensor | None, b: torch.Tensor | None, mean: torch.Tensor, var: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """y = (x - mean) / sqrt(var + eps) * w + b   (inference statistics)"""
    return F.batch_norm(x, mean, var, w, b, False, 0.0, eps)


@register_op("layer_norm", ("x", "w?", "b?"))
def _layer_norm(
    x: torch.Tensor, w: torch.Tensor | None = None, b: torch.Tensor | None = None, normalized_shape: Any = None, eps: float = 1e-5
) -> torch.Tensor:
    shape = tuple(normalized_shape) if normalized_shape is not None else (x.shape[-1],)
    return F.layer_norm(x, shape, w, b, eps)


@register_op("rms_norm", ("x", "w?"))
def _rms_norm(x: torch.Tensor, w: torch.Tensor | None = None, normalized_shape: Any = None, eps: float | None = None) -> torch.Tensor:
    shape = tuple(normalized_shape) if normalized_shape is not None else (x.shape[-1],)
    return F.rms_norm(x, shape, w, eps)


@register_op("softmax", ("x",))
def _softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return torch.softmax(x, dim)


@register_op("log_softmax", ("x",))
def _log_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return torch.log_softmax(x, dim)


@register_op("sdpa", ("q", "k", "v", "mask?"))
def _sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """y = softmax(q k^T * scale + mask) v"""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)


# -- pooling


@register_op("max_pool2d", ("x",))
def _max_pool2d(
    x: torch.Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1, ceil_mode: bool = False
) -> torch.Tensor:
    return F.max_pool2d(x, _tup(kernel_size), _tup(stride) or None, _tup(padding), _tup(dilation), ceil_mode)


@register_op("avg_pool2d", ("x",))
def _avg_pool2d(
    x: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> torch.Tensor:
    return F.avg_pool2d(x, _tup(kernel_size), _tup(stride) or None, _tup(padding), ceil_mode, count_include_pad, divisor_override)


@register_op("adaptive_avg_pool2d", ("x",))
def _adaptive_avg_pool2d(x: torch.Tensor, output_size: Any) -> torch.Tensor:
    return F.adaptive_avg_pool2d(x, _tup(output_size))


# -- reductions


@register_op("mean", ("x",))
def _mean(x: torch.Tensor, dim: Any = None, keepdim: bool = False) -> torch.Tensor:
    return x.mean() if dim is None else torch.mean(x, _tup(dim), keepdim)


@register_op("sum", ("x",))
def _sum(x: torch.Tensor, dim: Any = None, keepdim: bool = False) -> torch.Tensor:
    return x.sum() if dim is None else torch.sum(x, _tup(dim), keepdim)


@register_op("amax", ("x",))
def _amax(x: torch.Tensor, dim: Any = (), keepdim: bool = False) -> torch.Tensor:
    return torch.amax(x, _tup(dim), keepdim)


@register_op("argmax", ("x",))
def _argmax(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    return torch.argmax(x, dim, keepdim)


# -- shape


@register_op("reshape", ("x",))
def _reshape(x: torch.Tensor, shape: Any) -> torch.Tensor:
    return x.reshape(tuple(shape))


@register_op("permute", ("x",))
def _permute(x: torch.Tensor, dims: Any) -> torch.Tensor:
    return x.permute(tuple(dims))


@register_op("transpose", ("x",))
def _transpose(x: torch.Tensor, dim0: int, dim1: int) -> torch.Tensor:
    return x.transpose(dim0, dim1)


@register_op("flatten", ("x",))
def _flatten(x: torch.Tensor, start_dim: int = 0, end_dim: int = -1) -> torch.Tensor:
    return torch.flatten(x, start_dim, end_dim)


@register_op("unsqueeze", ("x",))
def _unsqueeze(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x.unsqueeze(dim)


@register_op("squeeze", ("x",))
def _squeeze(x: torch.Tensor, dim: Any = None) -> torch.Tensor:
    return x.squeeze() if dim is None else x.squeeze(_tup(dim))


@register_op("expand", ("x",))
def _expand(x: torch.Tensor, shape: Any) -> torch.Tensor:
    return x.expand(tuple(shape))


@register_op("repeat", ("x",))
def _repeat(x: torch.Tensor, repeats: Any) -> torch.Tensor:
    return x.repeat(tuple(repeats))


@register_op("slice", ("x",))
def _slice(x: torch.Tensor, dim: int = 0, start: int | None = None, end: int | None = None, step: int = 1) -> torch.Tensor:
    idx = [slice(None)] * x.ndim
    idx[dim] = slice(start, end, step)
    return x[tuple(idx)]


@register_op("select", ("x",))
def _select(x: torch.Tensor, dim: int, index: int) -> torch.Tensor:
    return x.select(dim, index)


@register_op("cat", ("*xs",))
def _cat(*xs: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.cat(xs, dim)


@register_op("stack", ("*xs",))
def _stack(*xs: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.stack(xs, dim)


@register_op("split", ("x",))
def _split(x: torch.Tensor, sizes: Any, dim: int = 0) -> tuple[torch.Tensor, ...]:
    """multi-output: the pieces of x along dim"""
    return tuple(torch.split(x, list(sizes), dim))


@register_op("index_select", ("x", "idx"))
def _index_select(x: torch.Tensor, idx: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.index_select(x, dim, idx)


@register_op("gather", ("x", "idx"))
def _gather(x: torch.Tensor, idx: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.gather(x, dim, idx)


@register_op("index", ("x", "*idx"))
def _index(x: torch.Tensor, *idx: torch.Tensor, dims: Any = None) -> torch.Tensor:
    """y = x[..., idx_0, ..., idx_k]   (advanced indexing; `dims` says which axis each index tensor indexes)"""
    dims = list(range(len(idx))) if dims is None else list(dims)
    key: list[Any] = [slice(None)] * (max(dims) + 1 if dims else 0)
    for d, t in zip(dims, idx, strict=True):
        key[d] = t
    return x[tuple(key)]


@register_op("tril", ("x",))
def _tril(x: torch.Tensor, diagonal: int = 0) -> torch.Tensor:
    return torch.tril(x, diagonal)


@register_op("triu", ("x",))
def _triu(x: torch.Tensor, diagonal: int = 0) -> torch.Tensor:
    return torch.triu(x, diagonal)


@register_op("masked_fill", ("x", "mask"))
def _masked_fill(x: torch.Tensor, mask: torch.Tensor, value: float = 0.0) -> torch.Tensor:
    return x.masked_fill(mask, value)


@register_op("pad", ("x",))
def _pad(x: torch.Tensor, pad: Any, mode: str = "constant", value: float = 0.0) -> torch.Tensor:
    # the aten ops keep a symbolic batch symbolic in type inference (F.pad specializes it)
    if mode == "constant" and all(int(p) >= 0 for p in pad):  # constant_pad_nd specializes it too
        shape = list(x.shape)
        idx: list[Any] = [slice(None)] * x.ndim
        for i in range(len(pad) // 2):
            a = x.ndim - 1 - i
            lo, hi = int(pad[2 * i]), int(pad[2 * i + 1])
            shape[a] = shape[a] + lo + hi
            idx[a] = slice(lo, lo + x.shape[a])
        y = x.new_full(shape, value)
        y[tuple(idx)] = x
        return y
    if mode == "constant":
        return torch.constant_pad_nd(x, list(pad), value)
    k = len(pad) // 2
    if mode in ("reflect", "replicate") and x.ndim in (k + 1, k + 2) and 1 <= k <= 3:
        fn = getattr(torch.ops.aten, f"{'reflection' if mode == 'reflect' else 'replication'}_pad{k}d")
        return fn(x, list(pad))
    return F.pad(x, tuple(pad), mode, value)


# ============================================================================ wider coverage (issue 14)
# Ops a model zoo needs beyond the transformer/CNN core; their lowerings live in
# backends/tvm/lower_nn.py and backends/onnx/lower_nn.py.

_UNARY_MORE: dict[str, Callable[[Any], Any]] = {
    "log1p": torch.log1p,
    "expm1": torch.expm1,
    "trunc": torch.trunc,
    "atan": torch.atan,
    "asin": torch.asin,
    "acos": torch.acos,
    "sinh": torch.sinh,
    "cosh": torch.cosh,
    "tan": torch.tan,
    "isnan": torch.isnan,
    "isinf": torch.isinf,
    "bitwise_not": torch.bitwise_not,
}
for _n, _f1 in _UNARY_MORE.items():
    _unary(_n, _f1)
_binary("fmod", torch.fmod)


@register_op("prod", ("x",))
def _prod(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    return x.prod() if dim is None else torch.prod(x, int(dim), keepdim)


@register_op("any", ("x",))
def _any(x: torch.Tensor, dim: Any = None, keepdim: bool = False) -> torch.Tensor:
    return x.any() if dim is None else torch.any(x, _tup(dim), keepdim)


@register_op("all", ("x",))
def _all(x: torch.Tensor, dim: Any = None, keepdim: bool = False) -> torch.Tensor:
    return x.all() if dim is None else torch.all(x, _tup(dim), keepdim)


@register_op("amin", ("x",))
def _amin(x: torch.Tensor, dim: Any = (), keepdim: bool = False) -> torch.Tensor:
    return torch.amin(x, _tup(dim), keepdim)


@register_op("argmin", ("x",))
def _argmin(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    return torch.argmin(x, dim, keepdim)


@register_op("var", ("x",))
def _var(x: torch.Tensor, dim: Any = None, correction: float = 1.0, keepdim: bool = False) -> torch.Tensor:
    """y = sum((x - mean(x))^2) / (n - correction)"""
    return torch.var(x, _tup(dim), correction=correction, keepdim=keepdim)


@register_op("cumsum", ("x",))
def _cumsum(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """y[i] = sum_{j <= i} x[j] along dim   (integers accumulate in int64, as torch)"""
    return torch.cumsum(x, dim)


@register_op("flip", ("x",))
def _flip(x: torch.Tensor, dims: Any) -> torch.Tensor:
    return torch.flip(x, _tup(dims))


@register_op("topk", ("x",))
def _topk(x: torch.Tensor, k: int, dim: int = -1, largest: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """multi-output: (values, int64 indices) of the k largest (smallest) along dim, sorted"""
    r = torch.topk(x, k, dim, largest, True)
    return r.values, r.indices


@register_op("sort", ("x",))
def _sort(x: torch.Tensor, dim: int = -1, descending: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """multi-output: (values, int64 indices) sorted along dim (stable: ties keep their order)"""
    r = torch.sort(x, dim=dim, descending=descending, stable=True)
    return r.values, r.indices


@register_op("scatter", ("x", "idx", "src"))
def _scatter(x: torch.Tensor, idx: torch.Tensor, src: torch.Tensor, dim: int = 0, reduce: str = "none") -> torch.Tensor:
    """y = x; y[.., idx[i], ..] (reduce)= src[i]   (reduce: none | sum | prod | amax | amin; indices must be in range)"""
    if reduce == "none":
        return torch.scatter(x, dim, idx, src)
    return torch.scatter_reduce(x, dim, idx, src, reduce, include_self=True)


@register_op("index_put", ("x", "values", "*idx"))
def _index_put(x: torch.Tensor, values: torch.Tensor, *idx: torch.Tensor, dims: Any = None, accumulate: bool = False) -> torch.Tensor:
    """y = x; y[.., idx_0, .., idx_k] (+)= values"""
    dims = list(range(len(idx))) if dims is None else list(dims)
    key: list[Any] = [None] * (max(dims) + 1 if dims else 0)
    for d, t in zip(dims, idx, strict=True):
        key[d] = t
    return torch.index_put(x, tuple(key), values, accumulate)


@register_op("conv3d", ("x", "w", "b?"))
def _conv3d(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1
) -> torch.Tensor:
    return F.conv3d(x, w, b, _tup(stride), _tup(padding), _tup(dilation), groups)


@register_op("conv_transpose1d", ("x", "w", "b?"))
def _conv_transpose1d(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: int = 1,
    dilation: Any = 1,
) -> torch.Tensor:
    """y = conv_transpose1d(x, W) + b   (W is [C_in, C_out / groups, K])"""
    return F.conv_transpose1d(x, w, b, _tup(stride), _tup(padding), _tup(output_padding), groups, _tup(dilation))


@register_op("conv_transpose2d", ("x", "w", "b?"))
def _conv_transpose2d(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: int = 1,
    dilation: Any = 1,
) -> torch.Tensor:
    """y = conv_transpose2d(x, W) + b   (W is [C_in, C_out / groups, KH, KW])"""
    return F.conv_transpose2d(x, w, b, _tup(stride), _tup(padding), _tup(output_padding), groups, _tup(dilation))


@register_op("group_norm", ("x", "w?", "b?"))
def _group_norm(
    x: torch.Tensor, w: torch.Tensor | None = None, b: torch.Tensor | None = None, num_groups: int = 1, eps: float = 1e-5
) -> torch.Tensor:
    """y = (x - mean_g) / sqrt(var_g + eps) * w + b   (statistics per sample and channel group)"""
    return F.group_norm(x, int(num_groups), w, b, eps)


@register_op("max_pool1d", ("x",))
def _max_pool1d(
    x: torch.Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1, ceil_mode: bool = False
) -> torch.Tensor:
    return F.max_pool1d(x, _tup(kernel_size), _tup(stride) or None, _tup(padding), _tup(dilation), ceil_mode)


@register_op("max_pool3d", ("x",))
def _max_pool3d(
    x: torch.Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1, ceil_mode: bool = False
) -> torch.Tensor:
    return F.max_pool3d(x, _tup(kernel_size), _tup(stride) or None, _tup(padding), _tup(dilation), ceil_mode)


@register_op("avg_pool1d", ("x",))
def _avg_pool1d(
    x: torch.Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False, count_include_pad: bool = True
) -> torch.Tensor:
    st: Any = _tup(stride) or None
    return F.avg_pool1d(x, _tup(kernel_size), st, _tup(padding), ceil_mode, count_include_pad)


@register_op("avg_pool3d", ("x",))
def _avg_pool3d(
    x: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> torch.Tensor:
    return F.avg_pool3d(x, _tup(kernel_size), _tup(stride) or None, _tup(padding), ceil_mode, count_include_pad, divisor_override)


@register_op("adaptive_avg_pool1d", ("x",))
def _adaptive_avg_pool1d(x: torch.Tensor, output_size: Any) -> torch.Tensor:
    return F.adaptive_avg_pool1d(x, _tup(output_size))


@register_op("adaptive_avg_pool3d", ("x",))
def _adaptive_avg_pool3d(x: torch.Tensor, output_size: Any) -> torch.Tensor:
    return F.adaptive_avg_pool3d(x, _tup(output_size))


@register_op("adaptive_max_pool2d", ("x",))
def _adaptive_max_pool2d(x: torch.Tensor, output_size: Any) -> torch.Tensor:
    return F.adaptive_max_pool2d(x, _tup(output_size))


@register_op("interpolate", ("x",))
def _interpolate(x: torch.Tensor, size: Any, mode: str = "nearest", align_corners: bool = False) -> torch.Tensor:
    """y = resize(x) to `size` (the spatial dims): nearest (floor(i * in / out)), nearest_exact,
    linear (bi/tri-linear by rank; align_corners or half-pixel centres), cubic (2-D)"""
    k = len(size)
    if mode == "linear":
        tmode = {1: "linear", 2: "bilinear", 3: "trilinear"}[k]
    elif mode == "cubic":
        tmode = "bicubic"
    elif mode == "nearest_exact":
        tmode = "nearest-exact"
    else:
        tmode = "nearest"
    ac = bool(align_corners) if mode in ("linear", "cubic") else None
    out = [int(s) for s in size]
    aten = torch.ops.aten
    # the aten ops keep a symbolic batch symbolic in type inference (F.interpolate specializes it)
    if tmode == "nearest" and k in (1, 2, 3):
        return getattr(aten, f"upsample_nearest{k}d").default(x, out)
    if tmode == "bilinear":
        return aten.upsample_bilinear2d.default(x, out, bool(ac))
    if tmode == "linear":
        return aten.upsample_linear1d.default(x, out, bool(ac))
    return F.interpolate(x, size=tuple(out), mode=tmode, align_corners=ac)
