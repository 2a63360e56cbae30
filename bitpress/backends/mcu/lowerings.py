"""C lowerings of each op for the MCU backend (register_mcu_lowering).

Integer path (bit-exact with bitpress.passes.quantize.ops): quantize_act at the input,
qlinear_w8a8 / qconv2d_w8a8 through the core's GEMV schedule (bitpress.schedules.mcu),
lut_int8, max_pool2d_int8, table_f32 and dequantize_act.  The x zero point is folded into the
bias at compile time: sum_k (x - xzp) w = sum_k x w - xzp sum_k w, exact in int32.

Float path (allow_float): linear, conv2d, weight-only qlinear (packed int2/int4/int8 codes,
float16 scales, unpacked in the kernel), binary_linear (bit-packed signs), elementwise,
pooling, layer_norm, softmax, matmul, permute/transpose.
"""

from __future__ import annotations

import math

import torch

from bitpress.backends.mcu.codegen import McuLowerContext, conv_geometry, register_mcu_lowering
from bitpress.compiler.ir import PACKED_BITS, Node
from bitpress.compiler.target import LoweringError
from bitpress.schedules.mcu import GemvSchedule, conv_schedule


def _fail(n: Node, why: str) -> LoweringError:
    return LoweringError(f"node {n.name} ({n.op}): {why}")


def _pair(v: object) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    assert isinstance(v, (list, tuple))
    return (int(v[0]), int(v[-1]))


# ----------------------------------------------------------------------------- int8 path


@register_mcu_lowering("quantize_act")
def _quantize(ctx: McuLowerContext, n: Node) -> str:
    x = n.inputs[0]
    assert x is not None
    s = float(torch.tensor(n.attrs["scale"], dtype=torch.float32))
    return (
        f"    bp_quantize_f32_s8({ctx.ptr(x)}, {ctx.ptr(n.output)}, {x.numel}, {float(s).hex()}f, {float(int(n.attrs['zero_point']))!r}f);"
    )


@register_mcu_lowering("dequantize_act")
def _dequantize(ctx: McuLowerContext, n: Node) -> str:
    x = n.inputs[0]
    assert x is not None
    s = float(torch.tensor(n.attrs["scale"], dtype=torch.float32))
    return f"    bp_dequantize_s8_f32({ctx.ptr(x)}, {ctx.ptr(n.output)}, {x.numel}, {s.hex()}f, {int(n.attrs['zero_point'])});"


@register_mcu_lowering("lut_int8")
def _lut(ctx: McuLowerContext, n: Node) -> str:
    x, t = n.inputs
    assert x is not None and t is not None
    return f"    bp_lut_s8({ctx.ptr(x)}, {ctx.ptr(n.output)}, {x.numel}, {ctx.ptr(t)});"


@register_mcu_lowering("table_f32")
def _table(ctx: McuLowerContext, n: Node) -> str:
    x, t = n.inputs
    assert x is not None and t is not None
    return f"    {{ const int8_t *x = {ctx.ptr(x)}; float *y = {ctx.ptr(n.output)};\n      for (int i = 0; i < {x.numel}; i++) y[i] = {ctx.ptr(t)}[(uint8_t)x[i]]; }}"


def _pool_args(n: Node) -> str:
    x = n.inputs[0]
    assert x is not None
    ks = _pair(n.attrs["kernel_size"])
    g = conv_geometry(n, x, ks)
    return (
        f"{g['N'] * g['C']}, {g['H']}, {g['W']}, {g['OH']}, {g['OW']}, {g['kh']}, {g['kw']}, {g['sh']}, {g['sw']}, {g['ph']}, {g['pw']}, "
        f"{g['dh']}, {g['dw']}"
    )


@register_mcu_lowering("max_pool2d_int8")
def _maxpool_s8(ctx: McuLowerContext, n: Node) -> str:
    return f"    bp_maxpool_s8({ctx.ptr(n.inputs[0])}, {ctx.ptr(n.output)}, {_pool_args(n)});"


