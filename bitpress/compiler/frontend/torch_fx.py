"""torch.export (an FX graph of ATen ops) -> bitpress IR.

Parameters and buffers become constants named by their fully qualified names (so merge
passes can match state dicts); each node is named by the module path it came from
(`layers.0.mlp.up_proj`).  Ops whose inputs are all constants (or that depend only on
shapes: `arange`, `full`, `zeros_like`, causal-mask construction) are evaluated at
import time.  Ops with no mapping are collected and reported together, each with its
node and module path.
"""

from __future__ import annotations

import logging
import operator
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bitpress.compiler.ir import Graph, IRError, SymDim, TensorType, Value, from_torch_dtype
from bitpress.compiler.symbolic import has_symbolic, make_dim, resolve

__all__ = ["UnsupportedOpError", "import_exported", "import_module"]

log = logging.getLogger("bitpress.frontend")


class UnsupportedOpError(ValueError):
    """The model uses ops bitpress cannot import (all listed at once)."""


class FrontendError(ValueError):
    """The model could not be traced or imported."""


_IDENTITY = {"contiguous", "clone", "alias", "detach", "lift_fresh_copy", "_assert_tensor_metadata_noop"}
_SHAPE_ONLY = {"zeros_like", "ones_like", "full_like", "empty_like", "new_zeros", "new_ones", "new_full", "new_empty", "sym_size", "size"}
_ASSERTS = {"_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size", "_assert_async", "sym_constrain_range"}
_MAX_FOLD = 1 << 22


def _packet(target: Any) -> str:
    name = getattr(target, "__name__", str(target))
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.name.split("::")[-1]
    return name


