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
from bitpress.schedules.cpu_int8 import DYN_KB, dyn_kernel, dyn_pack_weight, dyn_schedule

Args = list[Any]


@register_lowering("qlinear_dyn")
def _qlinear_dyn(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = (sum_g int(xq . q)_g * s_w[g]) * s_a + b   xq quantized per row at run time"""
    x = args[0]
    b = args[3] if len(args) > 3 else None
    n, k = (int(v) for v in node.attrs["shape"])
    bits, gs = int(node.attrs["bits"]), int(node.attrs["group_size"])
    g = k // gs
    qv, sv = ctx.value(node.inputs[1]), ctx.value(node.inputs[2])
    if qv is None or sv is None:
        raise ValueError("qlinear_dyn needs constant weights and scales")
    shp = ctx.shape(x)
    m = math.prod(shp[:-1])
    if len(shp) != 2:
        x = ctx.emit(R.reshape(x, (m, k)))
    kernel = dyn_kernel(ctx.isa if ctx.target == "llvm" else None)
    lanes = kernel.lanes
    np_ = -(-n // lanes) * lanes
    codes = dynamic_codes(qv, bits, (n, k))
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
        xq = te.compute(
            (m, k),
            lambda i, kk: tirx.max(tirx.min(tirx.nearbyint(xx[i, kk] / sa[i]), lim), -lim).astype("int8"),
            name="xq",
        )
        if bits == 4:
            # one (lanes x 4)-byte operand: byte t of the strip holds the codes of register
            # positions t (low nibble) and t + 2 * lanes (high nibble), offset by 8
            half = 2 * lanes

            def dec(jb: Any, kb: Any, lane: Any, kk: Any) -> Any:
                e = lane * DYN_KB + kk
                byte = ww[jb, kb, e % half]
                nib = tirx.bitwise_and(tirx.shift_right(byte, (e // half * 4).astype("uint8")), tirx.const(15, "uint8"))
                return nib.astype("int8") - tirx.const(8, "int8")

            wdec = te.compute((np_ // lanes, k // DYN_KB, lanes, DYN_KB), dec, name="wdec")

            def wat(j: Any, kk: Any) -> Any:
                return wdec[j // lanes, kk // DYN_KB, j % lanes, kk % DYN_KB]

        else:

            def wat(j: Any, kk: Any) -> Any:
                return ww[j // lanes, kk // DYN_KB, j % lanes, kk % DYN_KB]

        r = te.reduce_axis((0, gs), name="r")
        acc = te.compute(
            (m, g, np_),
            lambda i, gg, j: te.sum(xq[i, gg * gs + r].astype("int32") * wat(j, gg * gs + r).astype("int32"), axis=r),
            name="acc",
        )
        rg = te.reduce_axis((0, g), name="rg")
        y = te.compute((m, np_), lambda i, j: te.sum(acc[i, rg, j].astype("float32") * ss[j, rg].astype("float32"), axis=rg), name="y")
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
