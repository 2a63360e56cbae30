"""Run a Graph with the ops' reference (torch) semantics: the numerics oracle.

Every backend is tested against `run` on the same inputs.  An `observer` sees each
node's inputs and outputs (calibration uses it); intermediate tensors are freed after
their last use so large models fit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from bitpress.compiler.ir import Graph, Node, SymDim, TensorType, to_torch_dtype
from bitpress.compiler.ops import get_op
from bitpress.compiler.symbolic import evaluate, has_symbolic, resolve

__all__ = ["InputError", "InterpreterError", "Observer", "bind_inputs", "check_inputs", "run"]

Observer = Callable[[Node, list[Any], list[torch.Tensor]], None]


class InterpreterError(RuntimeError):
    """Bad inputs for a graph, or an op that failed while running, named."""


class InputError(ValueError):
    """Inputs that do not fit the graph's signature (count, shape, dtype)."""


def check_inputs(g: Graph, inputs: Sequence[Any]) -> list[torch.Tensor]:
    """The inputs as tensors, checked against the graph's signature (see `bind_inputs`)."""
    return bind_inputs(g, inputs)[0]


def bind_inputs(g: Graph, inputs: Sequence[Any]) -> tuple[list[torch.Tensor], dict[str, int]]:
    """Check count, rank, dtype and every dim of the inputs; bind the symbolic sizes.

    Returns the inputs as tensors and the sizes of the named dims (`{"batch": 8}`).  A
    mismatch is one InputError line naming the input, the dim and what is allowed.
    """
    if len(inputs) != len(g.inputs):
        raise InputError(f"graph takes {len(g.inputs)} inputs ({', '.join(v.name for v in g.inputs)}), got {len(inputs)}")
    out = []
    env: dict[str, int] = {}
    where: dict[str, str] = {}
    exprs: list[tuple[str, int, SymDim, int]] = []
    for v, x in zip(g.inputs, inputs, strict=True):
        t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
        shape = tuple(t.shape)
        if v.type.is_static:
            if shape != v.shape:
                raise InputError(f"input {v.name}: expected shape {list(v.shape)}, got {list(shape)}")
        elif len(shape) != v.ndim:
            raise InputError(f"input {v.name}: expected rank {v.ndim} ({v.type}), got shape {list(shape)}")
        else:
            for i, (d, n) in enumerate(zip(v.shape, shape, strict=True)):
                if isinstance(d, int):
                    if d != n:
                        raise InputError(f"input {v.name}: dim {i} is {n}, expected {d} (input type {v.type})")
                elif not d.is_symbol:
                    exprs.append((v.name, i, d, n))
                elif d.expr in env:
                    if env[d.expr] != n:
                        raise InputError(f"input {v.name}: dim {i} ({d.expr}) is {n}, but {where[d.expr]} has {d.expr}={env[d.expr]}")
                else:
                    if n < d.min or (d.max is not None and n > d.max):
                        raise InputError(f"input {v.name}: dim {i} ({d.expr}) is {n}, outside the allowed range {d.range_str()}")
                    env[d.expr] = n
                    where[d.expr] = f"input {v.name} dim {i}"
        want = to_torch_dtype(v.dtype)
        if t.dtype != want:
            raise InputError(f"input {v.name}: expected dtype {v.dtype}, got {str(t.dtype).removeprefix('torch.')}")
        out.append(t)
    for name, i, d, n in exprs:
        try:
            expect = evaluate(d, env)
        except ValueError:
            raise InputError(f"input {name}: dim {i} is the expression {d.expr}, whose names no input binds") from None
        if expect != n:
            bound = ", ".join(f"{k}={env[k]}" for k in sorted(d.symbols))
            raise InputError(f"input {name}: dim {i} ({d.expr}) is {n}, expected {expect} with {bound}")
    return out, env


@torch.no_grad()
def run(g: Graph, inputs: Sequence[Any], *, observer: Observer | None = None, check_types: bool = False) -> list[torch.Tensor]:
    """Evaluate `g` on `inputs`; returns the outputs in order."""
    env: dict[int, Any] = {}
    tensors, sizes = bind_inputs(g, inputs)
    for v, t in zip(g.inputs, tensors, strict=True):
        env[id(v)] = t
    for v in g.consts.values():
        env[id(v)] = g.store[v.name]
    # last use of each value, to free intermediates
    last: dict[int, Node] = {}
    for n in g.nodes:
        for iv in n.inputs:
            if iv is not None:
                last[id(iv)] = n
    keep = {id(o) for o in g.outputs} | {id(v) for v in g.consts.values()} | {id(v) for v in g.inputs}
    for n in g.nodes:
        args = [None if v is None else env[id(v)] for v in n.inputs]
        opdef = get_op(n.op)
        try:
            res = opdef.ref(*args, **(resolve(n.attrs, sizes) if has_symbolic(n.attrs) else n.attrs))
        except Exception as e:
            raise InterpreterError(f"node {n.name} ({n.op}) failed: {type(e).__name__}: {e}") from None
        outs = list(res) if isinstance(res, (tuple, list)) else [res]
        if check_types:
            for o, t in zip(n.outputs, outs, strict=True):
                if TensorType.of(t) != (o.type if o.type.is_static else o.type.resolve(sizes)):
                    raise InterpreterError(f"node {n.name} ({n.op}) produced {TensorType.of(t)}, typed {o.type}")
        if observer is not None:
            observer(n, args, outs)
        for o, t in zip(n.outputs, outs, strict=True):
            env[id(o)] = t
        for iv in n.inputs:
            if iv is not None and last.get(id(iv)) is n and id(iv) not in keep:
                env.pop(id(iv), None)
    return [env[id(o)] for o in g.outputs]
