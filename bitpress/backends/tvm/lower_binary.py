"""TVM (llvm) kernels for the binarize package's ops: packed signs, XNOR-popcount, shift-add.

Weights are re-laid out once at build time, still 1 bit per weight:

- float activations (`binary_linear`, `shiftadd_linear`, the binary half of
  `partial_binary_linear`): sign bits transposed to words `[bases, K, ceil(N/32)]`, so for
  one input column the signs of 32 consecutive outputs sit in one uint32; the kernel adds or
  subtracts x[i] into a vector of output accumulators per group (no multiply), then applies
  the group scale once per group (a float for binary, a power of two built from the int8
  exponent's bits for shift-add).
- binary activations (`binary_linear` with act="sign"): x is packed to sign words at run
  time, weights stay row-major words `[bases, N, ceil(K/32)]` (padding bits set so XNOR with
  x's zero padding never counts), and each group's dot product is 2 popcount(~(x ^ w)) - len.
- `shift_linear`: codes transposed to `[K, N]` packed along N; each term is x[i] times a
  power of two assembled from exponent bits ((127 + e) << 23 reinterpreted as float32).

Schedules (passed as hints): outputs split into vector-width tiles along N, the tile loop
parallel, group accumulators computed at the group loop and vectorized along N.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
from tvm import te, tirx
from tvm.relax import op as R

from bitpress.backends.tvm.lowering import LowerContext, register_lowering
from bitpress.compiler.ir import Node, unpack_bits

Args = list[Any]
_U32 = "uint32"


# ----------------------------------------------------------------------------- build-time layouts


def _bits_to_words(bits: torch.Tensor, pad_value: int = 0) -> torch.Tensor:
    """bool [..., L] -> int32-typed uint32 words [..., ceil(L/32)], bit b of word w = bits[..., 32 w + b]."""
    n = bits.shape[-1]
    nw = math.ceil(n / 32)
    pad = nw * 32 - n
    b = bits.to(torch.int64)
    if pad:
        b = torch.cat([b, torch.full((*b.shape[:-1], pad), pad_value, dtype=torch.int64)], -1)
    b = b.reshape(*b.shape[:-1], nw, 32)
    words = (b << torch.arange(32, dtype=torch.int64)).sum(-1)
    return words.to(torch.uint32)


def _signs(node: Node, slot: int, shape: tuple[int, ...]) -> torch.Tensor:
    v = node.inputs[slot]
    assert v is not None and v.is_const
    return unpack_bits(v.value, 1, shape).bool()


def _lanes(n: int) -> int:
    for c in (16, 8, 4, 2):
        if n % c == 0:
            return c
    return 1


def _flatten(ctx: LowerContext, x: Any, k: int) -> tuple[Any, int]:
    shape = ctx.shape(x)
    m = math.prod(shape[:-1])
    if len(shape) != 2:
        x = ctx.emit(R.reshape(x, (m, k)))
    return x, m


def _unflatten(ctx: LowerContext, y: Any, node: Node) -> Any:
    shape = tuple(node.outputs[0].shape)
    return y if len(shape) == 2 else ctx.emit(R.reshape(y, shape))


def _pow2(e: Any) -> Any:
    """2^e as float32 from its exponent bits (e in [-126, 127]): a shift, no multiply or exp."""
    e = tirx.max(e.astype("int32"), tirx.const(-126, "int32"))  # below: 0 in float32 normal range
    bits = tirx.shift_left(e + tirx.const(127, "int32"), tirx.const(23, "int32"))
    return tirx.reinterpret("float32", bits.astype("int32"))


# ----------------------------------------------------------------------------- schedules


def _finish_others(sch: Any, mine: set[str]) -> None:
    """Epilogue/prologue blocks fused in (bias, activation): inline when possible, else parallel."""
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    for name in names:
        if name in mine:
            continue
        blk = sch.get_sblock(name)
        try:
            sch.compute_inline(blk)
            continue
        except Exception:
            pass
        try:
            sch.reverse_compute_inline(blk)
            continue
        except Exception:
            pass
        loops = sch.get_loops(blk)
        if loops:
            with contextlib.suppress(Exception):
                sch.parallel(loops[0])


def _grouped_schedule(acc_name: str, out_name: str, lanes: int, vector_acc: bool = True) -> Callable[[Any, Any], None]:
    """out[m, n] = sum_{k, g} scale * acc[m, k, g, n]: tile N by `lanes`, parallel tiles, acc at the group loop."""

    def sched(sch: Any, target: Any) -> None:
        out = sch.get_sblock(out_name)
        acc = sch.get_sblock(acc_name)
        loops = sch.get_loops(out)
        m, n, reds = loops[0], loops[1], loops[2:]
        no, ni = sch.split(n, [None, lanes])
        sch.reorder(m, no, *reds, ni)
        sch.parallel(sch.fuse(m, no))
        sch.compute_at(acc, reds[-1])
        al = sch.get_loops(acc)
        if vector_acc and lanes > 1:
            n1, jj = al[-2], al[-1]
            sch.reorder(jj, n1)
            sch.vectorize(n1)
            sch.decompose_reduction(acc, jj)
        if lanes > 1:
            sch.vectorize(ni)
        sch.decompose_reduction(out, reds[0])
        _finish_others(sch, {out_name, acc_name, acc_name + "_init", out_name + "_init"})

    return sched


# ----------------------------------------------------------------------------- kernels


def _sign_accumulate(x: Any, words: Any, K: int, gs: int, ng: int, N: int, bases: int, name: str) -> Any:
    """acc[m, k, g, n] = sum_{i in group g} (bit(k, i, n) ? x[m, i] : -x[m, i])   (adds and subtracts only)"""
    M = x.shape[0]
    j = te.reduce_axis((0, gs), "j")
    ragged = K % gs != 0

    def f(m: Any, k: Any, g: Any, n: Any) -> Any:
        i = g * gs + j
        if ragged:
            i = tirx.min(i, K - 1)
        bit = (words[k, i, n // 32] >> (n % 32).astype(_U32)) & tirx.const(1, _U32)
        v = tirx.Select(bit == tirx.const(1, _U32), x[m, i], -x[m, i])
        if ragged:
            v = tirx.Select(g * gs + j < K, v, tirx.const(0.0, "float32"))
        return te.sum(v, axis=j)

    return te.compute((M, bases, ng, N), f, name=name)


@register_lowering("binary_linear", target=("llvm",))
def _binary_linear(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = act(x) @ (sum_k s_k (2 B_k - 1))^T + b   (add/sub accumulation; XNOR-popcount when act='sign')"""
    a = node.attrs
    N, K, B = int(a["out_features"]), int(a["in_features"]), int(a.get("bases", 1))
    gs = int(a.get("group_size", 0)) or K
    ng = math.ceil(K / gs)
    bits = _signs(node, 1, (B, N, K))
    scales = ctx.value(node.inputs[2])
    assert scales is not None
    x, M = _flatten(ctx, args[0], K)
    b = args[3]
    lanes = _lanes(N)
    if a.get("act", "none") == "sign":
        return _unflatten(ctx, _xnor_linear(ctx, node, x, bits, scales, b, N, K, B, gs, ng), node)
    words = _bits_to_words(bits.transpose(1, 2))  # [B, K, NW]
    s_t = ctx.const(scales.float().permute(0, 2, 1).contiguous(), name=f"{node.name}.scales_t")  # [B, ng, N]

    def kernel(xx: Any, ww: Any, ss: Any, *bias: Any) -> Any:
        acc = _sign_accumulate(xx, ww, K, gs, ng, N, B, "bin_acc")
        rk, rg = te.reduce_axis((0, B), "rk"), te.reduce_axis((0, ng), "rg")
        out = te.compute((M, N), lambda m, n: te.sum(ss[rk, rg, n] * acc[m, rk, rg, n], axis=[rk, rg]), name="bin_out")
        if bias:
            return te.compute((M, N), lambda m, n: out[m, n] + bias[0][n], name="bin_bias")
        return out

    name = f"binary_linear_{_uid(node)}"
    ctx.schedule_hint(name, schedule=_grouped_schedule("bin_acc", "bin_out", lanes))
    w_expr = _words(ctx, words, node, "signs_t")
    y = ctx.emit_te(kernel, x, w_expr, s_t, *([b] if b is not None else []), primfunc_name_hint=name)
    return _unflatten(ctx, y, node)


