"""TVM lowerings of the quantized ops (bitpress/passes/quantize/ops.py), llvm and cuda.

Weight-only `qlinear` is one fused dequantize+matmul kernel that reads the packed codes:

    xg[m, g, i]   = x[m, g*gs + i]              (0 past K: the ragged last group)
    part[m, g, n] = sum_i xg[m, g, i] * u(g, i, n)            u: unsigned code from bytes
    y[m, n]       = sum_g s[g, n] * part[m, g, n] - (z*s)[g, n] * sum_i xg[m, g, i]  + b[n]

so the group scale is applied once per group.  At build time the packed codes are re-laid
out (still packed, same bits) as bytes [G, bytes_per_group, N]: for a fixed byte the N
output channels are contiguous, so the CPU schedule vectorizes over n (one byte load gives
2 int4 / 4 int2 codes per lane, shifts and masks decode them without branches) and
parallelizes over blocks of n; for batched inputs the decoded codes are reused across a
register tile of rows.  Signed codes are stored offset by 2^(b-1) (and the zero point with
them), which leaves (q - z) unchanged.

W8A8: `quantize_act` / `dequantize_act` are elementwise kernels with the reference's float32
arithmetic and round-half-even (`nearbyint`); `qlinear_w8a8` and `qconv2d_w8a8` accumulate
int8 x int8 in int32 and requantize with the int64 fixed-point multiply and arithmetic
shift of the reference, so they are bit-exact.  `qconv2d` (weight-only) decodes its packed
kernel per call into a float buffer and runs a float conv.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from tvm import relax, te, tirx
from tvm.relax import op as R

from bitpress.backends.tvm.lowering import LowerContext, register_lowering
from bitpress.compiler.ir import Node, pack_bits
from bitpress.passes.quantize.ops import unpack_codes

Args = list[Any]


# ----------------------------------------------------------------------------- layout


def _weight_layout(node: Node, ctx: LowerContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    """(bytes [G, Bpg, N] uint8, scales [G, N] f32, zero*scale [G, N] f32, gs, gs_padded)."""
    a = node.attrs
    shape, bits, gs, signed = list(a["shape"]), int(a["bits"]), int(a["group_size"]), bool(a.get("signed", True))
    n, k = shape[0], math.prod(shape[1:])
    qv, sv, zv = node.inputs[1], node.inputs[2], node.inputs[3] if len(node.inputs) > 3 else None
    codes = unpack_codes(ctx.value(qv), bits, (n, k), signed)  # type: ignore[arg-type]
    s = ctx.value(sv).to(torch.float32)  # type: ignore[union-attr]
    ng = math.ceil(k / gs)
    s = s.expand(n, ng)
    off = 1 << (bits - 1) if signed else 0
    u = codes + off
    if zv is not None:
        z = unpack_codes(ctx.value(zv), bits, tuple(sv.shape), False).to(torch.float32).expand(n, ng)  # type: ignore[union-attr, arg-type]
    else:
        z = torch.zeros(n, ng)
    z = z + off
    align = 8 if bits == 3 else 8 // bits
    gsp = math.ceil(gs / align) * align
    u3 = torch.zeros(n, ng, gsp, dtype=torch.int64)
    for g in range(ng):
        w = min(gs, k - g * gs)
        u3[:, g, :w] = u[:, g * gs : g * gs + w]
    bpg = gsp * bits // 8
    packed = pack_bits(u3, bits).reshape(n, ng, bpg)
    if bits == 3:  # a code may straddle two bytes: one spare byte keeps the read in bounds
        packed = torch.cat([packed, torch.zeros(n, ng, 1, dtype=torch.uint8)], 2)
    bt = packed.permute(1, 2, 0).contiguous()
    return bt, s.t().contiguous(), (z * s).t().contiguous(), gs, gsp


def _code(bt: Any, g: Any, i: Any, n: Any, bits: int) -> Any:
    if bits == 8:
        return bt[g, i, n].astype("int32")
    if bits == 3:
        bo = i * 3
        lo = bt[g, tirx.shift_right(bo, 3), n].astype("int32")
        hi = bt[g, tirx.shift_right(bo, 3) + 1, n].astype("int32")
        return tirx.bitwise_and(tirx.shift_right(tirx.bitwise_or(lo, tirx.shift_left(hi, 8)), tirx.bitwise_and(bo, 7)), 7)
    per = 8 // bits
    b = bt[g, tirx.floordiv(i, per), n].astype("int32")
    return tirx.bitwise_and(tirx.shift_right(b, tirx.floormod(i, per) * bits), (1 << bits) - 1)


def _qmatmul_te(m: int, k: int, n: int, ng: int, gs: int, gsp: int, bits: int, has_bias: bool) -> Any:
    def fn(x: Any, bt: Any, s: Any, zs: Any, *rest: Any) -> Any:
        xg = te.compute(
            (m, ng, gsp),
            lambda mm, g, i: tirx.if_then_else(
                tirx.all(i < gs, g * gs + i < k), x[mm, tirx.min(g * gs + i, k - 1)], tirx.const(0.0, "float32")
            ),
            name="xg",
        )
        r1 = te.reduce_axis((0, gsp), name="i")
        xsum = te.compute((m, ng), lambda mm, g: te.sum(xg[mm, g, r1], axis=r1), name="xsum")
        r2 = te.reduce_axis((0, gsp), name="i")
        part = te.compute(
            (m, ng, n),
            lambda mm, g, nn: te.sum(xg[mm, g, r2] * _code(bt, g, r2, nn, bits).astype("float32"), axis=r2),
            name="part",
        )
        rg = te.reduce_axis((0, ng), name="g")
        y = te.compute((m, n), lambda mm, nn: te.sum(s[rg, nn] * part[mm, rg, nn] - zs[rg, nn] * xsum[mm, rg], axis=rg), name="y")
        if has_bias:
            b = rest[0]
            y = te.compute((m, n), lambda mm, nn: y[mm, nn] + b[nn], name="y_bias")
        return y

    return fn


def _cpu_qmatmul_schedule(m: int, n: int, bits: int) -> Any:
    def schedule(sch: Any, target: Any) -> None:
        lanes = 8
        # the padded activations are materialized once per call (tiny), so the hot loop has no bounds test
        xg = sch.get_sblock("xg")
        sch.parallel(sch.get_loops(xg)[0]) if m > 1 else None
        ni = 16 if n % 16 == 0 else (8 if n % 8 == 0 else 1)
        part = sch.get_sblock("part")
        mm, g, nn, i = sch.get_loops(part)
        no, nin = sch.split(nn, factors=[None, ni])
        mi_f = next(f for f in (4, 2, 1) if m % f == 0)
        mo, mi = sch.split(mm, factors=[None, mi_f])
        per = 8 // bits if bits in (2, 4) else 1
        io, ii = sch.split(i, factors=[None, per])
        sch.reorder(no, mo, g, io, ii, mi, nin)
        sch.parallel(no)
        if per > 1:
            sch.unroll(ii)  # the codes of one byte: constant shifts after unrolling
        if mi_f > 1:
            sch.unroll(mi)
        if ni > 1:
            sch.vectorize(nin)
        init = sch.decompose_reduction(part, io)
        if ni > 1:
            sch.vectorize(sch.get_loops(init)[-1])
        ys = sch.get_sblock("y")
        ym, yn, yg = sch.get_loops(ys)
        yno, yni = sch.split(yn, factors=[None, lanes if n % lanes == 0 else 1])
        sch.reorder(yno, ym, yg, yni)
        sch.parallel(yno)
        if n % lanes == 0:
            sch.vectorize(yni)
        yinit = sch.decompose_reduction(ys, yg)
        if n % lanes == 0:
            sch.vectorize(sch.get_loops(yinit)[-1])
        xs = sch.get_sblock("xsum")
        sch.parallel(sch.get_loops(xs)[0]) if m > 1 else None
        try:
            yb = sch.get_sblock("y_bias")
        except Exception:
            return
        fused = sch.fuse(*sch.get_loops(yb))
        sch.parallel(fused)

    return schedule


def _gpu_schedule(sch: Any, target: Any) -> None:
    """One thread per output element of every block (reductions serial per thread)."""
    from bitpress.schedules.default import _root_blocks

    for blk in _root_blocks(sch):
        try:
            sch.compute_inline(blk)
            continue
        except Exception:
            pass
    for blk in _root_blocks(sch):
        loops = sch.get_loops(blk)
        try:
            spatial = [lp for lp, kind in zip(loops, _iter_kinds(sch, blk)) if kind == 0]
        except Exception:
            spatial = loops[:1]
        fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        bx, tx = sch.split(fused, factors=[None, 128])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")


def _iter_kinds(sch: Any, blk: Any) -> list[int]:
    b = sch.get(blk)
    return [int(iv.iter_type) for iv in b.iter_vars]


def _flatten_in(ctx: LowerContext, x: Any, k: int) -> tuple[Any, tuple[int, ...], int]:
    shp = ctx.shape(x)
    m = math.prod(shp[:-1])
    if len(shp) != 2:
        x = ctx.emit(R.reshape(x, (m, k)))
    return x, shp, m


@register_lowering("qlinear")
def _qlinear(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = x @ ((q - z) * s)^T + b   as one fused dequantize+matmul kernel over packed bytes"""
    x = args[0]
    b = args[4] if len(args) > 4 else None
    shape = list(node.attrs["shape"])
    n, k = shape[0], shape[1]
    bits = int(node.attrs["bits"])
    bt, s, zs, gs, gsp = _weight_layout(node, ctx)
    ng = s.shape[0]
    x2, shp, m = _flatten_in(ctx, _f32(ctx, x), k)
    name = f"qmatmul_int{bits}_{'gemv' if m == 1 else 'gemm'}"
    fn = _qmatmul_te(m, k, n, ng, gs, gsp, bits, b is not None)
    ins = [x2, ctx.const(bt, f"{node.name}.qbytes"), ctx.const(s, f"{node.name}.scales"), ctx.const(zs, f"{node.name}.zs")]
    if b is not None:
        ins.append(_f32(ctx, b))
    if ctx.target == "llvm":
        ctx.schedule_hint(name, schedule=_cpu_qmatmul_schedule(m, n, bits))
    else:
        ctx.schedule_hint(name, schedule=_gpu_schedule)
    y = ctx.emit_te(fn, *ins, primfunc_name_hint=name)
    if len(shp) != 2:
        y = ctx.emit(R.reshape(y, (*shp[:-1], n)))
    return _cast_to(ctx, y, node)


