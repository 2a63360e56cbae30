"""The MCU backend's lowering registry and context: `register_lowering(op)` and `McuLowerContext`.

A lowering `fn(ctx, node) -> str` returns the C body of the node's layer function; the context
emits constant arrays in flash, arena pointers and kernel instantiations (see codegen.py for
how the layer functions become model.c, lower_core.py for the lowerings).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from bitpress.backends.mcu.boards import Board
from bitpress.backends.mcu.plan import ALIAS_OPS
from bitpress.backends.mcu.tvm_kernels import Kernel, KernelBuilder
from bitpress.compiler.ir import PACKED_BITS, Node, Value
from bitpress.compiler.registry import LoweringTable
from bitpress.compiler.target import LoweringError
from bitpress.schedules.mcu import KernelSchedule

__all__ = [
    "FLOAT_FREE_OPS",
    "McuLowerContext",
    "conv_geometry",
    "get_lowering",
    "is_input_boundary",
    "lowered_ops",
    "register_lowering",
    "register_mcu_lowering",
]

Lowering = Callable[["McuLowerContext", Node], str]
_LOWERINGS: LoweringTable[Lowering] = LoweringTable("MCU", ("cortex-m",), article="an")
_FLOAT_LOWERINGS: set[str] = set()
# ops that touch float values without float arithmetic (table lookups, int -> float conversion at the output)
FLOAT_FREE_OPS = frozenset({"dequantize_act", "table_f32", *ALIAS_OPS})


def register_lowering(
    op: str, target: str | tuple[str, ...] | None = None, *, float_math: bool = False, replace: bool = False
) -> Callable[[Lowering], Lowering]:
    """Register `fn` as the C lowering of bitpress op `op` (target "cortex-m": one lowering for every core;
    the core picks schedules).  `float_math` marks lowerings that compute in float.

    The same signature as the TVM and ONNX backends' `register_lowering`."""
    inner = _LOWERINGS.decorator(op, target, replace=replace)

    def deco(fn: Lowering) -> Lowering:
        inner(fn)
        if float_math:
            _FLOAT_LOWERINGS.add(op)
        return fn

    return deco


def register_mcu_lowering(*ops: str, float_math: bool = False) -> Callable[[Lowering], Lowering]:
    """The old spelling: `register_lowering` for each of `ops`."""

    def deco(fn: Lowering) -> Lowering:
        for op in ops:
            register_lowering(op, float_math=float_math)(fn)
        return fn

    return deco


def load_lowering_modules() -> None:
    """Import the modules that register lowerings (lower_core.py)."""
    from bitpress.backends.mcu import lower_core  # noqa: F401


def get_lowering(op: str) -> Lowering:
    load_lowering_modules()
    return _LOWERINGS.lookup(op, "cortex-m")


def lowered_ops() -> set[str]:
    load_lowering_modules()
    return _LOWERINGS.ops() | set(ALIAS_OPS)


def computes_in_float_op(op: str) -> bool:
    """True when `op`'s lowering was registered with float_math."""
    return op in _FLOAT_LOWERINGS


def _cname(s: str) -> str:
    return re.sub(r"[^0-9A-Za-z_]", "_", s)


_CTYPES = {"int8": "int8_t", "uint8": "uint8_t", "int32": "int32_t", "float32": "float", "int16": "int16_t", "int64": "int64_t"}


def _lit(x: float) -> str:
    if math.isnan(x):
        return "NAN"
    if math.isinf(x):
        return "INFINITY" if x > 0 else "-INFINITY"
    return float(x).hex() + "f"