def _xnor_linear(
    ctx: LowerContext, node: Node, x: Any, bits: torch.Tensor, scales: torch.Tensor, b: Any, N: int, K: int, B: int, gs: int, ng: int
) -> Any:
    if gs % 32 and gs != K:
        raise ValueError(f"binary activations need group_size 0 or a multiple of 32, got {gs}")
    KW = math.ceil(K / 32)
    wpg = KW if gs == K else gs // 32
    words = _bits_to_words(bits, pad_value=1)  # [B, N, KW]
    s_t = ctx.const(scales.float().permute(0, 2, 1).contiguous(), name=f"{node.name}.scales_t")  # [B, ng, N]
    M = ctx.shape(x)[0]

    def kernel(xx: Any, ww: Any, ss: Any, *bias: Any) -> Any:
        bb = te.reduce_axis((0, 32), "bb")

        def xbit(m: Any, w: Any) -> Any:
            i = tirx.min(w * 32 + bb, K - 1)
            on = tirx.all(w * 32 + bb < K, xx[m, i] >= tirx.const(0.0, "float32"))
            return te.sum(tirx.Select(on, tirx.const(1, _U32) << bb.astype(_U32), tirx.const(0, _U32)), axis=bb)

        xw = te.compute((M, KW), xbit, name="xnor_pack")
        ra = te.reduce_axis((0, K), "ra")
        asum = te.compute((M,), lambda m: te.sum(tirx.abs(xx[m, ra]), axis=ra), name="xnor_abssum")
        beta = te.compute((M,), lambda m: asum[m] / tirx.const(float(K), "float32"), name="xnor_beta")
        u = te.reduce_axis((0, wpg), "u")

        def cnt(m: Any, k: Any, g: Any, n: Any) -> Any:
            w = tirx.min(g * wpg + u, KW - 1)
            pc = tirx.popcount(~(xw[m, w] ^ ww[k, n, w])).astype("int32")
            return te.sum(tirx.Select(g * wpg + u < KW, pc, 0), axis=u)

        c = te.compute((M, B, ng, N), cnt, name="xnor_cnt")
        rk, rg = te.reduce_axis((0, B), "rk"), te.reduce_axis((0, ng), "rg")

        def outf(m: Any, n: Any) -> Any:
            glen = tirx.min(gs, K - rg * gs)
            return te.sum(ss[rk, rg, n] * (2 * c[m, rk, rg, n] - glen).astype("float32"), axis=[rk, rg])

        o = te.compute((M, N), outf, name="xnor_out")
        return te.compute((M, N), lambda m, n: beta[m] * o[m, n] + (bias[0][n] if bias else tirx.const(0.0, "float32")), name="xnor_scale")

    name = f"xnor_linear_{_uid(node)}"

    def sched(sch: Any, target: Any) -> None:
        out = sch.get_sblock("xnor_out")
        loops = sch.get_loops(out)
        m, n, reds = loops[0], loops[1], loops[2:]
        lanes = _lanes(N)
        no, ni = sch.split(n, [None, lanes])
        sch.reorder(m, no, *reds, ni)
        sch.parallel(sch.fuse(m, no))
        sch.compute_at(sch.get_sblock("xnor_cnt"), reds[-1])
        pk = sch.get_loops(sch.get_sblock("xnor_pack"))
        sch.parallel(pk[0])
        _finish_others(sch, {"xnor_out", "xnor_cnt", "xnor_pack"})

    ctx.schedule_hint(name, schedule=sched)
    return ctx.emit_te(kernel, x, _words(ctx, words, node, "signs_rows"), s_t, *([b] if b is not None else []), primfunc_name_hint=name)


