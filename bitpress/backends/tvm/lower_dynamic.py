"""TVM lowering of qlinear_dyn (bitpress.formats.dynamic_int8): int4/int8 block weights x int8 rows.

One PrimFunc per layer, four stages:
  amax, sa   s_a[i] = max |x[i, :]| / 127 (1 for a zero row)
  xq         int8 rows, round half to even as the reference (`nearbyint`)
  acc        int32 block dots, tensorized into the target's signed int8 dot micro-kernel
             (bitpress.schedules.cpu_int8.dyn_*): |q| x sign(q) * xq with vpmaddubsw + vpmaddwd
             (AVX2) or vpdpbusd (AVX-VNNI / AVX512-VNNI), exact since |q|, |xq| <= 127;
             int4 codes are unpacked in registers (the weight stays 4-bit in memory)
  y          y = sum_g float(acc_g) * s_w[j, g] in block order, then * s_a + b
On cuda and on CPUs without AVX2 the acc stage is plain loops.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from tvm import te, tirx
from tvm.relax import op as R

from bitpress.backends.tvm.lowering import LowerContext, register_lowering
from bitpress.compiler.ir import Node
from bitpress.formats.dynamic_int8 import dynamic_codes
from bitpress.schedules.cpu_int8 import DYN_KB, DYN_ROWS, dyn_kernel, dyn_nibble, dyn_pack_weight, dyn_schedule

Args = list[Any]


@register_lowering("qlinear_dyn")
def _qlinear_dyn(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = (sum_g int(xq . q)_g * s_w[g]) * s_a + b   xq quantized per row at run time"""
    x = args[0]
    b = args[3] if len(args) > 3 else None
    n, k = (int(v) for v in node.attrs["shape"])
    bits, gs = int(node.attrs["bits"]), int(node.attrs["group_size"])
    g = -(-k // gs)
    kp = g * gs  # a short last block: zero activations and codes past K
    qv, sv = ctx.value(node.inputs[1]), ctx.value(node.inputs[2])
    if qv is None or sv is None:
        raise ValueError("qlinear_dyn needs constant weights and scales")
    shp = ctx.shape(x)
    m = math.prod(shp[:-1])
    if len(shp) != 2:
        x = ctx.emit(R.reshape(x, (m, k)))
    # a symbolic row count: the integer stages run on rows padded to a multiple of DYN_ROWS
    # (copies of the last row, discarded by `out`), so the row tile needs no bounds test
    symbolic = not isinstance(m, int)
    mp = (m + DYN_ROWS - 1) // DYN_ROWS * DYN_ROWS if symbolic else m
    kernel = dyn_kernel(ctx.isa if ctx.target == "llvm" else None)
    lanes = kernel.lanes
    np_ = -(-n // lanes) * lanes
    codes = torch.nn.functional.pad(dynamic_codes(qv, bits, (n, k)), (0, kp - k))
    wl = dyn_pack_weight(codes, bits, lanes)  # 4-bit: nibbles in the kernel's register order
    sw = torch.zeros(np_, g, dtype=sv.dtype)  # as stored (float16: converted in the kernel)
    sw[:n] = sv

    def fn(xx: Any, ww: Any, ss: Any, *rest: Any) -> Any:
        rk = te.reduce_axis((0, k), name="rk")
        amax = te.compute((m,), lambda i: te.max(tirx.abs(xx[i, rk]), axis=rk), name="amax")
        sa = te.compute(
            (m,),
            lambda i: tirx.if_then_else(
                amax[i] > tirx.const(0.0, "float32"), amax[i] / tirx.const(127.0, "float32"), tirx.const(1.0, "float32")
            ),
            name="sa",
        )
        lim = tirx.const(127.0, "float32")

        def quant(i: Any, kk: Any) -> Any:
            row = tirx.min(i, m - 1) if symbolic else i
            v = tirx.max(tirx.min(tirx.nearbyint(xx[row, tirx.min(kk, k - 1)] / sa[row]), lim), -lim).astype("int8")
            return v if kp == k else tirx.if_then_else(kk < k, v, tirx.const(0, "int8"))

        xq = te.compute((mp, kp), quant, name="xq")
        r = te.reduce_axis((0, gs), name="r")
        if bits == 4:
            # nibbles u = q + 8 in [0, 15], multiplied as unsigned bytes; the 8 comes back once per
            # row and block: sum (u - 8) x = sum u x - 8 sum x.  The operand of one instruction is
            # lanes x 4 codes from 2 * lanes bytes: byte t holds register positions t (low nibble)
            # and t + 2 * lanes (high nibble), so one 16-byte load, two masks and a concat make it.
            def wat(j: Any, kk: Any) -> Any:
                return dyn_nibble(ww[j // lanes, kk // DYN_KB], j % lanes, kk % DYN_KB, lanes)

            rs = te.reduce_axis((0, gs), name="rs")
            xsum = te.compute((mp, g), lambda i, gg: te.sum(xq[i, gg * gs + rs].astype("int32"), axis=rs), name="xsum")
        else:

            def wat(j: Any, kk: Any) -> Any:
                return ww[j // lanes, kk // DYN_KB, j % lanes, kk % DYN_KB]

        acc = te.compute(
            (mp, g, np_),
            lambda i, gg, j: te.sum(xq[i, gg * gs + r].astype("int32") * wat(j, gg * gs + r).astype("int32"), axis=r),
            name="acc",
        )

        def block(i: Any, gg: Any, j: Any) -> Any:
            if bits == 4:
                return (acc[i, gg, j] - xsum[i, gg] * 8).astype("float32")
            return acc[i, gg, j].astype("float32")

        rg = te.reduce_axis((0, g), name="rg")
        y = te.compute((mp, np_), lambda i, j: te.sum(block(i, rg, j) * ss[j, rg].astype("float32"), axis=rg), name="y")
        if rest:
            bb = rest[0]
            return te.compute((m, n), lambda i, j: y[i, j] * sa[i] + bb[j], name="out")
        return te.compute((m, n), lambda i, j: y[i, j] * sa[i], name="out")

    ins = [x, ctx.const(wl, f"{node.name}.w_dyn"), ctx.const(sw, f"{node.name}.s_dyn")]
    ins += [b] if b is not None else []
    name = f"qlinear_dyn_{bits}"
    if ctx.target == "llvm":
        ctx.schedule_hint(name, schedule=dyn_schedule(kernel, ctx.isa.vector_registers if ctx.isa is not None else 16, bits))
    y = ctx.emit_te(fn, *ins, primfunc_name_hint=name)
    if len(shp) != 2:
        y = ctx.emit(R.reshape(y, (*shp[:-1], n)))
    return y


__all__: list[str] = []