def _requant_consts(ctx: McuLowerContext, n: Node, w2: torch.Tensor, sched: GemvSchedule | None = None) -> tuple[str, str, str, str]:
    """Arrays for weights (in the schedule's layout), folded bias, multiplier and shift."""
    _, w, m, r, b = (n.inputs + [None] * 5)[:5]
    assert w is not None and m is not None and r is not None
    xzp = int(n.attrs["x_zero_point"])
    bias = (b.value.to(torch.int64) if b is not None else torch.zeros(w2.shape[0], dtype=torch.int64)) - xzp * w2.to(torch.int64).sum(1)
    if bias.abs().max() >= 2**31:
        raise _fail(n, "folded bias does not fit in int32")
    sched = sched or ctx.gemv
    wsym = ctx.array(sched.layout(w2), "int8_t", f"{w.name}.{sched.name}")
    nout = w2.shape[0]
    msym = ctx.array(m.value.reshape(-1).expand(nout) if m.value.numel() == 1 else m.value, "int32_t", m.name)
    rsym = ctx.array(r.value.reshape(-1).expand(nout) if r.value.numel() == 1 else r.value, "int32_t", r.name)
    bsym = ctx.array(bias.to(torch.int32), "int32_t", f"{n.name}.bias_folded")
    return wsym, bsym, msym, rsym


def _gemv_call(ctx: McuLowerContext, xexpr: str, k: int, syms: tuple[str, str, str, str], nout: int, yzp: int, yexpr: str, ys: int) -> str:
    wsym, bsym, msym, rsym = syms
    extra = ""
    if ctx.gemv.name == "mve-4row":  # vector requantization when every shift of the layer exceeds 32
        r = ctx.node.inputs[3] if ctx.node is not None else None
        extra = f", {int(r is not None and bool((r.value > 32).all()))}"
    return f"{ctx.gemv.kernel}({xexpr}, {k}, {wsym}, {nout}, {bsym}, {msym}, {rsym}, {yzp}, {yexpr}, {ys}{extra});"


@register_mcu_lowering("qlinear_w8a8")
def _qlinear_w8a8(ctx: McuLowerContext, n: Node) -> str:
    x, w = n.inputs[0], n.inputs[1]
    assert x is not None and w is not None
    nout, k = w.shape
    rows = x.numel // k
    syms = _requant_consts(ctx, n, w.value)
    yzp = int(n.attrs["out_zero_point"])
    n.meta["_mcu_macs"] = rows * nout * k
    n.meta["_mcu_schedule"] = ctx.gemv.name
    xp, yp = ctx.ptr(x), ctx.ptr(n.output)
    if ctx.gemv.expand:
        xs = ctx.new_scratch(ctx.gemv.x_scratch_bytes(k), "int16_t")
        inner = f"{ctx.gemv.expand}(x + r * {k}, {k}, xs);\n        " + _gemv_call(ctx, "xs", k, syms, nout, yzp, f"y + r * {nout}", 1)
        decl = f"int16_t *xs = {xs}; "
    else:
        inner = _gemv_call(ctx, f"x + r * {k}", k, syms, nout, yzp, f"y + r * {nout}", 1)
        decl = ""
    return f"    const int8_t *x = {xp}; int8_t *y = {yp}; {decl}\n    for (int r = 0; r < {rows}; r++) {{\n        {inner}\n    }}"


