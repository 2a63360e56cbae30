"""Single-op graphs shared by the per-backend op tests (TVM, ONNX): operand makers and `build`."""

from __future__ import annotations

from typing import Any

import torch

from bitpress.compiler.ir import Graph, TensorType


def r(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


def pos(*shape: int) -> torch.Tensor:
    return torch.rand(*shape) + 0.5


def ints(*shape: int, lo: int = -20, hi: int = 20, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    return torch.randint(lo, hi, shape, dtype=dtype)


def nonzero_ints(*shape: int) -> torch.Tensor:
    x = ints(*shape, lo=-9, hi=9)
    return torch.where(x == 0, torch.ones_like(x), x)


def bools(*shape: int) -> torch.Tensor:
    return torch.rand(*shape) > 0.5


class C:
    """A constant operand (a weight / initializer) rather than a graph input."""

    def __init__(self, t: torch.Tensor) -> None:
        self.t = t


def build(op: str, operands: list[Any], attrs: dict[str, Any]) -> tuple[Graph, list[torch.Tensor]]:
    g = Graph()
    vals, feeds = [], []
    for i, a in enumerate(operands):
        if a is None:
            vals.append(None)
        elif isinstance(a, C):
            vals.append(g.add_const(a.t, f"c{i}"))
        else:
            vals.append(g.add_input(f"x{i}", TensorType.of(a)))
            feeds.append(a)
    node = g.create_node(op, vals, attrs, name=f"test.{op}")
    g.set_outputs(node.outputs)
    g.verify()
    return g, feeds


def assert_matches(op: str, got: list[torch.Tensor], want: list[torch.Tensor], tol: float) -> None:
    """Backend outputs equal the interpreter's: floats allclose, integers bit-exact."""
    assert len(got) == len(want)
    for o, w in zip(got, want, strict=True):
        assert o.shape == w.shape, (op, o.shape, w.shape)
        assert o.dtype == w.dtype, (op, o.dtype, w.dtype)
        if w.is_floating_point():
            torch.testing.assert_close(o, w, rtol=tol, atol=tol, equal_nan=True)
        else:
            assert torch.equal(o, w), f"{op}: integer path not bit-exact"
