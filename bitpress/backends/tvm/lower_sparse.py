"""TVM lowerings of the pruning ops (bitpress/passes/prune/ops.py): gather kernels on the compressed form.

Both ops are one TE kernel over the stored (value, column) pairs, with no dense weight:

    y[r, o] = sum_k vt[k, o] * x[r, col(k, o)] + b[o]

* ``nm_linear``: col(k, o) = (k // N) * M + idx(k, o); the in-group indices stay packed
  (2 bits each for 2:4) and are re-laid out at build time as bytes [K / per, O] holding
  `per` consecutive k of one output o, so a byte load per lane and a shift+mask decode
  them without branches.
* ``sparse_linear`` (row-padded CSR): col(k, o) = cols_t[k, o], int16.

Values are stored transposed, [K, O], so for a fixed k the outputs are contiguous: the
CPU schedule splits o into vector lanes (vectorized: contiguous value loads, a gathered
x load), runs the k reduction outside the lanes, and parallelizes over blocks of o.
On CUDA one thread computes one output.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from tvm import te, tirx
from tvm.relax import op as R

from bitpress.backends.tvm.lowering import LowerContext, register_lowering
from bitpress.compiler.ir import Node, pack_bits, unpack_bits
from bitpress.passes.prune.ops import index_bits

Args = list[Any]


def _gather_te(rows: int, out: int, k: int, xval: Any, has_bias: bool) -> Any:
    def fn(x: Any, vt: Any, ix: Any, *rest: Any) -> Any:
        r = te.reduce_axis((0, k), name="k")
        y = te.compute((rows, out), lambda m, o: te.sum(vt[r, o] * xval(x, ix, m, r, o), axis=r), name="y")
        if has_bias:
            b = rest[0]
            y = te.compute((rows, out), lambda m, o: y[m, o] + b[o], name="y_bias")
        return y

    return fn


def _cpu_schedule(rows: int, out: int, lanes: int = 8) -> Any:
    def schedule(sch: Any, target: Any) -> None:
        blk = sch.get_sblock("y")
        m, o, k = sch.get_loops(blk)
        vec = next((f for f in (lanes * 2, lanes, 4) if out % f == 0), 1)
        oo, oi = sch.split(o, factors=[None, vec])
        # a register tile of rows reuses each decoded (value, index) pair across mi rows
        mt = next(f for f in (4, 2, 1) if rows % f == 0)
        mo, mi = sch.split(m, factors=[None, mt])
        sch.reorder(oo, mo, k, mi, oi)
        sch.parallel(oo)
        if mt > 1:
            sch.unroll(mi)
        if vec > 1:
            sch.vectorize(oi)
        init = sch.decompose_reduction(blk, k)
        if vec > 1:
            sch.vectorize(sch.get_loops(init)[-1])
        try:
            yb = sch.get_sblock("y_bias")
        except Exception:
            return
        loops = sch.get_loops(yb)
        sch.parallel(loops[0])
        if out % 8 == 0:
            _, inner = sch.split(loops[1], factors=[None, 8])
            sch.vectorize(inner)

    return schedule


def _gpu_schedule(sch: Any, target: Any) -> None:
    for name in ("y", "y_bias"):
        try:
            blk = sch.get_sblock(name)
        except Exception:
            continue
        loops = sch.get_loops(blk)
        fused = sch.fuse(loops[0], loops[1])
        bx, tx = sch.split(fused, factors=[None, 128])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")


def _emit(ctx: LowerContext, node: Node, args: Args, name: str, out: int, k: int, vt: torch.Tensor, ix: torch.Tensor, xval: Any) -> Any:
    x, b = args[0], (args[3] if len(args) > 3 else None)
    if ctx.dtype(x) != "float32":
        x = ctx.emit(R.astype(x, "float32"))
    shp = ctx.shape(x)
    rows = math.prod(shp[:-1])
    if len(shp) != 2:
        x = ctx.emit(R.reshape(x, (rows, shp[-1])))
    ins = [x, ctx.const(vt, f"{node.name}.values_t"), ctx.const(ix, f"{node.name}.index_t")]
    if b is not None:
        ins.append(b if ctx.dtype(b) == "float32" else ctx.emit(R.astype(b, "float32")))
    ctx.schedule_hint(name, schedule=_cpu_schedule(rows, out) if ctx.target == "llvm" else _gpu_schedule)
    y = ctx.emit_te(_gather_te(rows, out, k, xval, b is not None), *ins, primfunc_name_hint=name)
    if len(shp) != 2:
        y = ctx.emit(R.reshape(y, (*shp[:-1], out)))
    want = node.output.dtype
    return y if want == "float32" else ctx.emit(R.astype(y, want))


@register_lowering("nm_linear")
def _nm_linear(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y[r, o] = sum_k values[o, k] * x[r, (k // N) * M + idx[o, k]] + b[o]   reading packed indices"""
    n, m = int(node.attrs["n"]), int(node.attrs["m"])
    vv, iv = node.inputs[1], node.inputs[2]
    assert vv is not None and iv is not None
    out, k = vv.shape
    bits = index_bits(m)
    idx = unpack_bits(ctx.value(iv), bits, (out, k)).to(torch.int64)  # type: ignore[arg-type]
    per = 8 // bits if bits in (1, 2, 4) else 1  # 3-bit codes: one per byte
    kp = math.ceil(k / per) * per
    idx_p = torch.zeros(out, kp, dtype=torch.int64)
    idx_p[:, :k] = idx
    # byte [j, o] holds the codes of k = j*per .. j*per+per-1 of output o, low bits first
    by = pack_bits(idx_p.reshape(out, kp // per, per), bits if per > 1 else 8).reshape(out, kp // per) if per > 1 else idx_p.to(torch.uint8)
    ix = by.t().contiguous()
    vt = ctx.value(vv).to(torch.float32).t().contiguous()  # type: ignore[union-attr]

    def xval(x: Any, ixb: Any, row: Any, r: Any, o: Any) -> Any:
        if per == 1:
            code = ixb[r, o].astype("int32")
        else:
            byte = ixb[tirx.floordiv(r, per), o].astype("int32")
            code = tirx.bitwise_and(tirx.shift_right(byte, tirx.floormod(r, per) * bits), (1 << bits) - 1)
        base = tirx.floordiv(r, n) * m
        if m > 4:
            return x[row, base + code]
        # small groups: the M candidates are the same for every output lane (broadcast loads),
        # so a select chain replaces a per-lane gather
        val = x[row, base + (m - 1)]
        for c in reversed(range(m - 1)):
            val = tirx.Select(code == c, x[row, base + c], val)
        return val

    return _emit(ctx, node, args, f"nm{n}x{m}_linear", out, k, vt, ix, xval)


@register_lowering("sparse_linear")
def _sparse_linear(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y[r, o] = sum_k values[o, k] * x[r, cols[o, k]] + b[o]   (row-padded CSR)"""
    vv, cv = node.inputs[1], node.inputs[2]
    assert vv is not None and cv is not None
    out, k = vv.shape
    vt = ctx.value(vv).to(torch.float32).t().contiguous()  # type: ignore[union-attr]
    ct = ctx.value(cv).t().contiguous()  # type: ignore[union-attr]

    def xval(x: Any, cols: Any, row: Any, r: Any, o: Any) -> Any:
        return x[row, cols[r, o].astype("int32")]

    return _emit(ctx, node, args, "csr_linear", out, k, vt, ct, xval)
