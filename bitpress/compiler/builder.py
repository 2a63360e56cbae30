"""The graph builder rules use to write replacements.

Inside a rule the driver sets the current graph and the insertion point (just before
the matched root), so replacements read like the math:

    return B.linear(B.linear(x, const(v)), const(u), b)

`B.<op>(*inputs, **attrs)` emits any registered op ("B" for the builder); `const(t)` adds a
constant.  `F` is its old, deprecated name (it read as `torch.nn.functional as F` in the
same modules).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from bitpress.compiler.ir import Graph, IRError, Node, TensorType, Value

__all__ = ["B", "F", "building", "const", "current_graph", "emit", "emit_node"]

_CURRENT: contextvars.ContextVar[tuple[Graph, str] | None] = contextvars.ContextVar("bitpress_builder", default=None)


@contextmanager
def building(graph: Graph, name_hint: str = "") -> Iterator[Graph]:
    """Make `graph` the target of `emit`/`const`; `name_hint` prefixes new node names."""
    tok = _CURRENT.set((graph, name_hint))
    try:
        yield graph
    finally:
        _CURRENT.reset(tok)


def current_graph() -> Graph:
    cur = _CURRENT.get()
    if cur is None:
        raise IRError("no graph is being built: use `with building(graph):` or call from a rule")
    return cur[0]


def _hint() -> str:
    cur = _CURRENT.get()
    return cur[1] if cur else ""


def emit(op: str, *inputs: Value | None, name: str | None = None, types: list[TensorType] | None = None, **attrs: Any) -> Value:
    """Emit `op(inputs, **attrs)` at the insertion point; returns the first output."""
    g = current_graph()
    return g.call(op, inputs, attrs, name=name or _hint() or op, types=types)


def emit_node(op: str, *inputs: Value | None, name: str | None = None, **attrs: Any) -> Node:
    """Like `emit` but returns the node (for multi-output ops)."""
    g = current_graph()
    return g.create_node(op, inputs, attrs, name=name or _hint() or op)


def const(tensor: torch.Tensor | float | int, name: str | None = None, type: TensorType | None = None) -> Value:
    """Add a constant to the current graph's store."""
    g = current_graph()
    t = tensor if isinstance(tensor, torch.Tensor) else torch.tensor(tensor)
    return g.add_const(t, name or (_hint() + ".c" if _hint() else "c"), type)


class _OpNamespace:
    def __getattr__(self, op: str) -> Any:
        if op.startswith("__"):
            raise AttributeError(op)

        def call(*inputs: Value | None, **attrs: Any) -> Value:
            return emit(op, *inputs, **attrs)

        call.__name__ = op
        return call


B = _OpNamespace()
F = B  # deprecated: the old name of B