def _f32(ctx: LowerContext, x: Any) -> Any:
    return x if ctx.dtype(x) == "float32" else ctx.emit(R.astype(x, "float32"))


def _cast_to(ctx: LowerContext, y: Any, node: Node) -> Any:
    want = node.output.dtype
    return y if want == "float32" else ctx.emit(R.astype(y, want))


@register_lowering("qconv2d")
def _qconv2d(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = conv2d(x, (q - z) * s) + b   with the packed kernel decoded per call"""
    x = args[0]
    b = args[4] if len(args) > 4 else None
    shape = list(node.attrs["shape"])
    o, kk = shape[0], math.prod(shape[1:])
    bits = int(node.attrs["bits"])
    bt, s, zs, gs, _ = _weight_layout(node, ctx)

    def deq(btt: Any, ss: Any, zz: Any) -> Any:
        return te.compute(
            (o, kk),
            lambda oo, kx: _code(btt, kx // gs, kx % gs, oo, bits).astype("float32") * ss[kx // gs, oo] - zz[kx // gs, oo],
            name="dequant",
        )

    w2 = ctx.emit_te(deq, ctx.const(bt, f"{node.name}.qbytes"), ctx.const(s), ctx.const(zs), primfunc_name_hint="dequant_kernel")
    w = ctx.emit(R.reshape(w2, tuple(shape)))
    a = node.attrs
    y = ctx.emit(
        R.nn.conv2d(
            _f32(ctx, x),
            w,
            strides=_pair(a.get("stride", 1)),
            padding=_pair(a.get("padding", 0)),
            dilation=_pair(a.get("dilation", 1)),
            out_dtype="float32",
        )
    )
    if b is not None:
        y = ctx.emit(R.add(y, R.reshape(_f32(ctx, b), (1, o, 1, 1))))
    return _cast_to(ctx, y, node)


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return (int(v[0]), int(v[-1]))
    return (int(v), int(v))


# ----------------------------------------------------------------------------- W8A8


@register_lowering("quantize_act")
def _quantize_act(ctx: LowerContext, node: Node, args: Args) -> Any:
    """q = clamp(nearbyint(x / s) + zp, -128, 127)   float32 arithmetic as the reference"""
    s, zp = float(node.attrs["scale"]), int(node.attrs["zero_point"])

    def fn(x: Any) -> Any:
        sc = tirx.const(s, "float32")

        def body(*i: Any) -> Any:
            v = tirx.nearbyint(x(*i).astype("float32") / sc) + tirx.const(float(zp), "float32")
            return tirx.max(tirx.min(v, tirx.const(127.0, "float32")), tirx.const(-128.0, "float32")).astype("int8")

        return te.compute(x.shape, body, name="quantize")

    return ctx.emit_te(fn, args[0], primfunc_name_hint="quantize_act")


@register_lowering("dequantize_act")
def _dequantize_act(ctx: LowerContext, node: Node, args: Args) -> Any:
    """x = (q - zp) * s"""
    s, zp = float(node.attrs["scale"]), int(node.attrs["zero_point"])

    def fn(q: Any) -> Any:
        return te.compute(
            q.shape,
            lambda *i: (q(*i).astype("int32") - zp).astype("float32") * tirx.const(s, "float32"),
            name="dequantize",
        )

    return ctx.emit_te(fn, args[0], primfunc_name_hint="dequantize_act")


def _requant(acc: Any, mult: Any, shift: Any, ch: Any, yzp: int) -> Any:
    a64 = acc.astype("int64") * mult[ch].astype("int64")
    r = shift[ch].astype("int64")
    v = tirx.shift_right(a64 + tirx.shift_left(tirx.const(1, "int64"), r - 1), r) + tirx.const(yzp, "int64")
    return tirx.max(tirx.min(v, tirx.const(127, "int64")), tirx.const(-128, "int64")).astype("int8")


@register_lowering("qlinear_w8a8")
def _qlinear_w8a8(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = requant(sum_k (x - xzp) w + b)   int8 x int8 -> int32 -> int8"""
    x, _, mult, shift = args[:4]
    b = args[4] if len(args) > 4 else None
    w = ctx.value(node.inputs[1])
    assert w is not None
    n, k = w.shape
    wt = ctx.const(w.t().contiguous(), f"{node.name}.w_t")  # [K, N] int8: n contiguous
    x2, shp, m = _flatten_in(ctx, x, k)
    xzp, yzp = int(node.attrs["x_zero_point"]), int(node.attrs["out_zero_point"])

    def fn(xx: Any, ww: Any, mm: Any, ss: Any, *rest: Any) -> Any:
        r = te.reduce_axis((0, k), name="k")
        acc = te.compute((m, n), lambda i, j: te.sum((xx[i, r].astype("int32") - xzp) * ww[r, j].astype("int32"), axis=r), name="acc")
        if rest:
            bb = rest[0]
            return te.compute((m, n), lambda i, j: _requant(acc[i, j] + bb[j], mm, ss, j, yzp), name="requant")
        return te.compute((m, n), lambda i, j: _requant(acc[i, j], mm, ss, j, yzp), name="requant")

    ins = [x2, wt, mult, shift] + ([b] if b is not None else [])
    if ctx.target == "cuda":
        ctx.schedule_hint("qlinear_w8a8", schedule=_gpu_schedule)
    y = ctx.emit_te(fn, *ins, primfunc_name_hint="qlinear_w8a8")
    if len(shp) != 2:
        y = ctx.emit(R.reshape(y, (*shp[:-1], n)))
    return y


@register_lowering("qconv2d_w8a8")
def _qconv2d_w8a8(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = requant(conv2d(x - xzp, w) + b)   int32 accumulation, zero padding in the shifted domain"""
    x, w, mult, shift = args[:4]
    b = args[4] if len(args) > 4 else None
    a = node.attrs
    xzp, yzp = int(a["x_zero_point"]), int(a["out_zero_point"])
    xs = ctx.emit_te(
        lambda t: te.compute(t.shape, lambda *i: t(*i).astype("int32") - xzp, name="shift_in"), x, primfunc_name_hint="qconv_shift"
    )
    w32 = ctx.emit(R.astype(w, "int32"))
    acc = ctx.emit(
        R.nn.conv2d(
            xs,
            w32,
            strides=_pair(a.get("stride", 1)),
            padding=_pair(a.get("padding", 0)),
            dilation=_pair(a.get("dilation", 1)),
            out_dtype="int32",
        )
    )

    def req(t: Any, mm: Any, ss: Any, *rest: Any) -> Any:
        if rest:
            bb = rest[0]
            return te.compute(t.shape, lambda i, c, h, ww: _requant(t[i, c, h, ww] + bb[c], mm, ss, c, yzp), name="requant")
        return te.compute(t.shape, lambda i, c, h, ww: _requant(t[i, c, h, ww], mm, ss, c, yzp), name="requant")

    ins = [acc, mult, shift] + ([b] if b is not None else [])
    return ctx.emit_te(req, *ins, primfunc_name_hint="qconv_requant")


__all__: list[str] = []
_ = relax
