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
from collections.abc import Callable, Sequence
from typing import Any

import torch

from bitpress.compiler.ir import Graph, TensorType, Value, from_torch_dtype

__all__ = ["UnsupportedOpError", "import_exported", "import_module"]

log = logging.getLogger("bitpress.frontend")


class UnsupportedOpError(ValueError):
    """The model uses ops bitpress cannot import (all listed at once)."""


class FrontendError(ValueError):
    """The model could not be traced or imported."""


# aten packet name -> (bitpress op, tensor slots (schema names), attrs {schema name: attr name})
_Spec = tuple[str, tuple[str, ...], dict[str, str]]
_SIMPLE: dict[str, _Spec] = {
    "linear": ("linear", ("input", "weight", "bias"), {}),
    "matmul": ("matmul", ("self", "other"), {}),
    "mm": ("matmul", ("self", "mat2"), {}),
    "bmm": ("matmul", ("self", "mat2"), {}),
    "conv1d": (
        "conv1d",
        ("input", "weight", "bias"),
        {"stride": "stride", "padding": "padding", "dilation": "dilation", "groups": "groups"},
    ),
    "conv2d": (
        "conv2d",
        ("input", "weight", "bias"),
        {"stride": "stride", "padding": "padding", "dilation": "dilation", "groups": "groups"},
    ),
    "embedding": ("embedding", ("weight", "indices"), {}),
    "layer_norm": ("layer_norm", ("input", "weight", "bias"), {"normalized_shape": "normalized_shape", "eps": "eps"}),
    "rms_norm": ("rms_norm", ("input", "weight"), {"normalized_shape": "normalized_shape", "eps": "eps"}),
    "softmax": ("softmax", ("self",), {"dim": "dim"}),
    "_softmax": ("softmax", ("self",), {"dim": "dim"}),
    "log_softmax": ("log_softmax", ("self",), {"dim": "dim"}),
    "_log_softmax": ("log_softmax", ("self",), {"dim": "dim"}),
    "gelu": ("gelu", ("self",), {"approximate": "approximate"}),
    "leaky_relu": ("leaky_relu", ("self",), {"negative_slope": "negative_slope"}),
    "elu": ("elu", ("self",), {"alpha": "alpha"}),
    "softplus": ("softplus", ("self",), {"beta": "beta", "threshold": "threshold"}),
    "max_pool2d": (
        "max_pool2d",
        ("self",),
        {"kernel_size": "kernel_size", "stride": "stride", "padding": "padding", "dilation": "dilation", "ceil_mode": "ceil_mode"},
    ),
    "avg_pool2d": (
        "avg_pool2d",
        ("self",),
        {
            "kernel_size": "kernel_size",
            "stride": "stride",
            "padding": "padding",
            "ceil_mode": "ceil_mode",
            "count_include_pad": "count_include_pad",
            "divisor_override": "divisor_override",
        },
    ),
    "adaptive_avg_pool2d": ("adaptive_avg_pool2d", ("self",), {"output_size": "output_size"}),
    "_adaptive_avg_pool2d": ("adaptive_avg_pool2d", ("self",), {"output_size": "output_size"}),
    "permute": ("permute", ("self",), {"dims": "dims"}),
    "transpose": ("transpose", ("self",), {"dim0": "dim0", "dim1": "dim1"}),
    "unsqueeze": ("unsqueeze", ("self",), {"dim": "dim"}),
    "select": ("select", ("self",), {"dim": "dim", "index": "index"}),
    "index_select": ("index_select", ("self", "index"), {"dim": "dim"}),
    "gather": ("gather", ("self", "index"), {"dim": "dim"}),
    "tril": ("tril", ("self",), {"diagonal": "diagonal"}),
    "triu": ("triu", ("self",), {"diagonal": "diagonal"}),
    "where": ("where", ("condition", "self", "other"), {}),
    "masked_fill": ("masked_fill", ("self", "mask"), {"value": "value"}),
    "constant_pad_nd": ("pad", ("self",), {"pad": "pad", "value": "value"}),
    "repeat": ("repeat", ("self",), {"repeats": "repeats"}),
    "argmax": ("argmax", ("self",), {"dim": "dim", "keepdim": "keepdim"}),
    "amax": ("amax", ("self",), {"dim": "dim", "keepdim": "keepdim"}),
    "flatten": ("flatten", ("self",), {"start_dim": "start_dim", "end_dim": "end_dim"}),
}
_BINARY = {
    "add": "add", "sub": "sub", "mul": "mul", "div": "div", "pow": "pow", "maximum": "maximum", "minimum": "minimum",
    "eq": "eq", "ne": "ne", "lt": "lt", "le": "le", "gt": "gt", "ge": "ge", "logical_and": "logical_and",
    "logical_or": "logical_or", "bitwise_and": "bitwise_and", "bitwise_or": "bitwise_or", "__and__": "bitwise_and",
    "__or__": "bitwise_or", "floor_divide": "floor_divide", "remainder": "remainder",
}  # fmt: skip
_UNARY = {
    "neg", "exp", "log", "sqrt", "rsqrt", "abs", "sin", "cos", "tanh", "sigmoid", "relu", "silu", "erf", "reciprocal",
    "logical_not", "hardswish", "hardsigmoid", "sign", "floor", "ceil", "round",
}  # fmt: skip
_IDENTITY = {"contiguous", "clone", "alias", "detach", "lift_fresh_copy", "_assert_tensor_metadata_noop"}
_SHAPE_ONLY = {"zeros_like", "ones_like", "full_like", "empty_like", "new_zeros", "new_ones", "new_full", "new_empty", "sym_size", "size"}
_ASSERTS = {"_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size", "_assert_async", "sym_constrain_range"}
_RESHAPES = {"view", "reshape", "_unsafe_view", "expand", "squeeze", "view_as", "reshape_as", "expand_as", "unflatten"}
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


