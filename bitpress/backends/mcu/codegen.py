"""IR -> C: the per-op lowering registry and the generated `model.c` / `model.h`.

Each node becomes one `noinline, noipa` layer function.  The int8 conv/linear layers and the
fixed-point glue call a kernel TVM generated for them (tvm_kernels.py; all kernels of the model
are one TVM module, printed by the "c" target into kernels_tvm.c) through static DLTensors; the
other ops call an always-inline kernel from bp_kernels.h with their shapes as constants.  The
profiler attributes every instruction executed after a layer function is entered (its own, the
TVM kernel's, helpers') to that layer.  Weights become `const` arrays in flash, kept as the passes
stored them (int8 codes, packed int4/int2 bytes, bit-packed signs, float16 scales); the int8
schedules reorder bytes and pad to whole tiles, never expand them.  Tensors and TVM workspace
live in one static arena at offsets from `plan.plan_memory`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from bitpress.backends.mcu.boards import Board
from bitpress.backends.mcu.plan import ALIAS_OPS, MemoryPlan, plan_memory
from bitpress.backends.mcu.tvm_kernels import Kernel, KernelBuilder
from bitpress.compiler.ir import PACKED_BITS, Graph, Node, Value
from bitpress.compiler.target import LoweringError
from bitpress.schedules.mcu import KernelSchedule

__all__ = [
    "FLOAT_FREE_OPS",
    "GeneratedModel",
    "McuLowerContext",
    "generate",
    "is_input_boundary",
    "lowered_ops",
    "register_mcu_lowering",
]

Lowering = Callable[["McuLowerContext", Node], str]
_LOWERINGS: dict[str, Lowering] = {}
_FLOAT_LOWERINGS: set[str] = set()
# ops that touch float values without float arithmetic (table lookups, int -> float conversion at the output)
FLOAT_FREE_OPS = frozenset({"dequantize_act", "table_f32", *ALIAS_OPS})


def register_mcu_lowering(*ops: str, float_math: bool = False) -> Callable[[Lowering], Lowering]:
    """Register the C lowering of `ops`; `float_math` marks lowerings that compute in float."""

    def deco(fn: Lowering) -> Lowering:
        for op in ops:
            _LOWERINGS[op] = fn
            if float_math:
                _FLOAT_LOWERINGS.add(op)
        return fn

    return deco


def lowered_ops() -> set[str]:
    return set(_LOWERINGS) | set(ALIAS_OPS)


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
class Layer:
    node: str
    op: str
    fn: str
    body: str
    macs: int = 0
    schedule: str = ""
    float_math: bool = False


@dataclass
class GeneratedModel:
    model_c: str
    model_h: str
    plan: MemoryPlan
    layers: list[Layer]
    weight_bytes: int  # bytes of the const arrays emitted (weights, tables, requantization constants)
    float_nodes: list[str]
    boundary_nodes: list[str]  # quantize of the float input / dequantize of the output: float conversions at the edges
    kernels_c: str = ""  # TVM's C for the int8 layers (kernels_tvm.c)
    ukernel_inst: str = ""  # bp_ukernels_inst.h
    tvm_kernels: dict[str, Kernel] = field(default_factory=dict)  # node name -> TVM kernel


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

    def new_scratch(self, nbytes: int, ctype: str) -> str:
        assert self.node is not None
        lst = self.scratch.setdefault(self.node.name, [])
        lst.append(nbytes)
        return f"(({ctype} *)(bp_arena + @SCR[{self.node.name}#{len(lst) - 1}]))"

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


def generate(g: Graph, board: Board, gemv: KernelSchedule, *, allow_float: bool) -> GeneratedModel:
    """Lower every node of the (legalized) graph `g` to C; raise LoweringError naming what cannot be lowered."""
    from bitpress.backends.mcu import lowerings  # noqa: F401  (registers the lowerings)

    ctx = McuLowerContext(board, gemv)
    missing = [n for n in g.nodes if n.op not in lowered_ops()]
    if missing:
        shown = ", ".join(f"'{n.op}' at {n.name}" for n in missing[:5])
        raise LoweringError(f"target {board.core} cannot lower: {shown}; the MCU backend lowers: {', '.join(sorted(lowered_ops()))}")
    float_nodes = [n for n in g.nodes if _computes_in_float(n)]
    if float_nodes and not allow_float:
        shown = ", ".join(f"{n.name} ({n.op})" for n in float_nodes[:6]) + (
            f" (+{len(float_nodes) - 6} more)" if len(float_nodes) > 6 else ""
        )
        raise LoweringError(
            f"target {board.core}: no integer lowering for {shown}; quantize these layers (Quantize(bits=8, act_bits=8), "
            "with act_scope='all' for the activations between layers) "
            "or pass options={'allow_float': True} to run them in float32"
        )
    layers: list[Layer] = []
    for i, n in enumerate(g.nodes):
        if n.op in ALIAS_OPS:
            continue
        ctx.node = n
        body = _LOWERINGS[n.op](ctx, n)
        lay = Layer(n.name, n.op, f"bp_layer_{i}_{_cname(n.op)}", body, float_math=n in float_nodes)
        lay.macs = int(n.meta.get("_mcu_macs", 0))
        lay.schedule = str(n.meta.get("_mcu_schedule", ""))
        layers.append(lay)
    kernels_c = ctx.kernels.build()
    ws_slot: dict[str, str] = {}
    for node, kern in ctx.tvm_nodes.items():
        if kern.workspace:
            lst = ctx.scratch.setdefault(node, [])
            lst.append(kern.workspace)
            ws_slot[node] = f"@SCR[{node}#{len(lst) - 1}]"
    plan = plan_memory(g, ctx.scratch)

    def resolve(s: str) -> str:
        s = re.sub(r"@WS\[([^\]]+)\]", lambda m: ws_slot.get(m.group(1), "0"), s)
        s = re.sub(r"@OFF\[([^\]]+)\]", lambda m: str(plan.offsets[m.group(1)]), s)
        return re.sub(r"@SCR\[([^\]]+)#(\d+)\]", lambda m: str(plan.scratch[(m.group(1), int(m.group(2)))]), s)

    ins = [(plan.offsets[v.name], v.type.nbytes) for v in g.inputs]
    outs = [(plan.offsets[v.name], v.type.nbytes) for v in g.outputs]
    c = [
        "/* Generated by bitpress: the model as layer functions over one static arena. */",
        '#include "model.h"',
        '#include "bp_kernels.h"',
        '#include "bp_tvm_shim.h"',
        "#include <stdlib.h>",
        "",
        "/* a TVM kernel rejected its arguments (cannot happen unless model.c and kernels_tvm.c disagree) */",
        "static void bp_tvm_fail(const char *k) { (void)k; exit(5); }",
        "",
        f"static uint8_t bp_arena[{max(plan.peak, 16)}] __attribute__((aligned(16)));",
        f"const uint32_t bp_input_bytes[{len(ins)}] = {{{', '.join(str(b) for _, b in ins)}}};",
        f"const uint32_t bp_output_bytes[{len(outs)}] = {{{', '.join(str(b) for _, b in outs)}}};",
        f"static const uint32_t bp_input_off[{len(ins)}] = {{{', '.join(str(o) for o, _ in ins)}}};",
        f"static const uint32_t bp_output_off[{len(outs)}] = {{{', '.join(str(o) for o, _ in outs)}}};",
        "void *bp_input(int i) { return bp_arena + bp_input_off[i]; }",
        "void *bp_output(int i) { return bp_arena + bp_output_off[i]; }",
        "",
        *sorted(ctx.preamble),
        "",
        *ctx.arrays,
        "",
    ]
    for lay in layers:
        # noipa: GCC 12.2 (-O1 and up) deleted the call of a layer that only copies within the arena
        # (an int8 transpose read by the next layer's TVM kernel) as if it had no side effect
        c += [f"/* {lay.node}: {lay.op} */", f"static void __attribute__((noinline, noipa)) {lay.fn}(void) {{", resolve(lay.body), "}", ""]
    c += ["void bp_model_run(void) {", *(f"    {lay.fn}();" for lay in layers), "}", ""]
    h = "\n".join(
        [
            "#ifndef BP_MODEL_H",
            "#define BP_MODEL_H",
            "#include <stdint.h>",
            f"#define BP_NUM_INPUTS {len(ins)}",
            f"#define BP_NUM_OUTPUTS {len(outs)}",
            "extern const uint32_t bp_input_bytes[];",
            "extern const uint32_t bp_output_bytes[];",
            "void *bp_input(int i);   /* where input i goes before bp_model_run() */",
            "void *bp_output(int i);  /* where output i is after bp_model_run() */",
            "void bp_model_run(void);",
            "#endif",
            "",
        ]
    )
    boundary = [n.name for n in g.nodes if is_input_boundary(n) or n.op == "dequantize_act"]
    inst = "\n".join(["/* micro-kernels instantiated for this model (see bp_ukernels.h) */", *sorted(ctx.ukernels), ""])
    return GeneratedModel(
        "\n".join(c), h, plan, layers, ctx.array_bytes, [n.name for n in float_nodes], boundary, kernels_c, inst, dict(ctx.tvm_nodes)
    )


def _computes_in_float(n: Node) -> bool:
    """Float arithmetic on the device, apart from the input boundary (float samples -> int8 codes)."""
    if n.op in FLOAT_FREE_OPS or is_input_boundary(n):
        return False
    vals = [v for v in (*n.inputs, *n.outputs) if v is not None and not v.is_const]
    return n.op in _FLOAT_LOWERINGS or any(v.dtype.startswith(("float", "bfloat")) for v in vals)


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