@dataclass
class McuLowerContext:
    board: Board
    gemv: KernelSchedule
    arrays: list[str] = field(default_factory=list)
    array_bytes: int = 0
    scratch: dict[str, list[int]] = field(default_factory=dict)
    preamble: set[str] = field(default_factory=set)  # kernel instantiations (macros from bp_kernels.h)
    node: Node | None = None
    kernels: KernelBuilder = field(default_factory=KernelBuilder)  # the layers TVM generates
    tvm_nodes: dict[str, Kernel] = field(default_factory=dict)  # node name -> its TVM kernel
    ukernels: set[str] = field(default_factory=set)  # micro-kernel instantiations (bp_ukernels.h macros)
    _names: set[str] = field(default_factory=set)
    _const_syms: dict[str, str] = field(default_factory=dict)

    # ---- tensors in the arena
    def ptr(self, v: Value | None, ctype: str | None = None) -> str:
        """C expression for a run-time tensor's data pointer (a constant's array for constants)."""
        if v is None:
            return "0"
        if v.is_const:
            return self.const(v)
        ct = ctype or _CTYPES.get(v.dtype)
        if ct is None:
            raise LoweringError(f"node {self._where()}: dtype {v.dtype} of {v.name} has no MCU representation")
        return f"(({ct} *)(bp_arena + @OFF[{v.name}]))"

    # ---- constants in flash
    def const(self, v: Value) -> str:
        if v.name in self._const_syms:
            return self._const_syms[v.name]
        t = v.value
        if v.dtype in PACKED_BITS:
            sym = self.array(t.reshape(-1).to(torch.uint8), "uint8_t", v.name)
        else:
            ct = _CTYPES.get(v.dtype)
            if ct is None:
                raise LoweringError(f"node {self._where()}: constant {v.name} of dtype {v.dtype} has no MCU representation")
            sym = self.array(t, ct, v.name)
        self._const_syms[v.name] = sym
        return sym

    def array(self, t: torch.Tensor, ctype: str, hint: str) -> str:
        """Emit a const array in flash; returns its C name."""
        name = "bp_c_" + _cname(hint)
        while name in self._names:
            name += "_"
        self._names.add(name)
        flat = t.reshape(-1)
        if ctype in ("float", "__fp16"):
            items = [_lit(float(x)) for x in flat.to(torch.float32).tolist()]
        else:
            items = [str(int(x)) for x in flat.to(torch.int64).tolist()]
        size = {"int8_t": 1, "uint8_t": 1, "int16_t": 2, "__fp16": 2, "int32_t": 4, "int64_t": 8, "float": 4}[ctype] * max(len(items), 1)
        self.array_bytes += size
        rows = [", ".join(items[i : i + 16]) for i in range(0, len(items), 16)] or ["0"]
        body = ",\n    ".join(rows)
        self.arrays.append(
            f'static const {ctype} {name}[{max(len(items), 1)}] __attribute__((aligned(8), section(".rodata.bp_weights"))) = {{\n    {body}}};'
        )
        return name

    def _where(self) -> str:
        return f"{self.node.name} ({self.node.op})" if self.node is not None else "?"


def is_input_boundary(n: Node) -> bool:
    """A quantize of a graph input (through layout ops only): the float samples' conversion to int8."""
    if n.op != "quantize_act" or n.inputs[0] is None:
        return False
    v = n.inputs[0]
    while v.producer is not None and v.producer.op in ALIAS_OPS and v.producer.inputs[0] is not None:
        v = v.producer.inputs[0]
    return v.producer is None and not v.is_const


def conv_geometry(n: Node, x: Value, kshape: tuple[int, ...]) -> dict[str, Any]:
    def pair(v: Any, default: int) -> tuple[int, int]:
        if v is None or (isinstance(v, (list, tuple)) and len(v) == 0):
            return (default, default)
        return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))

    a = n.attrs
    return {
        "N": x.shape[0],
        "C": x.shape[1],
        "H": x.shape[2],
        "W": x.shape[3],
        "OH": n.output.shape[2],
        "OW": n.output.shape[3],
        "kh": kshape[0],
        "kw": kshape[1],
        "sh": pair(a.get("stride"), kshape[0] if n.op.startswith("max_pool") or n.op == "avg_pool2d" else 1)[0],
        "sw": pair(a.get("stride"), kshape[1] if n.op.startswith("max_pool") or n.op == "avg_pool2d" else 1)[1],
        "ph": pair(a.get("padding"), 0)[0],
        "pw": pair(a.get("padding"), 0)[1],
        "dh": pair(a.get("dilation"), 1)[0],
        "dw": pair(a.get("dilation"), 1)[1],
    }