def _meta_type(node: torch.fx.Node) -> TensorType | None:
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return TensorType(tuple(int(s) for s in val.shape), from_torch_dtype(val.dtype))
    return None


class _Importer:
    def __init__(self, ep: torch.export.ExportedProgram) -> None:
        self.ep = ep
        self.g = Graph()
        self.env: dict[torch.fx.Node, Any] = {}  # fx node -> Value | list[Value] | python scalar | torch.Tensor (folded)
        self.unsupported: list[str] = []

    # -- helpers
    def tensor_of(self, a: Any) -> torch.Tensor | None:
        """The concrete tensor behind an argument if it is constant."""
        if isinstance(a, torch.fx.Node):
            v = self.env[a]
            if isinstance(v, Value) and v.is_const:
                return v.value
            if isinstance(v, torch.Tensor):
                return v
            return None
        return None

    def value(self, a: Any, hint: str) -> Value | None:
        """Turn an argument into a Value (python scalars into 0-d constants)."""
        if a is None:
            return None
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
                    t = _meta_type(node)
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
        if target is operator.getitem:
            src: Any = node.args[0]
            idx: Any = node.args[1]
            v = self.env[src]
            if isinstance(v, (list, tuple)):
                return v[idx]
            raise _Unsupported(f"getitem on {type(v).__name__} at {node.name}")
        if not isinstance(target, torch._ops.OpOverload):
            # python arithmetic on sizes (sym ints) and similar: evaluate
            fn: Any = target
            try:
                return fn(*self.concrete(node.args), **self.concrete(node.kwargs))
            except Exception as e:
                raise _Unsupported(
                    f"{getattr(target, '__name__', target)} at node {node.name} ({_module_path(node) or 'top level'}): {e}"
                ) from None
        pkt = _packet(target).rstrip("_") if _packet(target) not in ("__and__", "__or__") else _packet(target)
        args = _bind_schema(target, node.args, node.kwargs)
        path = _module_path(node)
        hint = (
            path
            if pkt in ("linear", "conv2d", "conv1d", "embedding", "layer_norm", "rms_norm") and path
            else (f"{path}.{pkt}" if path else pkt)
        )
        if pkt in _ASSERTS:
            return None
        if pkt in _IDENTITY:
            return self.env[args["self"]] if isinstance(args.get("self"), torch.fx.Node) else args.get("self")
        if pkt in _SHAPE_ONLY or self.is_foldable(node):
            return self.fold(node, pkt)
        t = _meta_type(node)
        g = self.g

        def call(op: str, ins: Sequence[Any], attrs: dict[str, Any] | None = None) -> Value:
            vals = [self.value(a, hint + ".c") for a in ins]
            return g.call(op, vals, attrs or {}, name=hint)

        a: Any
        b: Any
        if pkt in _BINARY:
            a, b = (args.get("self", args.get("input")), args.get("other", args.get("exponent")))
            if pkt == "pow" and "self" in args and not isinstance(args["self"], torch.fx.Node):
                a, b = args["self"], args["exponent"]
            alpha = args.get("alpha", 1)
            if alpha not in (None, 1):
                b = call("mul", [b, float(alpha) if isinstance(alpha, float) else alpha])
            out = call(_BINARY[pkt], [a, _scalar_like(b, a, self)])
            return self.check(node, out)
        if pkt == "rsub":
            b = args["other"]
            alpha = args.get("alpha", 1)
            a = args["self"]
            if alpha not in (None, 1):
                a = call("mul", [a, alpha])
            return self.check(node, call("sub", [_scalar_like(b, args["self"], self), a]))
        if pkt in _UNARY:
            return self.check(node, call(pkt, [args["self"]]))
        if pkt in ("hardtanh", "relu6"):
            lo, hi = (args.get("min_val", -1.0), args.get("max_val", 1.0)) if pkt == "hardtanh" else (0.0, 6.0)
            return self.check(node, call("clamp", [args["self"]], {"min": lo, "max": hi}))
        if pkt in ("clamp", "clamp_min", "clamp_max"):
            lo = args.get("min") if pkt != "clamp_max" else None
            hi = args.get("max") if pkt != "clamp_min" else None
            if isinstance(lo, torch.fx.Node) or isinstance(hi, torch.fx.Node):
                raise _Unsupported(f"aten.{pkt} with tensor bounds at node {node.name} ({path or 'top level'})")
            return self.check(node, call("clamp", [args["self"]], {"min": lo, "max": hi}))
        if pkt in ("_to_copy", "to", "type_as"):
            src = self.env[args["self"]]
            want = t.dtype if t is not None else None
            if want is None or (isinstance(src, Value) and src.dtype == want):
                return src
            return self.check(node, call("cast", [args["self"]], {"dtype": want}))
        if pkt in ("dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout"):
            return self.env[args["input"]]
        if pkt == "native_dropout":
            return [self.env[args["input"]], None]
        if pkt in _SIMPLE:
            op, slots, amap = _SIMPLE[pkt]
            attrs = {an: _py(args[sn]) for sn, an in amap.items() if sn in args}
            if op in ("max_pool2d", "avg_pool2d") and not attrs.get("stride"):
                attrs["stride"] = attrs["kernel_size"]
            if op == "where":
                ins = [args["condition"], args["self"], args["other"]]
                ins = [ins[0], _scalar_like(ins[1], ins[2], self), _scalar_like(ins[2], ins[1], self)]
                return self.check(node, call(op, ins))
            return self.check(node, call(op, [args.get(s) for s in slots], attrs))
        if pkt in ("max_pool2d_with_indices",):
            attrs = {k: _py(args[k]) for k in ("kernel_size", "stride", "padding", "dilation", "ceil_mode")}
            if not attrs["stride"]:
                attrs["stride"] = attrs["kernel_size"]
            return [call("max_pool2d", [args["self"]], attrs), None]
        if pkt in ("batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm", "_native_batch_norm_legit"):
            training = args.get("training", False)
            if training:
                raise _Unsupported(f"aten.{pkt} in training mode at node {node.name} ({path}); call model.eval() first")
            out = call(
                "batch_norm",
                [args["input"], args["weight"], args["bias"], args["running_mean"], args["running_var"]],
                {"eps": float(args.get("eps", 1e-5))},
            )
            return out if pkt == "batch_norm" else [out, None, None]
        if pkt == "native_layer_norm":
            out = call(
                "layer_norm",
                [args["input"], args["weight"], args["bias"]],
                {"normalized_shape": list(args["normalized_shape"]), "eps": float(args["eps"])},
            )
            return [out, None, None]
        if pkt == "scaled_dot_product_attention":
            attrs = {
                "is_causal": bool(args.get("is_causal", False)),
                "scale": args.get("scale"),
                "enable_gqa": bool(args.get("enable_gqa", False)),
            }
            return self.check(node, call("sdpa", [args["query"], args["key"], args["value"], args.get("attn_mask")], attrs))
        if pkt in ("mean", "sum"):
            dim = args.get("dim")
            return self.check(
                node,
                call(
                    pkt, [args["self"]], {"dim": _py(dim) if dim not in (None, []) else None, "keepdim": bool(args.get("keepdim", False))}
                ),
            )
        if pkt in _RESHAPES and t is not None:
            src = self.env[args["self"]]
            if isinstance(src, Value) and src.shape == t.shape:
                return src
            op = "expand" if pkt in ("expand", "expand_as") else "reshape"
            return self.check(node, call(op, [args["self"]], {"shape": list(t.shape)}))
        if pkt == "t":
            src = self.env[args["self"]]
            if isinstance(src, Value) and src.ndim < 2:
                return src
            return self.check(node, call("transpose", [args["self"]], {"dim0": 0, "dim1": 1}))
        if pkt == "slice":
            src = self.env[args["self"]]
            dim = int(args.get("dim", 0))
            size = src.shape[dim] if isinstance(src, Value) else None
            start, end, step = args.get("start"), args.get("end"), int(args.get("step", 1))
            start = 0 if start is None else int(start)
            end = size if end is None or (size is not None and end >= size) else int(end)
            if isinstance(src, Value) and size is not None and start in (0, -size) and end == size and step == 1:
                return src
            return self.check(node, call("slice", [args["self"]], {"dim": dim, "start": start, "end": end, "step": step}))
        if pkt in ("cat", "concat", "stack"):
            tensors = [a for a in args["tensors"]]
            ins = [self.value(a, hint + ".c") for a in tensors]
            ins = [v for v in ins if v is not None and not (pkt != "stack" and v.numel == 0)]
            out = g.call("cat" if pkt != "stack" else "stack", ins, {"dim": int(args.get("dim", 0))}, name=hint)
            return self.check(node, out)
        if pkt in ("split", "split_with_sizes", "chunk", "unbind", "tensor_split"):
            vals: Any = node.meta.get("val")
            dim = int(args.get("dim", 0))
            sizes = [int(v.shape[dim]) for v in vals] if pkt != "unbind" else [1] * len(vals)
            node_ir = g.create_node("split", [self.value(args["self"], hint)], {"sizes": sizes, "dim": dim}, name=hint)
            outs = list(node_ir.outputs)
            if pkt == "unbind":
                outs = [g.call("squeeze", [o], {"dim": dim}, name=hint) for o in outs]
            return outs
        if pkt == "convolution":
            if args.get("transposed"):
                raise _Unsupported(f"aten.convolution (transposed) at node {node.name} ({path})")
            w = self.env[args["weight"]]
            conv_op = {3: "conv1d", 4: "conv2d"}.get(w.ndim)
            if conv_op is None:
                raise _Unsupported(f"aten.convolution with {w.ndim - 2}-d kernels at node {node.name} ({path})")
            attrs = {k: _py(args[k]) for k in ("stride", "padding", "dilation", "groups")}
            return self.check(node, call(conv_op, [args["input"], args["weight"], args["bias"]], attrs))
        if pkt == "addmm":
            mm = call("matmul", [args["mat1"], args["mat2"]])
            beta, alpha = args.get("beta", 1), args.get("alpha", 1)
            if alpha != 1:
                mm = g.call("mul", [mm, self.value(float(alpha), hint + ".c")], name=hint)
            bias = self.value(args["self"], hint + ".c")
            if beta != 1:
                bias = g.call("mul", [bias, self.value(float(beta), hint + ".c")], name=hint)
            return self.check(node, g.call("add", [mm, bias], name=hint))
        if pkt == "index":
            idx = list(args["indices"])
            dims = [d for d, i in enumerate(idx) if i is not None]
            ivals = [self.value(idx[d], hint + ".idx") for d in dims]
            if any(v is None or v.dtype not in ("int64", "int32") for v in ivals):
                raise _Unsupported(f"aten.index with boolean masks at node {node.name} ({path or 'top level'})")
            vals = [self.value(args["self"], hint + ".c"), *ivals]
            return self.check(node, g.call("index", vals, {"dims": dims}, name=hint))
        raise _Unsupported(f"aten.{pkt} ({target}) at node {node.name} ({path or 'top level'})")

    def check(self, node: torch.fx.Node, out: Value) -> Value:
        t = _meta_type(node)
        if t is not None and t.shape != out.shape:
            raise FrontendError(f"import of {node.target} at {node.name}: bitpress infers {out.type}, torch says {t}")
        if t is not None and t.dtype != out.dtype:
            out = self.g.call("cast", [out], {"dtype": t.dtype}, name=out.name)
        return out

    def fold(self, node: torch.fx.Node, pkt: str) -> Any:
        """Evaluate an op whose inputs are constants (or only whose shapes matter)."""

        def sub(a: torch.fx.Node) -> Any:
            v = self.env[a]
            if isinstance(v, Value):
                if v.is_const:
                    return v.value
                return torch.zeros(v.shape, dtype=torch.float32 if "float" in v.dtype else torch.int64).to(_dtype(v.dtype))
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


def import_exported(ep: torch.export.ExportedProgram) -> Graph:
    """Convert an ExportedProgram to a bitpress Graph."""
    g = _Importer(ep).run()
    from bitpress.compiler.rewrite import dead_code_elimination

    dead_code_elimination(g)
    g.verify()
    return g


def import_module(model: torch.nn.Module, example_inputs: Sequence[Any], *, export: Callable[..., Any] | None = None) -> Graph:
    """Trace `model` with torch.export at the shapes of `example_inputs` and import it."""
    if not isinstance(example_inputs, (tuple, list)):
        raise TypeError("example_inputs must be a tuple of tensors")
    model = model.eval()
    try:
        ep = (export or torch.export.export)(model, tuple(example_inputs), strict=False)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FrontendError(f"torch.export failed on {type(model).__name__}: {first}") from None
    return import_exported(ep)
