"""The int8 layers as TVM kernels: TE computes with the quantized semantics, scheduled for the core
(bitpress.schedules.mcu), printed as C by TVM's "c" target, run on the device through a shim.

Per layer, `KernelBuilder.add_linear` / `add_conv` builds a TE compute:

    acc[n, p] = sum_k x[p, k] * w[n, k]                      int8 x int8 -> int32
    y[p, n]   = clamp(requant(acc[n, p] + bias[n]), -128, 127)

where `bias` already holds `b - x_zp * sum_k w[n, k]` (exact in int32), so x enters as stored.
Requantization is the interpreter's `((acc * m + 2^(r-1)) >> r) + zp` (int64 product); when every
shift of the layer exceeds 32 it is written in the equivalent form
`((acc * m + b * m + c * 2^32) >> 32) >> (r - 32)` with `c = 2^(r-33) + zp * 2^(r-32)` (floor
division by 2^(r-32) after adding a multiple of it adds exactly zp, adding c * 2^32 before the
>> 32 adds exactly c; a compile-time bound keeps the high word in int32), which GCC turns into
SMLAL, ASR and SSAT.  Where a vector epilogue takes the tile (M55 convolutions on whole 4 x 2
tiles) it is the int32-only `(((acc + b) * m >> 32) + c) >> (r - 32)` instead (the same value when
acc + b provably fits in int32: VADD, VMULH, VADD, VSHL on 4 channels).  A convolution first copies the image into a
zero-point-padded NHWC buffer (so im2col patches are contiguous rows), then writes per tile the
patches the micro-kernel reads.  A convolution with a small reduction (K <= 16 on M55, a 3x3 kernel over
one input channel on DSP cores: first layers) is instead one compute with the K products written out
(no accumulator buffer), whose whole output plane per channel group is one micro-kernel call that reads
its patches from the padded image and requantizes (schedules/mcu.py: `mve-4xrow`, `dsp-1xrow`).

`build()` compiles every kernel of the model into one C source with `tvm.compile(target="c")`.
The source keeps TVM's packed calling convention (`__tvm_ffi_<name>(self, args, n, ret)` over
`DLTensor`s); the project's shim (c/tvm/*.h, c/bp_tvm_shim.c) supplies the few types and
symbols it uses, with no TVM runtime on the device.  model.c passes static `DLTensor`s that
point into the arena and flash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from bitpress.compiler.target import LoweringError
from bitpress.schedules.mcu import (
    CONV_SCHEDULES,
    KernelSchedule,
    dsp_row_conv_fits,
    row_conv_fits,
    row_conv_value,
    schedule_conv,
    schedule_conv_row,
    schedule_linear,
)

__all__ = ["Kernel", "KernelBuilder", "requant_consts"]


@dataclass
class Kernel:
    """One generated layer kernel: its TVM symbol and the C types/shapes of its arguments."""

    name: str
    args: list[tuple[str, str, tuple[int, ...]]]  # (role, dtype, shape) in call order
    workspace: int = 0  # bytes of TVMBackendAllocWorkspace the kernel asks for (bounded by the arena plan)
    schedule: str = ""  # the schedule it was built with (the builder may pick a variant of the one asked for)


@dataclass
class KernelBuilder:
    funcs: dict[str, Any] = field(default_factory=dict)
    kernels: list[Kernel] = field(default_factory=list)

    def add_linear(self, name: str, m: int, n: int, k: int, sched: KernelSchedule, req: dict[str, Any]) -> Kernel:
        from tvm import te, tirx

        np_, kp = sched.padded(n, k)
        kx = kp if sched.sxtb16 else k  # the DSP kernel reads whole chunks of expanded x; MVE predicates the tail
        x = te.placeholder((m, k), "int8", name="X")
        w = te.placeholder(sched.weight_shape(n, k), "int8", name="W")
        consts = _req_placeholders(np_, req)
        kr = te.reduce_axis((0, kx), name="k")
        ins = [x, w, *consts]
        if sched.sxtb16:
            xs = te.compute(
                (m, kp),
                lambda i, j: tirx.if_then_else(j < k, x[i, tirx.min(j, k - 1)], tirx.const(0, "int8")).astype("int16"),
                name="xs",
            )
            acc = te.compute(
                (np_, m),
                lambda j, i: te.sum(xs[i, kr].astype("int32") * sched.weight_index(w, j, kr).astype("int32"), axis=kr),
                name="acc",
            )
        else:
            acc = te.compute(
                (np_, m),
                lambda j, i: te.sum(x[i, kr].astype("int32") * sched.weight_index(w, j, kr).astype("int32"), axis=kr),
                name="acc",
            )
        y = te.compute((m, n), lambda i, j: _requant(acc[j, i], j, consts, req), name="Y")
        func = schedule_linear(te.create_prim_func([*ins, y]), sched, kx, kp)
        return self._add(
            name,
            func,
            [("x", "int8", (m, k)), ("w", "int8", sched.weight_shape(n, k)), *_req_args(np_, req), ("y", "int8", (m, n))],
            sched.name,
        )

    def add_conv(self, name: str, geo: dict[str, int], o: int, sched: KernelSchedule, req: dict[str, Any], xzp: int) -> Kernel:
        from tvm import te, tirx

        nb, c, h, wd, oh, ow = geo["N"], geo["C"], geo["H"], geo["W"], geo["OH"], geo["OW"]
        kh, kw, sh, sw, ph, pw, dh, dw = (geo[a] for a in ("kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw"))
        k = c * kh * kw
        op_, kp = sched.padded(o, k)
        kx = kp if sched.sxtb16 else k  # the DSP kernels read whole 4-value chunks; MVE predicates the K tail
        p = oh * ow
        pp = -(-p // sched.pixels) * sched.pixels
        hp, wp = h + 2 * ph, wd + 2 * pw
        xdt = sched.x_dtype
        x = te.placeholder((nb, c, h, wd), "int8", name="X")
        w = te.placeholder(sched.weight_shape(o, k), "int8", name="W")
        consts = _req_placeholders(op_, req)

        def pad_body(b: Any, yy: Any, xx: Any, cc: Any) -> Any:
            iy, ix = yy - ph, xx - pw
            inside = tirx.all(iy >= 0, iy < h, ix >= 0, ix < wd)
            v = x[b, cc, tirx.max(tirx.min(iy, h - 1), 0), tirx.max(tirx.min(ix, wd - 1), 0)]
            return tirx.if_then_else(inside, v, tirx.const(xzp, "int8")).astype(xdt)

        xpad = te.compute((nb, hp, wp, c), pad_body, name="xpad")
        row = None
        if sched.name == "mve-4x2" and row_conv_fits(geo, o, req):
            row = CONV_SCHEDULES["mve-4xrow"]
        elif sched.name == "dsp-2x2" and dsp_row_conv_fits(geo, req):
            row = CONV_SCHEDULES["dsp-1xrow"]
        if row is not None:
            # small K: the reduction written out, one call per channel group over the plane, requantization fused
            y = te.compute((nb, o, oh, ow), row_conv_value(row, xpad, w, consts, geo), name="Y")
            func = schedule_conv_row(te.create_prim_func([x, w, *consts, y]), row, geo)
            args = [
                ("x", "int8", (nb, c, h, wd)),
                ("w", "int8", row.weight_shape(o, k)),
                *_req_args(op_, req),
                ("y", "int8", (nb, o, oh, ow)),
            ]
            return self._add(name, func, args, row.name)

        def patch_body(b: Any, q: Any, kk: Any) -> Any:
            # k runs over (i, j, c): the patch row i is kw * c contiguous bytes of the padded NHWC image
            qq = tirx.min(q, p - 1)  # pixels past the end of a ragged last tile repeat the last one
            i, rest = kk // (kw * c), kk % (kw * c)
            j, cc = rest // c, rest % c
            if kx == k:
                return xpad[b, (qq // ow) * sh + i * dh, (qq % ow) * sw + j * dw, cc]
            v = xpad[b, (qq // ow) * sh + tirx.min(i, kh - 1) * dh, (qq % ow) * sw + j * dw, cc]
            return tirx.if_then_else(kk < k, v, tirx.const(0, xdt))

        patch = te.compute((nb, pp, kx), patch_body, name="patch")
        kr = te.reduce_axis((0, kx), name="k")
        acc = te.compute(
            (nb, op_, pp),
            lambda b, oc, q: te.sum(patch[b, q, kr].astype("int32") * sched.weight_index(w, oc, kr).astype("int32"), axis=kr),
            name="acc",
        )
        # the output as [N, O, OH * OW]: the same bytes as NCHW, with the pixel tiles on one axis
        y = te.compute((nb, o, p), lambda b, oc, q: _requant(acc[b, oc, q], oc, consts, req), name="Y")
        # the vector epilogue needs the "hi" form and whole tiles (no ragged channel or pixel tile)
        vreq = req["form"] == "hi32" and o % sched.rows == 0 and p % sched.pixels == 0
        func = schedule_conv(te.create_prim_func([x, w, *consts, y]), sched, kx, kp, kw * c, vreq)
        return self._add(
            name,
            func,
            [("x", "int8", (nb, c, h, wd)), ("w", "int8", sched.weight_shape(o, k)), *_req_args(op_, req), ("y", "int8", (nb, o, p))],
            sched.name,
        )

    def add_te(self, name: str, inputs: list[tuple[str, str, tuple[int, ...]]], out: tuple[str, tuple[int, ...]], fn: Any) -> Kernel:
        """An elementwise / pooling kernel straight from its TE compute (TVM's default loop nest)."""
        from tvm import te

        phs = [te.placeholder(shape, dt, name=role) for role, dt, shape in inputs]
        y = fn(*phs)
        return self._add(name, te.create_prim_func([*phs, y]), [*inputs, ("y", out[0], out[1])])

    def _add(self, name: str, func: Any, args: list[tuple[str, str, tuple[int, ...]]], schedule: str = "") -> Kernel:
        self.funcs[name] = func.with_attr("global_symbol", name)
        kern = Kernel(name, args, schedule=schedule)
        self.kernels.append(kern)
        return kern

    def build(self) -> str:
        """C source of every kernel (TVM's "c" target); records each kernel's workspace bytes."""
        import tvm

        if not self.funcs:
            return ""
        # no argument checks in the packed entry points: model.c is generated with the kernels and
        # passes exactly the DLTensors they were built for (the checks' messages alone cost kilobytes of flash)
        config: dict[str, bool] = {"tirx.disable_assert": True}
        for attempt in range(2):
            try:
                with tvm.transform.PassContext(config=config):
                    src = tvm.compile(tvm.IRModule(self.funcs), target="c").mod.inspect_source()
                break
            except Exception as e:  # TVM errors are long C++ traces: keep the first line
                first = str(e).strip().splitlines()[0]
                if attempt == 0 and "tvm_access_ptr element type must match" in first:
                    # TVM's StorageRewrite can fold a convolution's int8 patch buffer and int32 accumulators into one
                    # allocation and then reject the micro-kernel's typed pointer into it (one pixel tile per image
                    # with a long K, e.g. 8 -> 8 channels 5x5 stride 2 on 6x6): the same kernels, no buffer reuse
                    config = {**config, "tirx.disable_storage_rewrite": True}
                    continue
                raise LoweringError(f"TVM C code generation failed: {first}") from None
        for kern in self.kernels:
            body = _function_body(src, f"__tvm_ffi_{kern.name}")
            sizes = [int(s) for s in re.findall(r"TVMBackendAllocWorkspace\([^,]+, [^,]+, \(uint64_t\)(\d+)ULL", body)]
            kern.workspace = sum(-(-s // 16) * 16 for s in sizes)
        return src


def _function_body(src: str, name: str) -> str:
    i = src.find(f"{name}(void* self_handle, void* args, int32_t num_args, void* result) {{")
    if i < 0:
        raise LoweringError(f"TVM's C has no definition of {name}")
    return src[i : src.find("\n}\n", i)]


def requant_consts(
    mult: torch.Tensor,
    shift: torch.Tensor,
    bias: torch.Tensor,
    yzp: int,
    acc_bound: torch.Tensor,
    n_padded: int,
    vector: bool = False,
) -> dict[str, Any]:
    """Per-channel requantization arrays, padded to `n_padded` rows with harmless values.

    The bias enters as the int64 constant bias * m (+ the rounding term), so the epilogue is one
    multiply-accumulate-long: (acc + b) * m = acc * m + b * m exactly.  The 32-bit form is used
    when every shift exceeds 32 and the folded zero point provably fits in int32; with `vector` (a
    vector epilogue) it is the "hi32" form, int32 constants only, when acc + b also provably fits."""
    n = bias.numel()
    m = mult.reshape(-1).expand(n).to(torch.int64)
    r = shift.reshape(-1).expand(n).to(torch.int64)
    b = bias.to(torch.int64)
    pad = n_padded - n

    def padded(t: torch.Tensor, fill: int, dtype: torch.dtype = torch.int32) -> torch.Tensor:
        return torch.cat([t.to(torch.int64), torch.full((pad,), fill, dtype=torch.int64)]).to(dtype)

    if not bool(((r >= 1) & (r < 63)).all()):
        raise LoweringError(f"requantization shifts {r.min().item()}..{r.max().item()} outside 1..62")
    if bool((r > 32).all()):
        s = r - 32
        c = (torch.ones_like(s) << (s - 1)) + yzp * (torch.ones_like(s) << s)
        hi = ((acc_bound + b.abs()) * m.abs() >> 32) + 1
        if vector and bool(((hi + c.abs()) < 2**31).all()) and bool(((acc_bound + b.abs()) < 2**31).all()):
            # acc + b fits in int32, and c added after the >> 32 adds exactly c * 2^32 before it:
            # ((acc + b) * m >> 32) + c is VADD, VMULH, VADD on 4 channels, then VSHL by -s, VMAX, VMIN
            return {"form": "hi32", "mult": padded(m, 0), "bias": padded(b, 0), "c": padded(c, 0), "shift": padded(s, 1)}
        if bool(((hi + c.abs()) < 2**31).all()):
            # c * 2^32 added before the >> 32 adds exactly c: one SMLAL, one ASR, one SSAT per output
            return {"form": "hi", "mult": padded(m, 0), "bm": padded(b * m + (c << 32), 0, torch.int64), "shift": padded(s, 1)}
    bmr = b * m + (torch.ones_like(r) << (r - 1))
    return {"form": "wide", "mult": padded(m, 0), "bm": padded(bmr, 0, torch.int64), "shift": padded(r, 1), "zp": yzp}


def _req_names(req: dict[str, Any]) -> list[tuple[str, str]]:
    if req["form"] == "hi32":
        return [("mult", "int32"), ("bias", "int32"), ("c", "int32"), ("shift", "int32")]
    return [("mult", "int32"), ("bm", "int64"), ("shift", "int32")]


def _req_placeholders(n: int, req: dict[str, Any]) -> list[Any]:
    from tvm import te

    return [te.placeholder((n,), dt, name=nm) for nm, dt in _req_names(req)]


def _req_args(n: int, req: dict[str, Any]) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(nm, dt, (n,)) for nm, dt in _req_names(req)]


def _requant(acc: Any, ch: Any, consts: list[Any], req: dict[str, Any]) -> Any:
    """y = clamp((((acc + b) * m + 2^(r-1)) >> r) + zp, -128, 127), in the form `requant_consts` chose."""
    from tvm import tirx

    if req["form"] == "hi32":
        # bp_mulhi(a, m) = (int32)(((int64)a * m) >> 32): one SMMUL (bp_ukernels.h); TVM would widen the add
        hi = tirx.call_pure_extern("int32", "bp_mulhi", acc + consts[1][ch], consts[0][ch])
        v = (hi + consts[2][ch]) >> consts[3][ch]
        # bp_sat8(v) = clamp(v, -128, 127): SSAT #8 where the core has it (bp_ukernels.h)
        return tirx.call_pure_extern("int32", "bp_sat8", v).astype("int8")
    prod = acc.astype("int64") * consts[0][ch].astype("int64") + consts[1][ch]
    if req["form"] == "hi":
        hi = (prod >> tirx.const(32, "int64")).astype("int32")  # = ((acc + b) * m >> 32) + c, c folded into bm
        return tirx.call_pure_extern("int32", "bp_sat8", hi >> consts[2][ch]).astype("int8")
    v = (prod >> consts[2][ch].astype("int64")) + tirx.const(int(req["zp"]), "int64")
    return tirx.max(tirx.min(v, tirx.const(127, "int64")), tirx.const(-128, "int64")).astype("int8")