@register_lowering("shiftadd_linear", target=("llvm",))
def _shiftadd_linear(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = x @ (sum_k 2^e_k (2 B_k - 1))^T + b   (adds/subtracts per group, one power-of-two scale per group)"""
    a = node.attrs
    N, K, B = int(a["out_features"]), int(a["in_features"]), int(a.get("bases", 1))
    gs = int(a.get("group_size", 0)) or K
    ng = math.ceil(K / gs)
    bits = _signs(node, 1, (B, N, K))
    exps = ctx.value(node.inputs[2])
    assert exps is not None
    x, M = _flatten(ctx, args[0], K)
    b = args[3]
    lanes = _lanes(N)
    words = _bits_to_words(bits.transpose(1, 2))
    e_t = ctx.const(exps.to(torch.int8).permute(0, 2, 1).contiguous(), name=f"{node.name}.exponents_t")  # [B, ng, N]

    def kernel(xx: Any, ww: Any, ee: Any, *bias: Any) -> Any:
        acc = _sign_accumulate(xx, ww, K, gs, ng, N, B, "sa_acc")
        rk, rg = te.reduce_axis((0, B), "rk"), te.reduce_axis((0, ng), "rg")
        out = te.compute((M, N), lambda m, n: te.sum(_pow2(ee[rk, rg, n]) * acc[m, rk, rg, n], axis=[rk, rg]), name="sa_out")
        if bias:
            return te.compute((M, N), lambda m, n: out[m, n] + bias[0][n], name="sa_bias")
        return out

    name = f"shiftadd_linear_{_uid(node)}"
    ctx.schedule_hint(name, schedule=_grouped_schedule("sa_acc", "sa_out", lanes))
    y = ctx.emit_te(kernel, x, _words(ctx, words, node, "signs_t"), e_t, *([b] if b is not None else []), primfunc_name_hint=name)
    return _unflatten(ctx, y, node)


@register_lowering("shift_linear", target=("llvm",))
def _shift_linear(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = x @ W^T + b   with W = (-1)^s 2^(base - c): each term x[i] * 2^-c, one 2^base per group"""
    a = node.attrs
    N, K, bits = int(a["out_features"]), int(a["in_features"]), int(a.get("bits", 4))
    gs = int(a.get("group_size", 0)) or K
    ng = math.ceil(K / gs)
    codes_v, base_v = node.inputs[1], node.inputs[2]
    assert codes_v is not None and base_v is not None
    codes = unpack_bits(codes_v.value, bits, (N, K)).to(torch.int64)  # [N, K]
    per = 8 // bits
    ct = codes.t().contiguous()  # [K, N]
    pad = (-N) % per
    if pad:
        ct = torch.cat([ct, torch.zeros(K, pad, dtype=torch.int64)], 1)
    ct = ct.reshape(K, -1, per)
    packed = (ct << (torch.arange(per) * bits)).sum(-1).to(torch.uint8)  # [K, ceil(N/per)], packed along N
    base_t = ctx.const(base_v.value.to(torch.int8).t().contiguous(), name=f"{node.name}.base_t")  # [ng, N]
    x, M = _flatten(ctx, args[0], K)
    b = args[3]
    lanes = _lanes(N)
    mask = (1 << bits) - 1
    off_mask = (1 << (bits - 1)) - 1

    def kernel(xx: Any, cc: Any, be: Any, *bias: Any) -> Any:
        j = te.reduce_axis((0, gs), "j")
        ragged = K % gs != 0

        def accf(m: Any, g: Any, n: Any) -> Any:
            i = g * gs + j
            if ragged:
                i = tirx.min(i, K - 1)
            code = (cc[i, n // per].astype("int32") >> ((n % per) * bits)) & mask
            # x * 2^-c as x * (1 << (L - 1 - c)) with the 2^-(L-1) folded into the group's power of two
            mag = xx[m, i] * tirx.shift_left(tirx.const(1, "int32"), off_mask - (code & off_mask)).astype("float32")
            v = tirx.Select((code >> (bits - 1)) == 1, -mag, mag)
            if ragged:
                v = tirx.Select(g * gs + j < K, v, tirx.const(0.0, "float32"))
            return te.sum(v, axis=j)

        acc = te.compute((M, ng, N), accf, name="sh_acc")
        rg = te.reduce_axis((0, ng), "rg")
        out = te.compute((M, N), lambda m, n: te.sum(_pow2(be[rg, n].astype("int32") - off_mask) * acc[m, rg, n], axis=rg), name="sh_out")
        if bias:
            return te.compute((M, N), lambda m, n: out[m, n] + bias[0][n], name="sh_bias")
        return out

    name = f"shift_linear_{_uid(node)}"
    ctx.schedule_hint(name, schedule=_grouped_schedule("sh_acc", "sh_out", lanes))
    y = ctx.emit_te(
        kernel, x, ctx.const(packed, name=f"{node.name}.codes_t"), base_t, *([b] if b is not None else []), primfunc_name_hint=name
    )
    return _unflatten(ctx, y, node)


@register_lowering("partial_binary_linear", target=("llvm",))
def _partial_binary_linear(ctx: LowerContext, node: Node, args: Args) -> Any:
    """y = x @ (s (2 B - 1))^T + sum_j x[idx[n, j]] v[n, j] t[n] + b   (binary kernel + int8 salient gather)"""
    a = node.attrs
    N, K = int(a["out_features"]), int(a["in_features"])
    gs = int(a.get("group_size", 0)) or K
    ng = math.ceil(K / gs)
    bits = _signs(node, 1, (1, N, K))
    scales = ctx.value(node.inputs[2])
    assert scales is not None
    x, M = _flatten(ctx, args[0], K)
    vals, idx, vs, b = args[3], args[4], args[5], args[6]
    nsal = int(node.inputs[3].shape[1])  # type: ignore[union-attr]
    lanes = _lanes(N)
    words = _bits_to_words(bits.transpose(1, 2))
    s_t = ctx.const(scales.float()[None].permute(0, 2, 1).contiguous(), name=f"{node.name}.scales_t")

    def kernel(xx: Any, ww: Any, ss: Any, vv: Any, ii: Any, tt: Any, *bias: Any) -> Any:
        acc = _sign_accumulate(xx, ww, K, gs, ng, N, 1, "pb_acc")
        rg = te.reduce_axis((0, ng), "rg")
        out = te.compute((M, N), lambda m, n: te.sum(ss[0, rg, n] * acc[m, 0, rg, n], axis=rg), name="pb_out")
        r = te.reduce_axis((0, nsal), "r")
        sal = te.compute(
            (M, N), lambda m, n: te.sum(xx[m, ii[n, r].astype("int32")] * vv[n, r].astype("float32"), axis=r), name="pb_salient"
        )
        return te.compute(
            (M, N),
            lambda m, n: out[m, n] + sal[m, n] * tt[n] + (bias[0][n] if bias else tirx.const(0.0, "float32")),
            name="pb_sum",
        )

    name = f"partial_binary_linear_{_uid(node)}"

    def sched(sch: Any, target: Any) -> None:
        _grouped_schedule("pb_acc", "pb_out", lanes)(sch, target)

    ctx.schedule_hint(name, schedule=sched)
    y = ctx.emit_te(
        kernel, x, _words(ctx, words, node, "signs_t"), s_t, vals, idx, vs, *([b] if b is not None else []), primfunc_name_hint=name
    )
    return _unflatten(ctx, y, node)


# ----------------------------------------------------------------------------- helpers


def _uid(node: Node) -> str:
    return "".join(c if c.isalnum() else "_" for c in node.name)[-40:] or "n"


def _words(ctx: LowerContext, words: torch.Tensor, node: Node, what: str) -> Any:
    """uint32 sign words as a VM parameter (made once at build time)."""
    return ctx.const(words.to(torch.uint32), name=f"{node.name}.{what}")
