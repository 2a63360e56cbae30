"""Per-op lowering registry for the TVM backend: bitpress op -> Relax expression.

A lowering is a function `fn(ctx, node, args) -> relax.Expr | list[relax.Expr]`
registered per op and per target (JAX `register_lowering` style):

    @register_lowering("relu")
    def _relu(ctx: LowerContext, node: Node, args: list[relax.Expr | None]) -> relax.Expr:
        return ctx.emit(relax.op.nn.relu(args[0]))

`args` are the node's inputs in slot order (None for an absent optional input).  Graph
constants arrive as bound parameters; `ctx.value(node.inputs[i])` gives their torch
tensor, so a lowering can re-lay a weight out at build time with `ctx.const(...)`.
Packed constants (int4/uint4/int2/...) arrive as flat uint8 byte arrays; their logical
shape is on `node.inputs[i].type` (and in the op's attrs).  Custom TE kernels go through
`ctx.emit_te(fn, *args, primfunc_name_hint=...)` and may ask for a schedule with
`ctx.schedule_hint(name, **kw)` (see bitpress/schedules).

Every module named `bitpress/backends/tvm/lower_*.py` is imported when the backend builds
or lists its ops, so adding a lowering is adding a file.  This module imports no TVM at
import time (tvm takes seconds to import).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bitpress.compiler.ir import Graph, Node, SymDim, Value
from bitpress.compiler.registry import LoweringTable
from bitpress.compiler.symbolic import sym_expr

if TYPE_CHECKING:  # pragma: no cover
    from tvm import relax

__all__ = [
    "TARGETS",
    "LowerContext",
    "LowerFn",
    "ParamRef",
    "get_lowering",
    "load_lowering_modules",
    "lowered_ops",
    "register_lowering",
    "tir_shape",
]

TARGETS: tuple[str, ...] = ("llvm", "cuda")
LowerFn = Callable[["LowerContext", Node, list[Any]], Any]
_LOWERINGS: LoweringTable[LowerFn] = LoweringTable("TVM", TARGETS)
_LOADED = False

# Constants at or below this many elements are embedded in the module (foldable);
# larger ones are passed to the VM as parameters so the library stays small and
# saved weights are not duplicated.
EMBED_MAX_NUMEL = 64


def register_lowering(
    op: str, target: str | tuple[str, ...] | None = None, *, targets: tuple[str, ...] | None = None, replace: bool = False
) -> Callable[[LowerFn], LowerFn]:
    """Register `fn` as the lowering of bitpress op `op` on `target` ("llvm", "cuda" or a tuple; default both).

    The same signature as the ONNX and MCU backends' `register_lowering`; `targets=` is the old keyword.
    """
    return _LOWERINGS.decorator(op, target if target is not None else targets, replace=replace)


def load_lowering_modules() -> None:
    """Import every `bitpress.backends.tvm.lower_*` module (they register lowerings)."""
    global _LOADED
    if _LOADED:
        return
    import bitpress.backends.tvm as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("lower_"):
            importlib.import_module(f"{pkg.__name__}.{info.name}")
    _LOADED = True


def lowered_ops(target: str) -> set[str]:
    load_lowering_modules()
    return _LOWERINGS.ops(target)


def get_lowering(op: str, target: str) -> LowerFn:
    load_lowering_modules()
    return _LOWERINGS.lookup(op, target)


@dataclass(frozen=True)
class ParamRef:
    """Where a VM parameter's data comes from: a graph store entry, or a tensor made at build time."""

    kind: str  # "store" | "derived"
    key: str
    transform: str = ""  # "" | "t" (2-D transpose) | "perm:1,2,3,0": made again at load time, not saved

    def resolve(self, store: dict[str, torch.Tensor], derived: dict[str, torch.Tensor]) -> torch.Tensor:
        t = store[self.key] if self.kind == "store" else derived[self.key]
        if self.transform == "t":
            return t.t().contiguous()
        if self.transform.startswith("pack:"):  # W[N, K] -> W'[N / nb, K, nb]: column strips made contiguous
            nb = int(self.transform[5:])
            return t.reshape(t.shape[0] // nb, nb, t.shape[1]).permute(0, 2, 1).contiguous()
        if self.transform.startswith("kpack:"):  # B[K, N] -> B'[N / nb, K, nb]
            nb = int(self.transform[6:])
            return t.reshape(t.shape[0], t.shape[1] // nb, nb).permute(1, 0, 2).contiguous()
        if self.transform.startswith("perm:"):
            return t.permute(*(int(a) for a in self.transform[5:].split(","))).contiguous()
        if self.transform:
            raise ValueError(f"unknown parameter transform {self.transform!r}")
        return t


@dataclass
class LowerContext:
    """What a lowering sees: the BlockBuilder, the target, constants and schedule hints.

    Attributes:
        bb: the tvm.relax.BlockBuilder emitting the main function's dataflow block.
        target: "llvm" or "cuda".
        graph: the bitpress Graph being lowered.
        params: the VM parameters in order, as (relax.Var, ParamRef).
        derived: tensors made at build time (re-laid-out weights), by ParamRef key.
        hints: schedule hints per PrimFunc name hint (read by bitpress.schedules).
        isa: on llvm, the target CPU's `CpuIsa` (vector width, registers, int8 dot kernel).
    """

    bb: Any
    target: str
    graph: Graph
    params: list[tuple[Any, ParamRef]] = field(default_factory=list)
    derived: dict[str, torch.Tensor] = field(default_factory=dict)
    hints: dict[str, dict[str, Any]] = field(default_factory=dict)
    isa: Any = None  # bitpress.schedules.isa.CpuIsa on llvm: picks CPU kernel layouts
    sym_vars: dict[str, Any] = field(default_factory=dict)  # symbolic dim name -> tirx.Var
    _store_vars: dict[tuple[str, str], Any] = field(default_factory=dict)
    _counter: int = 0

    # -- constants
    def value(self, v: Value | None) -> torch.Tensor | None:
        """The torch tensor of a graph constant (None for non-constants)."""
        if v is None or not v.is_const:
            return None
        return self.graph.store[v.name]

    def const(self, tensor: torch.Tensor | np.ndarray, name: str | None = None) -> relax.Expr:
        """A constant made at build time: embedded when tiny, else a bound VM parameter."""
        from tvm import relax

        t = torch.as_tensor(tensor).detach().contiguous()
        if t.numel() <= EMBED_MAX_NUMEL:
            return relax.const(_to_numpy(t), _tvm_dtype(t.dtype))
        self._counter += 1
        key = f"{name or 'derived'}#{self._counter}"
        self.derived[key] = t
        var = relax.Var(f"p{len(self.params)}", relax.TensorType(tuple(t.shape), _tvm_dtype(t.dtype)))
        self.params.append((var, ParamRef("derived", key)))
        return var

    def store_param(self, v: Value, transpose: bool = False, perm: Sequence[int] | None = None, pack: int | None = None) -> relax.Expr:
        """Graph constant `v` (or its 2-D transpose, or a permutation of its axes) as a VM
        parameter, or embedded when tiny.

        `pack=nb` packs W[N, K] into column strips [N / nb, K, nb]; `pack=-nb` does the
        same for a right-hand matmul operand B[K, N].  A re-laid-out weight is not saved twice: the artifact records "transpose of store
        entry X" and load() makes it again from the saved weights.
        """
        from tvm import relax

        if pack is not None:
            transform = f"pack:{int(pack)}" if pack > 0 else f"kpack:{-int(pack)}"
        elif perm is not None:
            transform = "perm:" + ",".join(str(int(a)) for a in perm)
        else:
            transform = "t" if transpose else ""
        key = (v.name, transform)
        if key in self._store_vars:
            return self._store_vars[key]
        ref = ParamRef("store", v.name, transform)
        t = ref.resolve(self.graph.store, {})
        if t.numel() <= EMBED_MAX_NUMEL:
            e: Any = relax.const(_to_numpy(t), _tvm_dtype(t.dtype))
        else:
            e = relax.Var(f"p{len(self.params)}", relax.TensorType(tuple(t.shape), _tvm_dtype(t.dtype)))
            self.params.append((e, ref))
        self._store_vars[key] = e
        return e

    # -- emission
    def emit(self, expr: Any, name_hint: str = "") -> relax.Expr:
        return self.bb.emit(expr, name_hint=name_hint)

    def emit_te(self, fn: Callable[..., Any], *args: Any, primfunc_name_hint: str | None = None, **kwargs: Any) -> relax.Expr:
        """bb.emit_te: a TE compute becomes a PrimFunc called with call_tir."""
        if primfunc_name_hint is not None:
            kwargs["primfunc_name_hint"] = primfunc_name_hint
        return self.bb.emit_te(fn, *args, **kwargs)

    def schedule_hint(self, name: str, **kw: Any) -> None:
        """Ask bitpress.schedules for a schedule for the PrimFunc named `name` (e.g. rule="gemv")."""
        self.hints[name] = dict(kw)

    def shape(self, e: Any) -> tuple[Any, ...]:
        """The shape of a Relax expression: ints, and TIR expressions for symbolic dims."""
        from tvm import tirx

        return tuple(int(d) if isinstance(d, tirx.IntImm) else d for d in e.ty.shape)

    def dims(self, shape: Sequence[Any]) -> tuple[Any, ...]:
        """An IR shape for TE / Relax: SymDims become TIR expressions over the function's size vars."""
        return tuple(d if isinstance(d, int) else self.sym(d) for d in shape)

    def sym(self, d: SymDim) -> Any:
        """The TIR expression of a symbolic dim (`batch` -> the int64 size var bound by the inputs)."""
        from tvm import tirx

        def conv(e: Any) -> Any:
            import sympy

            if e.is_Integer:
                return tirx.IntImm("int64", int(e))
            if isinstance(e, sympy.Symbol):
                name = str(e)
                if name not in self.sym_vars:
                    self.sym_vars[name] = tirx.Var(name, "int64")
                return self.sym_vars[name]
            args = [conv(a) for a in e.args]
            fn = type(e).__name__
            if fn == "Add":
                out = args[0]
                for a in args[1:]:
                    out = out + a
                return out
            if fn == "Mul":
                out = args[0]
                for a in args[1:]:
                    out = out * a
                return out
            if fn == "FloorDiv":
                return tirx.floordiv(args[0], args[1])
            if fn in ("Mod", "PythonMod"):
                return tirx.floormod(args[0], args[1])
            if fn == "CeilDiv":
                return tirx.floordiv(args[0] + args[1] - 1, args[1])
            if fn == "Max":
                return tirx.max(*args)
            if fn == "Min":
                return tirx.min(*args)
            raise ValueError(f"symbolic dim {d.expr}: no TIR form for {fn}")

        return conv(sym_expr(d))

    def dtype(self, e: Any) -> str:
        return str(e.ty.dtype)


_CURRENT: list[LowerContext] = []


def current_context() -> LowerContext:
    """The LowerContext of the graph being lowered (for helpers that only see a node)."""
    if not _CURRENT:
        raise RuntimeError("no TVM lowering in progress")
    return _CURRENT[-1]


def tir_shape(shape: Sequence[Any]) -> tuple[Any, ...]:
    """An IR shape as TE / Relax dims, static dims as ints (see `LowerContext.dims`)."""
    if all(isinstance(d, int) for d in shape):
        return tuple(shape)
    return current_context().dims(shape)


def _tvm_dtype(d: torch.dtype) -> str:
    return str(d).removeprefix("torch.")


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def param_tensors(
    params: Sequence[tuple[Any, ParamRef]], store: dict[str, torch.Tensor], derived: dict[str, torch.Tensor]
) -> list[torch.Tensor]:
    """The VM parameter tensors in order."""
    return [r.resolve(store, derived) for _, r in params]
