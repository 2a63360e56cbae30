"""ONNX (opset 13+) -> bitpress IR, for the op set the torch frontend covers.

Initializers become constants under their ONNX names (so merge passes can match state
dicts of torch-exported models); nodes are named by the module path encoded in their
ONNX names (`/encoder/layer.0/attention/self/query/MatMul` -> `encoder.layer.0.attention.self.query`).
Shapes are static: symbolic input dims are fixed by `example_inputs`.  Every node whose
inputs are all constants (shape arithmetic: Shape, Gather, Concat, ConstantOfShape, Range,
...) is evaluated at import time with the IR ops' reference semantics, so only the tensor
computation reaches the graph.  `MatMul` / `Gemm` by a constant 2-D weight become
`linear` (weights stored as [out, in], as torch has them), so compression passes see
ONNX and torch models alike.

ONNX type rules differ from torch's in places (integer Div truncates, ReduceSum keeps
int32, Pow keeps the base type); each conversion follows ONNX, and the element types
from ONNX shape inference are enforced with casts.  Unsupported ops are all reported at
once, each with its node name; an unreadable or invalid file is a one-line error.

Example:
    >>> g = import_onnx("model.onnx", example_inputs=(torch.randn(1, 3, 32, 32),))  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bitpress.compiler.frontend.torch_fx import FrontendError, UnsupportedOpError
from bitpress.compiler.ir import Graph, IRError, TensorType, Value, from_torch_dtype
from bitpress.compiler.ops import get_op

__all__ = ["import_onnx", "supported_onnx_ops"]

MIN_OPSET = 13
_MAX_FOLD = 1 << 24  # elements: larger constant results stay as graph ops' inputs anyway

# ONNX TensorProto element type -> IR dtype
_DTYPES: dict[int, str] = {
    1: "float32",
    2: "uint8",
    3: "int8",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
    16: "bfloat16",
}


class _Unsupported(Exception):
    """One unsupported use (collected; all are reported together)."""


class _Poison:
    """Stands for values downstream of an unsupported op."""


Operand = Value | torch.Tensor | _Poison | None
Converter = Callable[["_Importer", Any, list[Operand]], list[Operand]]
_CONVERTERS: dict[str, Converter] = {}


def _converter(*op_types: str) -> Callable[[Converter], Converter]:
    def deco(fn: Converter) -> Converter:
        for t in op_types:
            _CONVERTERS[t] = fn
        return fn

    return deco


def supported_onnx_ops() -> list[str]:
    """The ONNX op types (default domain) the importer converts."""
    return sorted(_CONVERTERS)


# ----------------------------------------------------------------------------- loading


def _load(model_or_path: Any) -> Any:
    import onnx

    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    if isinstance(model_or_path, (bytes, bytearray)):
        try:
            return onnx.load_from_string(bytes(model_or_path))
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise FrontendError(f"bytes are not a valid ONNX model: {type(e).__name__}: {first}") from None
    if not isinstance(model_or_path, (str, os.PathLike)):
        raise TypeError(f"import_onnx takes an onnx.ModelProto, serialized bytes or a path, not {type(model_or_path).__name__}")
    p = Path(model_or_path)
    if not p.is_file():
        raise FrontendError(f"ONNX file {p} does not exist")
    try:
        return onnx.load(str(p))
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FrontendError(f"{p} is not a valid ONNX model: {type(e).__name__}: {first}") from None


def _opset(model: Any) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    raise FrontendError("ONNX model declares no default-domain opset")


def _upgrade(model: Any) -> Any:
    """Models below opset 13 are converted with onnx's version converter."""
    version = _opset(model)
    if version >= MIN_OPSET:
        return model
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, MIN_OPSET)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FrontendError(f"ONNX opset {version} is below {MIN_OPSET} and could not be upgraded: {first}") from None


def _skeleton(model: Any, shapes: dict[str, tuple[int, ...]] | None = None) -> Any:
    """`model` without the bytes of its large initializers (they become typed graph inputs).

    The checker and shape inference only need types and small constants (shape tensors),
    and serializing hundreds of MB of weights for them costs seconds.  `shapes` fixes the
    graph inputs' dims.
    """
    import onnx
    from onnx import helper

    sk = onnx.ModelProto()
    sk.ir_version = model.ir_version
    sk.opset_import.extend(model.opset_import)
    sk.functions.extend(model.functions)
    g, out = model.graph, sk.graph
    out.name = g.name
    out.node.extend(g.node)
    out.output.extend(g.output)
    out.value_info.extend(g.value_info)
    init_names = {t.name for t in g.initializer}
    for vi in g.input:
        if vi.name in init_names:
            continue
        v = out.input.add()
        v.CopyFrom(vi)
        if shapes and vi.name in shapes:
            dims = v.type.tensor_type.shape.dim
            del dims[:]
            for d in shapes[vi.name]:
                dims.add().dim_value = d
    for t in g.initializer:
        if math.prod(t.dims) <= 4096 and t.data_location != onnx.TensorProto.EXTERNAL:
            out.initializer.append(t)
        else:
            out.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return sk


def _check_model(model: Any) -> None:
    import onnx

    try:
        onnx.checker.check_model(_skeleton(model))
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FrontendError(f"invalid ONNX model: {first}") from None


def _check_supported(model: Any) -> None:
    bad: dict[str, list[str]] = {}
    for i, n in enumerate(model.graph.node):
        key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        if n.domain not in ("", "ai.onnx") or n.op_type not in _CONVERTERS:
            bad.setdefault(key, []).append(f"{n.name or '#' + str(i)!r} ({_ir_name(n) or 'top level'})")
    if bad:
        parts = [f"{op} at node {', '.join(ns[:3])}" + (f" (+{len(ns) - 3} more)" if len(ns) > 3 else "") for op, ns in sorted(bad.items())]
        raise UnsupportedOpError(f"{len(bad)} unsupported ONNX op type(s): " + "; ".join(parts))


def _inferred_types(model: Any, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[str | None, tuple[int, ...] | None]]:
    """ONNX shape inference at the given input shapes: value name -> (IR dtype, static shape) where known."""
    import onnx

    out: dict[str, tuple[str | None, tuple[int, ...] | None]] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(_skeleton(model, shapes), strict_mode=False, data_prop=True)
    except Exception:
        return out
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type"):
            continue
        dtype = _DTYPES.get(tt.elem_type)
        shape: tuple[int, ...] | None = None
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shape = tuple(int(d.dim_value) for d in tt.shape.dim)
        out[vi.name] = (dtype, shape)
    return out


