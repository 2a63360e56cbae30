"""TVM lowerings of the pruning ops (bitpress/formats/sparse.py): gather kernels on the compressed form.

Every op is one TE reduction over the stored (weight, column) pairs, with no dense weight:

    y[r, o] = sum_j w(o, j) * x[r, col(o, j)] + b[o]

* ``nm_linear``: w = values[o, j]; col = (j // N) * M + idx(o, j), the in-group index read
  from the packed bytes (2 bits each for 2:4) with a shift and a mask.
* ``nm_qlinear`` (2:4 + int4, ...): w = (u(o, j) - z[o, g]) * s[o, g] with u the unsigned
  code read from the packed code bytes (two int4 codes per byte) and g = j // group_size;
  the reduction runs over (group, position in group), so scale and zero are loaded once
  per group.  Signed codes are stored offset by 2^(bits-1), the zero point with them.
* ``sparse_linear`` (row-padded CSR): w = values[o, j], col = cols[o, j] (int16).

Two kernel layouts, chosen by the number of input rows R:

* lanes over outputs (R < 8, the decoding case; and every R on CUDA): the stored arrays are
  re-laid out at build time (still packed) in tiles of 16 outputs, [O / 16, j, 16], so that
  for a fixed j the 16 outputs of a tile are contiguous and each tile is one stream.  The CPU schedule vectorizes over 16 outputs (contiguous value / code / index
  byte loads), unrolls the positions of one index byte (constant shifts), keeps a register
  tile of up to 4 rows, and parallelizes over output blocks.  For M <= 4 the M candidate
  inputs x[r, base..base+M-1] are the same for every lane: broadcast loads and a select
  chain replace a per-lane gather.
* lanes over rows (R >= 8, CPU): x is transposed once per call to xT [in, R] (zero rows
  pad R to a multiple of 8), and y^T[o, :] += w(o, j) * xT[col(o, j), :] runs with a
  scalar decode of (w, col) per stored weight and contiguous 8-wide loads and FMAs over
  rows, a tile of outputs x rows of accumulators, and parallel output blocks.

On CUDA one thread computes one output (the codegen is checked; no tuned GPU schedule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from tvm import te, tirx
from tvm.relax import op as R

from bitpress.backends.tvm.lowering import LowerContext, register_lowering
from bitpress.compiler.ir import Node, pack_bits, unpack_bits
from bitpress.formats.quantized import QuantAttrs, unpack_codes
from bitpress.formats.sparse import index_bits

Args = list[Any]

ROW_LANES = 8  # float32 lanes of a 256-bit vector: the row-vectorized kernel needs R >= this


# ----------------------------------------------------------------------------- build-time layouts


def _align(bits: int) -> int:
    return 8 if bits == 3 else max(8 // bits, 1)


def _pack_rows(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack the last axis of `codes` (length a multiple of `_align(bits)`) per row: [..., L] -> [..., bytes]."""
    lead, length = codes.shape[:-1], codes.shape[-1]
    if bits == 8:
        return codes.to(torch.uint8)
    by = pack_bits(codes, bits).reshape(*lead, length * bits // 8)
    if bits == 3:  # a code may straddle two bytes: one spare byte keeps the read in bounds
        by = torch.cat([by, torch.zeros(*lead, 1, dtype=torch.uint8)], -1)
    return by


def _unpack(byte: Any, pos: Any, bits: int) -> Any:
    """The unsigned code at position `pos` of a row packed by `_pack_rows`; `byte(i)` loads byte i."""
    if bits == 8:
        return byte(pos).astype("int32")
    if bits == 3:
        bo = pos * 3
        lo = byte(tirx.shift_right(bo, 3)).astype("int32")
        hi = byte(tirx.shift_right(bo, 3) + 1).astype("int32")
        return tirx.bitwise_and(tirx.shift_right(tirx.bitwise_or(lo, tirx.shift_left(hi, 8)), tirx.bitwise_and(bo, 7)), 7)
    per = 8 // bits
    b = byte(tirx.floordiv(pos, per)).astype("int32")
    return tirx.bitwise_and(tirx.shift_right(b, tirx.floormod(pos, per) * bits), (1 << bits) - 1)


@dataclass(frozen=True)
class _Layer:
    """Shapes of one sparse layer as a kernel sees them: j = g * gs + i, i < gsp."""

    rows: int
    out: int
    k_in: int
    kx: int  # columns of x the kernel may read (>= k_in: zero padding for ragged groups)
    groups: int
    gs: int
    gsp: int
    n: int  # N:M (0 for CSR)
    m: int
    bits: int  # code bits (0: float32 values)
    unroll: int  # positions decoded from one byte: unrolled so shifts are constants
    tile: int = 1  # lanes over outputs: arrays stored as [O / tile, ..., tile]

    @property
    def row_lanes(self) -> bool:
        return self.rows >= ROW_LANES


@dataclass
class _Arrays:
    """Build-time tensors in the [row-major over o] form; `lanes_over_outputs` transposes them."""

    weights: list[torch.Tensor]  # values [O, J]  or  code bytes [O, G, Bpg], zero [O, G], scale [O, G]
    cols: torch.Tensor  # index bytes [O, Jb] (N:M) or int16 columns [O, J] (CSR)


def _nm_index_bytes(idx: torch.Tensor, m: int, jp: int) -> torch.Tensor:
    out, k = idx.shape
    bits = index_bits(m)
    al = _align(bits)
    jp = math.ceil(jp / al) * al
    pad = torch.zeros(out, jp, dtype=torch.int64)
    pad[:, :k] = idx
    return _pack_rows(pad, bits)


def _quant_arrays(ctx: LowerContext, node: Node) -> tuple[list[torch.Tensor], int, int, int]:
    """(code bytes [O, G, Bpg], zero [O, G] f32, scale [O, G] f32), G, gs, gsp for an nm_qlinear."""
    a = node.attrs
    out, kk = (int(d) for d in a["shape"])
    qa = QuantAttrs.of(a)
    bits, gs, signed = qa.bits, qa.group_size, qa.signed
    qv, sv, zv = node.inputs[1], node.inputs[2], node.inputs[3]
    codes = unpack_codes(ctx.value(qv), bits, (out, kk), signed)  # type: ignore[arg-type]
    ng = math.ceil(kk / gs)
    s = ctx.value(sv).to(torch.float32).expand(out, ng)  # type: ignore[union-attr]
    off = 1 << (bits - 1) if signed else 0
    z = torch.zeros(out, ng)
    if zv is not None:
        z = unpack_codes(ctx.value(zv), bits, tuple(sv.shape), False).to(torch.float32).expand(out, ng)  # type: ignore[union-attr, arg-type]
    z = z + off
    gsp = math.ceil(gs / _align(bits)) * _align(bits)
    # padding slots hold the zero point: (u - z) * s = 0 whatever x they meet
    u3 = z.to(torch.int64)[:, :, None].expand(out, ng, gsp).clone()
    for g in range(ng):
        w = min(gs, kk - g * gs)
        u3[:, g, :w] = codes[:, g * gs : g * gs + w] + off
    return [_pack_rows(u3, bits), z.contiguous(), s.contiguous()], ng, gs, gsp


# ----------------------------------------------------------------------------- the TE kernels


def _weight(lay: _Layer, ws: list[Any], o: Any, g: Any, i: Any, ovec: bool) -> Any:
    """w(o, j) for j = g * gs + i, from the (possibly transposed) build-time arrays."""
    t = lay.tile
    if lay.bits == 0:
        v = ws[0]
        return v[o // t, i, o % t] if ovec else v[o, i]
    cb, zf, sc = ws
    if ovec:
        u = _unpack(lambda bi: cb[o // t, g, bi, o % t], i, lay.bits)
        return (u.astype("float32") - zf[o // t, g, o % t]) * sc[o // t, g, o % t]
    u = _unpack(lambda bi: cb[o, g, bi], i, lay.bits)
    return (u.astype("float32") - zf[o, g]) * sc[o, g]


def _column(lay: _Layer, ix: Any, o: Any, j: Any, ovec: bool) -> tuple[Any, Any]:
    """(base, code): the input column is base + code (CSR: base = column, code = 0)."""
    t = lay.tile
    if lay.n == 0:
        c = ix[o // t, j, o % t] if ovec else ix[o, j]
        return c.astype("int32"), None
    bits = index_bits(lay.m)
    code = _unpack((lambda bi: ix[o // t, bi, o % t]) if ovec else (lambda bi: ix[o, bi]), j, bits)
    return tirx.floordiv(j, lay.n) * lay.m, code


def _ovec_te(lay: _Layer, has_bias: bool) -> Any:
    """y[r, o] = sum_{g, i} w(o, j) * x[r, col(o, j)]   lanes over outputs"""

    def fn(x: Any, *arrs: Any) -> Any:
        nw = 1 if lay.bits == 0 else 3
        ws, ix = list(arrs[:nw]), arrs[nw]
        if lay.kx > lay.k_in:
            kin = lay.k_in
            x = te.compute(
                (lay.rows, lay.kx),
                lambda r, c: tirx.if_then_else(c < kin, x[r, tirx.min(c, kin - 1)], tirx.const(0.0, "float32")),
                name="xpad",
            )

        def xval(r: Any, o: Any, j: Any) -> Any:
            base, code = _column(lay, ix, o, j, True)
            if code is None:
                return x[r, base]
            if lay.m > 4:
                return x[r, base + code]
            # the M candidates are the same for every output lane: broadcast loads + selects, no gather
            val = x[r, base + (lay.m - 1)]
            for c in reversed(range(lay.m - 1)):
                val = tirx.Select(code == c, x[r, base + c], val)
            return val

        rg = te.reduce_axis((0, lay.groups), name="g")
        ri = te.reduce_axis((0, lay.gsp), name="i")
        y = te.compute(
            (lay.rows, lay.out),
            lambda r, o: te.sum(_weight(lay, ws, o, rg, ri, True) * xval(r, o, rg * lay.gs + ri), axis=[rg, ri]),
            name="y",
        )
        if has_bias:
            b = arrs[nw + 1]
            y = te.compute((lay.rows, lay.out), lambda r, o: y[r, o] + b[o], name="y_bias")
        return y

    return fn


def _rvec_te(lay: _Layer, has_bias: bool) -> Any:
    """xT = x^T (rows padded to 8);  yT[o, r] = sum_{g, i} w(o, j) * xT[col(o, j), r];  y = yT^T + b"""
    rp = math.ceil(lay.rows / ROW_LANES) * ROW_LANES

    def fn(x: Any, *arrs: Any) -> Any:
        nw = 1 if lay.bits == 0 else 3
        ws, ix = list(arrs[:nw]), arrs[nw]
        kin, rows = lay.k_in, lay.rows
        xt = te.compute(
            (lay.kx, rp),
            lambda c, r: tirx.if_then_else(
                tirx.all(c < kin, r < rows), x[tirx.min(r, rows - 1), tirx.min(c, kin - 1)], tirx.const(0.0, "float32")
            ),
            name="xt",
        )

        def xval(o: Any, j: Any, r: Any) -> Any:
            base, code = _column(lay, ix, o, j, False)
            return xt[base if code is None else base + code, r]

        rg = te.reduce_axis((0, lay.groups), name="g")
        ri = te.reduce_axis((0, lay.gsp), name="i")
        yt = te.compute(
            (lay.out, rp),
            lambda o, r: te.sum(_weight(lay, ws, o, rg, ri, False) * xval(o, rg * lay.gs + ri, r), axis=[rg, ri]),
            name="yt",
        )
        if has_bias:
            b = arrs[nw + 1]
            return te.compute((rows, lay.out), lambda r, o: yt[o, r] + b[o], name="y_out")
        return te.compute((rows, lay.out), lambda r, o: yt[o, r], name="y_out")

    return fn


# ----------------------------------------------------------------------------- schedules


def _ext(sch: Any, loop: Any) -> int:
    return int(sch.get(loop).extent)


def _divisor(n: int, cands: tuple[int, ...]) -> int:
    return next((c for c in cands if n % c == 0), 1)


def _elementwise(sch: Any, name: str) -> None:
    try:
        blk = sch.get_sblock(name)
    except Exception:
        return
    loops = sch.get_loops(blk)
    sch.parallel(loops[0])
    inner = _ext(sch, loops[-1])
    v = _divisor(inner, (8, 4))
    if len(loops) > 1 and v > 1:
        _, vi = sch.split(loops[-1], factors=[None, v])
        sch.vectorize(vi)


def _cpu_ovec_schedule(unroll: int, vec: int) -> Any:
    def schedule(sch: Any, target: Any) -> None:
        blk = sch.get_sblock("y")
        r, o, g, i = sch.get_loops(blk)
        oo, oi = sch.split(o, factors=[None, vec])  # vec = the storage tile: one contiguous stream per block
        # a register tile of rows reuses each decoded (weight, column) across mt rows
        mt = _divisor(_ext(sch, r), (4, 2))
        ro, rt = sch.split(r, factors=[None, mt])
        u = unroll if _ext(sch, i) % unroll == 0 else 1
        io, ii = sch.split(i, factors=[None, u])
        sch.reorder(oo, ro, g, io, ii, rt, oi)
        sch.parallel(oo)
        if u > 1:
            sch.unroll(ii)
        if mt > 1:
            sch.unroll(rt)
        if vec > 1:
            sch.vectorize(oi)
        init = sch.decompose_reduction(blk, g)
        if vec > 1:
            sch.vectorize(sch.get_loops(init)[-1])
        _elementwise(sch, "xpad")
        _elementwise(sch, "y_bias")

    return schedule


def _cpu_rvec_schedule(unroll: int) -> Any:
    def schedule(sch: Any, target: Any) -> None:
        xt = sch.get_sblock("xt")
        c, r = sch.get_loops(xt)
        sch.parallel(c)
        _, rv = sch.split(r, factors=[None, ROW_LANES])
        sch.vectorize(rv)
        blk = sch.get_sblock("yt")
        o, r, g, i = sch.get_loops(blk)
        nvec = _divisor(_ext(sch, r) // ROW_LANES, (4, 2))
        ot = _divisor(_ext(sch, o), (8 // nvec, 2))
        oo, oi = sch.split(o, factors=[None, ot])
        ro, rvo, rv = sch.split(r, factors=[None, nvec, ROW_LANES])
        u = unroll if _ext(sch, i) % unroll == 0 else 1
        io, ii = sch.split(i, factors=[None, u])
        sch.reorder(oo, ro, g, io, ii, oi, rvo, rv)
        sch.parallel(oo)
        if u > 1:
            sch.unroll(ii)
        sch.unroll(oi)
        sch.unroll(rvo)
        sch.vectorize(rv)
        init = sch.decompose_reduction(blk, g)
        sch.vectorize(sch.get_loops(init)[-1])
        _elementwise(sch, "y_out")

    return schedule


def _gpu_schedule(sch: Any, target: Any) -> None:
    """One thread per output element of every block (the reduction serial per thread)."""
    for name in ("xpad", "xt", "y", "yt", "y_bias", "y_out"):
        try:
            blk = sch.get_sblock(name)
        except Exception:
            continue
        loops = sch.get_loops(blk)
        fused = sch.fuse(loops[0], loops[1])
        bx, tx = sch.split(fused, factors=[None, 128])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")


# ----------------------------------------------------------------------------- emission


def _unroll(lay: _Layer) -> int:
    per = [8 // b for b in ((lay.bits,) if lay.bits else ()) + ((index_bits(lay.m),) if lay.n else ()) if b in (1, 2, 4)]
    return math.lcm(*per) if per else 1


def _emit(ctx: LowerContext, node: Node, args: Args, b_slot: int, lay: _Layer, arrs: _Arrays, kind: str) -> Any:
    x = args[0]
    bias = args[b_slot] if len(args) > b_slot else None
    if ctx.dtype(x) != "float32":
        x = ctx.emit(R.astype(x, "float32"))
    shp = ctx.shape(x)
    rows = math.prod(shp[:-1])
    if len(shp) != 2:
        x = ctx.emit(R.reshape(x, (rows, shp[-1])))
    lay = _Layer(**{**lay.__dict__, "rows": rows})
    rvec = lay.row_lanes and ctx.target == "llvm"
    if rvec:
        ws, ix = arrs.weights, arrs.cols
    else:
        # lanes over outputs: tiles of `tile` outputs become the last (contiguous) axis, and each
        # tile's data is one contiguous stream ([O / tile, ..., tile]; a plain [..., O] layout
        # would stride by O elements per position, which defeats the hardware prefetcher)
        tile = _divisor(lay.out, (16, 8, 4))
        lay = _Layer(**{**lay.__dict__, "tile": tile})

        def tiled(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(lay.out // tile, tile, *t.shape[1:]).movedim(1, -1).contiguous()

        ws, ix = [tiled(t) for t in arrs.weights], tiled(arrs.cols)
    ins = [x] + [ctx.const(t, f"{node.name}.{kind}{k}") for k, t in enumerate(ws)] + [ctx.const(ix, f"{node.name}.cols")]
    if bias is not None:
        ins.append(bias if ctx.dtype(bias) == "float32" else ctx.emit(R.astype(bias, "float32")))
    name = f"spmm_{kind}_rvec" if rvec else f"spmm_{kind}_ovec{lay.tile}x"
    if ctx.target == "llvm":
        ctx.schedule_hint(name, schedule=_cpu_rvec_schedule(_unroll(lay)) if rvec else _cpu_ovec_schedule(_unroll(lay), lay.tile))
    else:
        ctx.schedule_hint(name, schedule=_gpu_schedule)
    te_fn = (_rvec_te if rvec else _ovec_te)(lay, bias is not None)
    y = ctx.emit_te(te_fn, *ins, primfunc_name_hint=name)
    if len(shp) != 2:
        y = ctx.emit(R.reshape(y, (*shp[:-1], lay.out)))
    want = node.output.dtype
    return y if want == "float32" else ctx.emit(R.astype(y, want))


def _kx(k_in: int, n: int, m: int, jp: int) -> int:
    return max(k_in, ((jp - 1) // n) * m + m) if n else k_in


# N:M kernels are llvm-only for now: their CUDA build compiles but crashed the process at the
# first call on an H100 (session 2, cause not found), so cuda gets a clear LoweringError instead.
NM_TARGETS = ("llvm",)


@register_lowering("nm_linear", target=NM_TARGETS)
def _nm_linear(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y[r, o] = sum_j values[o, j] * x[r, (j // N) * M + idx[o, j]] + b[o]   reading packed indices"""
    n, m, k_in = int(node.attrs["n"]), int(node.attrs["m"]), int(node.attrs["in_features"])
    vv, iv = node.inputs[1], node.inputs[2]
    assert vv is not None and iv is not None
    out, kk = vv.shape
    idx = unpack_bits(ctx.value(iv), index_bits(m), (out, kk)).to(torch.int64)  # type: ignore[arg-type]
    lay = _Layer(0, out, k_in, k_in, 1, kk, kk, n, m, 0, 1)
    lay = _Layer(**{**lay.__dict__, "unroll": _unroll(lay)})
    arrs = _Arrays([ctx.value(vv).to(torch.float32)], _nm_index_bytes(idx, m, kk))  # type: ignore[union-attr]
    return _emit(ctx, node, args, 3, lay, arrs, f"nm{n}x{m}")


@register_lowering("nm_qlinear", target=NM_TARGETS)
def _nm_qlinear(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y[r, o] = sum_{g, i} (u[o, j] - z[o, g]) * s[o, g] * x[r, (j // N) * M + idx[o, j]] + b[o]   (j = g * gs + i)"""
    a = node.attrs
    n, m, k_in, bits = int(a["n"]), int(a["m"]), int(a["in_features"]), int(a["bits"])
    out, kk = (int(d) for d in a["shape"])
    iv = node.inputs[4]
    weights, ng, gs, gsp = _quant_arrays(ctx, node)
    jp = (ng - 1) * gs + gsp
    idx = unpack_bits(ctx.value(iv), index_bits(m), (out, kk)).to(torch.int64)  # type: ignore[arg-type]
    lay = _Layer(0, out, k_in, _kx(k_in, n, m, jp), ng, gs, gsp, n, m, bits, 1)
    lay = _Layer(**{**lay.__dict__, "unroll": _unroll(lay)})
    return _emit(ctx, node, args, 5, lay, _Arrays(weights, _nm_index_bytes(idx, m, jp)), f"nm{n}x{m}_w{bits}")


@register_lowering("sparse_linear")
def _sparse_linear(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y[r, o] = sum_j values[o, j] * x[r, cols[o, j]] + b[o]   (row-padded CSR)"""
    vv, cv = node.inputs[1], node.inputs[2]
    assert vv is not None and cv is not None
    out, kk = vv.shape
    k_in = int(node.attrs["in_features"])
    lay = _Layer(0, out, k_in, k_in, 1, kk, kk, 0, 0, 0, 1)
    arrs = _Arrays([ctx.value(vv).to(torch.float32)], ctx.value(cv).contiguous())  # type: ignore[union-attr]
    return _emit(ctx, node, args, 3, lay, arrs, "csr")
