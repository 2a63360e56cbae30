"""int8 x int8 -> int32 GEMM on CPUs: weight layout, accumulation, micro-kernels and schedule.

The W8A8 lowerings (qlinear_w8a8, qconv2d_w8a8) build one accumulation

    acc[i, j] = sum_r u[i, r] * W[j, r]        u = x + 128 (uint8), W int8

from activations shifted to unsigned; the shift is taken back exactly with a per-channel
constant, sum_k (x - xzp) w = sum_k u w - (128 + xzp) sum_k w.  The weight is laid out for
the target's micro-kernel (`bitpress.schedules.isa.Int8Kernel`):

    W[Np / lanes, Kp / k, lanes, k]      (K and N zero-padded)

so one vector load is the `lanes x k` operand of one instruction, and the schedule
tensorizes the (lanes, k) inner loops into it:

- vnni-512 / vnni-256: vpdpbusd multiplies 4 unsigned x 4 signed bytes and adds the 4
  products into each int32 lane (exact);
- pmaddwd-512 / pmaddwd-256: the weight bytes are sign-extended to int16 (vpmovsxbw), the two
  activation bytes of a lane zero-extended and broadcast, and vpmaddwd adds 2 int16 products
  into each int32 lane (exact: |u w| <= 255 * 128, two of them fit an int32);
- generic: the same loops, left to LLVM's vectorizer.

Register tile: mi rows x nv vectors of int32 accumulators, sized from the target's number of
vector registers (32 on AVX-512, 16 on AVX2) so the tile, the nv weight vectors and the
broadcast operand stay in registers.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from bitpress.schedules.default import _extent, _root_blocks, same_write_shape

__all__ = ["INT8_ROWS", "int8_acc", "int8_gemm_schedule", "int8_weight", "register_tile"]

INT8_ROWS = 4  # row tile over a symbolic row count (the lowerings pad the rows to a multiple of it)


def int8_weight(w: torch.Tensor, xzp: int, lanes: int, k: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """(W [Np / lanes, Kp / k, lanes, k] int8, corr [Np] int32 = (128 + xzp) sum_k w, Kp, Np) for w [N, K]."""
    n, kk = w.shape
    kp, np_ = -(-kk // k) * k, -(-n // lanes) * lanes
    wp = torch.zeros(np_, kp, dtype=torch.int8)
    wp[:n, :kk] = w
    corr = (128 + xzp) * wp.to(torch.int32).sum(1)
    return wp.reshape(np_ // lanes, lanes, kp // k, k).permute(0, 2, 1, 3).contiguous(), corr.to(torch.int32), kp, np_


def int8_acc(xu: Any, wp: Any, m: Any, kp: int, np_: int, lanes: int, k: int) -> Any:
    """acc[i, j] = sum_r int32(xu[i, r]) * int32(W[j, r]) over the packed weight."""
    from tvm import te

    r = te.reduce_axis((0, kp), name="k")
    return te.compute(
        (m, np_),
        lambda i, j: te.sum(xu[i, r].astype("int32") * wp[j // lanes, r // k, j % lanes, r % k].astype("int32"), axis=r),
        name="acc",
    )


def _intrin(kernel: Any) -> str | None:
    """Register (once) and name the TensorIntrin of `kernel` (None: plain loops)."""
    if kernel.intrinsic is None:
        return None
    from tvm.s_tir import TensorIntrin

    from bitpress.schedules.tuning import fast_tvmscript

    name = f"bitpress_int8_{kernel.name.replace('-', '_')}"
    try:
        TensorIntrin.get(name)
        return name
    except Exception:
        pass
    from tvm.script import tirx as T

    lanes, k, llvm = kernel.lanes, kernel.k, kernel.intrinsic
    # (importing tvm.s_tir.tensor_intrin.x86 for its descriptions would parse every intrinsic
    # of every target: seconds of build time; TVM 0.27's dot_16x4_vnni also declares the
    # operands int32x16 where LLVM >= 20's vpdpbusd takes <64 x i8>)
    with fast_tvmscript():

        @T.prim_func(s_tir=True)
        def desc(
            a: T.Buffer((k,), "uint8", offset_factor=1),
            b: T.Buffer((lanes, k), "int8", offset_factor=1),
            c: T.Buffer((lanes,), "int32", offset_factor=1),
        ) -> None:
            with T.sblock("root"):
                T.reads(c[0:lanes], a[0:k], b[0:lanes, 0:k])
                T.writes(c[0:lanes])
                for i, kk in T.grid(lanes, k):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, kk])
                        c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")

        if k == 4:  # vpdpbusd: 4 activation bytes broadcast as one int32, 64 or 32 weight bytes

            @T.prim_func(s_tir=True)
            def impl(
                a: T.Buffer((k,), "uint8", offset_factor=1),
                b: T.Buffer((lanes, k), "int8", offset_factor=1),
                c: T.Buffer((lanes,), "int32", offset_factor=1),
            ) -> None:
                with T.sblock("root"):
                    T.reads(c[0:lanes], a[0:k], b[0:lanes, 0:k])
                    T.writes(c[0:lanes])
                    a_i32 = T.reinterpret(a.vload([0], "uint8x4"), dtype="int32")
                    c[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(llvm),
                        c.vload([0], dtype=f"int32x{lanes}"),
                        T.reinterpret(T.broadcast(a_i32, lanes), dtype=f"int8x{lanes * 4}"),
                        b.vload([0, 0], dtype=f"int8x{lanes * 4}"),
                        dtype=f"int32x{lanes}",
                    )

        else:  # vpmaddwd: 2 activation bytes zero-extended to an int16 pair, weights sign-extended

            @T.prim_func(s_tir=True)
            def impl(
                a: T.Buffer((k,), "uint8", offset_factor=1),
                b: T.Buffer((lanes, k), "int8", offset_factor=1),
                c: T.Buffer((lanes,), "int32", offset_factor=1),
            ) -> None:
                with T.sblock("root"):
                    T.reads(c[0:lanes], a[0:k], b[0:lanes, 0:k])
                    T.writes(c[0:lanes])
                    a_pair = T.reinterpret(T.Cast("int16x2", a.vload([0], "uint8x2")), dtype="int32")
                    c[T.ramp(T.int32(0), 1, lanes)] = c.vload([0], dtype=f"int32x{lanes}") + T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id(llvm),
                        T.reinterpret(T.broadcast(a_pair, lanes), dtype=f"int16x{lanes * 2}"),
                        T.Cast(f"int16x{lanes * 2}", b.vload([0, 0], dtype=f"int8x{lanes * 2}")),
                        dtype=f"int32x{lanes}",
                    )

    TensorIntrin.register(name, desc, impl)
    return name


def register_tile(m: int | None, vectors: int, registers: int) -> tuple[int, int]:
    """(mi rows, nv vectors) of int32 accumulators: mi * nv + nv + 2 <= registers, nv | vectors."""
    budget = registers - 4
    best = (1, 1)
    for nv in (4, 3, 2, 1):
        if vectors % nv:
            continue
        for mi in (8, 6, 4, 3, 2, 1):
            if mi * nv + nv > budget or (m is not None and m % mi):
                continue
            if mi * nv > best[0] * best[1]:
                best = (mi, nv)
            break
    return best


def int8_gemm_schedule(kernel: Any, registers: int, conv_width: int = 1, conv_channels: int = 1) -> Any:
    """parallel(n strips x row tiles) . k / kernel.k . unroll(mi, nv) . micro-kernel(lanes x k)

    Register tile mi rows x nv * lanes columns of int32 accumulators; each step loads nv
    weight vectors and broadcasts kernel.k activation bytes per row.
    """
    lanes, kb = kernel.lanes, kernel.k

    def schedule(sch: Any, target: Any) -> None:
        # operand rows in parallel; the row index arithmetic (im2col) stays outside the k loop
        if _has_block(sch, "xpad"):
            xp = sch.get_sblock("xpad")
            lp = sch.get_loops(xp)
            sch.parallel(sch.fuse(lp[0], lp[1]))
        for name in [n for n in ("xu", "patches") if _has_block(sch, n)]:
            rows, cols = sch.get_loops(sch.get_sblock(name))
            if name == "patches" and conv_width > 1:
                # rows = (image, output row) x output column: the simplifier then drops the
                # row's divisions, leaving only constant-divisor ones for (channel, ky, kx)
                rows, _ = sch.split(rows, factors=[None, conv_width])
            sch.parallel(rows)
            if name == "xu":
                sch.vectorize(cols)
            elif conv_channels > 1:
                _, ci = sch.split(cols, factors=[None, conv_channels])
                sch.vectorize(ci)
        acc = sch.get_sblock("acc")
        i, j, r = sch.get_loops(acc)
        m, np_ = _extent(sch, i), _extent(sch, j)
        assert np_ is not None
        if m is None:  # symbolic rows, padded to INT8_ROWS by the lowering
            nv = next(v for v in (4, 3, 2, 1) if (np_ // lanes) % v == 0 and INT8_ROWS * v + v <= registers - 4)
            mi = INT8_ROWS
        else:
            mi, nv = register_tile(m, np_ // lanes, registers)
        jo, jv, ji = sch.split(j, factors=[None, nv, lanes])
        io, ii = sch.split(i, factors=[None, mi])
        ro, ri = sch.split(r, factors=[None, kb])
        sch.reorder(jo, io, ro, ii, jv, ji, ri)
        tile = sch.cache_write(acc, 0, "global")
        outer = sch.fuse(jo, io)
        sch.parallel(outer)
        sch.reverse_compute_at(tile, outer, preserve_unit_loops=True)
        init = sch.decompose_reduction(acc, ro)
        sch.vectorize(sch.get_loops(init)[-1])
        sch.unroll(ii)
        sch.unroll(jv)
        intrin = _intrin(kernel)
        if intrin is not None:
            sch.tensorize(ji, intrin)
        else:  # plain widening multiply-adds over (lanes, k): unrolled, LLVM's SLP vectorizer
            sch.unroll(ji)
            sch.unroll(ri)
        sch.vectorize(sch.get_loops(tile)[-1])
        # requantize and whatever elementwise epilogue FuseOps appended (dequantize, relu, add,
        # the next quantize): one pass over the output, parallel rows, vectorized last axis
        blocks = _root_blocks(sch)
        names = [sch.get(b).name_hint for b in blocks]
        for b in blocks[names.index("requant") + 1 :]:
            if not same_write_shape(sch, b, blocks[names.index("requant")]):
                break  # a slicing epilogue stays a loop nest of its own (see default.cpu_gemm)
            with contextlib.suppress(Exception):
                sch.reverse_compute_inline(b)
        for b in _root_blocks(sch)[names.index("requant") :]:
            loops = sch.get_loops(b)
            if not loops:
                continue
            if len(loops) == 4:  # conv output (n, c, y, x): channels innermost, read acc rows contiguously
                nl, cl, yl, xl = loops
                sch.reorder(nl, yl, xl, cl)
                loops = [nl, yl, xl, cl]
            fused = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
            if len(loops) > 1:
                sch.parallel(fused)
                sch.vectorize(loops[-1])
            else:
                sch.parallel(fused)

    return schedule


def _has_block(sch: Any, name: str) -> bool:
    return any(sch.get(b).name_hint == name for b in _root_blocks(sch))


# ---------------------------------------------------------------------------- qlinear_dyn
# Signed int8 x int8 block dots for bitpress.formats.dynamic_int8: weight operand [lanes, 4]
# int8 per instruction (int4 codes unpacked in registers), 4 activation bytes broadcast.

DYN_KB = 4
DYN_ROWS = INT8_ROWS


def dyn_kernel(isa: Any) -> Any:
    """The signed int8 dot micro-kernel for `isa` (a CpuIsa; None: plain loops)."""
    from bitpress.schedules.isa import Int8Kernel

    if isa is not None and (isa.has("avxvnni") or isa.has("avx512vnni", "avx512vl")):
        return Int8Kernel("dyn-vnni256", 8, DYN_KB, "llvm.x86.avx512.vpdpbusd.256")
    if isa is not None and isa.has("avx2"):
        return Int8Kernel("dyn-avx2", 8, DYN_KB, "llvm.x86.avx2.pmadd.ub.sw")
    return Int8Kernel("dyn-generic", 8, DYN_KB, None)


def dyn_pack_weight(codes: torch.Tensor, bits: int, lanes: int) -> torch.Tensor:
    """Signed codes [N, K] -> the kernel's layout [Np / lanes, K / 4, lanes, 4] (int8), or for
    4-bit codes [Np / lanes, K / 4, 2 * lanes] bytes holding register positions t (low nibble)
    and t + 2 * lanes (high nibble) of each operand, codes offset by 8."""
    n, k = codes.shape
    np_ = -(-n // lanes) * lanes
    c = torch.zeros(np_, k, dtype=torch.int32)
    c[:n] = codes
    v = c.reshape(np_ // lanes, lanes, k // DYN_KB, DYN_KB).permute(0, 2, 1, 3)
    if bits == 8:
        return v.to(torch.int8).contiguous()
    half = 2 * lanes
    flat = (v + 8).reshape(np_ // lanes, k // DYN_KB, lanes * DYN_KB)
    return (flat[..., :half] | (flat[..., half:] << 4)).to(torch.uint8).contiguous()


def dyn_nibble(strip: Any, lane: Any, kk: Any, lanes: Any) -> Any:
    """The unsigned code (q + 8) of register position lane * 4 + kk from the operand's 2 * lanes bytes."""
    from tvm import tirx

    e = lane * DYN_KB + kk
    half = lanes * 2
    return tirx.bitwise_and(tirx.shift_right(strip[e % half], (e // half * 4).astype("uint8")), tirx.const(15, "uint8"))


def _dyn_intrin(kernel: Any, bits: int = 8) -> str | None:
    if kernel.intrinsic is None:
        return None
    from tvm.s_tir import TensorIntrin

    from bitpress.schedules.tuning import fast_tvmscript

    name = f"bitpress_{kernel.name.replace('-', '_')}_{bits}"
    try:
        TensorIntrin.get(name)
        return name
    except Exception:
        pass
    from tvm.script import tirx as T

    lanes, nb = kernel.lanes, kernel.lanes * DYN_KB
    vnni = "vpdpbusd" in kernel.intrinsic
    if bits == 4:
        return _dyn_intrin4(name, lanes, vnni)

    with fast_tvmscript():

        @T.prim_func(s_tir=True)
        def desc(
            a: T.Buffer((DYN_KB,), "int8", offset_factor=1),
            b: T.Buffer((lanes, DYN_KB), "int8", offset_factor=1),
            c: T.Buffer((lanes,), "int32", offset_factor=1),
        ) -> None:
            with T.sblock("root"):
                T.reads(c[0:lanes], a[0:DYN_KB], b[0:lanes, 0:DYN_KB])
                T.writes(c[0:lanes])
                for i, kk in T.grid(lanes, DYN_KB):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, kk])
                        c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")

        # |w| (unsigned) x sign(w) * a (signed): the products are those of w x a, and with
        # |w|, |a| <= 127 a pair of them never saturates vpmaddubsw's int16
        if vnni:

            @T.prim_func(s_tir=True)
            def impl(
                a: T.Buffer((DYN_KB,), "int8", offset_factor=1),
                b: T.Buffer((lanes, DYN_KB), "int8", offset_factor=1),
                c: T.Buffer((lanes,), "int32", offset_factor=1),
            ) -> None:
                with T.sblock("root"):
                    T.reads(c[0:lanes], a[0:DYN_KB], b[0:lanes, 0:DYN_KB])
                    T.writes(c[0:lanes])
                    w = b.vload([0, 0], dtype=f"int8x{nb}")
                    ab = T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], "int8x4"), dtype="int32"), lanes), dtype=f"int8x{nb}")
                    c[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.256"),
                        c.vload([0], dtype=f"int32x{lanes}"),
                        T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.abs"), w, T.bool(False), dtype=f"int8x{nb}"),
                        T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.psign.b"), ab, w, dtype=f"int8x{nb}"),
                        dtype=f"int32x{lanes}",
                    )

        else:

            @T.prim_func(s_tir=True)
            def impl(
                a: T.Buffer((DYN_KB,), "int8", offset_factor=1),
                b: T.Buffer((lanes, DYN_KB), "int8", offset_factor=1),
                c: T.Buffer((lanes,), "int32", offset_factor=1),
            ) -> None:
                with T.sblock("root"):
                    T.reads(c[0:lanes], a[0:DYN_KB], b[0:lanes, 0:DYN_KB])
                    T.writes(c[0:lanes])
                    w = b.vload([0, 0], dtype=f"int8x{nb}")
                    ab = T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], "int8x4"), dtype="int32"), lanes), dtype=f"int8x{nb}")
                    p16 = T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
                        T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.abs"), w, T.bool(False), dtype=f"int8x{nb}"),
                        T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.psign.b"), ab, w, dtype=f"int8x{nb}"),
                        dtype=f"int16x{lanes * 2}",
                    )
                    c[T.ramp(T.int32(0), 1, lanes)] = c.vload([0], dtype=f"int32x{lanes}") + T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                        p16,
                        T.broadcast(T.int16(1), lanes * 2),
                        dtype=f"int32x{lanes}",
                    )

    TensorIntrin.register(name, desc, impl)
    return name