def _bind_schema(target: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(target, torch._ops.OpOverload):
        return {f"arg{i}": a for i, a in enumerate(args)} | dict(kwargs)
    out: dict[str, Any] = {}
    for i, a in enumerate(target._schema.arguments):
        if i < len(args):
            out[a.name] = args[i]
        elif a.name in kwargs:
            out[a.name] = kwargs[a.name]
        elif a.has_default_value():
            out[a.name] = a.default_value
    return out


def _module_path(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return str(path).replace("L['self'].", "").replace("L__self___", "")


def _meta_type(node: torch.fx.Node, dim: Callable[[Any], Any] = int) -> TensorType | None:
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return TensorType(tuple(dim(s) for s in val.shape), from_torch_dtype(val.dtype))
    return None


class _Symbols:
    """torch.export's size symbols (s0, s77, ...) -> bitpress's named SymDims with ranges.

    A leading dim is named `batch` (the first one; later ones `<input>_dim0`), a dim the user
    declared with `torch.export.Dim("name")` keeps its name.  torch.export assumes automatic
    dims are at least 2 while tracing (so size-1 broadcasting is not taken for a branch); the
    graph it returns is valid from 1, which is the range bitpress allows.
    """

    def __init__(self, ep: torch.export.ExportedProgram, names: dict[tuple[int, int], str]) -> None:
        import sympy

        self.map: dict[Any, Any] = {}
        self.ranges: dict[str, tuple[int, int | None]] = {}
        rc = {str(k): v for k, v in ep.range_constraints.items()}
        user = [s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
        pos = {n: i for i, n in enumerate(user)}
        for node in ep.graph_module.graph.nodes:
            if node.op != "placeholder" or node.name not in pos:
                continue
            val = node.meta.get("val")
            if not isinstance(val, torch.Tensor):
                continue
            for d, size in enumerate(val.shape):
                if not isinstance(size, torch.SymInt) or not isinstance(size.node.expr, sympy.Symbol) or size.node.expr in self.map:
                    continue
                name = names.get((pos[node.name], d))
                if name is None or name in self.ranges:
                    name = "batch" if d == 0 and "batch" not in self.ranges else f"{node.name}_dim{d}"
                vr = rc.get(str(size.node.expr))
                lo = int(vr.lower) if vr is not None and vr.lower.is_Integer else 1
                hi = int(vr.upper) if vr is not None and getattr(vr.upper, "is_Integer", False) else None
                self.map[size.node.expr] = sympy.Symbol(name, integer=True, positive=True)
                self.ranges[name] = (1 if lo <= 2 and names.get((pos[node.name], d)) is None else max(lo, 1), hi)

    def dim(self, s: Any) -> Any:
        if isinstance(s, torch.SymInt):
            e = s.node.expr
            if e.free_symbols - set(self.map):
                raise FrontendError(f"size {e} uses symbols that no input declares: {sorted(map(str, e.free_symbols - set(self.map)))}")
            return make_dim(e.xreplace(self.map), self.ranges)
        return int(s)


class _Importer:
    def __init__(self, ep: torch.export.ExportedProgram, names: dict[tuple[int, int], str] | None = None) -> None:
        self.ep = ep
        self.syms = _Symbols(ep, names or {})
        self.g = Graph()
        self.env: dict[torch.fx.Node, Any] = {}  # fx node -> Value | list[Value] | python scalar | torch.Tensor (folded)
        self.unsupported: list[str] = []

    # -- helpers
    def value(self, a: Any, hint: str) -> Value | None:
        """Turn an argument into a Value (python scalars into 0-d constants)."""
        if a is None or isinstance(a, Value):
            return a
        if isinstance(a, torch.fx.Node):
            v = self.env[a]
            if isinstance(v, Value):
                return v
            if isinstance(v, torch.Tensor):
                cv = self.g.add_const(v, hint)
                self.env[a] = cv
                return cv
            a = v
        if isinstance(a, bool):
            return self.g.add_const(torch.tensor(a), hint)
        if isinstance(a, int):
            return self.g.add_const(torch.tensor(a, dtype=torch.int64), hint)
        if isinstance(a, float):
            return self.g.add_const(torch.tensor(a, dtype=torch.float32), hint)
        if isinstance(a, torch.Tensor):
            return self.g.add_const(a, hint)
        raise FrontendError(f"cannot use {type(a).__name__} {a!r} as a tensor operand")

    def concrete(self, a: Any) -> Any:
        """Arguments with fx nodes replaced by folded python values / tensors (for evaluation)."""
        if isinstance(a, torch.fx.Node):
            v = self.env[a]
            if isinstance(v, Value):
                return v.value if v.is_const else None
            return v
        if isinstance(a, (list, tuple)):
            return type(a)(self.concrete(x) for x in a)
        return a

    def is_foldable(self, node: torch.fx.Node) -> bool:
        """True when every tensor input is a constant (so the op can be evaluated now)."""
        for a in _flat_nodes(node):
            v = self.env[a]
            if isinstance(v, Value) and not v.is_const:
                return False
            if isinstance(v, list):
                return False
        return True

    # -- main loop
    def run(self) -> Graph:
        ep = self.ep
        sig = ep.graph_signature
        kinds: dict[str, tuple[str, str | None]] = {}
        for spec in sig.input_specs:
            kinds[spec.arg.name] = (spec.kind.name, getattr(spec, "target", None))
        state = ep.state_dict
        consts = getattr(ep, "constants", {})
        gm = ep.graph_module
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                kind, target = kinds.get(node.name, ("USER_INPUT", None))
                if kind == "USER_INPUT":
                    bad = _unsupported_dtypes(node)
                    if bad:
                        self.unsupported.append(f"input {node.name} is {bad}, which bitpress has no dtype for")
                        self.env[node] = _Poison()
                        continue
                    t = _meta_type(node, self.syms.dim)
                    if t is None:
                        self.env[node] = node.meta.get("val")
                        continue
                    self.env[node] = self.g.add_input(node.name, t)
                else:
                    tensor = state[target] if target in state else consts[target]
                    self.env[node] = self.g.add_const(
                        tensor.detach().clone() if tensor.requires_grad else tensor.detach(), target or node.name
                    )
            elif node.op == "get_attr":
                self.env[node] = getattr(gm, str(node.target))
            elif node.op == "call_function":
                try:
                    self.env[node] = self.convert(node)
                except _Unsupported as e:
                    self.unsupported.append(str(e))
                    self.env[node] = _Poison()
            elif node.op == "output":
                outs = _flatten_outputs(node.args[0])
                vals = []
                for o in outs:
                    if o is None:
                        continue
                    v = self.env[o] if isinstance(o, torch.fx.Node) else o
                    if isinstance(v, _Poison):
                        continue
                    if not isinstance(v, Value):
                        v = self.value(o, "out")
                    vals.append(v)
                self.g.set_outputs(vals)
        if self.unsupported:
            uniq = sorted(set(self.unsupported))
            raise UnsupportedOpError(f"{len(uniq)} unsupported op use(s): " + "; ".join(uniq))
        return self.g

    def convert(self, node: torch.fx.Node) -> Any:
        target = node.target
        for arg in _flat_nodes(node):
            if isinstance(self.env[arg], _Poison):
                return _Poison()
        if isinstance(node.meta.get("val"), torch.SymInt):  # sym_size and arithmetic on sizes
            return self.syms.dim(node.meta["val"])
        path = _module_path(node)
        where = f"node {node.name} ({path or 'top level'})"
        if target is operator.getitem:
            src: Any = node.args[0]
            idx: Any = node.args[1]
            v = self.env[src]
            if isinstance(v, (list, tuple)):
                return v[idx]
            raise _Unsupported(f"getitem on {type(v).__name__} at {where}")
        if not isinstance(target, torch._ops.OpOverload):
            # python arithmetic on sizes (sym ints) and similar: evaluate
            fn: Any = target
            try:
                return fn(*self.concrete(node.args), **self.concrete(node.kwargs))
            except Exception as e:
                raise _Unsupported(f"{getattr(target, '__name__', target)} at {where}: {e}") from None
        pkt = _packet(target)
        pkt = pkt if pkt in ("__and__", "__or__") else pkt.rstrip("_")
        args = {k: self.scalars(v) for k, v in _bind_schema(target, node.args, node.kwargs).items()}
        if pkt in _ASSERTS:
            return None
        if pkt in _IDENTITY:
            return self.env[args["self"]] if isinstance(args.get("self"), torch.fx.Node) else args.get("self")
        if pkt in _SHAPE_ONLY or self.is_foldable(node):
            return self.fold(node, pkt)
        bad = _unsupported_dtypes(node)
        if bad:
            raise _Unsupported(f"aten.{pkt} at {where} produces {bad}, which bitpress has no dtype for")
        conv = _CONVERTERS.get(pkt)
        if conv is None:
            raise _Unsupported(f"aten.{pkt} ({target}) at {where}")
        hint = path if pkt in _NAMED_BY_MODULE and path else (f"{path}.{pkt}" if path else pkt)
        try:
            return conv(_Site(self, node, pkt, args, path, hint, where))
        except IRError as e:
            raise _Unsupported(f"aten.{pkt} at {where}: {e}") from None

    def scalars(self, a: Any) -> Any:
        """fx nodes that stand for python scalars (sizes, symbolic sizes) replaced by them."""
        if isinstance(a, torch.fx.Node):
            v = self.env.get(a)
            return v if isinstance(v, (SymDim, int, float, bool)) else a
        if isinstance(a, (list, tuple)):
            return type(a)(self.scalars(x) for x in a)
        return a

    def check(self, node: torch.fx.Node, out: Value) -> Value:
        t = _meta_type(node, self.syms.dim)
        if t is not None and t.shape != out.shape:
            raise FrontendError(f"import of {node.target} at {node.name}: bitpress infers {out.type}, torch says {t}")
        if t is not None and t.dtype != out.dtype:
            out = self.g.call("cast", [out], {"dtype": t.dtype}, name=out.name)
        return out

    def fold(self, node: torch.fx.Node, pkt: str) -> Any:
        """Evaluate an op whose inputs are constants (or only whose shapes matter)."""
        t = _meta_type(node, self.syms.dim)
        if t is not None and not t.is_static:
            return self.fold_symbolic(node, pkt, t)
        return self.fold_at(node, pkt, {})

    def fold_symbolic(self, node: torch.fx.Node, pkt: str, t: TensorType) -> Value:
        """A shape-only op with a symbolic result shape (`zeros(batch, 4)`, `ones_like(x)`):
        evaluated at two sizes; when both are one slice broadcast along the symbolic dims, it
        is that slice as a constant, expanded to the symbolic shape at run time."""
        names = sorted(self.syms.ranges)
        res = [self.fold_at(node, pkt, {n: k for n in names}) for k in (2, 3)]
        if not all(isinstance(r, torch.Tensor) for r in res):
            raise _Unsupported(f"aten.{pkt} at node {node.name}: cannot fold a result of symbolic shape {t}")
        sym_axes = [i for i, d in enumerate(t.shape) if not isinstance(d, int)]
        base = res[0]
        for i in sym_axes:
            base = base.narrow(i, 0, 1)
        if not all(torch.equal(base.expand(r.shape), r) for r in res):
            raise _Unsupported(
                f"aten.{pkt} at node {node.name} ({_module_path(node) or 'top level'}): its values depend on the symbolic "
                f"size(s) {sorted({str(t.shape[i]) for i in sym_axes})}; compile with dynamic=None to specialize"
            )
        c = self.g.add_const(base.contiguous(), f"{_module_path(node) or pkt}.c")
        shape = [d if i in sym_axes else -1 for i, d in enumerate(t.shape)]
        return self.g.call("expand", [c], {"shape": shape}, name=_module_path(node) or pkt)

    def fold_at(self, node: torch.fx.Node, pkt: str, sizes: dict[str, int]) -> Any:
        def sub(a: torch.fx.Node) -> Any:
            v = self.env[a]
            if isinstance(v, Value):
                if v.is_const:
                    return v.value
                shape: list[int] = resolve(list(v.shape), sizes) if has_symbolic(v.shape) else list(v.type.static_shape())
                return torch.zeros(shape, dtype=torch.float32 if "float" in v.dtype else torch.int64).to(_dtype(v.dtype))
            if isinstance(v, SymDim):
                return resolve(v, sizes)
            return v

        args = torch.fx.node.map_arg(node.args, sub)
        kwargs = torch.fx.node.map_arg(node.kwargs, sub)
        try:
            with torch.no_grad():
                target: Any = node.target
                res = target(*args, **kwargs)
        except Exception as e:
            raise _Unsupported(f"aten.{pkt} at node {node.name}: could not fold constant ({e})") from None
        if isinstance(res, torch.Tensor) and res.numel() > _MAX_FOLD:
            raise _Unsupported(f"aten.{pkt} at node {node.name}: folding would create a {res.numel()}-element constant")
        return res


class _Unsupported(Exception):
    pass


class _Poison:
    """Marks values downstream of an unsupported op (so all unsupported ops are listed at once)."""


def _dtype(name: str) -> torch.dtype:
    from bitpress.compiler.ir import to_torch_dtype

    return to_torch_dtype(name)


def _flat_nodes(node: torch.fx.Node) -> list[torch.fx.Node]:
    out: list[torch.fx.Node] = []

    def visit(n: torch.fx.Node) -> torch.fx.Node:
        out.append(n)
        return n

    torch.fx.node.map_arg((node.args, node.kwargs), visit)
    return out


def _flatten_outputs(o: Any) -> list[Any]:
    if isinstance(o, (list, tuple)):
        return [x for y in o for x in _flatten_outputs(y)]
    if isinstance(o, dict):
        return [x for y in o.values() for x in _flatten_outputs(y)]
    return [o]


def _shape_attr(op: str, src: Any, shape: Sequence[Any]) -> list[Any]:
    """A reshape / expand target that stays valid for every size of a symbolic dim.

    reshape: the one symbolic entry becomes -1 (inferred from the element count at run time);
    expand: an entry equal to the source's size becomes -1 (keep).  Other symbolic entries
    stay SymDims, evaluated from the bound input sizes at run time.
    """
    out = list(shape)
    if op == "reshape":
        sym = [i for i, d in enumerate(out) if not isinstance(d, int)]
        if len(sym) == 1:
            out[sym[0]] = -1
    elif isinstance(src, Value):
        off = len(out) - src.ndim
        for i, d in enumerate(out):
            if not isinstance(d, int) and i >= off and src.shape[i - off] == d:
                out[i] = -1
    return out


def _py(a: Any) -> Any:
    if isinstance(a, (list, tuple)):
        return [_py(x) for x in a]
    if isinstance(a, torch.dtype):
        return from_torch_dtype(a)
    if isinstance(a, (torch.SymInt,)):
        return int(a)
    return a


def _scalar_like(b: Any, a: Any, imp: _Importer) -> Any:
    """A python scalar operand as a 0-d tensor of a dtype that keeps torch's promotion result."""
    if isinstance(b, torch.fx.Node) or b is None:
        return b
    other = imp.env.get(a) if isinstance(a, torch.fx.Node) else None
    if isinstance(b, bool):
        return torch.tensor(b)
    if isinstance(b, int) and isinstance(other, Value) and other.dtype not in ("bool",):
        return torch.tensor(b, dtype=_dtype(other.dtype)) if "int" in other.dtype else torch.tensor(float(b), dtype=_dtype(other.dtype))
    if isinstance(b, float) and isinstance(other, Value) and "float" in other.dtype:
        return torch.tensor(b, dtype=_dtype(other.dtype))
    return b


# ============================================================================ converter table
#
# One entry per aten packet (overload names are ignored): `fn(site) -> Value | list | None`.
# Ops without an entry are decomposed by torch (`decomposition_table`) into the Core ATen
# set before import; what is still missing after that is listed together with its node.


@dataclass
class _Site:
    """One aten call being converted: its bound schema arguments and where it came from."""

    imp: _Importer
    node: torch.fx.Node
    pkt: str
    args: dict[str, Any]
    path: str
    hint: str
    where: str

    def arg(self, *names: str, default: Any = None) -> Any:
        for n in names:
            if n in self.args:
                return self.args[n]
        return default

    def env(self, a: Any) -> Any:
        return self.imp.env[a] if isinstance(a, torch.fx.Node) else a

    def call(self, op: str, ins: Sequence[Any], attrs: dict[str, Any] | None = None) -> Value:
        vals = [self.imp.value(a, self.hint + ".c") for a in ins]
        return self.imp.g.call(op, vals, attrs or {}, name=self.hint)

    def out(self, v: Value) -> Value:
        return self.imp.check(self.node, v)

    def unsupported(self, what: str) -> _Unsupported:
        return _Unsupported(f"aten.{self.pkt} {what} at {self.where}")

    @property
    def meta(self) -> TensorType | None:
        return _meta_type(self.node, self.imp.syms.dim)


_Converter = Callable[[_Site], Any]
_CONVERTERS: dict[str, _Converter] = {}
# ops whose IR node is named by the module path alone (they are the "layers" of the report)
_NAMED_BY_MODULE = {"linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "embedding", "layer_norm", "rms_norm", "group_norm"}  # fmt: skip


def _converts(*packets: str) -> Callable[[_Converter], _Converter]:
    def deco(fn: _Converter) -> _Converter:
        for p in packets:
            if p in _CONVERTERS:
                raise ValueError(f"aten.{p} has two converters")
            _CONVERTERS[p] = fn
        return fn

    return deco


def _simple(op: str, slots: tuple[str, ...], amap: dict[str, str], defaults: dict[str, Any] | None = None) -> _Converter:
    """aten(slots..., attrs...) -> op(slots..., attrs renamed by amap)"""

    def conv(s: _Site) -> Any:
        attrs = dict(defaults or {}) | {an: _py(s.args[sn]) for sn, an in amap.items() if sn in s.args}
        return s.out(s.call(op, [s.args.get(sl) for sl in slots], attrs))

    return conv


_CONV_ATTRS = {"stride": "stride", "padding": "padding", "dilation": "dilation", "groups": "groups"}
_SIMPLE: dict[str, tuple[str, tuple[str, ...], dict[str, str]]] = {
    "linear": ("linear", ("input", "weight", "bias"), {}),
    "matmul": ("matmul", ("self", "other"), {}),
    "mm": ("matmul", ("self", "mat2"), {}),
    "bmm": ("matmul", ("self", "mat2"), {}),
    "embedding": ("embedding", ("weight", "indices"), {}),
    "layer_norm": ("layer_norm", ("input", "weight", "bias"), {"normalized_shape": "normalized_shape", "eps": "eps"}),
    "rms_norm": ("rms_norm", ("input", "weight"), {"normalized_shape": "normalized_shape", "eps": "eps"}),
    "group_norm": ("group_norm", ("input", "weight", "bias"), {"num_groups": "num_groups", "eps": "eps"}),
    "softmax": ("softmax", ("self",), {"dim": "dim"}),
    "_softmax": ("softmax", ("self",), {"dim": "dim"}),
    "log_softmax": ("log_softmax", ("self",), {"dim": "dim"}),
    "_log_softmax": ("log_softmax", ("self",), {"dim": "dim"}),
    "gelu": ("gelu", ("self",), {"approximate": "approximate"}),
    "leaky_relu": ("leaky_relu", ("self",), {"negative_slope": "negative_slope"}),
    "elu": ("elu", ("self",), {"alpha": "alpha"}),
    "softplus": ("softplus", ("self",), {"beta": "beta", "threshold": "threshold"}),
    "adaptive_avg_pool1d": ("adaptive_avg_pool1d", ("self",), {"output_size": "output_size"}),
    "adaptive_avg_pool2d": ("adaptive_avg_pool2d", ("self",), {"output_size": "output_size"}),
    "_adaptive_avg_pool2d": ("adaptive_avg_pool2d", ("self",), {"output_size": "output_size"}),
    "adaptive_avg_pool3d": ("adaptive_avg_pool3d", ("self",), {"output_size": "output_size"}),
    "_adaptive_avg_pool3d": ("adaptive_avg_pool3d", ("self",), {"output_size": "output_size"}),
    "permute": ("permute", ("self",), {"dims": "dims"}),
    "transpose": ("transpose", ("self",), {"dim0": "dim0", "dim1": "dim1"}),
    "unsqueeze": ("unsqueeze", ("self",), {"dim": "dim"}),
    "select": ("select", ("self",), {"dim": "dim", "index": "index"}),
    "index_select": ("index_select", ("self", "index"), {"dim": "dim"}),
    "gather": ("gather", ("self", "index"), {"dim": "dim"}),
    "tril": ("tril", ("self",), {"diagonal": "diagonal"}),
    "triu": ("triu", ("self",), {"diagonal": "diagonal"}),
    "masked_fill": ("masked_fill", ("self", "mask"), {"value": "value"}),
    "constant_pad_nd": ("pad", ("self",), {"pad": "pad", "value": "value"}),
    "reflection_pad1d": ("pad", ("self",), {"padding": "pad"}),
    "reflection_pad2d": ("pad", ("self",), {"padding": "pad"}),
    "reflection_pad3d": ("pad", ("self",), {"padding": "pad"}),
    "replication_pad1d": ("pad", ("self",), {"padding": "pad"}),
    "replication_pad2d": ("pad", ("self",), {"padding": "pad"}),
    "replication_pad3d": ("pad", ("self",), {"padding": "pad"}),
    "repeat": ("repeat", ("self",), {"repeats": "repeats"}),
    "argmax": ("argmax", ("self",), {"dim": "dim", "keepdim": "keepdim"}),
    "argmin": ("argmin", ("self",), {"dim": "dim", "keepdim": "keepdim"}),
    "amax": ("amax", ("self",), {"dim": "dim", "keepdim": "keepdim"}),
    "amin": ("amin", ("self",), {"dim": "dim", "keepdim": "keepdim"}),
    "flatten": ("flatten", ("self",), {"start_dim": "start_dim", "end_dim": "end_dim"}),
    "cumsum": ("cumsum", ("self",), {"dim": "dim"}),
    "flip": ("flip", ("self",), {"dims": "dims"}),
    "scatter_add": ("scatter", ("self", "index", "src"), {"dim": "dim"}),
}
_PAD_MODE = {"reflection": "reflect", "replication": "replicate"}
for _p, (_op, _slots, _amap) in _SIMPLE.items():
    _defaults = {"mode": _PAD_MODE[_p.split("_")[0]]} if _p.startswith(("reflection", "replication")) else None
    if _p == "scatter_add":
        _defaults = {"reduce": "sum"}
    _converts(_p)(_simple(_op, _slots, _amap, _defaults))

_BINARY = {
    "add": "add", "sub": "sub", "mul": "mul", "div": "div", "pow": "pow", "maximum": "maximum", "minimum": "minimum",
    "eq": "eq", "ne": "ne", "lt": "lt", "le": "le", "gt": "gt", "ge": "ge", "logical_and": "logical_and",
    "logical_or": "logical_or", "bitwise_and": "bitwise_and", "bitwise_or": "bitwise_or", "__and__": "bitwise_and",
    "__or__": "bitwise_or", "floor_divide": "floor_divide", "remainder": "remainder", "fmod": "fmod",
    "logical_xor": "ne", "atan2": "atan2",
}  # fmt: skip
_UNARY = {
    "neg", "exp", "log", "sqrt", "rsqrt", "abs", "sin", "cos", "tanh", "sigmoid", "relu", "silu", "erf", "reciprocal",
    "logical_not", "hardswish", "hardsigmoid", "sign", "floor", "ceil", "round", "log1p", "expm1", "trunc", "atan",
    "asin", "acos", "sinh", "cosh", "isnan", "isinf", "bitwise_not", "tan",
}  # fmt: skip


@_converts(*_BINARY)
def _binary(s: _Site) -> Any:
    a, b = (s.arg("self", "input"), s.arg("other", "exponent"))
    if s.pkt == "pow" and "self" in s.args and not isinstance(s.args["self"], torch.fx.Node):
        a, b = s.args["self"], s.args["exponent"]
    alpha = s.args.get("alpha", 1)
    if alpha not in (None, 1):
        b = s.call("mul", [b, float(alpha) if isinstance(alpha, float) else alpha])
    if s.pkt == "logical_xor":
        a, b = s.call("cast", [a], {"dtype": "bool"}), s.call("cast", [b], {"dtype": "bool"})
    return s.out(s.call(_BINARY[s.pkt], [a, _scalar_like(b, a, s.imp)]))


@_converts("rsub")
def _rsub(s: _Site) -> Any:
    """rsub(x, y, alpha) = y - alpha * x"""
    a, b, alpha = s.args["self"], s.args["other"], s.args.get("alpha", 1)
    if alpha not in (None, 1):
        a = s.call("mul", [a, alpha])
    return s.out(s.call("sub", [_scalar_like(b, s.args["self"], s.imp), a]))


@_converts(*_UNARY)
def _unary(s: _Site) -> Any:
    return s.out(s.call(s.pkt, [s.args["self"]]))


@_converts("hardtanh", "relu6")
def _hardtanh(s: _Site) -> Any:
    lo, hi = (s.args.get("min_val", -1.0), s.args.get("max_val", 1.0)) if s.pkt == "hardtanh" else (0.0, 6.0)
    return s.out(s.call("clamp", [s.args["self"]], {"min": lo, "max": hi}))


@_converts("clamp", "clamp_min", "clamp_max")
def _clamp(s: _Site) -> Any:
    lo = s.args.get("min") if s.pkt != "clamp_max" else None
    hi = s.args.get("max") if s.pkt != "clamp_min" else None
    x: Any = s.args["self"]
    if isinstance(lo, torch.fx.Node) or isinstance(hi, torch.fx.Node):  # tensor bounds: max(min(x, hi), lo)
        if hi is not None:
            x = s.call("minimum", [x, hi])
        if lo is not None:
            x = s.call("maximum", [x, lo])
        return s.out(x if isinstance(x, Value) else s.call("identity", [x]))
    return s.out(s.call("clamp", [x], {"min": lo, "max": hi}))


@_converts("_to_copy", "to", "type_as")
def _to(s: _Site) -> Any:
    src = s.env(s.args["self"])
    t = s.meta
    want = t.dtype if t is not None else None
    if want is None or (isinstance(src, Value) and src.dtype == want):
        return src
    return s.out(s.call("cast", [s.args["self"]], {"dtype": want}))


@_converts("dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout")
def _dropout(s: _Site) -> Any:
    return s.env(s.args["input"])


@_converts("native_dropout")
def _native_dropout(s: _Site) -> Any:
    return [s.env(s.args["input"]), None]


@_converts("where")
def _where(s: _Site) -> Any:
    c, a, b = s.args["condition"], s.args["self"], s.args["other"]
    return s.out(s.call("where", [c, _scalar_like(a, b, s.imp), _scalar_like(b, a, s.imp)]))


def _pool_attrs(s: _Site, keys: Sequence[str]) -> dict[str, Any]:
    attrs = {k: _py(s.args[k]) for k in keys if k in s.args}
    if not attrs.get("stride"):
        attrs["stride"] = attrs["kernel_size"]
    return attrs


_MAX_POOL = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
_AVG_POOL = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")


@_converts("max_pool1d", "max_pool2d", "max_pool3d")
def _max_pool(s: _Site) -> Any:
    return s.out(s.call(s.pkt, [s.args["self"]], _pool_attrs(s, _MAX_POOL)))


@_converts("max_pool2d_with_indices", "max_pool3d_with_indices")
def _max_pool_with_indices(s: _Site) -> Any:
    if s.node.users and any(u.target is operator.getitem and u.args[1] == 1 for u in s.node.users):
        raise s.unsupported("(the pooling indices are used)")
    return [s.call(s.pkt.removesuffix("_with_indices"), [s.args["self"]], _pool_attrs(s, _MAX_POOL)), None]


@_converts("avg_pool1d", "avg_pool2d", "avg_pool3d")
def _avg_pool(s: _Site) -> Any:
    return s.out(s.call(s.pkt, [s.args["self"]], _pool_attrs(s, _AVG_POOL)))


@_converts("adaptive_max_pool2d")
def _adaptive_max_pool(s: _Site) -> Any:
    if any(u.target is operator.getitem and u.args[1] == 1 for u in s.node.users):
        raise s.unsupported("(the pooling indices are used)")
    return [s.call(s.pkt, [s.args["self"]], {"output_size": _py(s.args["output_size"])}), None]


@_converts("batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm", "_native_batch_norm_legit")
def _batch_norm(s: _Site) -> Any:
    if s.args.get("training", False) or s.args.get("running_mean") is None:
        raise s.unsupported("in training mode (batch statistics); call model.eval() first")
    eps = float(s.args.get("eps", 1e-5))
    out = s.call(
        "batch_norm",
        [s.args["input"], s.args["weight"], s.args["bias"], s.args["running_mean"], s.args["running_var"]],
        {"eps": eps},
    )
    return out if s.pkt == "batch_norm" else [out, None, None]


@_converts("instance_norm")
def _instance_norm(s: _Site) -> Any:
    """instance_norm(x, w, b) = group_norm(x, C groups, w, b)   (input statistics)"""
    x = s.env(s.args["input"])
    if not s.args.get("use_input_stats", True):
        return s.out(
            s.call(
                "batch_norm",
                [x, s.args["weight"], s.args["bias"], s.args["running_mean"], s.args["running_var"]],
                {"eps": float(s.args["eps"])},
            )
        )
    attrs = {"num_groups": int(x.shape[1]), "eps": float(s.args["eps"])}
    return s.out(s.call("group_norm", [x, s.args.get("weight"), s.args.get("bias")], attrs))


@_converts("native_layer_norm")
def _native_layer_norm(s: _Site) -> Any:
    attrs = {"normalized_shape": list(s.args["normalized_shape"]), "eps": float(s.args["eps"])}
    return [s.call("layer_norm", [s.args["input"], s.args["weight"], s.args["bias"]], attrs), None, None]


@_converts("native_group_norm")
def _native_group_norm(s: _Site) -> Any:
    attrs = {"num_groups": int(s.args["group"]), "eps": float(s.args["eps"])}
    return [s.call("group_norm", [s.args["input"], s.args["weight"], s.args["bias"]], attrs), None, None]


@_converts("scaled_dot_product_attention")
def _sdpa(s: _Site) -> Any:
    attrs = {
        "is_causal": bool(s.args.get("is_causal", False)),
        "scale": s.args.get("scale"),
        "enable_gqa": bool(s.args.get("enable_gqa", False)),
    }
    return s.out(s.call("sdpa", [s.args["query"], s.args["key"], s.args["value"], s.args.get("attn_mask")], attrs))


@_converts("mean", "sum", "prod", "any", "all")
def _reduce(s: _Site) -> Any:
    dim = s.args.get("dim")
    attrs: dict[str, Any] = {"dim": _py(dim) if dim not in (None, []) else None, "keepdim": bool(s.args.get("keepdim", False))}
    if s.pkt == "prod" and isinstance(attrs["dim"], list):
        attrs["dim"] = attrs["dim"][0]
    return s.out(s.call(s.pkt, [s.args["self"]], attrs))


@_converts("var", "std")
def _var(s: _Site) -> Any:
    dim = s.args.get("dim")
    corr = s.args.get("correction")
    if corr is None:
        corr = 1 if s.args.get("unbiased", True) else 0
    attrs = {"dim": _py(dim) if dim not in (None, []) else None, "correction": float(corr), "keepdim": bool(s.args.get("keepdim", False))}
    var = s.call("var", [s.args["self"]], attrs)
    return s.out(s.call("sqrt", [var]) if s.pkt == "std" else var)


@_converts("linalg_vector_norm", "norm")
def _vector_norm(s: _Site) -> Any:
    """||x||_p over dim: p=2 sqrt(sum x^2), p=1 sum |x|, p=inf max |x|, other p (sum |x|^p)^(1/p)"""
    p = float(s.args.get("ord", s.args.get("p", 2.0)) or 2.0)
    dim = s.args.get("dim")
    attrs = {"dim": _py(dim) if dim not in (None, []) else None, "keepdim": bool(s.args.get("keepdim", False))}
    x = s.env(s.args["self"])
    a = s.call("abs", [x])
    if p == float("inf"):
        return s.out(s.call("amax", [a], attrs | {"dim": attrs["dim"] if attrs["dim"] is not None else list(range(x.ndim))}))
    if p == 1.0:
        return s.out(s.call("sum", [a], attrs))
    if p == 2.0:
        return s.out(s.call("sqrt", [s.call("sum", [s.call("mul", [x, x])], attrs)]))
    powed = s.call("pow", [a, torch.tensor(p, dtype=_dtype(x.dtype))])
    return s.out(s.call("pow", [s.call("sum", [powed], attrs), torch.tensor(1.0 / p, dtype=_dtype(x.dtype))]))


@_converts("view", "reshape", "_unsafe_view", "expand", "squeeze", "view_as", "reshape_as", "expand_as", "unflatten", "view_copy", "expand_copy", "squeeze_copy")  # fmt: skip
def _reshape(s: _Site) -> Any:
    t = s.meta
    src = s.env(s.args["self"])
    if t is None:
        raise s.unsupported("without a static output shape")
    if isinstance(src, Value) and src.shape == t.shape:
        return src
    op = "expand" if s.pkt.startswith("expand") else "reshape"
    return s.out(s.call(op, [s.args["self"]], {"shape": _shape_attr(op, src, t.shape)}))


@_converts("t")
def _t(s: _Site) -> Any:
    src = s.env(s.args["self"])
    if isinstance(src, Value) and src.ndim < 2:
        return src
    return s.out(s.call("transpose", [s.args["self"]], {"dim0": 0, "dim1": 1}))


@_converts("slice")
def _slice(s: _Site) -> Any:
    src = s.env(s.args["self"])
    dim = int(s.args.get("dim", 0))
    size = src.shape[dim] if isinstance(src, Value) else None
    start, end, step = s.args.get("start"), s.args.get("end"), int(s.args.get("step", 1))
    start = 0 if start is None else start
    full = end is None or end == size or (isinstance(end, int) and isinstance(size, int) and end >= size)
    if full or (isinstance(end, int) and end >= 1 << 62):  # 1 << 62 and up: torch's "to the end" on a symbolic size
        end = size
    from_start = start == 0 or (isinstance(size, int) and start == -size)
    if isinstance(src, Value) and size is not None and from_start and end == size and step == 1:
        return src
    return s.out(s.call("slice", [s.args["self"]], {"dim": dim, "start": start, "end": end, "step": step}))


@_converts("cat", "concat", "stack")
def _cat(s: _Site) -> Any:
    ins = [s.imp.value(a, s.hint + ".c") for a in s.args["tensors"]]
    ins = [v for v in ins if v is not None and not (s.pkt != "stack" and v.numel == 0)]
    out = s.imp.g.call("cat" if s.pkt != "stack" else "stack", ins, {"dim": int(s.args.get("dim", 0))}, name=s.hint)
    return s.out(out)


@_converts("split", "split_with_sizes", "chunk", "unbind", "tensor_split")
def _split(s: _Site) -> Any:
    vals: Any = s.node.meta.get("val")
    dim = int(s.args.get("dim", 0))
    sizes = [s.imp.syms.dim(v.shape[dim]) for v in vals] if s.pkt != "unbind" else [1] * len(vals)
    g = s.imp.g
    node_ir = g.create_node("split", [s.imp.value(s.args["self"], s.hint)], {"sizes": sizes, "dim": dim}, name=s.hint)
    outs = list(node_ir.outputs)
    if s.pkt == "unbind":
        outs = [g.call("squeeze", [o], {"dim": dim}, name=s.hint) for o in outs]
    return outs


@_converts("conv1d", "conv2d", "conv3d")
def _conv(s: _Site) -> Any:
    """conv*d with string padding made explicit ("valid" = 0; "same" = half the dilated kernel
    when that is symmetric), so passes and formats see integer padding"""
    attrs: dict[str, Any] = {k: _py(s.args[k]) for k in ("stride", "padding", "dilation", "groups") if k in s.args}
    pad = attrs.get("padding")
    if isinstance(pad, str):
        w = s.env(s.args["weight"])
        n = w.ndim - 2
        dil = attrs.get("dilation", 1)
        dil = list(dil) * (n if len(dil) == 1 else 1) if isinstance(dil, list) else [int(dil)] * n
        total = [d * (k - 1) for d, k in zip(dil, w.shape[2:], strict=True)]
        if pad == "valid":
            attrs["padding"] = [0] * n
        elif all(t % 2 == 0 for t in total):
            attrs["padding"] = [t // 2 for t in total]
    return s.out(s.call(s.pkt, [s.args["input"], s.args["weight"], s.args.get("bias")], attrs))


@_converts("convolution")
def _convolution(s: _Site) -> Any:
    w = s.env(s.args["weight"])
    k = w.ndim - 2
    attrs = {key: _py(s.args[key]) for key in ("stride", "padding", "dilation", "groups")}
    if s.args.get("transposed"):
        if k not in (1, 2):
            raise s.unsupported(f"(transposed, {k}-d kernel)")
        attrs["output_padding"] = _py(s.args["output_padding"])
        return s.out(s.call(f"conv_transpose{k}d", [s.args["input"], s.args["weight"], s.args["bias"]], attrs))
    if k not in (1, 2, 3):
        raise s.unsupported(f"with a {k}-d kernel")
    return s.out(s.call(f"conv{k}d", [s.args["input"], s.args["weight"], s.args["bias"]], attrs))


@_converts("conv_transpose1d", "conv_transpose2d")
def _conv_transpose(s: _Site) -> Any:
    attrs = {k: _py(s.args[k]) for k in ("stride", "padding", "output_padding", "groups", "dilation")}
    return s.out(s.call(s.pkt, [s.args["input"], s.args["weight"], s.args["bias"]], attrs))


@_converts("addmm")
def _addmm(s: _Site) -> Any:
    """addmm(b, x, W, beta, alpha) = beta * b + alpha * (x @ W)"""
    g = s.imp.g
    mm = s.call("matmul", [s.args["mat1"], s.args["mat2"]])
    beta, alpha = s.args.get("beta", 1), s.args.get("alpha", 1)
    if alpha != 1:
        mm = g.call("mul", [mm, s.imp.value(float(alpha), s.hint + ".c")], name=s.hint)
    bias = s.imp.value(s.args["self"], s.hint + ".c")
    if beta != 1:
        bias = g.call("mul", [bias, s.imp.value(float(beta), s.hint + ".c")], name=s.hint)
    return s.out(g.call("add", [mm, bias], name=s.hint))


@_converts("index")
def _index(s: _Site) -> Any:
    idx = list(s.args["indices"])
    dims = [d for d, i in enumerate(idx) if i is not None]
    ivals = [s.imp.value(idx[d], s.hint + ".idx") for d in dims]
    if any(v is None or v.dtype not in ("int64", "int32") for v in ivals):
        raise s.unsupported("with boolean masks (data-dependent shape)")
    vals = [s.imp.value(s.args["self"], s.hint + ".c"), *ivals]
    return s.out(s.imp.g.call("index", vals, {"dims": dims}, name=s.hint))


@_converts("pad")
def _pad(s: _Site) -> Any:
    mode = str(s.args.get("mode", "constant"))
    value = s.args.get("value")
    attrs = {"pad": _py(s.args["pad"]), "mode": mode, "value": float(value) if value is not None else 0.0}
    return s.out(s.call("pad", [s.args["self"]], attrs))


@_converts("_pad_circular")
def _pad_circular(s: _Site) -> Any:
    return s.out(s.call("pad", [s.args["self"]], {"pad": _py(s.args["pad"]), "mode": "circular"}))


_UPSAMPLE_MODE = {
    "upsample_nearest1d": ("nearest", 1),
    "upsample_nearest2d": ("nearest", 2),
    "upsample_nearest3d": ("nearest", 3),
    "upsample_linear1d": ("linear", 1),
    "upsample_bilinear2d": ("linear", 2),
    "upsample_trilinear3d": ("linear", 3),
    "upsample_bicubic2d": ("cubic", 2),
    "_upsample_nearest_exact1d": ("nearest_exact", 1),
    "_upsample_nearest_exact2d": ("nearest_exact", 2),
}


@_converts(*_UPSAMPLE_MODE)
def _upsample(s: _Site) -> Any:
    """upsample_*(x, output_size | scales) -> interpolate(x, size = the output's spatial shape)

    The index math uses input/output size ratios; torch uses 1/scale when a scale factor was
    given, the same number whenever the output size is the input size times the scale."""
    mode, k = _UPSAMPLE_MODE[s.pkt]
    t = s.meta
    if t is None:
        raise s.unsupported("without a static output shape")
    src = s.env(s.args["input"] if "input" in s.args else s.args["self"])
    size = list(t.shape[-k:])
    scales = s.args.get("scale_factors") or [s.args.get(f"scales_{a}") for a in ("d", "h", "w")[-k:] if f"scales_{a}" in s.args]
    for i, sc in enumerate(scales or []):
        if sc is not None and float(sc) * src.shape[2 + i] != size[i]:
            raise s.unsupported(f"with scale {sc} that does not give a whole output size")
    attrs = {"size": size, "mode": mode, "align_corners": bool(s.args.get("align_corners") or False)}
    return s.out(s.call("interpolate", [src], attrs))


@_converts("topk")
def _topk(s: _Site) -> Any:
    attrs = {"k": int(s.args["k"]), "dim": int(s.args.get("dim", -1)), "largest": bool(s.args.get("largest", True))}
    n = s.imp.g.create_node("topk", [s.imp.value(s.args["self"], s.hint)], attrs, name=s.hint)
    return list(n.outputs)


@_converts("sort")
def _sort(s: _Site) -> Any:
    attrs = {"dim": int(s.args.get("dim", -1)), "descending": bool(s.args.get("descending", False))}
    n = s.imp.g.create_node("sort", [s.imp.value(s.args["self"], s.hint)], attrs, name=s.hint)
    return list(n.outputs)


@_converts("scatter", "scatter_reduce")
def _scatter(s: _Site) -> Any:
    src = s.args.get("src")
    if src is None:  # scatter.value: a python scalar broadcast to the index's shape
        idx = s.env(s.args["index"])
        x = s.env(s.args["self"])
        src = torch.full(idx.shape, s.args["value"], dtype=_dtype(x.dtype))
    reduce = s.args.get("reduce") or "none"
    reduce = {"add": "sum", "multiply": "prod"}.get(reduce, reduce)
    if s.pkt == "scatter_reduce" and not s.args.get("include_self", True):
        raise s.unsupported("with include_self=False")
    if reduce not in ("none", "sum", "prod", "amax", "amin"):
        raise s.unsupported(f"with reduce={reduce!r}")
    return s.out(s.call("scatter", [s.args["self"], s.args["index"], src], {"dim": int(s.args["dim"]), "reduce": reduce}))


@_converts("index_put")
def _index_put(s: _Site) -> Any:
    idx = list(s.args["indices"])
    dims = [d for d, i in enumerate(idx) if i is not None]
    ivals = [s.imp.value(idx[d], s.hint + ".idx") for d in dims]
    if any(v is None or v.dtype not in ("int64", "int32") for v in ivals):
        raise s.unsupported("with boolean masks")
    vals = [s.imp.value(s.args["self"], s.hint + ".c"), s.imp.value(s.args["values"], s.hint + ".c"), *ivals]
    attrs = {"dims": dims, "accumulate": bool(s.args.get("accumulate", False))}
    return s.out(s.imp.g.call("index_put", vals, attrs, name=s.hint))


def decomposition_table() -> Any:
    """torch's Core ATen decompositions, less the ops the converter table takes as they are.

    Ops the IR has natively (linear, conv, sdpa, layer/group/rms norm, pad, interpolate, ...)
    stay whole, so passes and backends see them; every other composite op (einsum, LSTM,
    pixel_shuffle, logsumexp, glu, mish, baddbmm, ...) becomes core ops."""
    table: Any = torch.export.default_decompositions()
    for op in list(table.keys()):
        if _packet(op).rstrip("_") in _CONVERTERS:
            del table[op]
    return table


def _unsupported_dtypes(node: torch.fx.Node) -> str:
    """The torch dtypes of `node`'s outputs that the IR has no name for ("" if none)."""
    val = node.meta.get("val")
    vals = val if isinstance(val, (list, tuple)) else [val]
    bad = []
    for v in vals:
        if isinstance(v, torch.Tensor):
            try:
                from_torch_dtype(v.dtype)
            except IRError:
                bad.append(str(v.dtype))
    return ", ".join(sorted(set(bad)))


def import_exported(ep: torch.export.ExportedProgram, *, decompose: bool = True, names: dict[tuple[int, int], str] | None = None) -> Graph:
    """Convert an ExportedProgram to a bitpress Graph (`names`: (input, dim) -> symbol name).

    With `decompose`, composite ops the converter table does not take are first decomposed
    by torch into the Core ATen set (`decomposition_table`)."""
    if decompose:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ep = ep.run_decompositions(decomposition_table())
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise FrontendError(f"torch's decomposition to Core ATen failed: {first}") from None
    g = _Importer(ep, names).run()
    from bitpress.compiler.rewrite import dead_code_elimination

    dead_code_elimination(g)
    g.verify()
    return g


def batch_spec(example_inputs: Sequence[Any]) -> tuple[Any, ...]:
    """dynamic="batch": the leading dim of every tensor input is torch.export's automatic
    dynamic dim (Dim.AUTO), so a model that needs a static batch is specialized, not refused."""
    from torch.export import Dim

    return tuple({0: Dim.AUTO} if isinstance(x, torch.Tensor) and x.ndim >= 1 else None for x in example_inputs)


def _declared_names(spec: Any, n_inputs: int) -> dict[tuple[int, int], str]:
    """(input index, dim) -> the name of a torch.export.Dim the user declared there."""
    out: dict[tuple[int, int], str] = {}
    if spec is None:
        return out
    items = list(spec.values()) if isinstance(spec, dict) else list(spec)
    for i, per in enumerate(items[:n_inputs]):
        dims = per.items() if isinstance(per, dict) else enumerate(per or ())
        for d, dim in dims:
            name = getattr(dim, "__name__", None)
            if isinstance(name, str) and name.isidentifier() and type(dim).__name__ != "_DimHint":
                out[(i, int(d))] = name
    return out


def import_module(
    model: torch.nn.Module,
    example_inputs: Sequence[Any],
    *,
    export: Callable[..., Any] | None = None,
    dynamic_shapes: Any = None,
    dynamic: str | None = "batch",
) -> Graph:
    """Trace `model` with torch.export at the shapes of `example_inputs` and import it.

    Hugging Face models are taken as they are: `use_cache=False` is passed when the forward
    takes it (the cache belongs to generation), and `ModelOutput` results become their
    tensor fields in order (e.g. `logits`, or `last_hidden_state` and `pooler_output`).

    `dynamic_shapes` is torch.export's own spec (Dim objects in dicts / tuples); without
    it, `dynamic="batch"` makes every tensor input's leading dim symbolic (Dim.AUTO: torch
    specializes it where the model needs a static size, and `g.meta["shape_notes"]` says so)
    and `dynamic=None` keeps every dim static.
    """
    if not isinstance(example_inputs, (tuple, list)):
        raise TypeError("example_inputs must be a tuple of tensors")
    if dynamic not in ("batch", None):
        raise ValueError(f"dynamic={dynamic!r}: use 'batch' (leading dims symbolic), None (all static) or dynamic_shapes=")
    model = model.eval()
    kwargs = _hf_call_kwargs(model)
    ex = tuple(example_inputs)
    spec = dynamic_shapes if dynamic_shapes is not None else (batch_spec(ex) if dynamic == "batch" else None)
    if spec is not None and kwargs and isinstance(spec, tuple):
        spec = spec + tuple(None for _ in kwargs)  # the spec covers args then kwargs
    notes: list[str] = []
    exporter: Any = export or torch.export.export
    trace_ex = ex
    if dynamic_shapes is None and spec is not None:
        # torch.export specializes a dim whose example size is 1; trace a batch of 1 as two copies
        trace_ex = tuple(torch.cat([x, x]) if isinstance(x, torch.Tensor) and x.ndim >= 1 and x.shape[0] == 1 else x for x in ex)

    def trace(inputs: tuple[Any, ...], dyn: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return exporter(model, inputs, kwargs or None, strict=False, **({"dynamic_shapes": dyn} if dyn is not None else {}))

    try:
        ep = trace(trace_ex, spec)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if dynamic_shapes is not None or spec is None:
            raise FrontendError(f"torch.export failed on {type(model).__name__}: {first}") from None
        # the automatic batch dim could not be traced: a static graph is still a valid import
        try:
            ep = trace(ex, None)
        except Exception as e2:
            first = str(e2).strip().splitlines()[0] if str(e2).strip() else type(e2).__name__
            raise FrontendError(f"torch.export failed on {type(model).__name__}: {first}") from None
        notes.append(f"dynamic batch: torch.export failed with a symbolic batch ({first}); every dim is static")
        spec = None
    try:
        g = import_exported(ep, names=_declared_names(spec, len(ex)))
    except Exception as e:
        if dynamic_shapes is not None or spec is None:
            raise
        # something in the model cannot follow a symbolic batch (e.g. values computed from
        # the batch size): the static import is valid at the example's shapes
        g = import_module(model, ex, export=export, dynamic=None)
        g.meta["shape_notes"] = [*notes, f"dynamic batch: {e}; every dim is static"]
        return g
    if spec is not None and dynamic_shapes is None:
        for i, (v, x) in enumerate(zip(g.inputs, ex, strict=False)):
            if isinstance(x, torch.Tensor) and x.ndim >= 1 and isinstance(v.shape[0], int):
                notes.append(f"input {v.name} (#{i}) dim 0 specialized to {v.shape[0]}: the model needs a static size there")
    if notes:
        g.meta["shape_notes"] = list(g.meta.get("shape_notes", [])) + notes
    return g


def _hf_call_kwargs(model: torch.nn.Module) -> dict[str, Any]:
    """Keyword arguments that make a Hugging Face model's forward return plain tensors."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"use_cache": False} if "use_cache" in params else {}


def model_outputs(out: Any) -> list[torch.Tensor]:
    """The tensors an eager call returned, in the order the imported graph outputs them
    (ModelOutput fields in order, None and cache objects left out)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):  # ModelOutput is an OrderedDict of its non-None fields
        return [t for v in out.values() for t in model_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in model_outputs(v)]
    return []
