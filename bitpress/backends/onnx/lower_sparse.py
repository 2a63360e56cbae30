"""ONNX lowerings of the pruning ops (bitpress/formats/sparse.py): dense expansion at run time.

ONNX Runtime has no N:M or CSR matmul on CPU, so the stored compressed form is expanded
inside the ONNX graph, once per call, and multiplied densely:

* ``nm_linear``: the packed index bytes stay packed (uint8, 2-bit codes four per byte for
  2:4); ``BitShift``/``BitwiseAnd`` decode them, ``Range``-derived group bases turn them
  into absolute columns, ``ScatterElements`` writes the values into a zero matrix.
  3-bit codes (M in 5..8) cross byte boundaries and are unpacked to one byte each at
  build time.
* ``nm_qlinear``: the packed codes are decoded in the graph as for ``qlinear``
  (``W = (q - z) * s`` per group of kept values), then scattered like ``nm_linear``.
* ``sparse_linear``: ``ScatterElements(reduction="add")`` of the values at the stored
  int16 columns (cast to int64 in the graph).

The model file therefore holds the compressed weights; the speed is that of a dense
matmul plus the expansion.
"""

from __future__ import annotations

import numpy as np
import torch
from onnx import TensorProto

from bitpress.backends.onnx.lower_quant import _dequant_weight
from bitpress.backends.onnx.lowering import OnnxLowerContext, register_lowering
from bitpress.compiler.ir import Node, Value, unpack_bits
from bitpress.formats.sparse import index_bits

Names = list[str | None]


def _matmul_bias(ctx: OnnxLowerContext, node: Node, x: str, w: str, b: str | None) -> list[str]:
    xv = node.inputs[0]
    assert xv is not None
    if xv.ndim == 2:
        return ctx.add_node("Gemm", [x, w, b], transB=1)
    wt = ctx.add_node("Transpose", [w], perm=[1, 0], name_hint=f"{node.name}.wT")[0]
    y = ctx.add_node("MatMul", [x, wt])[0]
    return [y] if b is None else ctx.add_node("Add", [y, b])


def _scatter_dense(ctx: OnnxLowerContext, node: Node, values: str, cols: str, out: int, k_in: int, reduction: str | None) -> str:
    zeros = ctx.add_node(
        "ConstantOfShape",
        [ctx.ints([out, k_in], f"{node.name}.shape")],
        name_hint=f"{node.name}.zeros",
        value=torch.zeros(1, dtype=torch.float32),
    )[0]
    return ctx.add_node("ScatterElements", [zeros, cols, values], axis=1, reduction=reduction, name_hint=f"{node.name}.W")[0]


def _nm_cols(ctx: OnnxLowerContext, node: Node, iv: Value, n: int, m: int, out: int, k: int) -> str:
    """int64 absolute columns [out, k] of the stored values, decoded in the graph from the packed index bytes."""
    bits = index_bits(m)
    raw = iv.value
    per = 8 // bits if bits != 3 else 0
    if per and (out * k) % per == 0:
        packed = ctx.add_initializer(raw.numpy().astype(np.uint8), f"{node.name}.indices")
        b3 = ctx.add_node("Unsqueeze", [packed, ctx.ints([1], "axes")], name_hint=f"{node.name}.bytes")[0]
        shifts = ctx.add_initializer(np.arange(per, dtype=np.uint8).reshape(1, per) * bits, f"{node.name}.shifts")
        sh = ctx.add_node("BitShift", [b3, shifts], direction="RIGHT", name_hint=f"{node.name}.shift")[0]
        codes = ctx.add_node("BitwiseAnd", [sh, ctx.scalar((1 << bits) - 1, "uint8", "mask")], name_hint=f"{node.name}.codes")[0]
    else:
        idx = unpack_bits(raw, bits, (out, k))
        codes = ctx.add_initializer(idx.numpy().astype(np.uint8), f"{node.name}.indices_u8")
    codes = ctx.add_node("Reshape", [codes, ctx.ints([out, k], "shape")], name_hint=f"{node.name}.idx")[0]
    codes = ctx.add_node("Cast", [codes], to=TensorProto.INT64)[0]
    # base column of stored position j: (j // n) * m
    j = ctx.add_node(
        "Range", [ctx.scalar(0, "int64", "zero"), ctx.scalar(k, "int64", "k"), ctx.scalar(1, "int64", "one")], name_hint=f"{node.name}.j"
    )[0]
    grp = ctx.add_node("Div", [j, ctx.scalar(n, "int64", "n")])[0]
    base = ctx.add_node("Mul", [grp, ctx.scalar(m, "int64", "m")])[0]
    return ctx.add_node("Add", [codes, base], name_hint=f"{node.name}.cols")[0]


@register_lowering("nm_linear")
def lower_nm_linear(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """nm_linear -> decode packed indices, ScatterElements into zeros, Gemm/MatMul"""
    n, m, k_in = int(node.attrs["n"]), int(node.attrs["m"]), int(node.attrs["in_features"])
    vv, iv = node.inputs[1], node.inputs[2]
    assert vv is not None and iv is not None and inputs[0] is not None and inputs[1] is not None
    out, k = vv.shape
    cols = _nm_cols(ctx, node, iv, n, m, out, k)
    w = _scatter_dense(ctx, node, inputs[1], cols, out, k_in, None)
    return _matmul_bias(ctx, node, inputs[0], w, inputs[3] if len(inputs) > 3 else None)


@register_lowering("nm_qlinear")
def lower_nm_qlinear(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """nm_qlinear -> decode packed codes ((q - z) * s per group), decode packed indices, ScatterElements, Gemm/MatMul"""
    a = node.attrs
    n, m, k_in = int(a["n"]), int(a["m"]), int(a["in_features"])
    out, k = (int(d) for d in a["shape"])
    iv = node.inputs[4]
    assert iv is not None and inputs[0] is not None
    vals = _dequant_weight(ctx, node)  # the kept values [out, k], float32, from the packed codes
    cols = _nm_cols(ctx, node, iv, n, m, out, k)
    w = _scatter_dense(ctx, node, vals, cols, out, k_in, None)
    x = inputs[0]
    xv = node.inputs[0]
    if xv is not None and xv.dtype != "float32":
        x = ctx.cast(x, xv.dtype, "float32")
    b = inputs[5] if len(inputs) > 5 else None
    bv = node.inputs[5] if len(node.inputs) > 5 else None
    if b is not None and bv is not None and bv.dtype != "float32":
        b = ctx.cast(b, bv.dtype, "float32")
    y = _matmul_bias(ctx, node, x, w, b)[0]
    return [ctx.cast(y, "float32", node.output.dtype)]


@register_lowering("sparse_linear")
def lower_sparse_linear(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """sparse_linear -> ScatterElements(add) of values at int16 columns into zeros, Gemm/MatMul"""
    vv = node.inputs[1]
    assert vv is not None and inputs[0] is not None and inputs[1] is not None and inputs[2] is not None
    cols = ctx.add_node("Cast", [inputs[2]], to=TensorProto.INT64, name_hint=f"{node.name}.cols")[0]
    w = _scatter_dense(ctx, node, inputs[1], cols, vv.shape[0], int(node.attrs["in_features"]), "add")
    return _matmul_bias(ctx, node, inputs[0], w, inputs[3] if len(inputs) > 3 else None)
