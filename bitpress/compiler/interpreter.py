"""Run a Graph with the ops' reference (torch) semantics: the numerics oracle.

Every backend is tested against `run` on the same inputs.  An `observer` sees each
node's inputs and outputs (calibration uses it); intermediate tensors are freed after
their last use so large models fit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from bitpress.compiler.ir import Graph, Node, TensorType, to_torch_dtype
from bitpress.compiler.ops import get_op

__all__ = ["InputError", "InterpreterError", "Observer", "run"]

Observer = Callable[[Node, list[Any], list[torch.Tensor]], None]


class InterpreterError(RuntimeError):
    """Bad inputs for a graph, or an op that failed while running, named."""


class InputError(ValueError):
    """Inputs that do not fit the graph's signature (count, shape, dtype)."""


def check_inputs(g: Graph, inputs: Sequence[Any]) -> list[torch.Tensor]:
    if len(inputs) != len(g.inputs):
        raise InputError(f"graph takes {len(g.inputs)} inputs ({', '.join(v.name for v in g.inputs)}), got {len(inputs)}")
    out = []
    for v, x in zip(g.inputs, inputs, strict=True):
        t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
        if tuple(t.shape) != v.shape:
            raise InputError(f"input {v.name}: expected shape {list(v.shape)}, got {list(t.shape)}")
        want = to_torch_dtype(v.dtype)
        if t.dtype != want:
            raise InputError(f"input {v.name}: expected dtype {v.dtype}, got {str(t.dtype).removeprefix('torch.')}")
        out.append(t)
    return out


@torch.no_grad()
def run(g: Graph, inputs: Sequence[Any], *, observer: Observer | None = None, check_types: bool = False) -> list[torch.Tensor]:
    """Evaluate `g` on `inputs`; returns the outputs in order."""
    env: dict[int, Any] = {}
    for v, t in zip(g.inputs, check_inputs(g, inputs), strict=True):
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
            res = opdef.ref(*args, **n.attrs)
        except Exception as e:
            raise InterpreterError(f"node {n.name} ({n.op}) failed: {type(e).__name__}: {e}") from None
        outs = list(res) if isinstance(res, (tuple, list)) else [res]
        if check_types:
            for o, t in zip(n.outputs, outs, strict=True):
                if TensorType.of(t) != o.type:
                    raise InterpreterError(f"node {n.name} ({n.op}) produced {TensorType.of(t)}, typed {o.type}")
        if observer is not None:
            observer(n, args, outs)
        for o, t in zip(n.outputs, outs, strict=True):
            env[id(o)] = t
        for iv in n.inputs:
            if iv is not None and last.get(id(iv)) is n and id(iv) not in keep:
                env.pop(id(iv), None)
    return [env[id(o)] for o in g.outputs]
