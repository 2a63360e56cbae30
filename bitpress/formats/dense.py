"""The dense-weight protocol: ask any linear-like op for the weight it computes with.

`Compensate` and the low-rank passes work on every op whose weight can be rebuilt as a
dense float matrix `[out_features, in_features]` (dequantized, unpacked, un-sparsified).
Each format that registers a compressed linear-like op registers its reconstruction here
(bitpress/formats/quantized.py, sparse.py, binary.py):

    from bitpress.formats.dense import register_dense_weight

    @register_dense_weight("int4_linear")
    def _int4_dense(node):
        return dequantize(node.inputs[1].value, node.inputs[2].value, ...)   # [out, in] float

The op must take the activation as its first input and compute `y = x @ W^T (+ b)`
along the last axis of `x` (that is what makes a low-rank correction `x @ (B A)^T` add up).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bitpress.compiler.ir import Node

__all__ = ["DenseWeightFn", "dense_weight", "dense_weight_ops", "register_dense_weight"]

DenseWeightFn = Callable[[Node], torch.Tensor | None]
_DENSE: dict[str, DenseWeightFn] = {}


def register_dense_weight(*ops: str) -> Callable[[DenseWeightFn], DenseWeightFn]:
    """Register `fn(node) -> Tensor[out, in] | None` as the dense weight of nodes running any of `ops`."""

    def deco(fn: DenseWeightFn) -> DenseWeightFn:
        for op in ops:
            _DENSE[op] = fn
        return fn

    return deco


def dense_weight_ops() -> tuple[str, ...]:
    """Ops with a registered reconstruction, in registration order."""
    return tuple(_DENSE)


def dense_weight(node: Node) -> torch.Tensor | None:
    """The float32 `[out, in]` weight `node` multiplies by, or None (unknown op, weights not constant)."""
    fn = _DENSE.get(node.op)
    if fn is None:
        return None
    if any(v is not None and v.producer is not None for v in node.inputs[1:]):
        return None  # a weight computed at run time is not a compressed constant
    w = fn(node)
    return w.float() if w is not None and w.dim() == 2 else None


@register_dense_weight("linear")
def _linear_dense(node: Node) -> torch.Tensor:
    w = node.inputs[1]
    assert w is not None
    return w.value
