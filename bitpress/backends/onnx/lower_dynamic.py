"""ONNX lowering of qlinear_dyn (bitpress.formats.dynamic_int8).

    s_a = ReduceMax(|x|) / 127          per row (1 for a zero row)
    xq  = Clip(Round(x / s_a), -127, 127)      (Round is half to even, as the reference)
    acc = MatMulInteger over [G, M, gs] x [G, gs, N]     one int32 block dot per group
    y   = ReduceSum_g(float(acc) * s_w) * s_a + b

Both integer operands travel as uint8 (value + 128, zero point 128) so onnxruntime runs its
u8 x u8 kernels, exact on every x86 host (its u8 x s8 ones saturate int16 sums without VNNI).
The block dots are exact; the float sum over blocks is onnxruntime's order (allclose, not
bit-exact, against the reference's block-by-block fused multiply-adds).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch

from bitpress.backends.onnx.lowering import OnnxLowerContext, register_onnx_lowering
from bitpress.compiler.ir import Node
from bitpress.formats.dynamic_int8 import dynamic_codes

Names = list[str | None]


@register_onnx_lowering("qlinear_dyn")
def lower_qlinear_dyn(ctx: OnnxLowerContext, node: Node, inputs: Names) -> list[str]:
    """y = (sum_g int(xq . q)_g * s_w[g]) * s_a + b   per-row int8 activations, block int8 dots"""
    n, k = (int(v) for v in node.attrs["shape"])
    bits, gs = int(node.attrs["bits"]), int(node.attrs["group_size"])
    g = -(-k // gs)
    kp = g * gs  # a short last block: zero activations and codes past K
    qv, sv = node.inputs[1], node.inputs[2]
    assert qv is not None and sv is not None
    codes = torch.nn.functional.pad(dynamic_codes(qv.value, bits, (n, k)), (0, kp - k))
    wu = (codes + 128).to(torch.uint8).reshape(n, g, gs).permute(1, 2, 0).contiguous()  # [G, gs, N]
    sw = sv.value.to(torch.float32).t().reshape(g, 1, n).contiguous()  # [G, 1, N]
    x = str(inputs[0])
    shape = ctx.add_node("Shape", [x])[0]
    x2 = ctx.add_node("Reshape", [x, ctx.add_initializer(np.array([-1, k], dtype=np.int64), "rows_k")])[0]
    amax = ctx.add_node(
        "ReduceMax", [ctx.add_node("Abs", [x2])[0], ctx.add_initializer(np.array([1], dtype=np.int64), "axis1")], keepdims=1
    )[0]
    pos = ctx.add_node("Greater", [amax, ctx.scalar(0.0, "float32")])[0]
    sa = ctx.add_node("Where", [pos, ctx.add_node("Div", [amax, ctx.scalar(127.0, "float32")])[0], ctx.scalar(1.0, "float32")])[0]
    xq = ctx.add_node("Round", [ctx.add_node("Div", [x2, sa])[0]])[0]
    xq = ctx.add_node("Clip", [xq, ctx.scalar(-127.0, "float32"), ctx.scalar(127.0, "float32")])[0]
    xu = ctx.add_node("Cast", [ctx.add_node("Add", [xq, ctx.scalar(128.0, "float32")])[0]], to=onnx.TensorProto.UINT8)[0]
    if kp != k:  # pad with the zero point: xq = 0
        pads = ctx.add_initializer(np.array([0, 0, 0, kp - k], dtype=np.int64), "pads_k")
        xu = ctx.add_node("Pad", [xu, pads, ctx.add_initializer(np.array(128, dtype=np.uint8), "pad_u8")])[0]
    x3 = ctx.add_node("Reshape", [xu, ctx.add_initializer(np.array([-1, g, gs], dtype=np.int64), "rows_g_gs")])[0]
    x3 = ctx.add_node("Transpose", [x3], perm=[1, 0, 2])[0]  # [G, M, gs]
    zp = ctx.add_initializer(np.array(128, dtype=np.uint8), "zero_point_u8")
    acc = ctx.add_node("MatMulInteger", [x3, ctx.add_initializer(wu, f"{node.name}.w_u8"), zp, zp])[0]  # [G, M, N]
    y = ctx.add_node("Mul", [ctx.add_node("Cast", [acc], to=onnx.TensorProto.FLOAT)[0], ctx.add_initializer(sw, f"{node.name}.scales")])[0]
    y = ctx.add_node("ReduceSum", [y, ctx.add_initializer(np.array([0], dtype=np.int64), "axis0")], keepdims=0)[0]
    y = ctx.add_node("Mul", [y, sa])[0]
    if len(inputs) > 3 and inputs[3] is not None:
        y = ctx.add_node("Add", [y, str(inputs[3])])[0]
    # back to the input's leading dims with N features
    lead = ctx.add_node(
        "Slice",
        [
            shape,
            ctx.add_initializer(np.array([0], dtype=np.int64), "start0"),
            ctx.add_initializer(np.array([-1], dtype=np.int64), "end_m1"),
        ],
    )[0]
    out_shape = ctx.add_node("Concat", [lead, ctx.add_initializer(np.array([n], dtype=np.int64), "features")], axis=0)[0]
    return ctx.add_node("Reshape", [y, out_shape])
