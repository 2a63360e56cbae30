"""The ONNX lowering registry and the context a lowering emits into.

A lowering turns one IR node into ONNX nodes:

    @register_onnx_lowering("relu")
    def lower_relu(ctx: OnnxLowerContext, node: Node, inputs: list[str | None]) -> list[str]:
        return ctx.add_node("Relu", [inputs[0]])

`inputs` are the ONNX value names of the node's inputs (None for an absent optional
input); the lowering returns the ONNX names of the node's outputs, in order.  IR
constants arrive as initializer names; an initializer only lands in the model if some
emitted node uses it, so a lowering may read `node.inputs[i].value` and emit its own
re-laid-out initializer instead (packed constants are flat uint8 bytes in the store;
their logical shapes are in the IR type and the node's attrs).

Every module `bitpress/backends/onnx/lower_*.py` is imported by the backend, so adding
a lowering is one decorated function in one of those modules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from bitpress.compiler.ir import Node, SymDim, TensorType, is_packed
from bitpress.compiler.registry import LoweringTable
from bitpress.compiler.symbolic import sym_expr

__all__ = [
    "MS_DOMAIN",
    "OPSET",
    "OnnxLowerContext",
    "OnnxLowerFn",
    "get_onnx_lowering",
    "onnx_dtype",
    "onnx_lowered_ops",
    "register_lowering",
    "register_onnx_lowering",
]

OPSET = 21  # QuantizeLinear/DequantizeLinear with blocked quantization and int4 types
MS_DOMAIN = "com.microsoft"  # opset 1: MatMulNBits and the other contrib ops

OnnxLowerFn = Callable[["OnnxLowerContext", Node, list[str | None]], list[str]]
_LOWERINGS: LoweringTable[OnnxLowerFn] = LoweringTable("ONNX", ("onnx",), article="an")

_ONNX_DTYPES: dict[str, int] = {
    "float32": TensorProto.FLOAT,
    "float16": TensorProto.FLOAT16,
    "bfloat16": TensorProto.BFLOAT16,
    "float64": TensorProto.DOUBLE,
    "int64": TensorProto.INT64,
    "int32": TensorProto.INT32,
    "int16": TensorProto.INT16,
    "int8": TensorProto.INT8,
    "uint8": TensorProto.UINT8,
    "bool": TensorProto.BOOL,
    "int4": TensorProto.INT4,
    "uint4": TensorProto.UINT4,
}


def onnx_dtype(dtype: str) -> int:
    """The ONNX TensorProto element type of an IR dtype (packed int4/uint4 map to INT4/UINT4)."""
    try:
        return _ONNX_DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype!r} has no ONNX element type; ONNX has {sorted(_ONNX_DTYPES)}") from None


def register_lowering(
    op: str, target: str | tuple[str, ...] | None = None, *, replace: bool = False
) -> Callable[[OnnxLowerFn], OnnxLowerFn]:
    """Register `fn` as the ONNX lowering of bitpress op `op` (target "onnx", the only one).

    The same signature as the TVM and MCU backends' `register_lowering`."""
    return _LOWERINGS.decorator(op, target, replace=replace)


def register_onnx_lowering(op: str, *, replace: bool = False) -> Callable[[OnnxLowerFn], OnnxLowerFn]:
    """The old name of `register_lowering(op)` (kept while lower_core.py still uses it)."""
    return register_lowering(op, replace=replace)


def get_onnx_lowering(op: str) -> OnnxLowerFn | None:
    return _LOWERINGS.get(op)


def onnx_lowered_ops() -> set[str]:
    return _LOWERINGS.ops()


def _attr(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, np.ndarray):
        return numpy_helper.from_array(v)
    if isinstance(v, torch.Tensor):
        return numpy_helper.from_array(_to_numpy(v))
    return v


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