def _dyn_intrin4(name: str, lanes: int, vnni: bool) -> str:
    """c[l] += sum_kk a[kk] * u[l, kk], u the nibbles of 2 * lanes packed bytes (unsigned, <= 15):
    vpmaddubsw(u, a) + vpmaddwd(., 1) (a pair <= 2 * 15 * 127: exact), or vpdpbusd(c, u, a)."""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    from bitpress.schedules.tuning import fast_tvmscript

    half, nb = 2 * lanes, lanes * DYN_KB
    with fast_tvmscript():

        @T.prim_func(s_tir=True)
        def desc(
            a: T.Buffer((DYN_KB,), "int8", offset_factor=1),
            b: T.Buffer((half,), "uint8", offset_factor=1),
            c: T.Buffer((lanes,), "int32", offset_factor=1),
        ) -> None:
            with T.sblock("root"):
                T.reads(c[0:lanes], a[0:DYN_KB], b[0:half])
                T.writes(c[0:lanes])
                for i, kk in T.grid(lanes, DYN_KB):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, kk])
                        c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(
                            T.bitwise_and(
                                T.shift_right(b[(vi * DYN_KB + vk) % half], T.cast((vi * DYN_KB + vk) // half * 4, "uint8")),
                                T.uint8(15),
                            ),
                            "int32",
                        )

        if vnni:

            @T.prim_func(s_tir=True)
            def impl(
                a: T.Buffer((DYN_KB,), "int8", offset_factor=1),
                b: T.Buffer((half,), "uint8", offset_factor=1),
                c: T.Buffer((lanes,), "int32", offset_factor=1),
            ) -> None:
                with T.sblock("root"):
                    T.reads(c[0:lanes], a[0:DYN_KB], b[0:half])
                    T.writes(c[0:lanes])
                    p = b.vload([0], dtype=f"uint8x{half}")
                    lo = T.bitwise_and(p, T.broadcast(T.uint8(15), half))
                    hi = T.bitwise_and(T.shift_right(p, T.broadcast(T.uint8(4), half)), T.broadcast(T.uint8(15), half))
                    u = T.Shuffle([lo, hi], list(range(nb)))
                    ab = T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], "int8x4"), dtype="int32"), lanes), dtype=f"int8x{nb}")
                    c[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.256"),
                        c.vload([0], dtype=f"int32x{lanes}"),
                        T.reinterpret(u, dtype=f"int8x{nb}"),
                        ab,
                        dtype=f"int32x{lanes}",
                    )

        else:

            @T.prim_func(s_tir=True)
            def impl(
                a: T.Buffer((DYN_KB,), "int8", offset_factor=1),
                b: T.Buffer((half,), "uint8", offset_factor=1),
                c: T.Buffer((lanes,), "int32", offset_factor=1),
            ) -> None:
                with T.sblock("root"):
                    T.reads(c[0:lanes], a[0:DYN_KB], b[0:half])
                    T.writes(c[0:lanes])
                    p = b.vload([0], dtype=f"uint8x{half}")
                    lo = T.bitwise_and(p, T.broadcast(T.uint8(15), half))
                    hi = T.bitwise_and(T.shift_right(p, T.broadcast(T.uint8(4), half)), T.broadcast(T.uint8(15), half))
                    u = T.Shuffle([lo, hi], list(range(nb)))
                    ab = T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], "int8x4"), dtype="int32"), lanes), dtype=f"int8x{nb}")
                    p16 = T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
                        T.reinterpret(u, dtype=f"int8x{nb}"),
                        ab,
                        dtype=f"int16x{lanes * 2}",
                    )
                    c[T.ramp(T.int32(0), 1, lanes)] = c.vload([0], dtype=f"int32x{lanes}") + T.call_llvm_pure_intrin(
                        T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                        p16,
                        T.broadcast(T.int16(1), lanes * 2),
                        dtype=f"int32x{lanes}",
                    )

    TensorIntrin.register(name, desc, impl)
    return name