@register_mcu_lowering("qconv2d_w8a8")
def _qconv2d_w8a8(ctx: McuLowerContext, n: Node) -> str:
    x, w = n.inputs[0], n.inputs[1]
    assert x is not None and w is not None
    if int(n.attrs.get("groups", 1)) != 1:
        raise _fail(n, "grouped convolution has no MCU lowering")
    o, c, kh, kw = w.shape
    g = conv_geometry(n, x, (kh, kw))
    k = c * kh * kw
    sched = conv_schedule(ctx.gemv)
    wmat = w.value.reshape(o, k)
    kp = k
    if sched.name == "dsp-2x2" and k % 2:
        # one zero weight column makes K even (word-aligned 2-row blocks for the assembly loop); the
        # matching activation slot is never written, and anything times 0 adds nothing
        kp = k + 1
        wmat = torch.cat([wmat, torch.zeros(o, 1, dtype=wmat.dtype)], 1)
    syms = _requant_consts(ctx, n, wmat, sched)
    yzp, xzp = int(n.attrs["out_zero_point"]), int(n.attrs["x_zero_point"])
    p = g["OH"] * g["OW"]
    n.meta["_mcu_macs"] = g["N"] * o * p * k
    n.meta["_mcu_schedule"] = sched.name
    geo = f"{c}, {g['H']}, {g['W']}, (P) / {g['OW']}, (P) % {g['OW']}, {kh}, {kw}, {g['sh']}, {g['sw']}, {g['ph']}, {g['pw']}, {g['dh']}, {g['dw']}"
    head = (
        f"    for (int b = 0; b < {g['N']}; b++) {{\n"
        f"        const int8_t *xb = {ctx.ptr(x)} + b * {c * g['H'] * g['W']}; int8_t *yb = {ctx.ptr(n.output)} + b * {o * p};\n"
    )
    if sched.name == "dsp-2x2":
        k2 = -(-kp // 2) * 2  # pixel B's activations start 2 * k2 bytes after pixel A's (word aligned)
        buf = ctx.new_scratch(4 * k2, "int16_t")
        wsym, bsym, msym, rsym = syms
        col = f"bp_im2col_s16(xb, (BUF), {geo}, {xzp});"
        # the assembly kernel needs an offset LDRD can reach
        kern = f"bp_gemm_s8_dsp2x2_{2 * k2}" if 2 * k2 <= 1020 else None
        if kern:
            ctx.preamble.add(f"BP_DEFINE_GEMM_DSP2X2({2 * k2})")
            call = f"{kern}(xa, {kp}, {wsym}, {o}, {bsym}, {msym}, {rsym}, {yzp}, yb + p, yb + q, {p});"
        else:
            call = f"{sched.kernel}(xa, xc, {kp}, {wsym}, {o}, {bsym}, {msym}, {rsym}, {yzp}, yb + p, yb + q, {p});"
        return head + (
            f"        int16_t *xa = {buf}, *xc = xa + {k2};\n"
            f"        for (int p = 0; p < {p}; p += 2) {{\n"
            f"            const int q = p + 1 < {p} ? p + 1 : p;  /* an odd last pixel runs twice on the same data */\n"
            f"            {col.replace('(P)', 'p').replace('(BUF)', 'xa')}\n"
            f"            {col.replace('(P)', 'q').replace('(BUF)', 'xc')}\n"
            f"            {call}\n"
            f"        }}\n    }}"
        )
    patch = ctx.new_scratch(k, "int8_t")
    im2col = f"{'bp_im2col_s8_mve' if sched.name == 'mve-4row' else 'bp_im2col_s8'}(xb, patch, {geo}, {xzp});"
    head = f"    int8_t *patch = {patch};\n" + head
    if sched.expand:
        xs = ctx.new_scratch(sched.x_scratch_bytes(k), "int16_t")
        prep = f"int16_t *xs = {xs};"
        call = f"{sched.expand}(patch, {k}, xs); " + _gemv_call(ctx, "xs", k, syms, o, yzp, "yb + p", p)
    else:
        prep = ""
        call = _gemv_call(ctx, "patch", k, syms, o, yzp, "yb + p", p)
    return head + (
        f"        {prep}\n"
        f"        for (int p = 0; p < {p}; p++) {{\n"
        f"            {im2col.replace('(P)', 'p')}\n"
        f"            {call}\n"
        f"        }}\n    }}"
    )


# ----------------------------------------------------------------------------- float path


def _f32(n: Node) -> None:
    for v in (*n.inputs, *n.outputs):
        if v is not None and not v.is_const and v.dtype != "float32":
            raise _fail(n, f"the float path handles float32 only, {v.name} is {v.dtype}")


@register_mcu_lowering("linear", float_math=True)
def _linear(ctx: McuLowerContext, n: Node) -> str:
    _f32(n)
    x, w, b = ([*n.inputs, None])[:3]
    assert x is not None and w is not None
    if not w.is_const:
        raise _fail(n, "linear with a run-time weight: use matmul")
    nout, k = w.shape
    n.meta["_mcu_macs"] = x.numel // k * nout * k
    return f"    bp_linear_f32({ctx.ptr(x)}, {ctx.ptr(n.output)}, {x.numel // k}, {nout}, {k}, {ctx.ptr(w)}, {ctx.ptr(b)});"


@register_mcu_lowering("conv2d", float_math=True)
def _conv2d(ctx: McuLowerContext, n: Node) -> str:
    _f32(n)
    x, w, b = ([*n.inputs, None])[:3]
    assert x is not None and w is not None
    if int(n.attrs.get("groups", 1)) != 1 or not w.is_const:
        raise _fail(n, "only groups=1 convolutions with constant kernels have an MCU lowering")
    o, c, kh, kw = w.shape
    g = conv_geometry(n, x, (kh, kw))
    n.meta["_mcu_macs"] = g["N"] * o * g["OH"] * g["OW"] * c * kh * kw
    return (
        f"    bp_conv2d_f32({ctx.ptr(x)}, {ctx.ptr(n.output)}, {g['N']}, {c}, {g['H']}, {g['W']}, {o}, {g['OH']}, {g['OW']}, {kh}, {kw}, "
        f"{g['sh']}, {g['sw']}, {g['ph']}, {g['pw']}, {g['dh']}, {g['dw']}, {ctx.ptr(w)}, {ctx.ptr(b)});"
    )


@register_mcu_lowering("qlinear", float_math=True)
def _qlinear(ctx: McuLowerContext, n: Node) -> str:
    x, q, s, z, b = (n.inputs + [None] * 5)[:5]
    assert x is not None and q is not None and s is not None
    bits = int(n.attrs["bits"])
    if bits not in (2, 4, 8):
        raise _fail(n, f"{bits}-bit codes cross byte boundaries; the MCU kernel unpacks 2, 4 or 8 bits")
    nout, k = n.attrs["shape"]
    if x.dtype != "float32":
        raise _fail(n, f"the float path handles float32 activations only, got {x.dtype}")
    n.meta["_mcu_macs"] = x.numel // k * nout * k
    qsym = ctx.const(q) if q.dtype in PACKED_BITS else ctx.array(q.value.view(torch.uint8).reshape(-1), "uint8_t", q.name)
    ssym = ctx.array(s.value.to(torch.float16), "__fp16", s.name)
    zsym = "0" if z is None else (ctx.const(z) if z.dtype in PACKED_BITS else ctx.array(z.value.to(torch.uint8), "uint8_t", z.name))
    signed = 1 if n.attrs.get("signed", True) else 0
    return (
        f"    bp_qlinear_f32({ctx.ptr(x)}, {ctx.ptr(n.output)}, {x.numel // k}, {nout}, {k}, {qsym}, {bits}, {signed}, {ssym}, "
        f"{s.shape[0]}, {zsym}, {int(n.attrs['group_size'])}, {ctx.ptr(b)});"
    )


@register_mcu_lowering("binary_linear", float_math=True)
def _binary_linear(ctx: McuLowerContext, n: Node) -> str:
    x, signs, scales, b = (n.inputs + [None] * 4)[:4]
    assert x is not None and signs is not None and scales is not None
    a = n.attrs
    k, nout = int(a["in_features"]), int(a["out_features"])
    n.meta["_mcu_macs"] = x.numel // k * nout * k * int(a.get("bases", 1))
    act = {"none": 0, "sign": 1}.get(str(a.get("act", "none")))
    if act is None:
        raise _fail(n, f"activation binarization {a.get('act')!r} has no MCU lowering")
    return (
        f"    bp_binary_linear_f32({ctx.ptr(x)}, {ctx.ptr(n.output)}, {x.numel // k}, {nout}, {k}, {ctx.const(signs)}, "
        f"{ctx.array(scales.value.to(torch.float32), 'float', scales.name)}, {int(a.get('bases', 1))}, {int(a.get('group_size', 0))}, "
        f"{act}, {ctx.ptr(b)});"
    )


_UNARY_C = {
    "relu": "v > 0.0f ? v : 0.0f",
    "gelu": "0.5f * v * (1.0f + erff(v * 0x1.6a09e6p-1f))",
    "sigmoid": "1.0f / (1.0f + expf(-v))",
    "tanh": "tanhf(v)",
    "silu": "v / (1.0f + expf(-v))",
    "neg": "-v",
    "abs": "fabsf(v)",
    "exp": "expf(v)",
    "sqrt": "sqrtf(v)",
    "rsqrt": "1.0f / sqrtf(v)",
}


@register_mcu_lowering(*_UNARY_C, float_math=True)
def _unary(ctx: McuLowerContext, n: Node) -> str:
    _f32(n)
    if n.op == "gelu" and n.attrs.get("approximate", "none") != "none":
        expr = "0.5f * v * (1.0f + tanhf(0x1.988454p-1f * (v + 0.044715f * v * v * v)))"
    else:
        expr = _UNARY_C[n.op]
    x = n.inputs[0]
    assert x is not None
    return f"    {{ const float *x = {ctx.ptr(x)}; float *y = {ctx.ptr(n.output)};\n      for (int i = 0; i < {x.numel}; i++) {{ float v = x[i]; y[i] = {expr}; }} }}"


_BINARY_C = {"add": "+", "sub": "-", "mul": "*", "div": "/"}


def _bcast_strides(shape: tuple[int, ...], out: tuple[int, ...]) -> list[int]:
    shape = (1,) * (len(out) - len(shape)) + tuple(shape)
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(0 if d == 1 else acc)
        acc *= d
    return list(reversed(strides))


def _nested(out: tuple[int, ...], offs: dict[str, list[int]], stmt: str) -> str:
    """Nested loops over `out` with running offsets for each operand (strides in elements)."""
    if not out:
        return "    { " + stmt.replace("@o", "0").replace("@a", "0").replace("@b", "0") + " }"
    idx = [f"i{d}" for d in range(len(out))]
    code, ind = [], "    "
    for d, size in enumerate(out):
        code.append(f"{ind}for (int {idx[d]} = 0; {idx[d]} < {size}; {idx[d]}++)")
        ind += "  "
    exprs = {k: " + ".join(f"{idx[d]} * {s}" for d, s in enumerate(v) if s) or "0" for k, v in offs.items()}
    for k, e in exprs.items():
        stmt = stmt.replace(f"@{k}", f"({e})")
    code.append(f"{ind}{{ {stmt} }}")
    return "\n".join(code)


def _contig(shape: tuple[int, ...]) -> list[int]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return list(reversed(out))


@register_mcu_lowering(*_BINARY_C, float_math=True)
def _binary(ctx: McuLowerContext, n: Node) -> str:
    _f32(n)
    a, b = n.inputs
    assert a is not None and b is not None
    out = n.output.shape
    body = _nested(
        out,
        {"o": _contig(out), "a": _bcast_strides(a.shape, out), "b": _bcast_strides(b.shape, out)},
        f"y[@o] = a[@a] {_BINARY_C[n.op]} b[@b];",
    )
    return f"    {{ const float *a = {ctx.ptr(a)}; const float *b = {ctx.ptr(b)}; float *y = {ctx.ptr(n.output)};\n{body} }}"


@register_mcu_lowering("permute", "transpose", float_math=False)
def _permute(ctx: McuLowerContext, n: Node) -> str:
    x = n.inputs[0]
    assert x is not None
    nd = x.ndim
    if n.op == "transpose":
        perm = list(range(nd))
        d0, d1 = int(n.attrs["dim0"]) % nd, int(n.attrs["dim1"]) % nd
        perm[d0], perm[d1] = perm[d1], perm[d0]
    else:
        perm = [int(d) % nd for d in n.attrs["dims"]]
    xs = _contig(x.shape)
    body = _nested(n.output.shape, {"o": _contig(n.output.shape), "a": [xs[p] for p in perm]}, "y[@o] = a[@a];")
    ct = {"float32": "float", "int8": "int8_t", "int32": "int32_t"}.get(x.dtype)
    if ct is None:
        raise _fail(n, f"dtype {x.dtype} has no MCU lowering")
    return f"    {{ const {ct} *a = {ctx.ptr(x)}; {ct} *y = {ctx.ptr(n.output)};\n{body} }}"


@register_mcu_lowering("max_pool2d", float_math=True)
def _maxpool_f32(ctx: McuLowerContext, n: Node) -> str:
    _f32(n)
    return f"    bp_maxpool_f32({ctx.ptr(n.inputs[0])}, {ctx.ptr(n.output)}, {_pool_args(n)});"


@register_mcu_lowering("avg_pool2d", float_math=True)
def _avgpool_f32(ctx: McuLowerContext, n: Node) -> str:
    _f32(n)
    x = n.inputs[0]
    assert x is not None
    ks = _pair(n.attrs["kernel_size"])
    g = conv_geometry(n, x, ks)
    inc = 1 if n.attrs.get("count_include_pad", True) else 0
    div = int(n.attrs.get("divisor_override") or 0)
    return (
        f"    bp_avgpool_f32({ctx.ptr(x)}, {ctx.ptr(n.output)}, {g['N'] * g['C']}, {g['H']}, {g['W']}, {g['OH']}, {g['OW']}, "
        f"{g['kh']}, {g['kw']}, {g['sh']}, {g['sw']}, {g['ph']}, {g['pw']}, {inc}, {div});"
    )


@register_mcu_lowering("layer_norm", float_math=True)
def _layer_norm(ctx: McuLowerContext, n: Node) -> str:
    _f32(n)
    x, w, b = (n.inputs + [None] * 3)[:3]
    assert x is not None
    shape = n.attrs.get("normalized_shape") or [x.shape[-1]]
    d = math.prod(shape)
    return (
        f"    bp_layer_norm_f32({ctx.ptr(x)}, {ctx.ptr(n.output)}, {x.numel // d}, {d}, {ctx.ptr(w)}, {ctx.ptr(b)}, "
        f"{float(torch.tensor(n.attrs.get('eps', 1e-5), dtype=torch.float32)).hex()}f);"
    )


@register_mcu_lowering("softmax", float_math=True)
def _softmax(ctx: McuLowerContext, n: Node) -> str:
    _f32(n)
    x = n.inputs[0]
    assert x is not None
    dim = int(n.attrs.get("dim", -1)) % x.ndim
    outer, inner = math.prod(x.shape[:dim]), math.prod(x.shape[dim + 1 :])
    return f"    bp_softmax_f32({ctx.ptr(x)}, {ctx.ptr(n.output)}, {outer}, {x.shape[dim]}, {inner});"


@register_mcu_lowering("matmul", float_math=True)
def _matmul(ctx: McuLowerContext, n: Node) -> str:
    _f32(n)
    a, b = n.inputs
    assert a is not None and b is not None
    if a.ndim < 2 or b.ndim < 2:
        raise _fail(n, "matmul of vectors has no MCU lowering (reshape to 2-D)")
    m, k = a.shape[-2:]
    nn = b.shape[-1]
    out = n.output.shape
    nb = math.prod(out[:-2])
    sa = m * k if math.prod(a.shape[:-2]) == nb and nb > 1 else 0
    sb = k * nn if math.prod(b.shape[:-2]) == nb and nb > 1 else 0
    if (math.prod(a.shape[:-2]) not in (1, nb)) or (math.prod(b.shape[:-2]) not in (1, nb)):
        raise _fail(n, "matmul broadcasting over partial batch dims has no MCU lowering")
    n.meta["_mcu_macs"] = nb * m * k * nn
    return f"    bp_matmul_f32({ctx.ptr(a)}, {ctx.ptr(b)}, {ctx.ptr(n.output)}, {nb}, {sa}, {sb}, {m}, {k}, {nn});"