class OnnxLowerContext:
    """What a lowering emits into: nodes, initializers and fresh names for one ONNX graph.

    Attributes:
        opset: the default-domain opset of the emitted model (21).
        node: the IR node being lowered (names derive from it).
    """

    def __init__(self, opset: int = OPSET) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.lazy_initializers: dict[str, Callable[[], onnx.TensorProto]] = {}
        self.domains: dict[str, int] = {}
        self.node: Node | None = None
        self._names: set[str] = set()
        self._counter = 0
        self.sym_sources: dict[str, tuple[str, int]] = {}  # symbolic dim -> (graph input name, axis)
        self._sym_cache: dict[str, str] = {}

    # -- names
    def reserve(self, name: str) -> None:
        self._names.add(name)

    def fresh(self, name_hint: str = "") -> str:
        """A value/node name not used yet in this model, derived from `name_hint`."""
        base = name_hint or (self.node.name if self.node is not None else "v")
        if base not in self._names:
            self._names.add(base)
            return base
        while True:
            self._counter += 1
            name = f"{base}_{self._counter}"
            if name not in self._names:
                self._names.add(name)
                return name

    # -- emitting
    def add_node(
        self,
        op_type: str,
        inputs: Sequence[str | None],
        n_outputs: int = 1,
        domain: str = "",
        name_hint: str = "",
        **attrs: Any,
    ) -> list[str]:
        """Append an ONNX node; returns the names of its `n_outputs` outputs.

        `None` inputs become "" (an absent optional input); attributes whose value is
        None are left out.
        """
        base = name_hint or (self.node.name if self.node is not None else op_type)
        outs = [self.fresh(base if i == 0 else f"{base}#{i}") for i in range(n_outputs)]
        if domain:
            self.domains.setdefault(domain, 1)
        ins = ["" if i is None else i for i in inputs]
        # trailing absent optional inputs are dropped (required by some runtimes)
        while ins and ins[-1] == "":
            ins.pop()
        clean = {k: _attr(v) for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, ins, outs, name=self.fresh(f"{base}/{op_type}"), domain=domain or None, **clean))
        return outs

    def add_initializer(
        self,
        array: torch.Tensor | np.ndarray,
        name_hint: str,
        *,
        dtype: str | None = None,
        shape: Sequence[int] | None = None,
    ) -> str:
        """Add a constant; returns its ONNX name.

        For packed int4/uint4 data pass the flat uint8 bytes with `dtype="int4"` (or
        "uint4") and the logical `shape`: bitpress and ONNX pack two codes per byte,
        low nibble first, so the bytes are stored as they are.
        """
        name = self.fresh(name_hint)
        self.initializers[name] = make_tensor(array, name, dtype=dtype, shape=shape)
        return name

    def add_lazy_initializer(self, name: str, make: Callable[[], onnx.TensorProto]) -> None:
        """An initializer (built by `make`) that lands in the model only if an emitted node or output uses it."""
        self.reserve(name)
        self.lazy_initializers[name] = make

    def scalar(self, value: float | int | bool, dtype: str, name_hint: str = "") -> str:
        """A 0-d constant of IR `dtype`."""
        return self.add_initializer(torch.tensor(value, dtype=_torch_dtype(dtype)), name_hint or "scalar")

    def ints(self, values: Sequence[Any], name_hint: str = "") -> str:
        """A 1-d int64 constant (shapes, axes, pads); with symbolic dims (SymDim entries) a small
        subgraph computing it from the inputs' shapes at run time."""
        vals = list(values)
        if not any(isinstance(v, SymDim) for v in vals):
            return self.add_initializer(np.asarray(vals, dtype=np.int64), name_hint or "ints")
        parts: list[str] = []
        run: list[int] = []
        for v in vals:
            if isinstance(v, SymDim):
                if run:
                    parts.append(self.add_initializer(np.asarray(run, dtype=np.int64), name_hint or "ints"))
                    run = []
                parts.append(self.sym_dim(v))
            else:
                run.append(int(v))
        if run:
            parts.append(self.add_initializer(np.asarray(run, dtype=np.int64), name_hint or "ints"))
        return parts[0] if len(parts) == 1 else self.add_node("Concat", parts, axis=0)[0]

    @staticmethod
    def reshape_target(shape: Sequence[Any]) -> list[Any]:
        """A Reshape target for an IR shape: its one symbolic dim (if one) as -1, inferred at run time."""
        out = list(shape)
        sym = [i for i, d in enumerate(out) if isinstance(d, SymDim)]
        if len(sym) == 1:
            out[sym[0]] = -1
        return out

    def sym_dim(self, d: SymDim) -> str:
        """A symbolic dim's value at run time as an int64[1] tensor (Shape of the input that binds it)."""
        if d.expr in self._sym_cache:
            return self._sym_cache[d.expr]

        def conv(e: Any) -> str:
            import sympy

            if e.is_Integer:
                return self.add_initializer(np.asarray([int(e)], dtype=np.int64), "dim")
            if isinstance(e, sympy.Symbol):
                name = str(e)
                if name in self._sym_cache:
                    return self._sym_cache[name]
                if name not in self.sym_sources:
                    raise ValueError(f"symbolic dim {name} is bound by no graph input")
                src, axis = self.sym_sources[name]
                out = self.add_node("Shape", [src], start=axis, end=axis + 1, name_hint=f"{name}_size")[0]
                self._sym_cache[name] = out
                return out
            args = [conv(a) for a in e.args]
            op = {"Add": "Add", "Mul": "Mul", "FloorDiv": "Div", "Mod": "Mod", "PythonMod": "Mod", "Max": "Max", "Min": "Min"}.get(
                type(e).__name__
            )
            if op is None:
                raise ValueError(f"symbolic dim {d.expr}: no ONNX form for {type(e).__name__}")
            out = args[0]
            for a in args[1:]:
                out = self.add_node(op, [out, a])[0]  # sizes are positive: integer Div is floor division
            return out

        res = conv(sym_expr(d))
        self._sym_cache[d.expr] = res
        return res

    def cast(self, name: str, from_dtype: str, to_dtype: str) -> str:
        """`name` cast to `to_dtype` (no node when the dtypes agree)."""
        if from_dtype == to_dtype:
            return name
        return self.add_node("Cast", [name], to=onnx_dtype(to_dtype))[0]