def dyn_schedule(kernel: Any, registers: int, bits: int) -> Any:
    """parallel(n strips) . row tiles . blocks g . [int32 tile := 0 . k/4 . unroll(mi, nv) . dot] . y += tile * s_w

    The int32 block accumulators and the float row sums stay in registers; a 4-bit weight
    operand is unpacked (two 16-byte nibble loads, shift, mask, -8) just before its dot.
    """
    lanes = kernel.lanes

    def schedule(sch: Any, target: Any) -> None:
        # activation quantization: one pass per row
        sch.compute_inline(sch.get_sblock("sa"))
        sch.parallel(sch.get_loops(sch.get_sblock("amax"))[0])
        xq = sch.get_sblock("xq")
        xi, xk = sch.get_loops(xq)
        sch.parallel(xi)
        _, xv = sch.split(xk, factors=[None, DYN_KB])
        sch.vectorize(xv)
        y = sch.get_sblock("y")
        i, j, rg = sch.get_loops(y)
        m, np_ = _extent(sch, i), _extent(sch, j)
        assert np_ is not None
        if m is None:  # symbolic rows, padded to DYN_ROWS by the lowering
            nv = next(v for v in (4, 3, 2, 1) if (np_ // lanes) % v == 0 and DYN_ROWS * v + v <= registers - 6)
            mi = DYN_ROWS
        else:
            mi, nv = register_tile(m, np_ // lanes, registers - 2)
        jo, jv, ji = sch.split(j, factors=[None, nv, lanes])
        io, ii = sch.split(i, factors=[None, mi])
        sch.reorder(jo, io, rg, ii, jv, ji)
        outer = sch.fuse(jo, io)
        sch.parallel(outer)
        ytile = sch.cache_write(y, 0, "local")
        sch.reverse_compute_at(ytile, outer, preserve_unit_loops=True)
        acc = sch.get_sblock("acc")
        sch.compute_at(acc, rg, preserve_unit_loops=True)

        ai, ag, aj, ar = sch.get_loops(acc)[-4:]
        ajv, aji = sch.split(aj, factors=[nv, lanes])
        aro, ari = sch.split(ar, factors=[None, DYN_KB])
        sch.reorder(ag, aro, ai, ajv, aji, ari)
        if bits == 4:  # the per-block activation sums of the nibbles' offset
            sch.parallel(sch.get_loops(sch.get_sblock("xsum"))[0])
        ainit = sch.decompose_reduction(acc, aro)
        sch.vectorize(sch.get_loops(ainit)[-1])
        sch.unroll(ai)
        sch.unroll(ajv)
        intrin = _dyn_intrin(kernel, bits)
        if intrin is not None:
            sch.tensorize(aji, intrin)
        else:
            sch.unroll(aji)
            sch.unroll(ari)
        sch.unroll(ii)
        sch.unroll(jv)
        sch.vectorize(ji)
        yinit = sch.decompose_reduction(y, rg)
        sch.vectorize(sch.get_loops(yinit)[-1])
        sch.vectorize(sch.get_loops(ytile)[-1])
        out = sch.get_sblock("out")
        oi, oj = sch.get_loops(out)
        sch.parallel(oi)
        ext = _extent(sch, oj)
        if ext is not None and ext % lanes == 0:
            _, ov = sch.split(oj, factors=[None, lanes])
            sch.vectorize(ov)

    return schedule
