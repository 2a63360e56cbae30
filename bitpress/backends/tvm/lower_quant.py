"""TVM lowerings of the quantized ops (bitpress/formats/quantized.py), llvm and cuda.

Weight-only `qlinear` is one fused dequantize+matmul kernel that reads the packed codes:

    xg[m, g, i]      = x[m, g*gs + i]              (0 past K)
    part[m, g, p, n] = sum_j xg[m, g, j*P + p] * c(g, j*P + p, n)     one sum per code slot p
    y[m, n]          = sum_g s'[g, n] * sum_p part[m, g, p, n] - zs'[g, n] * sum_i xg[m, g, i]  + b[n]

so the group scale is applied once per group.  At build time the codes are re-laid out
(still packed, same bytes) as [N / nb, G, units, nb]: strips of nb output channels, each
strip one contiguous run of groups; on llvm a unit is a 32-bit word of 8 int4 / 16 int2
codes of one channel (bytes for 3- and 8-bit).  Signed codes are stored offset by 2^(b-1)
(and the zero point with them), which leaves (q - z) unchanged.

CPU (llvm) kernels:
- GEMV (few rows): parallel over strips, the P partial sums per lane in registers, the code
  turned into a float by a shift and an and-or into the mantissa of 1.0 (c = 1 + u / 2^b,
  exact; s' = 2^b s and zs' = s' + z s absorb the 2^b and the 1), a ragged last group as its
  own short reduction.  Bytes (3/8-bit) convert the code (c = u, s' = s, zs' = z s).
- GEMM (more rows): each strip decoded once (w = c s' - zs') into an L2-resident float cache
  [G, gs, nb], then the fp32 register tile (8 rows x nb) over it.
CUDA: the GEMM form with the decode inlined, one thread per output.

W8A8: `quantize_act` / `dequantize_act` are elementwise kernels with the reference's float32
arithmetic and round-half-even (`nearbyint`); `qlinear_w8a8` and `qconv2d_w8a8` accumulate
int8 x int8 in int32 and requantize with the int64 fixed-point multiply and arithmetic
shift of the reference, so they are bit-exact.  On llvm the accumulation runs on u = x + 128
with an exact per-channel correction, in the target's int8 micro-kernel (vpdpbusd with VNNI,
exact vpmaddwd on AVX2/AVX-512BW; bitpress.schedules.cpu_int8); convs run as a channels-last
im2col + that GEMM.  `qconv2d` (weight-only) decodes its packed
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
from bitpress.formats.quantized import QuantAttrs, unpack_codes
from bitpress.schedules.cpu_int8 import INT8_ROWS, int8_acc, int8_gemm_schedule, int8_weight
from bitpress.schedules.default import _extent, _root_blocks

Args = list[Any]


# ----------------------------------------------------------------------------- layout


def _strip_width(n: int, lanes: int = 32) -> int:
    """Output channels per weight strip (the vectorized axis of the CPU kernels), at most `lanes`."""
    return next(c for c in (32, 16, 8, 4, 2, 1) if c <= lanes and n % c == 0)


def _word_codes(bits: int) -> int:
    """Codes per storage unit: 32-bit words of 8 int4 / 16 int2 codes; bytes (8- and 3-bit) count 1."""
    return 32 // bits if bits in (2, 4) else 1


def _weight_layout(
    node: Node, ctx: LowerContext, nb: int = 1, words: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    """(codes [N / nb, G, units per group, nb], scales [G, N] f32, zero*scale [G, N] f32, gs, gs_padded).

    Still packed at the weight's bit width, in the IR's order within a channel (low bits
    first): only the order of the storage units changes, to strips of nb output channels,
    each strip one contiguous run of groups.  A unit is a byte, or with `words` (2/4-bit) a
    little-endian 32-bit word of 4 consecutive bytes (8 int4 / 16 int2 codes of one channel).
    """
    a = node.attrs
    qa = QuantAttrs.of(a)
    shape, bits, gs, signed = list(qa.shape), qa.bits, qa.group_size, qa.signed
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
    words = words and bits in (2, 4)
    align = _word_codes(bits) if words else (8 if bits == 3 else max(8 // bits, 4))
    gsp = math.ceil(gs / align) * align
    u3 = torch.zeros(n, ng, gsp, dtype=torch.int64)
    for g in range(ng):
        w = min(gs, k - g * gs)
        u3[:, g, :w] = u[:, g * gs : g * gs + w]
    bpg = gsp * bits // 8
    packed = pack_bits(u3, bits).reshape(n, ng, bpg)
    if bits == 3:  # a code may straddle two bytes: one spare byte keeps the read in bounds
        packed = torch.cat([packed, torch.zeros(n, ng, 1, dtype=torch.uint8)], 2)
    if words:
        packed = packed.contiguous().view(torch.int32)  # [n, ng, bpg / 4], little-endian like the IR's bytes
    bt = packed.reshape(n // nb, nb, ng, packed.shape[2]).permute(0, 2, 3, 1).contiguous()
    return bt, s.t().contiguous(), (z * s).t().contiguous(), gs, gsp


def _code(bt: Any, g: Any, i: Any, n: Any, bits: int) -> Any:
    """Unsigned code i of group g, output channel n (int32), from the strip layout."""
    nb = int(bt.shape[-1])
    no, ni = tirx.floordiv(n, nb), tirx.floormod(n, nb)
    if bits == 8:
        return bt[no, g, i, ni].astype("int32")
    if bits == 3:
        bo = i * 3
        lo = bt[no, g, tirx.shift_right(bo, 3), ni].astype("int32")
        hi = bt[no, g, tirx.shift_right(bo, 3) + 1, ni].astype("int32")
        return tirx.bitwise_and(tirx.shift_right(tirx.bitwise_or(lo, tirx.shift_left(hi, 8)), tirx.bitwise_and(bo, 7)), 7)
    per = 32 // bits if str(bt.dtype) == "int32" else 8 // bits
    b = bt[no, g, tirx.floordiv(i, per), ni].astype("int32")
    # an arithmetic shift of the top code of a word sign-extends; the mask drops those bits
    moved = _by_slot(tirx.floormod(i, per), per, lambda q: tirx.shift_right(b, tirx.const(q * bits, "int32")))
    return tirx.bitwise_and(moved, (1 << bits) - 1)


def _by_slot(p: Any, per: int, fn: Any) -> Any:
    """fn(p) for a slot index p in [0, per) as a select over constants.

    Shift amounts stay int32 constants (an expression of int64 loop variables would widen
    the word to 64-bit lanes), and once the slot loop is unrolled each select folds to one
    constant shift.
    """
    out = fn(per - 1)
    for q in reversed(range(per - 1)):
        out = tirx.if_then_else(p == q, fn(q), out)
    return out


def _mantissa_code(word: Any, p: Any, bits: int) -> Any:
    """1 + u / 2^bits as float32, for code slot p of a 32-bit word: the code's bits moved to the
    top of the mantissa of 1.0 (a shift and an and-or, no int->float conversion).  Exact."""
    top = 23 - bits  # the code's lowest bit lands here

    def shifted(q: int) -> Any:
        d = top - q * bits
        return tirx.shift_left(word, tirx.const(d, "int32")) if d >= 0 else tirx.shift_right(word, tirx.const(-d, "int32"))

    moved = _by_slot(p, 32 // bits, shifted)
    mask = ((1 << bits) - 1) << top
    return tirx.reinterpret("float32", tirx.bitwise_or(tirx.bitwise_and(moved, mask), 0x3F800000))


GEMV_ACC_LANES = 256  # float lanes of partial sums a GEMV kernel keeps in registers (16 x 512-bit)


def _gemv_plan(m: int, n: int, bits: int) -> tuple[int, int] | None:
    """(slots per unit, strip width) of the GEMV kernel for m rows, or None when m is too large."""
    slots = _word_codes(bits) if bits in (2, 4) else 4
    if m * slots > 16:
        return None
    return slots, _strip_width(n, max(1, GEMV_ACC_LANES // (m * slots)))


def _qgemv_te(m: int, k: int, n: int, ng: int, gs: int, gsp: int, bits: int, slots: int, has_bias: bool) -> Any:
    """Few rows: y = sum_g s' * sum_p part[p] - zs' * xsum, one partial sum per code slot p.

    part[m, g, p, n] = sum_j xg[m, g, j*P + p] * c(g, j*P + p, n) keeps the P codes of a
    storage unit in P independent accumulators (no dependency chain between the codes of
    one load).  For 2/4-bit words c = 1 + u / 2^b (from the mantissa, see _mantissa_code),
    so sum_i x c = xsum + sum_i x u / 2^b and the caller passes s' = 2^b s, zs' = s' + z s;
    for bytes c = u, s' = s, zs' = z s.
    """
    per = slots
    words = bits in (2, 4)

    def fn(x: Any, bt: Any, s: Any, zs: Any, *rest: Any) -> Any:
        nb = int(bt.shape[-1])
        xg = te.compute(
            (m, ng, gsp),
            lambda mm, g, i: tirx.if_then_else(
                tirx.all(i < gs, g * gs + i < k), x[mm, tirx.min(g * gs + i, k - 1)], tirx.const(0.0, "float32")
            ),
            name="xg",
        )
        r1 = te.reduce_axis((0, gsp), name="i")
        xsum = te.compute((m, ng), lambda mm, g: te.sum(xg[mm, g, r1], axis=r1), name="xsum")

        def term(mm: Any, g: Any, p: Any, nn: Any, rj: Any) -> Any:
            if words:
                c = _mantissa_code(bt[nn // nb, g, rj, nn % nb], p, bits)
            else:
                c = _code(bt, g, rj * per + p, nn, bits).astype("float32")
            return xg[mm, g, rj * per + p] * c

        def slot_sum(pt: Any, *idx: Any) -> Any:
            acc = pt(*idx[:-1], 0, idx[-1])
            for p in range(1, per):
                acc = acc + pt(*idx[:-1], p, idx[-1])
            return acc

        # a ragged last group gets its own, shorter reduction instead of padding every row
        tail_units = -(-(k - (ng - 1) * gs) // per)
        split = ng > 1 and tail_units * per < gsp
        ngm = ng - 1 if split else ng
        rj = te.reduce_axis((0, gsp // per), name="j")
        part = te.compute((m, ngm, per, n), lambda mm, g, p, nn: te.sum(term(mm, g, p, nn, rj), axis=rj), name="part")
        rg = te.reduce_axis((0, ngm), name="g")
        y = te.compute(
            (m, n),
            lambda mm, nn: te.sum(s[rg, nn] * slot_sum(part, mm, rg, nn) - zs[rg, nn] * xsum[mm, rg], axis=rg),
            name="y",
        )
        if split:
            rt = te.reduce_axis((0, tail_units), name="jt")
            part_t = te.compute((m, per, n), lambda mm, p, nn: te.sum(term(mm, ng - 1, p, nn, rt), axis=rt), name="part_tail")
            t = ng - 1
            y = te.compute(
                (m, n),
                lambda mm, nn: y[mm, nn] + (s[t, nn] * slot_sum(part_t, mm, nn) - zs[t, nn] * xsum[mm, t]),
                name="y_tail",
            )
        if has_bias:
            b = rest[0]
            y = te.compute((m, n), lambda mm, nn: y[mm, nn] + b[nn], name="y_bias")
        return y

    return fn


def _qgemm_te(m: int, k: int, n: int, ng: int, gs: int, gsp: int, bits: int, has_bias: bool) -> Any:
    """Many rows: w = c * s' - zs' decoded into a strip cache [G, gs_padded, nb], then a float GEMM.

    c, s', zs' as in _qgemv_te: for 2/4-bit words c = 1 + u / 2^b, s' = 2^b s, zs' = s' + z s,
    so c s' - zs' = (u - z) s.
    """

    def fn(x: Any, bt: Any, s: Any, zs: Any, *rest: Any) -> Any:
        nb = int(bt.shape[-1])
        words = str(bt.dtype) == "int32"
        per = 32 // bits

        def code(no: Any, g: Any, i: Any, ni: Any) -> Any:
            if words:
                return _mantissa_code(bt[no, g, i // per, ni], i % per, bits)
            return _code(bt, g, i, no * nb + ni, bits).astype("float32")

        wdeq = te.compute(
            (n // nb, ng, gsp, nb),
            lambda no, g, i, ni: code(no, g, i, ni) * s[g, no * nb + ni] - zs[g, no * nb + ni],
            name="wdeq",
        )
        r = te.reduce_axis((0, k), name="k")
        y = te.compute((m, n), lambda mm, nn: te.sum(x[mm, r] * wdeq[nn // nb, r // gs, r % gs, nn % nb], axis=r), name="y")
        if has_bias:
            b = rest[0]
            y = te.compute((m, n), lambda mm, nn: y[mm, nn] + b[nn], name="y_bias")
        return y

    return fn


def _vectorize(sch: Any, loop: Any, width: int) -> None:
    if width > 1:
        sch.vectorize(loop)


def _strip_of(sch: Any, block: str) -> int:
    """The strip width nb of the packed codes [N / nb, G, units, nb] that `block` reads.

    Schedules read their shapes from the kernel, not from the lowering: kernels of several
    layers share one name (and so one hint).
    """
    for region in sch.get(sch.get_sblock(block)).reads:
        buf = region.source
        if len(buf.shape) == 4 and str(buf.dtype) in ("int32", "uint8"):
            return int(buf.shape[-1])
    raise ValueError(f"kernel block {block!r} reads no packed codes")


def _cpu_qgemv_schedule() -> Any:
    """parallel(strip) . group . [partial sums in registers: j . unroll(m, p) . vector(nb)] . y += s * part

    A ragged last group (part_tail, y_tail) runs once per strip after the full groups.
    """

    def schedule(sch: Any, target: Any) -> None:
        nb = _strip_of(sch, "part")
        y = sch.get_sblock("y")
        mm, nn, g = sch.get_loops(y)
        no, ni = sch.split(nn, factors=[None, nb])
        sch.reorder(no, g, mm, ni)
        sch.parallel(no)
        part = sch.get_sblock("part")
        sch.compute_at(part, g, preserve_unit_loops=True)
        # the strip's partial sums live in registers: nb lanes x P slots x m rows
        sch.set_scope(part, 0, "local")
        pm, _, pp, pn, pj = sch.get_loops(part)[-5:]
        sch.reorder(pj, pm, pp, pn)
        sch.unroll(pm)
        sch.unroll(pp)
        _vectorize(sch, pn, nb)
        init = sch.decompose_reduction(part, pj)
        _vectorize(sch, sch.get_loops(init)[-1], nb)
        _vectorize(sch, ni, nb)
        yinit = sch.decompose_reduction(y, g)
        _vectorize(sch, sch.get_loops(yinit)[-1], nb)
        if _has_block(sch, "y_tail"):
            # its own pass over the strips: reverse_compute_at into `no` would need xsum there too
            yt = sch.get_sblock("y_tail")
            tm_, tn_ = sch.get_loops(yt)
            tno, tni = sch.split(tn_, factors=[None, nb])
            sch.reorder(tno, tm_, tni)
            sch.parallel(tno)
            pt = sch.get_sblock("part_tail")
            sch.compute_at(pt, tno, preserve_unit_loops=True)
            sch.set_scope(pt, 0, "local")
            tm, tp, tn, tj = sch.get_loops(pt)[-4:]
            sch.reorder(tj, tm, tp, tn)
            sch.unroll(tm)
            sch.unroll(tp)
            _vectorize(sch, tn, nb)
            tinit = sch.decompose_reduction(pt, tj)
            _vectorize(sch, sch.get_loops(tinit)[-1], nb)
            _vectorize(sch, sch.get_loops(yt)[-1], nb)
        _schedule_bias(sch)

    return schedule


def _cpu_qgemm_schedule(per: int) -> Any:
    """parallel(strip) . [decode the strip's [K, nb] weights once] . row tiles . k . unroll(mi) . vector(nb)

    The decoded strip (K x nb floats, at most a few hundred KB) stays in L2 while every row
    tile of the batch streams through it: the fp32 GEMM's register tile, fed from a cache
    instead of from the fp32 weight in memory.
    """

    def schedule(sch: Any, target: Any) -> None:
        nb = _strip_of(sch, "wdeq")
        y = sch.get_sblock("y")
        mm, nn, r = sch.get_loops(y)
        m = _extent(sch, mm)
        no, ni = sch.split(nn, factors=[None, nb])
        mi_f = 4 if m is None else next(f for f in (8, 6, 4, 3, 2, 1) if m % f == 0)  # None: symbolic rows
        mo, mi = sch.split(mm, factors=[None, mi_f])
        sch.reorder(no, mo, r, mi, ni)
        wb = sch.cache_write(y, 0, "global")
        if _has_block(sch, "y_bias"):
            sch.reverse_compute_inline(sch.get_sblock("y_bias"))
        sch.parallel(no)
        sch.reverse_compute_at(wb, mo, preserve_unit_loops=True)
        wd = sch.get_sblock("wdeq")
        sch.compute_at(wd, no)
        wi, wn = sch.get_loops(wd)[-2:]
        if per > 1:  # the codes of one storage unit: constant shifts once unrolled
            _, wq = sch.split(wi, factors=[None, per])
            sch.unroll(wq)
        _vectorize(sch, wn, nb)
        sch.unroll(mi)
        _vectorize(sch, ni, nb)
        init = sch.decompose_reduction(y, r)
        _vectorize(sch, sch.get_loops(init)[-1], nb)
        _vectorize(sch, sch.get_loops(wb)[-1], nb)

    return schedule


def _has_block(sch: Any, name: str) -> bool:
    return any(sch.get(b).name_hint == name for b in _root_blocks(sch))


def _schedule_bias(sch: Any) -> None:
    if not _has_block(sch, "y_bias"):
        return
    yb = sch.get_sblock("y_bias")
    fused = sch.fuse(*sch.get_loops(yb))
    sch.parallel(fused)


def _gpu_schedule(sch: Any, target: Any) -> None:
    """One thread per output element of every block (reductions serial per thread)."""
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
    x2, shp, m = _flatten_in(ctx, _f32(ctx, x), k)
    cpu = ctx.target == "llvm"
    # a symbolic row count (the batch) takes the GEMM kernel, whose schedule tiles rows with a guard
    plan = _gemv_plan(m, n, bits) if cpu and isinstance(m, int) else None
    # named by the kernel actually built: schedule hints are keyed by name, and a model with both
    # kinds (a ViT's 34-row blocks and its 2-row class-token head) got the GEMV schedule on its GEMMs
    name = f"qmatmul_int{bits}_{'gemv' if plan is not None else 'gemm'}"
    nb = (plan[1] if plan is not None else _strip_width(n)) if cpu else 1
    bt, s, zs, gs, gsp = _weight_layout(node, ctx, nb, words=cpu)
    if cpu and bits in (2, 4):  # the codes come as c = 1 + u / 2^b: see _qgemv_te
        s = s * float(1 << bits)
        zs = s + zs
    ng = s.shape[0]
    if plan is not None:
        fn = _qgemv_te(m, k, n, ng, gs, gsp, bits, plan[0], b is not None)
    else:
        fn = _qgemm_te(m, k, n, ng, gs, gsp, bits, b is not None)
    ins = [x2, ctx.const(bt, f"{node.name}.qcodes"), ctx.const(s, f"{node.name}.scales"), ctx.const(zs, f"{node.name}.zs")]
    if b is not None:
        ins.append(_f32(ctx, b))
    if not cpu:
        ctx.schedule_hint(name, schedule=_gpu_schedule)
    elif plan is not None:
        ctx.schedule_hint(name, schedule=_cpu_qgemv_schedule())
    else:
        ctx.schedule_hint(name, schedule=_cpu_qgemm_schedule(_word_codes(bits) if bits in (2, 4) else 1))
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


# int8 x int8 -> int32 on CPUs: the weight layout, the micro-kernel (vpdpbusd, vpmaddwd or
# plain loops) and the register tile follow the target's ISA: bitpress.schedules.cpu_int8.


def _int8_kernel(ctx: LowerContext) -> tuple[Any, int]:
    """(Int8Kernel, vector registers) of the llvm target being built for."""
    from bitpress.schedules.isa import INT8_KERNELS

    if ctx.isa is None:  # lowered without a target (tests of the lowering alone)
        return INT8_KERNELS["generic"], 16
    return ctx.isa.int8, ctx.isa.vector_registers


@register_lowering("qlinear_w8a8")
def _qlinear_w8a8(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = requant(sum_k (x - xzp) w + b)   int8 x int8 -> int32 -> int8"""
    x, _, mult, shift = args[:4]
    b = args[4] if len(args) > 4 else None
    w = ctx.value(node.inputs[1])
    assert w is not None
    n, k = w.shape
    x2, shp, m = _flatten_in(ctx, x, k)
    xzp, yzp = int(node.attrs["x_zero_point"]), int(node.attrs["out_zero_point"])
    if ctx.target == "llvm":
        kernel, regs = _int8_kernel(ctx)
        wp, corr, kp, np_ = int8_weight(w, xzp, kernel.lanes, kernel.k)

        # a symbolic row count: rows padded to INT8_ROWS (copies of the last row, not written out)
        mp = _padded_rows(m, INT8_ROWS)

        def vfn(xx: Any, ww: Any, cc: Any, mm: Any, ss: Any, *rest: Any) -> Any:
            xu = te.compute(
                (mp, kp),
                lambda i, kk: tirx.if_then_else(
                    kk < k,
                    (xx[tirx.min(i, m - 1) if mp is not m else i, tirx.min(kk, k - 1)].astype("int32") + 128).astype("uint8"),
                    tirx.const(0, "uint8"),
                ),
                name="xu",
            )
            acc = int8_acc(xu, ww, mp, kp, np_, kernel.lanes, kernel.k)

            def body(i: Any, j: Any) -> Any:
                v = acc[i, j] - cc[j]
                return _requant(v + rest[0][j] if rest else v, mm, ss, j, yzp)

            return te.compute((m, n), body, name="requant")

        ins = [x2, ctx.const(wp, f"{node.name}.w_{kernel.name}"), ctx.const(corr, f"{node.name}.w_corr"), mult, shift]
        ins += [b] if b is not None else []
        ctx.schedule_hint("qlinear_w8a8", schedule=int8_gemm_schedule(kernel, regs))
        y = ctx.emit_te(vfn, *ins, primfunc_name_hint="qlinear_w8a8")
    else:
        wt = ctx.const(w.t().contiguous(), f"{node.name}.w_t")  # [K, N] int8: n contiguous

        def fn(xx: Any, ww: Any, mm: Any, ss: Any, *rest: Any) -> Any:
            r = te.reduce_axis((0, k), name="k")
            acc = te.compute((m, n), lambda i, j: te.sum((xx[i, r].astype("int32") - xzp) * ww[r, j].astype("int32"), axis=r), name="acc")
            if rest:
                bb = rest[0]
                return te.compute((m, n), lambda i, j: _requant(acc[i, j] + bb[j], mm, ss, j, yzp), name="requant")
            return te.compute((m, n), lambda i, j: _requant(acc[i, j], mm, ss, j, yzp), name="requant")

        ins = [x2, wt, mult, shift] + ([b] if b is not None else [])
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
    wv = ctx.value(node.inputs[1])
    if ctx.target == "llvm" and wv is not None and int(a.get("groups", 1)) == 1:
        return _qconv2d_w8a8_cpu(ctx, node, x, wv, mult, shift, b, xzp, yzp)
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


def _padded_rows(m: Any, unit: int) -> Any:
    """m itself when static; else m rounded up to a multiple of `unit` (a TIR expression)."""
    return m if isinstance(m, int) else (m + unit - 1) // unit * unit


def _qconv2d_w8a8_cpu(ctx: LowerContext, node: Node, x: Any, w: torch.Tensor, mult: Any, shift: Any, b: Any, xzp: int, yzp: int) -> Any:
    """u = x + 128, padded with xzp + 128 (zero in the shifted domain), channels last ->
    im2col with columns (ky, kx, c) (c contiguous: vector copies) -> int8 GEMM -> requant to NCHW."""
    a = node.attrs
    (sh, sw), (ph, pw), (dh, dw) = _pair(a.get("stride", 1)), _pair(a.get("padding", 0)), _pair(a.get("dilation", 1))
    bn, c, h, wd = ctx.shape(x)
    o, _, kh, kw = w.shape
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    k = c * kh * kw
    m = bn * oh * ow
    # the GEMM's K order is (ky, kx, c): permute the kernel to match
    kernel, regs = _int8_kernel(ctx)
    wp, corr, kp, np_ = int8_weight(w.permute(0, 2, 3, 1).reshape(o, k), xzp, kernel.lanes, kernel.k)
    pad_u = xzp + 128
    hp, wpd = h + 2 * ph, wd + 2 * pw
    # a symbolic batch: rows padded to a multiple of the row tile and of the output width
    mp = _padded_rows(m, math.lcm(INT8_ROWS, ow))

    def fn(xx: Any, ww: Any, cc: Any, mm: Any, ss: Any, *rest: Any) -> Any:
        def padded(bi: Any, yy: Any, xw: Any, ci: Any) -> Any:
            iy, ix = yy - ph, xw - pw
            inside = tirx.all(iy >= 0, iy < h, ix >= 0, ix < wd)
            v = xx[bi, ci, tirx.max(tirx.min(iy, h - 1), 0), tirx.max(tirx.min(ix, wd - 1), 0)].astype("int32") + 128
            return tirx.if_then_else(inside, v, tirx.const(pad_u, "int32")).astype("uint8")

        xpad = te.compute((bn, hp, wpd, c), padded, name="xpad")

        def patch(row: Any, kk: Any) -> Any:
            tap, ci = kk // c, kk % c
            ky, kx = tap // kw, tap % kw
            if mp is not m:  # padded rows: copies of the last one
                row = tirx.min(row, m - 1)
            bi, pix = row // (oh * ow), row % (oh * ow)
            v = xpad[bi, tirx.min((pix // ow) * sh + ky * dh, hp - 1), tirx.min((pix % ow) * sw + kx * dw, wpd - 1), ci]
            return tirx.if_then_else(kk < k, v, tirx.const(0, "uint8"))

        xu = te.compute((mp, kp), patch, name="patches")
        acc = int8_acc(xu, ww, mp, kp, np_, kernel.lanes, kernel.k)

        def body(i: Any, co: Any, y: Any, xw: Any) -> Any:
            row = (i * oh + y) * ow + xw
            v = acc[row, co] - cc[co]
            return _requant(v + rest[0][co] if rest else v, mm, ss, co, yzp)

        return te.compute((bn, o, oh, ow), body, name="requant")

    ins = [x, ctx.const(wp, f"{node.name}.w_{kernel.name}"), ctx.const(corr, f"{node.name}.w_corr"), mult, shift]
    ins += [b] if b is not None else []
    # the im2col copies c contiguous bytes per tap when the columns are not padded
    vec_c = c if kp == k and c >= 4 else 1
    name = f"qconv2d_w8a8_{ow}_{vec_c}"
    ctx.schedule_hint(name, schedule=int8_gemm_schedule(kernel, regs, ow, vec_c))
    return ctx.emit_te(fn, *ins, primfunc_name_hint=name)


__all__: list[str] = []
_ = relax