def _torch_dtype(dtype: str) -> torch.dtype:
    from bitpress.compiler.ir import to_torch_dtype

    return to_torch_dtype(dtype)


def make_tensor(
    array: torch.Tensor | np.ndarray, name: str, *, dtype: str | None = None, shape: Sequence[int] | None = None
) -> onnx.TensorProto:
    """An ONNX TensorProto from a tensor (packed int4/uint4 bytes with `dtype` and logical `shape`)."""
    if dtype is not None and is_packed(dtype):
        if dtype not in ("int4", "uint4"):
            raise ValueError(f"ONNX has no {dtype} element type; unpack it or lower to int8/uint8")
        if shape is None:
            raise ValueError(f"initializer {name}: packed {dtype} needs its logical shape")
        data = array.detach().cpu().contiguous().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
        want = TensorType(tuple(shape), dtype).nbytes
        if data.dtype != np.uint8 or data.size != want:
            raise ValueError(f"initializer {name}: packed {dtype}{list(shape)} needs {want} uint8 bytes, got {data.dtype}[{data.size}]")
        t = onnx.TensorProto()
        t.name = name
        t.data_type = onnx_dtype(dtype)
        t.dims.extend(int(d) for d in shape)
        t.raw_data = data.tobytes()
        return t
    arr = _to_numpy(array) if isinstance(array, torch.Tensor) else np.asarray(array)
    if isinstance(array, torch.Tensor) and array.dtype == torch.bfloat16:
        t = onnx.TensorProto()
        t.name = name
        t.data_type = TensorProto.BFLOAT16
        t.dims.extend(array.shape)
        t.raw_data = arr.tobytes()
        return t
    if dtype is not None:
        arr = arr.astype(helper.tensor_dtype_to_np_dtype(onnx_dtype(dtype)))
    if shape is not None:
        arr = arr.reshape(tuple(shape))
    return numpy_helper.from_array(arr if arr.flags.c_contiguous else arr.copy(), name)