# ----------------------------------------------------------------------------- the importer


def _ir_name(node: Any) -> str:
    """`/encoder/layer.0/query/MatMul_1` -> `encoder.layer.0.query`"""
    raw = str(node.name or "")
    parts = [p for p in raw.strip("/").split("/") if p]
    if len(parts) > 1 and parts[-1].split("_")[0] == node.op_type:
        parts = parts[:-1]
    elif len(parts) == 1 and parts[0].split("_")[0] == node.op_type:
        parts = []
    return ".".join(parts).replace("::", ".")


_LAYER_OPS = frozenset({"linear", "conv1d", "conv2d", "embedding", "layer_norm", "rms_norm", "batch_norm"})


class _Importer:
    def __init__(self, model: Any, example_inputs: Sequence[Any] | None) -> None:
        self.model = model
        self.example_inputs = list(example_inputs) if example_inputs is not None else None
        self.g = Graph()
        self.env: dict[str, Operand] = {}
        self.materialized: dict[int, tuple[torch.Tensor, Value]] = {}  # constant tensor -> its graph constant
        self.tensor_hint: dict[int, str] = {}  # id(tensor) -> preferred constant name
        self._hinted: list[torch.Tensor] = []  # keeps hinted tensors alive, so their ids are not reused
        self.errors: list[str] = []
        self.node: Any = None
        self.path = ""
        self.types: dict[str, tuple[str | None, tuple[int, ...] | None]] = {}
        self.readers: dict[str, int] = {}  # ONNX value name -> how many nodes / graph outputs read it
        self.transposed: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(W^T view) -> (W^T, W) for 2-D constants

    # -- operands
    def hint(self, t: torch.Tensor, name: str, *, override: bool = False) -> None:
        """Name the graph constant `t` will become."""
        if override or id(t) not in self.tensor_hint:
            self.tensor_hint[id(t)] = name
            self._hinted.append(t)

    def as_value(self, x: Operand, hint: str) -> Value | None:
        if x is None or isinstance(x, Value):
            return x
        if isinstance(x, _Poison):
            raise _Unsupported("input comes from an unsupported node")
        hit = self.materialized.get(id(x))
        if hit is not None:
            return hit[1]
        v = self.g.add_const(x.contiguous(), _clean(self.tensor_hint.get(id(x), hint)))
        self.materialized[id(x)] = (x, v)  # keeps x alive, so its id is not reused
        return v

    def const(self, x: Operand, what: str) -> torch.Tensor:
        """The tensor behind an input that must be constant (shapes, axes, pads)."""
        if isinstance(x, torch.Tensor):
            return x
        if isinstance(x, Value) and x.is_const:
            return x.value
        raise _Unsupported(f"{what} must be a constant (data-dependent shapes are not supported)")

    def ints(self, x: Operand, what: str) -> list[int]:
        return [int(v) for v in self.const(x, what).reshape(-1).tolist()]

    @staticmethod
    def shape(x: Operand) -> tuple[int, ...]:
        if isinstance(x, Value):
            return x.type.static_shape()
        if isinstance(x, torch.Tensor):
            return tuple(x.shape)
        raise _Unsupported("missing operand")

    @staticmethod
    def dtype(x: Operand) -> str:
        if isinstance(x, Value):
            return x.dtype
        if isinstance(x, torch.Tensor):
            return from_torch_dtype(x.dtype)
        raise _Unsupported("missing operand")

    # -- emitting
    def op(self, op: str, inputs: Sequence[Operand], **attrs: Any) -> Value | torch.Tensor:
        res = self.op_multi(op, inputs, **attrs)
        return res[0]

    def op_multi(self, op: str, inputs: Sequence[Operand], **attrs: Any) -> list[Value | torch.Tensor]:
        """Emit IR op `op` for the current ONNX node, or evaluate it now when every input is constant."""
        if all(x is None or isinstance(x, torch.Tensor) for x in inputs):
            try:
                with torch.no_grad():
                    res = get_op(op).ref(*inputs, **attrs)
            except Exception as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise _Unsupported(f"evaluating {op} on constants failed: {first}") from None
            outs = list(res) if isinstance(res, (tuple, list)) else [res]
            if all(o.numel() <= _MAX_FOLD for o in outs):
                return outs
        hint = (self.path if op in _LAYER_OPS else f"{self.path}.{op}") if self.path else op
        vals = [self.as_value(x, f"{self.path}.c{i}" if self.path else f"c{i}") for i, x in enumerate(inputs)]
        try:
            node = self.g.create_node(op, vals, attrs, name=hint)
        except (IRError, RuntimeError, TypeError, ValueError, IndexError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise _Unsupported(f"cannot express as {op}: {first}") from None
        return list(node.outputs)

    def cast(self, x: Operand, dtype: str) -> Operand:
        if x is None or isinstance(x, _Poison) or self.dtype(x) == dtype:
            return x
        return self.op("cast", [x], dtype=dtype)

    # -- main loop
    def run(self) -> Graph:
        import onnx
        from onnx import numpy_helper

        graph = self.model.graph
        inits = {t.name: t for t in graph.initializer}
        for name, t in inits.items():
            tensor = _tensor(numpy_helper.to_array(t), name)
            self.env[name] = tensor
            self.hint(tensor, name)
        real_inputs = [vi for vi in graph.input if vi.name not in inits]
        if self.example_inputs is not None and len(self.example_inputs) != len(real_inputs):
            names = ", ".join(vi.name for vi in real_inputs)
            raise FrontendError(f"ONNX model takes {len(real_inputs)} inputs ({names}), got {len(self.example_inputs)} example inputs")
        static: dict[str, tuple[int, ...]] = {}
        for i, vi in enumerate(real_inputs):
            tt = vi.type.tensor_type
            dtype = _DTYPES.get(tt.elem_type)
            if dtype is None:
                raise FrontendError(
                    f"ONNX input {vi.name!r} has element type {onnx.TensorProto.DataType.Name(tt.elem_type)}, not supported"
                )
            dims = list(tt.shape.dim)
            if self.example_inputs is not None:
                ex = self.example_inputs[i]
                shape = tuple(int(s) for s in ex.shape)
                if len(shape) != len(dims) or any(d.HasField("dim_value") and d.dim_value != s for d, s in zip(dims, shape)):
                    want = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
                    raise FrontendError(f"example input {i} has shape {list(shape)}; ONNX input {vi.name!r} is {want}")
            else:
                sym = [d.dim_param or "?" for d in dims if not d.HasField("dim_value")]
                if sym:
                    raise FrontendError(
                        f"ONNX input {vi.name!r} has symbolic dims {sym}; pass example_inputs (CLI: --inputs) to fix the shapes (bitpress graphs are static)"
                    )
                shape = tuple(int(d.dim_value) for d in dims)
            static[vi.name] = shape
            self.env[vi.name] = self.g.add_input(_clean(vi.name), TensorType(shape, dtype))
        self.types = _inferred_types(self.model, static)
        for node in graph.node:
            for n in node.input:
                self.readers[n] = self.readers.get(n, 0) + 1
        for vi in graph.output:
            self.readers[vi.name] = self.readers.get(vi.name, 0) + 1
        for index, node in enumerate(graph.node):
            self.node = node
            self.path = _ir_name(node)
            ins: list[Operand] = [self.env[n] if n else None for n in node.input]
            for n in node.input:
                if n and n not in self.env:
                    raise FrontendError(f"ONNX node {node.name!r} ({node.op_type}) reads {n!r}, which nothing defines")
            if any(isinstance(x, _Poison) for x in ins):
                outs: list[Operand] = [_Poison()] * len(node.output)
            else:
                try:
                    outs = _CONVERTERS[node.op_type](self, node, ins)
                    outs = self.enforce_types(node, outs)
                except _Unsupported as e:
                    where = f"{node.name or '#' + str(index)!r} ({self.path or 'top level'})"
                    self.errors.append(f"{node.op_type} at node {where}: {e}")
                    outs = [_Poison()] * len(node.output)
            for name, v in zip(node.output, outs):
                if name:
                    self.env[name] = v
        if self.errors:
            raise UnsupportedOpError(f"{len(self.errors)} ONNX node(s) cannot be imported: " + "; ".join(self.errors))
        outputs = []
        for vi in graph.output:
            v = self.env.get(vi.name)
            if v is None or isinstance(v, _Poison):
                raise FrontendError(f"ONNX graph output {vi.name!r} is not computed by any node")
            val = self.as_value(v, _clean(vi.name))
            assert val is not None
            outputs.append(val)
        self.g.set_outputs(outputs)
        return self.g

    def enforce_types(self, node: Any, outs: list[Operand]) -> list[Operand]:
        """Cast to the element types ONNX inference gives, and check static shapes agree."""
        fixed: list[Operand] = []
        for name, v in zip(node.output, outs):
            want_dtype, want_shape = self.types.get(name, (None, None))
            if isinstance(v, (Value, torch.Tensor)):
                if want_shape is not None and self.shape(v) != want_shape:
                    raise _Unsupported(f"output {name!r}: bitpress computes shape {list(self.shape(v))}, ONNX infers {list(want_shape)}")
                if want_dtype is not None and self.dtype(v) != want_dtype:
                    v = self.cast(v, want_dtype)
            fixed.append(v)
        return fixed


def _clean(name: str) -> str:
    return name.replace("::", ".").strip("/").replace("/", ".") or "v"


def _tensor(arr: np.ndarray, name: str) -> torch.Tensor:
    if arr.dtype.kind not in "fiub" or arr.dtype in (np.uint16, np.uint32, np.uint64):
        raise FrontendError(f"ONNX initializer {name!r} has element type {arr.dtype}, not supported")
    return torch.from_numpy(np.array(arr, copy=True))


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        out[a.name] = v
    return out


def _axis(a: int, nd: int) -> int:
    return a + nd if a < 0 else a


# ----------------------------------------------------------------------------- converters: elementwise

_SAME = {
    "Sub": "sub", "Mul": "mul", "Equal": "eq", "Less": "lt", "LessOrEqual": "le", "Greater": "gt",
    "GreaterOrEqual": "ge", "And": "logical_and", "Or": "logical_or", "BitwiseAnd": "bitwise_and", "BitwiseOr": "bitwise_or",
    "Where": "where", "Neg": "neg", "Exp": "exp", "Log": "log", "Sqrt": "sqrt", "Abs": "abs", "Sin": "sin", "Cos": "cos",
    "Tanh": "tanh", "Sigmoid": "sigmoid", "Relu": "relu", "Erf": "erf", "Reciprocal": "reciprocal", "HardSwish": "hardswish",
    "Sign": "sign", "Floor": "floor", "Ceil": "ceil", "Round": "round", "Not": "logical_not",
}  # fmt: skip


def _same(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    return [imp.op(_SAME[node.op_type], ins)]


for _t in _SAME:
    _converter(_t)(_same)


@_converter("Add")
def _add(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    """linear(x, W) + b -> linear(x, W, b)   for a constant b of shape [out] (torch exports Linear on 3-D x as MatMul + Add)"""
    for i in (0, 1):
        y, b = ins[i], ins[1 - i]
        lin = y.producer if isinstance(y, Value) else None
        if (
            lin is not None
            and lin.op == "linear"
            and lin.inputs[2] is None
            and isinstance(b, torch.Tensor)
            and b.ndim == 1
            and lin.inputs[1] is not None
            and b.shape[0] == lin.inputs[1].shape[0]
            and b.dtype == _torch_dtype(lin.output.dtype)
            and imp.readers.get(node.input[i], 0) == 1
        ):
            imp.hint(b, f"{lin.name}.bias")
            bias = imp.as_value(b, f"{lin.name}.bias")
            lin.inputs[2] = bias
            assert bias is not None
            bias.users[lin] = None
            return [y]
    return [imp.op("add", ins)]


@_converter("Identity", "Dropout")
def _identity(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    # inference: Dropout(x) = x (its optional mask output is all true)
    outs: list[Operand] = [ins[0]]
    if len(node.output) > 1 and node.output[1]:
        outs.append(torch.ones(imp.shape(ins[0]), dtype=torch.bool))
    return outs


@_converter("Div")
def _div(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    """floats: a / b;  integers: ONNX truncates, so trunc(a / b) = floor(a / b) + 1 where a % b != 0 and a, b differ in sign"""
    a, b = ins
    if imp.dtype(a).startswith(("float", "bfloat")):
        return [imp.op("div", [a, b])]
    fd = imp.op("floor_divide", [a, b])
    rem = imp.op("remainder", [a, b])
    zero = torch.tensor(0, dtype=torch.int64)
    fix = imp.op("logical_and", [imp.op("ne", [rem, zero]), imp.op("ne", [imp.op("lt", [a, zero]), imp.op("lt", [b, zero])])])
    return [imp.op("where", [fix, imp.op("add", [fd, torch.tensor(1, dtype=torch.int64)]), fd])]


@_converter("Mod")
def _mod(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    """fmod=0: Python's %;  fmod=1: C fmod, r - b where r != 0 and r's sign differs from a's"""
    a, b = ins
    r = imp.op("remainder", [a, b])
    if not _attrs(node).get("fmod", 0):
        return [r]
    zero = torch.tensor(0, dtype=torch.int64)
    fix = imp.op("logical_and", [imp.op("ne", [r, zero]), imp.op("ne", [imp.op("lt", [r, zero]), imp.op("lt", [a, zero])])])
    return [imp.op("where", [fix, imp.op("sub", [r, b]), r])]


@_converter("Pow")
def _pow(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    # ONNX keeps the base's type
    return [imp.cast(imp.op("pow", ins), imp.dtype(ins[0]))]


@_converter("Xor")
def _xor(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    return [imp.op("ne", ins)]


@_converter("Max", "Min", "Sum")
def _variadic(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    op = {"Max": "maximum", "Min": "minimum", "Sum": "add"}[node.op_type]
    acc = ins[0]
    for x in ins[1:]:
        acc = imp.op(op, [acc, x])
    return [acc]


@_converter("IsNaN")
def _isnan(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    """isnan(x) = x != x"""
    return [imp.op("ne", [ins[0], ins[0]])]


@_converter("IsInf")
def _isinf(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    a = _attrs(node)
    x = ins[0]
    inf = torch.tensor(math.inf, dtype=torch.float32)
    pos = imp.op("eq", [x, inf])
    neg = imp.op("eq", [x, -inf])
    use_pos, use_neg = a.get("detect_positive", 1), a.get("detect_negative", 1)
    if use_pos and use_neg:
        return [imp.op("logical_or", [pos, neg])]
    return [pos if use_pos else neg]


@_converter("Gelu")
def _gelu(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    return [imp.op("gelu", ins, approximate=str(_attrs(node).get("approximate", "none")))]


@_converter("LeakyRelu")
def _leaky_relu(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    return [imp.op("leaky_relu", ins, negative_slope=float(_attrs(node).get("alpha", 0.01)))]


@_converter("Elu")
def _elu(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    return [imp.op("elu", ins, alpha=float(_attrs(node).get("alpha", 1.0)))]


@_converter("Softplus")
def _softplus(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    # ONNX Softplus has no threshold; torch's switches to x above 20, where log1p(exp(x)) == x in float32
    return [imp.op("softplus", ins)]


@_converter("HardSigmoid")
def _hardsigmoid(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    """hardsigmoid(x) = clamp(alpha * x + beta, 0, 1)"""
    a = _attrs(node)
    alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    if abs(alpha - 1 / 6) < 1e-7 and beta == 0.5:
        return [imp.op("hardsigmoid", ins)]
    dt = _torch_dtype(imp.dtype(ins[0]))
    y = imp.op("add", [imp.op("mul", [ins[0], torch.tensor(alpha, dtype=dt)]), torch.tensor(beta, dtype=dt)])
    return [imp.op("clamp", [y], min=0.0, max=1.0)]


@_converter("PRelu")
def _prelu(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    """prelu(x, s) = x where x >= 0, s * x elsewhere"""
    x, s = ins
    zero = torch.tensor(0.0, dtype=_torch_dtype(imp.dtype(x)))
    return [imp.op("where", [imp.op("lt", [x, zero]), imp.op("mul", [x, s]), x])]


@_converter("Clip")
def _clip(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    x = ins[0]
    lo = ins[1] if len(ins) > 1 else None
    hi = ins[2] if len(ins) > 2 else None
    if all(b is None or isinstance(b, torch.Tensor) for b in (lo, hi)):
        is_float = imp.dtype(x).startswith(("float", "bfloat"))

        def scalar(b: Operand) -> float | int | None:
            if not isinstance(b, torch.Tensor):
                return None
            return float(b.reshape(())) if is_float else int(b.reshape(()))

        return [imp.op("clamp", [x], min=scalar(lo), max=scalar(hi))]
    y = x if lo is None else imp.op("maximum", [x, lo])
    return [y if hi is None else imp.op("minimum", [y, hi])]


@_converter("Cast")
def _cast(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    to = int(_attrs(node)["to"])
    dtype = _DTYPES.get(to)
    if dtype is None:
        raise _Unsupported(f"cast to ONNX element type {to}")
    return [imp.cast(ins[0], dtype)]


@_converter("CastLike")
def _cast_like(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    return [imp.cast(ins[0], imp.dtype(ins[1]))]


# ----------------------------------------------------------------------------- linear algebra


def _param_name(imp: _Importer, t: torch.Tensor, kind: str) -> str:
    """The initializer's own name, unless it is an exporter's `onnx::Op_12` (then `<module path>.<kind>`)."""
    name = imp.tensor_hint.get(id(t), "")
    return name if name and not name.startswith("onnx::") else f"{imp.path or 'layer'}.{kind}"


def _weight_name(imp: _Importer, w: torch.Tensor) -> str:
    return _param_name(imp, w, "weight")


def _linear(imp: _Importer, x: Operand, w: torch.Tensor, b: Operand) -> Value | torch.Tensor:
    imp.hint(w, f"{imp.path}.weight")
    if b is not None and isinstance(b, torch.Tensor):
        imp.hint(b, f"{imp.path}.bias")
    return imp.op("linear", [x, w, b])


@_converter("MatMul")
def _matmul(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    """matmul(x, B) -> linear(x, B^T) for a constant 2-D B  (weights stored [out, in] as torch has them)"""
    a, b = ins
    if isinstance(b, torch.Tensor) and b.ndim == 2 and not isinstance(a, torch.Tensor) and imp.dtype(a).startswith(("float", "bfloat")):
        return [_linear(imp, a, _untransposed(imp, b), None)]
    return [imp.op("matmul", [a, b])]


def _untransposed(imp: _Importer, b: torch.Tensor) -> torch.Tensor:
    """W with b = W^T: the original constant when b is a folded Transpose of it, else a new [out, in] copy."""
    hit = imp.transposed.get(id(b))
    if hit is not None and hit[0] is b:
        return hit[1]
    wt = b.t().contiguous()
    imp.hint(wt, _weight_name(imp, b), override=True)
    return wt


@_converter("Gemm")
def _gemm(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    """Gemm(A, B, C) = alpha * A' @ B' + beta * C  -> linear(A', W, C) with W = B'^T"""
    at = _attrs(node)
    a, b = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 else None
    alpha, beta = float(at.get("alpha", 1.0)), float(at.get("beta", 1.0))
    if at.get("transA", 0):
        a = imp.op("transpose", [a], dim0=0, dim1=1)
    if isinstance(b, torch.Tensor):
        w = b if at.get("transB", 0) else _untransposed(imp, b)
        n = w.shape[0]
        fuse = c is not None and beta == 1.0 and alpha == 1.0 and imp.shape(c) == (n,)
        y = _linear(imp, a, w, c if fuse else None)
    else:
        bb = b if not at.get("transB", 0) else imp.op("transpose", [b], dim0=0, dim1=1)
        y = imp.op("matmul", [a, bb])
        fuse = False
    if alpha != 1.0:
        y = imp.op("mul", [y, torch.tensor(alpha, dtype=_torch_dtype(imp.dtype(y)))])
    if c is not None and not fuse:
        cc = c if beta == 1.0 else imp.op("mul", [c, torch.tensor(beta, dtype=_torch_dtype(imp.dtype(c)))])
        y = imp.op("add", [y, cc])
    return [y]


def _pads(imp: _Importer, node: Any, x: Operand, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]) -> list[int]:
    """Begin/end pads (ONNX order) from `pads` or `auto_pad`."""
    at = _attrs(node)
    nd = len(kernel)
    auto = str(at.get("auto_pad", "NOTSET"))
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        spatial = imp.shape(x)[2:]
        begin, end = [], []
        for i in range(nd):
            out = -(-spatial[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - spatial[i])
            small, big = total // 2, total - total // 2
            begin.append(small if auto == "SAME_UPPER" else big)
            end.append(big if auto == "SAME_UPPER" else small)
        return begin + end
    if auto == "VALID":
        return [0] * (2 * nd)
    pads = at.get("pads")
    return [int(p) for p in pads] if pads else [0] * (2 * nd)


def _explicit_pad(imp: _Importer, x: Operand, pads: list[int], value: float) -> tuple[Operand, list[int]]:
    """Symmetric pads stay on the op; asymmetric ones become a pad op in front of it."""
    nd = len(pads) // 2
    begin, end = pads[:nd], pads[nd:]
    if begin == end:
        return x, begin
    torch_pad: list[int] = []
    for i in reversed(range(nd)):
        torch_pad += [begin[i], end[i]]
    return imp.op("pad", [x], pad=torch_pad, mode="constant", value=value), [0] * nd


@_converter("Conv")
def _conv(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    at = _attrs(node)
    x, w = ins[0], ins[1]
    b = ins[2] if len(ins) > 2 else None
    kernel = list(imp.shape(w)[2:])
    nd = len(kernel)
    if nd not in (1, 2):
        raise _Unsupported(f"{nd}-d convolution (1-d and 2-d are supported)")
    strides = [int(s) for s in at.get("strides", [1] * nd)]
    dil = [int(d) for d in at.get("dilations", [1] * nd)]
    x, pad = _explicit_pad(imp, x, _pads(imp, node, x, kernel, strides, dil), 0.0)
    if isinstance(w, torch.Tensor):
        imp.hint(w, _param_name(imp, w, "weight"), override=True)
    if isinstance(b, torch.Tensor):
        imp.hint(b, _param_name(imp, b, "bias"), override=True)
    op = "conv1d" if nd == 1 else "conv2d"
    return [imp.op(op, [x, w, b], stride=strides, padding=pad, dilation=dil, groups=int(at.get("group", 1)))]


@_converter("Gather")
def _gather(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    """Gather(W, idx) -> embedding for a constant 2-D table on axis 0; select / index otherwise"""
    data, idx = ins
    nd = len(imp.shape(data))
    axis = _axis(int(_attrs(node).get("axis", 0)), nd)
    if isinstance(data, torch.Tensor) and data.ndim == 2 and axis == 0 and not isinstance(idx, torch.Tensor):
        imp.hint(data, f"{imp.path}.weight")
        return [imp.op("embedding", [data, idx])]
    if isinstance(idx, torch.Tensor) and idx.ndim == 0 and not isinstance(data, torch.Tensor):
        return [imp.op("select", [data], dim=axis, index=int(idx))]
    return [imp.op("index", [data, imp.cast(idx, "int64")], dims=[axis])]


@_converter("GatherND")
def _gather_nd(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    """GatherND(x, idx) = x[idx[..., 0], ..., idx[..., k-1]]   (batch_dims=0)"""
    data, idx = ins
    if int(_attrs(node).get("batch_dims", 0)):
        raise _Unsupported("batch_dims != 0")
    ishape = imp.shape(idx)
    k = ishape[-1]
    nd = len(ishape)
    parts = [imp.op("select", [imp.cast(idx, "int64")], dim=nd - 1, index=i) for i in range(k)]
    return [imp.op("index", [data, *parts], dims=list(range(k)))]


@_converter("GatherElements")
def _gather_elements(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    data, idx = ins
    nd = len(imp.shape(data))
    axis = _axis(int(_attrs(node).get("axis", 0)), nd)
    if isinstance(idx, torch.Tensor):  # ONNX allows negative indices, torch.gather does not
        idx = torch.where(idx < 0, idx + imp.shape(data)[axis], idx)
    return [imp.op("gather", [data, imp.cast(idx, "int64")], dim=axis)]


# ----------------------------------------------------------------------------- normalization


@_converter("BatchNormalization")
def _batch_norm(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    at = _attrs(node)
    if at.get("training_mode", 0):
        raise _Unsupported("training_mode=1 (export the model in eval mode)")
    return [imp.op("batch_norm", ins[:5], eps=float(at.get("epsilon", 1e-5)))] + [None] * (len(node.output) - 1)


@_converter("LayerNormalization")
def _layer_norm(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    at = _attrs(node)
    shape = imp.shape(ins[0])
    axis = _axis(int(at.get("axis", -1)), len(shape))
    if len(node.output) > 1 and any(node.output[1:]):
        raise _Unsupported("the mean / inverse-std outputs")
    b = ins[2] if len(ins) > 2 else None
    return [imp.op("layer_norm", [ins[0], ins[1], b], normalized_shape=list(shape[axis:]), eps=float(at.get("epsilon", 1e-5)))]


@_converter("RMSNormalization")
def _rms_norm(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    at = _attrs(node)
    shape = imp.shape(ins[0])
    axis = _axis(int(at.get("axis", -1)), len(shape))
    return [imp.op("rms_norm", [ins[0], ins[1]], normalized_shape=list(shape[axis:]), eps=float(at.get("epsilon", 1e-5)))]


@_converter("Softmax", "LogSoftmax")
def _softmax(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    op = "softmax" if node.op_type == "Softmax" else "log_softmax"
    return [imp.op(op, ins, dim=int(_attrs(node).get("axis", -1)))]


# ----------------------------------------------------------------------------- pooling


def _pool_args(imp: _Importer, node: Any, x: Operand) -> tuple[list[int], list[int], list[int], list[int]]:
    at = _attrs(node)
    kernel = [int(k) for k in at["kernel_shape"]]
    if len(kernel) != 2:
        raise _Unsupported(f"{len(kernel)}-d pooling (2-d is supported)")
    strides = [int(s) for s in at.get("strides", [1, 1])]
    dil = [int(d) for d in at.get("dilations", [1, 1])]
    return kernel, strides, dil, _pads(imp, node, x, kernel, strides, dil)


@_converter("MaxPool")
def _max_pool(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    if len(node.output) > 1 and node.output[1]:
        raise _Unsupported("the indices output")
    x = ins[0]
    kernel, strides, dil, pads = _pool_args(imp, node, x)
    x, pad = _explicit_pad(imp, x, pads, -math.inf)
    ceil = bool(_attrs(node).get("ceil_mode", 0))
    return [imp.op("max_pool2d", [x], kernel_size=kernel, stride=strides, padding=pad, dilation=dil, ceil_mode=ceil)]


@_converter("AveragePool")
def _avg_pool(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    at = _attrs(node)
    x = ins[0]
    kernel, strides, dil, pads = _pool_args(imp, node, x)
    if dil != [1, 1]:
        raise _Unsupported("dilated average pooling")
    include = bool(at.get("count_include_pad", 0))
    nd = len(pads) // 2
    if pads[:nd] != pads[nd:] and not include:
        raise _Unsupported("asymmetric pads with count_include_pad=0")
    x, pad = _explicit_pad(imp, x, pads, 0.0)
    ceil = bool(at.get("ceil_mode", 0))
    return [imp.op("avg_pool2d", [x], kernel_size=kernel, stride=strides, padding=pad, ceil_mode=ceil, count_include_pad=include)]


@_converter("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    nd = len(imp.shape(ins[0]))
    if node.op_type == "GlobalAveragePool" and nd == 4:
        return [imp.op("adaptive_avg_pool2d", ins, output_size=[1, 1])]
    op = "mean" if node.op_type == "GlobalAveragePool" else "amax"
    return [imp.op(op, ins, dim=list(range(2, nd)), keepdim=True)]


# ----------------------------------------------------------------------------- reductions


def _reduce_axes(imp: _Importer, node: Any, ins: list[Operand]) -> list[int] | None:
    """The reduced axes (None: all; []: none, for noop_with_empty_axes)."""
    at = _attrs(node)
    nd = len(imp.shape(ins[0]))
    if len(ins) > 1 and ins[1] is not None:
        axes = imp.ints(ins[1], "axes")
    elif "axes" in at:
        axes = [int(a) for a in at["axes"]]
    else:
        axes = []
    if not axes:
        return [] if at.get("noop_with_empty_axes", 0) else None
    return sorted(_axis(a, nd) for a in axes)


@_converter("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceSumSquare", "ReduceL2")
def _reduce(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    x = ins[0]
    keep = bool(_attrs(node).get("keepdims", 1))
    axes = _reduce_axes(imp, node, ins)
    if axes == []:
        return [x]
    dims = axes if axes is not None else list(range(len(imp.shape(x))))
    t = node.op_type
    if t == "ReduceMin":
        return [imp.op("neg", [imp.op("amax", [imp.op("neg", [x])], dim=dims, keepdim=keep)])]
    if t in ("ReduceSumSquare", "ReduceL2"):
        x = imp.op("mul", [x, x])
    op = {"ReduceMean": "mean", "ReduceMax": "amax"}.get(t, "sum")
    y = imp.op(op, [x], dim=dims, keepdim=keep)
    return [imp.op("sqrt", [y]) if t == "ReduceL2" else y]


@_converter("ArgMax", "ArgMin")
def _argmax(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    at = _attrs(node)
    if at.get("select_last_index", 0):
        raise _Unsupported("select_last_index=1")
    x = ins[0] if node.op_type == "ArgMax" else imp.op("neg", [ins[0]])
    return [imp.op("argmax", [x], dim=int(at.get("axis", 0)), keepdim=bool(at.get("keepdims", 1)))]


# ----------------------------------------------------------------------------- shape


def _reshape_to(imp: _Importer, x: Operand, shape: Sequence[int]) -> Operand:
    if tuple(imp.shape(x)) == tuple(shape):
        return x
    return imp.op("reshape", [x], shape=list(shape))


@_converter("Reshape")
def _reshape(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    x = ins[0]
    spec = imp.ints(ins[1], "shape")
    xs = imp.shape(x)
    if not _attrs(node).get("allowzero", 0):
        spec = [xs[i] if s == 0 else s for i, s in enumerate(spec)]
    if -1 in spec:
        known = math.prod(s for s in spec if s != -1)
        spec = [math.prod(xs) // known if s == -1 else s for s in spec]
    return [_reshape_to(imp, x, spec)]


@_converter("Flatten")
def _flatten(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    xs = imp.shape(ins[0])
    axis = _axis(int(_attrs(node).get("axis", 1)), len(xs))
    return [_reshape_to(imp, ins[0], [math.prod(xs[:axis]), math.prod(xs[axis:])])]


@_converter("Squeeze", "Unsqueeze")
def _squeeze(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    xs = list(imp.shape(ins[0]))
    axes = imp.ints(ins[1], "axes") if len(ins) > 1 and ins[1] is not None else [int(a) for a in _attrs(node).get("axes", [])]
    if node.op_type == "Squeeze":
        drop = {_axis(a, len(xs)) for a in axes} if axes else {i for i, s in enumerate(xs) if s == 1}
        return [_reshape_to(imp, ins[0], [s for i, s in enumerate(xs) if i not in drop])]
    out_nd = len(xs) + len(axes)
    add = {_axis(a, out_nd) for a in axes}
    it = iter(xs)
    return [_reshape_to(imp, ins[0], [1 if i in add else next(it) for i in range(out_nd)])]


@_converter("Transpose")
def _transpose(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    nd = len(imp.shape(ins[0]))
    perm = [int(p) for p in _attrs(node).get("perm", list(reversed(range(nd))))]
    if perm == list(range(nd)):
        return [ins[0]]
    x = ins[0]
    if isinstance(x, torch.Tensor) and perm == [1, 0]:
        # a view, remembered so that MatMul(a, Transpose(W)) becomes linear(a, W) sharing W (tied embeddings stay tied)
        wt = x.t()
        imp.transposed[id(wt)] = (wt, x)
        return [wt]
    return [imp.op("permute", [x], dims=perm)]


@_converter("Expand")
def _expand(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    shape = [int(s) for s in np.broadcast_shapes(imp.shape(ins[0]), tuple(imp.ints(ins[1], "shape")))]
    if tuple(shape) == imp.shape(ins[0]):
        return [ins[0]]
    return [imp.op("expand", [ins[0]], shape=shape)]


@_converter("Tile")
def _tile(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    return [imp.op("repeat", [ins[0]], repeats=imp.ints(ins[1], "repeats"))]


@_converter("Slice")
def _slice(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    x = ins[0]
    xs = imp.shape(x)
    starts, ends = imp.ints(ins[1], "starts"), imp.ints(ins[2], "ends")
    axes = imp.ints(ins[3], "axes") if len(ins) > 3 and ins[3] is not None else list(range(len(starts)))
    steps = imp.ints(ins[4], "steps") if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    for s, e, a, st in zip(starts, ends, axes, steps):
        a = _axis(a, len(xs))
        n = xs[a]
        if st == 0:
            raise _Unsupported("step 0")
        lo, hi = _slice_bounds(s, e, st, n)
        if st > 0:
            if (lo, hi, st) != (0, n, 1):
                x = imp.op("slice", [x], dim=a, start=lo, end=max(hi, lo), step=st)
        else:
            x = imp.op("index", [x, torch.tensor(list(range(lo, hi, st)), dtype=torch.int64)], dims=[a])
    return [x]


def _slice_bounds(start: int, end: int, step: int, n: int) -> tuple[int, int]:
    """ONNX Slice bounds: negatives count from the end, then clamp to [0, n] (step > 0) or to
    [0, n-1] / [-1, n-1] (step < 0; unlike Python, a start before the first element clamps to it)."""
    start = start + n if start < 0 else start
    end = end + n if end < 0 else end
    if step > 0:
        return min(max(start, 0), n), min(max(end, 0), n)
    return min(max(start, 0), n - 1), min(max(end, -1), n - 1)


@_converter("Concat")
def _concat(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    parts = [x for x in ins if x is not None and math.prod(imp.shape(x)) > 0] or [x for x in ins if x is not None][:1]
    if len(parts) == 1:
        return [parts[0]]
    return [imp.op("cat", parts, dim=int(_attrs(node)["axis"]))]


@_converter("Split")
def _split(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    at = _attrs(node)
    xs = imp.shape(ins[0])
    axis = _axis(int(at.get("axis", 0)), len(xs))
    n_out = len(node.output)
    if len(ins) > 1 and ins[1] is not None:
        sizes = imp.ints(ins[1], "split")
    elif "split" in at:
        sizes = [int(s) for s in at["split"]]
    else:
        k = int(at.get("num_outputs", n_out))
        chunk = -(-xs[axis] // k)
        sizes = [min(chunk, xs[axis] - i * chunk) for i in range(k)]
    return list(imp.op_multi("split", [ins[0]], sizes=sizes, dim=axis))


@_converter("Trilu")
def _trilu(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    k = imp.ints(ins[1], "k")[0] if len(ins) > 1 and ins[1] is not None else 0
    return [imp.op("triu" if _attrs(node).get("upper", 1) else "tril", [ins[0]], diagonal=k)]


@_converter("Pad")
def _pad(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    """ONNX pads [begin per axis..., end per axis...] -> torch pads (last axis first: begin, end, ...)"""
    x = ins[0]
    nd = len(imp.shape(x))
    pads = imp.ints(ins[1], "pads")
    value = imp.const(ins[2], "constant_value").reshape(()).item() if len(ins) > 2 and ins[2] is not None else 0.0
    axes = imp.ints(ins[3], "axes") if len(ins) > 3 and ins[3] is not None else list(range(nd))
    axes = [_axis(a, nd) for a in axes]
    begin, end = [0] * nd, [0] * nd
    for i, a in enumerate(axes):
        begin[a], end[a] = pads[i], pads[len(axes) + i]
    first = min((a for a in range(nd) if begin[a] or end[a]), default=nd)
    torch_pad: list[int] = []
    for a in reversed(range(first, nd)):
        torch_pad += [begin[a], end[a]]
    if not torch_pad:
        return [x]
    mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}[
        str(_attrs(node).get("mode", "constant"))
    ]
    return [imp.op("pad", [x], pad=torch_pad, mode=mode, value=float(value))]


@_converter("Resize")
def _resize(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    """Resize over the spatial dims -> interpolate(x, size, mode, align_corners)

    torch's exporters write nearest as asymmetric + floor, nearest-exact as half_pixel +
    round_prefer_ceil, (bi)linear and bicubic as half_pixel / pytorch_half_pixel or align_corners."""
    a = _attrs(node)
    x = ins[0]
    shape = list(imp.shape(x))
    nd = len(shape)
    if int(a.get("antialias", 0)):
        raise ValueError("Resize with antialias=1 is not supported")
    if a.get("axes") is not None:
        raise ValueError("Resize with axes is not supported")
    if len(ins) > 3 and ins[3] is not None:
        out = [int(v) for v in imp.ints(ins[3], "sizes")]
    elif len(ins) > 2 and ins[2] is not None:
        scales = [float(v) for v in imp.const(ins[2], "scales").reshape(-1).tolist()]
        if len(scales) != nd:
            raise ValueError(f"Resize scales {scales} do not match the input rank {nd}")
        out = []
        for d, sc in zip(shape, scales, strict=True):
            if sc == 1.0:
                out.append(d)
                continue
            if not isinstance(d, int) or float(d) * sc != int(float(d) * sc):
                raise ValueError(f"Resize scale {sc} of a dim of {d} does not give a whole size")
            out.append(int(d * sc))
    else:
        raise ValueError("Resize needs scales or sizes")
    if nd < 3 or out[:2] != shape[:2]:
        raise ValueError(f"Resize of a batch or channel dim ({shape} -> {out}) is not supported")
    mode = str(a.get("mode", "nearest"))
    coord = str(a.get("coordinate_transformation_mode", "half_pixel"))
    nearest = str(a.get("nearest_mode", "round_prefer_floor"))
    if mode == "nearest" and coord == "asymmetric" and nearest == "floor":
        ir_mode, ac = "nearest", False
    elif mode == "nearest" and coord in ("half_pixel", "pytorch_half_pixel") and nearest == "round_prefer_ceil":
        ir_mode, ac = "nearest_exact", False
    elif mode in ("linear", "cubic") and coord in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        if mode == "cubic" and abs(float(a.get("cubic_coeff_a", -0.75)) + 0.75) > 1e-6:
            raise ValueError(f"Resize cubic with cubic_coeff_a={a.get('cubic_coeff_a')} (torch's bicubic is -0.75)")
        if coord == "pytorch_half_pixel" and any(o == 1 for o in out[2:]):
            raise ValueError("Resize pytorch_half_pixel to a size of 1 is not supported")
        ir_mode, ac = mode, coord == "align_corners"
    else:
        raise ValueError(f"Resize mode={mode} coordinate_transformation_mode={coord} nearest_mode={nearest} is not supported")
    return [imp.op("interpolate", [x], size=out[2:], mode=ir_mode, align_corners=ac)]


# ----------------------------------------------------------------------------- constants and shape arithmetic


@_converter("Constant")
def _constant(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    from onnx import numpy_helper

    at = _attrs(node)
    if "value" in at:
        t = _tensor(numpy_helper.to_array(next(a.t for a in node.attribute if a.name == "value")), node.output[0])
    elif "value_float" in at:
        t = torch.tensor(float(at["value_float"]), dtype=torch.float32)
    elif "value_floats" in at:
        t = torch.tensor([float(v) for v in at["value_floats"]], dtype=torch.float32)
    elif "value_int" in at:
        t = torch.tensor(int(at["value_int"]), dtype=torch.int64)
    elif "value_ints" in at:
        t = torch.tensor([int(v) for v in at["value_ints"]], dtype=torch.int64)
    else:
        raise _Unsupported(f"Constant with attribute {sorted(at)}")
    return [t]


@_converter("Shape")
def _shape(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    at = _attrs(node)
    shape = list(imp.shape(ins[0]))
    nd = len(shape)
    start = at.get("start", 0)
    end = at.get("end", nd)
    return [torch.tensor(shape[slice(start, end)], dtype=torch.int64)]


@_converter("Size")
def _size(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    return [torch.tensor(math.prod(imp.shape(ins[0])), dtype=torch.int64)]


@_converter("ConstantOfShape")
def _constant_of_shape(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    from onnx import numpy_helper

    shape = imp.ints(ins[0], "shape")
    value = torch.zeros((), dtype=torch.float32)
    for a in node.attribute:
        if a.name == "value":
            value = _tensor(numpy_helper.to_array(a.t), node.output[0]).reshape(())
    return [torch.full(shape, value.item(), dtype=value.dtype)]


@_converter("Range")
def _range(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    start, limit, delta = (imp.const(x, "Range bounds") for x in ins)
    return [torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)]


@_converter("NonZero")
def _nonzero(imp: _Importer, node: Any, ins: list[Operand]) -> list[Operand]:
    return [torch.nonzero(imp.const(ins[0], "NonZero input")).t().contiguous()]


def _torch_dtype(dtype: str) -> torch.dtype:
    from bitpress.compiler.ir import to_torch_dtype

    return to_torch_dtype(dtype)


# ----------------------------------------------------------------------------- entry point


def import_onnx(model_or_path: Any, example_inputs: Sequence[Any] | None = None) -> Graph:
    """Import an ONNX model (an `onnx.ModelProto` or a path to a .onnx file) into a bitpress Graph.

    Args:
        model_or_path: the model (a ModelProto, its serialized bytes or a .onnx path), opset 13 or newer
            (older opsets are upgraded with onnx's converter).
        example_inputs: tensors fixing the shapes of symbolic input dims (needed only if the model has them).

    Raises:
        FrontendError: the file is missing, unreadable or not a valid ONNX model; a shape is not static.
        UnsupportedOpError: ops bitpress cannot import, all listed with their node names.
    """
    from bitpress.compiler.rewrite import dead_code_elimination

    model = _upgrade(_load(model_or_path))
    _check_supported(model)
    _check_model(model)
    g = _Importer(model, example_inputs).run()
    dead_code_elimination(g)
    try:
        g.verify()
    except IRError as e:
        raise FrontendError(f"imported ONNX graph does not verify: {e}") from None
    return g
