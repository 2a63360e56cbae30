"""Cortex-M schedules for the TVM-generated int8 kernels (qlinear_w8a8, qconv2d_w8a8).

The MCU backend builds each int8 layer as a TE compute with the quantized semantics
(bitpress/backends/mcu/tvm_kernels.py: int8 x int8 -> int32, folded bias, integer
requantization, clamp); this module schedules it with `tvm.s_tir.Schedule` for the core and
says how the weights are laid out in flash (a permutation of the pass's int8 bytes plus zero
padding to whole tiles, never an expansion).

A schedule is data (`KernelSchedule`): the register tile (output rows x pixels that share one
pass over K), the activation type the inner loop reads, and the micro-kernel that the tile's
reduction is tensorized into (`TensorIntrin`, impl = `call_extern` of a function in
bitpress/backends/mcu/c/bp_ukernels.h):

- `scalar`   (M0, M3): no tensorize; 4 output rows per pass over K, one MUL/MLA per MAC.
- `dsp-4row` (linear on M4, M7, M33): SMLAD (two 16x16 MACs).  TVM expands x to int16 once per
  row; weights in blocks of 4 rows with 4-byte chunks interleaved, bytes [w0 w2 w1 w3] per chunk
  so SXTB16 pairs them with int16 x in natural order: 3 LDRD + 8 SXTB16 + 8 SMLAD per 16 MACs.
- `dsp-2x2`  (conv on M4, M7, M33): 2 rows x 2 pixels share every weight word: 3 LDRD + 4
  SXTB16 + 8 SMLAD per 16 MACs; TVM writes the two pixels' int16 patches (im2col) per tile.
- `mve-4row` (linear on M55): Helium VMLADAVA.S8 (16 int8 MACs), 4 rows share each x load;
  weights in blocks of 4 rows with 16-byte pieces interleaved (zero-padded to a whole piece), x
  read in place with a tail-predicated last load: 5 VLDRB + 4 VMLADAVA per 64 MACs.
- `mve-4x2`  (conv on M55): 4 rows x 2 pixels: 2 x loads + 4 w loads + 8 VMLADAVA per 128 MACs;
  weights in blocks of 4 rows with 16-byte pieces interleaved and K padded to 16, so one pointer
  walks the tile and 8 accumulators, 2 activation pointers and it fit the registers.  On whole
  tiles the requantization epilogue is tensorized too (`bp_uk_mve_req_4x2`: 4 channels per vector).
- `mve-4xrow` (conv with K <= 16 on M55, e.g. a first layer over one input channel): the weights as in `mve-4x2`;
  the TE compute writes the reduction out as a K-term sum (no accumulator buffer), and its whole output plane
  for 4 channels is one micro-kernel call (`bp_uk_mve_conv_row`): per pixel one gather load builds the patch from the
  padded NHWC image (no im2col buffer), 4 VMLADAVs give the 4 channels, and the requantization runs on them as one
  vector before a byte scatter store.  Chosen by `row_conv_fits` (else `mve-4x2`).
- `dsp-1xrow` (3x3 conv over one input channel on M4, M7, M33): the weights as in `dsp-2x2`; the same written-out
  TE compute over an int16 padded image, one call per output channel over the whole plane
  (`bp_uk_dsp_conv_row`: per pixel 3 unaligned LDRs of x pairs + 3 LDRSH, 3 SMLAD + 3 halfword MACs, SMLAL/ASR/SSAT).
  Chosen by `dsp_row_conv_fits` (else `dsp-2x2`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "CONV_SCHEDULES",
    "LINEAR_SCHEDULES",
    "SCHEDULES",
    "KernelSchedule",
    "add_schedule_pair",
    "conv_schedule",
    "conv_taps",
    "dsp_row_conv_fits",
    "gemv_schedule",
    "hi64_requant",
    "row_conv_fits",
    "row_conv_value",
    "schedule_conv",
    "schedule_conv_row",
    "schedule_linear",
]

# bytes [w0 w2 w1 w3] per 4-byte chunk: SXTB16 gives (w0, w1), SXTB16 ROR 8 gives (w2, w3)
_CHUNK = (0, 2, 1, 3)


@dataclass(frozen=True)
class KernelSchedule:
    """How one int8 kernel family runs on a core."""

    name: str
    rows: int  # output channels per tile
    pixels: int  # output pixels per tile (1 for linear layers)
    x_dtype: str  # what the tensorized reduction reads: "int8" or "int16" (SXTB16 + SMLAD)
    k_align: int  # K is padded with zero weights to a multiple of this
    ukernel: str | None  # micro-kernel in bp_ukernels.h (None: TVM's own loops)
    chunk: int = 0  # weights in blocks of `rows` rows with `chunk`-byte pieces interleaved (0: row-major)

    @property
    def blocked(self) -> bool:
        """Weights in blocks of `rows` rows, the rows' `chunk`-byte pieces interleaved (one pointer walks a tile)."""
        return self.chunk > 0

    @property
    def sxtb16(self) -> bool:
        """DSP layouts: bytes [w0 w2 w1 w3] per 4-byte chunk, paired with int16 x in natural order."""
        return self.x_dtype == "int16"

    def padded(self, n: int, k: int) -> tuple[int, int]:
        return -(-n // self.rows) * self.rows, -(-k // self.k_align) * self.k_align

    def weight_shape(self, n: int, k: int) -> tuple[int, ...]:
        """Shape of the weight buffer the TE compute reads (the flash array, as TVM sees it)."""
        np_, kp = self.padded(n, k)
        return (np_ // self.rows, kp // self.chunk, self.rows, self.chunk) if self.blocked else (np_, kp)

    def layout(self, w: torch.Tensor) -> torch.Tensor:
        """Weights [N, K] int8 -> the array the kernel reads: zero-padded to whole tiles, then permuted."""
        n, k = w.shape
        np_, kp = self.padded(n, k)
        wp = torch.zeros(np_, kp, dtype=torch.int8)
        wp[:n, :k] = w
        if not self.blocked:
            return wp
        r, c = self.rows, self.chunk
        chunks = wp.reshape(np_ // r, r, kp // c, c)
        if self.sxtb16:
            chunks = chunks[..., list(_CHUNK)]
        return chunks.permute(0, 2, 1, 3).contiguous()

    def weight_index(self, w: Any, n: Any, k: Any) -> Any:
        """TE access of logical weight [n, k] in `layout`'s buffer (the inverse permutation)."""
        if not self.blocked:
            return w[n, k]
        if not self.sxtb16:
            return w[n // self.rows, k // self.chunk, n % self.rows, k % self.chunk]
        j = k % 4
        return w[n // self.rows, k // 4, n % self.rows, (j % 2) * 2 + j // 2]


LINEAR_SCHEDULES: dict[str, KernelSchedule] = {
    "scalar": KernelSchedule("scalar", 4, 1, "int8", 1, None),
    "dsp-4row": KernelSchedule("dsp-4row", 4, 1, "int16", 4, "bp_uk_dsp_4row", 4),
    "mve-4row": KernelSchedule("mve-4row", 4, 1, "int8", 16, "bp_uk_mve_4row", 16),
}
CONV_SCHEDULES: dict[str, KernelSchedule] = {
    "scalar": KernelSchedule("scalar", 4, 1, "int8", 1, None),
    "dsp-2x2": KernelSchedule("dsp-2x2", 2, 2, "int16", 4, "bp_uk_dsp_2x2", 4),
    "mve-4x2": KernelSchedule("mve-4x2", 4, 2, "int8", 16, "bp_uk_mve_4x2", 16),
    "mve-4xrow": KernelSchedule("mve-4xrow", 4, 2, "int8", 16, "bp_uk_mve_conv_row", 16),
    "dsp-1xrow": KernelSchedule("dsp-1xrow", 2, 2, "int16", 4, "bp_uk_dsp_conv_row", 4),
}
SCHEDULES: dict[str, KernelSchedule] = LINEAR_SCHEDULES | CONV_SCHEDULES
_CONV_FOR = {"scalar": "scalar", "dsp-4row": "dsp-2x2", "mve-4row": "mve-4x2"}


def gemv_schedule(*, dsp: bool, mve: bool, override: str | None = None) -> KernelSchedule:
    """The linear-layer schedule for a core (or `override`, when the core can run it)."""
    if override is not None:
        if override not in LINEAR_SCHEDULES:
            raise ValueError(f"unknown MCU schedule {override!r}; known: {', '.join(LINEAR_SCHEDULES)}")
        if (override == "dsp-4row" and not dsp) or (override == "mve-4row" and not mve):
            raise ValueError(f"MCU schedule {override!r} needs a core with {'DSP' if override == 'dsp-4row' else 'MVE'}")
        return LINEAR_SCHEDULES[override]
    return LINEAR_SCHEDULES["mve-4row" if mve else "dsp-4row" if dsp else "scalar"]


def conv_schedule(linear: KernelSchedule) -> KernelSchedule:
    """The convolution schedule that goes with a linear schedule (same core features)."""
    return CONV_SCHEDULES[_CONV_FOR[linear.name]]


def add_schedule_pair(linear: KernelSchedule, conv: KernelSchedule) -> None:
    """Register another CPU family's linear schedule and its convolution schedule (bitpress/schedules/neon.py);
    `gemv_schedule` keeps offering the Cortex-M ones only."""
    CONV_SCHEDULES[conv.name] = conv
    _CONV_FOR[linear.name] = conv.name


def row_conv_fits(geo: dict[str, int], o: int, req: dict[str, Any]) -> bool:
    """Whether `mve-4xrow` takes a convolution (else `mve-4x2`): K <= 16 (one 16-lane piece per patch), whole tiles
    of 4 channels, an even row width (2 pixels per step), unit width dilation (a patch row is contiguous), the tap
    offsets within a byte (the gather's offset lanes are 8-bit), and the int32-only "hi32" requantization with
    every shift <= 24 (the clamp is a saturating shift into the top byte)."""
    c, kh, kw = geo["C"], geo["kh"], geo["kw"]
    k = c * kh * kw
    xrow = (geo["W"] + 2 * geo["pw"]) * c
    return (
        k <= 16
        and o % 4 == 0
        and geo["OW"] % 2 == 0
        and geo["dw"] == 1
        and (kh - 1) * geo["dh"] * xrow + kw * c - 1 <= 255
        and req["form"] == "hi32"
        and int(req["shift"].max()) <= 24
    )


def dsp_row_conv_fits(geo: dict[str, int], req: dict[str, Any]) -> bool:
    """Whether `dsp-1xrow` takes a convolution (else `dsp-2x2`): a 3x3 kernel over one input channel with unit width
    dilation, the "hi" requantization, and the kernel-row offsets within an LDR immediate."""
    rstep = (geo["W"] + 2 * geo["pw"]) * geo["dh"]
    return geo["C"] == 1 and geo["kh"] == 3 and geo["kw"] == 3 and geo["dw"] == 1 and req["form"] == "hi" and 4 * rstep + 4 <= 4095


def conv_taps(k: int, kw: int, c: int, dh: int, dw: int) -> list[tuple[int, int, int]]:
    """Patch element t = (i * kw + j) * c + cc of a convolution as (row, column, channel) offsets in the padded image."""
    return [(t // (kw * c) * dh, t // c % kw * dw, t % c) for t in range(k)]


def _small_k_dot(x_at: Any, w_at: Any, taps: list[tuple[int, int, int]]) -> Any:
    """sum_t x(i_t, j_t, c_t) * w(t) in int32, written out term by term (the reduction of a K <= 16 convolution)."""
    acc = None
    for t, (i, j, cc) in enumerate(taps):
        term = x_at(i, j, cc).astype("int32") * w_at(t).astype("int32")
        acc = term if acc is None else acc + term
    return acc


def hi64_requant(acc: Any, ch: Any, m: Any, bm: Any, s: Any) -> Any:
    """The "hi" requantization (bitpress/backends/mcu/tvm_kernels.py): sat8((((int64)acc * m + bm) >> 32) >> s)."""
    from tvm import tirx

    prod = acc.astype("int64") * m[ch].astype("int64") + bm[ch]
    hi = (prod >> tirx.const(32, "int64")).astype("int32")
    return tirx.call_pure_extern("int32", "bp_sat8", hi >> s[ch]).astype("int8")


def _hi32(dot: Any, ch: Any, m: Any, b: Any, c: Any, s: Any) -> Any:
    """The "hi32" requantization (bitpress/backends/mcu/tvm_kernels.py): sat8(((mulhi(dot + b, m) + c) >> s))."""
    from tvm import tirx

    hi = tirx.call_pure_extern("int32", "bp_mulhi", dot + b[ch], m[ch])
    return tirx.call_pure_extern("int32", "bp_sat8", (hi + c[ch]) >> s[ch]).astype("int8")


def row_conv_value(sched: KernelSchedule, xpad: Any, w: Any, consts: list[Any], geo: dict[str, int]) -> Any:
    """The TE body of an `mve-4xrow` ("hi32" requantization) or `dsp-1xrow` ("hi") convolution output
    y[b, oc, oy, ox]: the K <= 16 reduction written out (weights in `sched`.layout order)."""
    c, kh, kw = geo["C"], geo["kh"], geo["kw"]
    taps = conv_taps(c * kh * kw, kw, c, geo["dh"], geo["dw"])
    sh, sw = geo["sh"], geo["sw"]

    def value(bi: Any, oc: Any, oy: Any, ox: Any) -> Any:
        dot = _small_k_dot(lambda i, j, ch: xpad[bi, oy * sh + i, ox * sw + j, ch], lambda t: sched.weight_index(w, oc, t), taps)
        if sched.name == "dsp-1xrow":
            return hi64_requant(dot, oc, *consts)
        m, b, cc, s = consts
        return _hi32(dot, oc, m, b, cc, s)

    return value


# ----------------------------------------------------------------------------- tensor intrinsics


def _intrin(sched: KernelSchedule, kx: int, kp: int) -> str:
    """Register (once) the tensor intrinsic for `sched`'s tile over a reduction of `kx` (weights padded to `kp`).

    desc: C[r, p] += X[p, k] * W[r, k] over the tile, with W in `sched.layout` order;
    impl: one call of the micro-kernel on pointers to the tile's accumulators, activations and weights.
    """
    from tvm import s_tir
    from tvm.script import tirx as T

    name = f"bp_{sched.name.replace('-', '_')}_k{kx}_{kp}_p{sched.pixels}"
    if name in _REGISTERED:
        return name
    rows, pix, xt = sched.rows, sched.pixels, sched.x_dtype
    ch = sched.chunk or 4
    kc = kp // ch
    wl = min(ch, kx)  # the part of each weight piece the reduction reads (a short K reads part of one piece)
    ws0, ws1, ws2 = T.int32(), T.int32(), T.int32()
    uk = sched.ukernel
    assert uk is not None
    if sched.blocked:
        # the extra argument of the 2x2 kernel is pixel B's byte offset (an immediate in its inner loop)
        uk_call = f"{uk}_{2 * kp}" if pix == 2 and sched.sxtb16 else uk
        # DSP kernels count 4-byte chunks (K is padded); the MVE kernel takes K and predicates the last piece
        uk_n = kc if sched.sxtb16 else kx
        if sched.sxtb16:

            def w_at(W: Any, vk: Any, vr: Any) -> Any:
                return W[0, vk // 4, vr, vk % 4 % 2 * 2 + vk % 4 // 2]
        else:

            def w_at(W: Any, vk: Any, vr: Any) -> Any:
                return W[0, vk // ch, vr, vk % ch]

        @T.prim_func(s_tir=True)
        def desc_b(
            X: T.Buffer((pix, kx), xt, offset_factor=1),
            W: T.Buffer((1, kc, rows, wl), "int8", offset_factor=1, strides=[ws0, ws1, ws2, 1]),
            C: T.Buffer((rows, pix), "int32", offset_factor=1),
        ) -> None:
            with T.sblock("root"):
                T.reads(C[0:rows, 0:pix], X[0:pix, 0:kx], W[0, 0:kc, 0:rows, 0:wl])
                T.writes(C[0:rows, 0:pix])
                for r, p, k in T.grid(rows, pix, kx):
                    with T.sblock("update"):
                        vr, vp, vk = T.axis.remap("SSR", [r, p, k])
                        C[vr, vp] = C[vr, vp] + T.Cast("int32", X[vp, vk]) * T.Cast("int32", w_at(W, vk, vr))

        @T.prim_func(s_tir=True)
        def impl_b(
            X: T.Buffer((pix, kx), xt, offset_factor=1),
            W: T.Buffer((1, kc, rows, wl), "int8", offset_factor=1, strides=[ws0, ws1, ws2, 1]),
            C: T.Buffer((rows, pix), "int32", offset_factor=1),
        ) -> None:
            with T.sblock("root"):
                T.reads(C[0:rows, 0:pix], X[0:pix, 0:kx], W[0, 0:kc, 0:rows, 0:wl])
                T.writes(C[0:rows, 0:pix])
                T.evaluate(T.call_extern("int32", uk_call, C.access_ptr("rw"), X.access_ptr("r"), W.access_ptr("r"), uk_n))

        @T.prim_func(s_tir=True)
        def desc_b1(
            X: T.Buffer((1, kx), xt, offset_factor=1),
            W: T.Buffer((1, kc, rows, wl), "int8", offset_factor=1, strides=[ws0, ws1, ws2, 1]),
            C: T.Buffer((rows, 1), "int32", offset_factor=1),
        ) -> None:
            with T.sblock("root"):
                T.reads(C[0:rows, 0:1], X[0:1, 0:kx], W[0, 0:kc, 0:rows, 0:wl])
                T.writes(C[0:rows, 0:1])
                for r, k in T.grid(rows, kx):
                    with T.sblock("update"):
                        vr, vk = T.axis.remap("SR", [r, k])
                        C[vr, 0] = C[vr, 0] + T.Cast("int32", X[0, vk]) * T.Cast("int32", w_at(W, vk, vr))

        if pix == 1:
            s_tir.TensorIntrin.register(name, desc_b1, impl_b, override=True)
        else:
            s_tir.TensorIntrin.register(name, desc_b, impl_b, override=True)
    else:
        xs0 = T.int32()

        @T.prim_func(s_tir=True)
        def desc_m(
            X: T.Buffer((pix, kp), xt, offset_factor=1, strides=[xs0, 1]),
            W: T.Buffer((rows, kp), "int8", offset_factor=1),
            C: T.Buffer((rows, pix), "int32", offset_factor=1),
        ) -> None:
            with T.sblock("root"):
                T.reads(C[0:rows, 0:pix], X[0:pix, 0:kp], W[0:rows, 0:kp])
                T.writes(C[0:rows, 0:pix])
                for r, p, k in T.grid(rows, pix, kp):
                    with T.sblock("update"):
                        vr, vp, vk = T.axis.remap("SSR", [r, p, k])
                        C[vr, vp] = C[vr, vp] + T.Cast("int32", X[vp, vk]) * T.Cast("int32", W[vr, vk])

        @T.prim_func(s_tir=True)
        def impl_m(
            X: T.Buffer((pix, kp), xt, offset_factor=1, strides=[xs0, 1]),
            W: T.Buffer((rows, kp), "int8", offset_factor=1),
            C: T.Buffer((rows, pix), "int32", offset_factor=1),
        ) -> None:
            with T.sblock("root"):
                T.reads(C[0:rows, 0:pix], X[0:pix, 0:kp], W[0:rows, 0:kp])
                T.writes(C[0:rows, 0:pix])
                T.evaluate(T.call_extern("int32", uk, C.access_ptr("rw"), X.access_ptr("r"), W.access_ptr("r"), kp, xs0))

        @T.prim_func(s_tir=True)
        def desc_m1(
            X: T.Buffer((1, kp), xt, offset_factor=1, strides=[xs0, 1]),
            W: T.Buffer((rows, kp), "int8", offset_factor=1),
            C: T.Buffer((rows, 1), "int32", offset_factor=1),
        ) -> None:
            with T.sblock("root"):
                T.reads(C[0:rows, 0:1], X[0:1, 0:kp], W[0:rows, 0:kp])
                T.writes(C[0:rows, 0:1])
                for r, k in T.grid(rows, kp):
                    with T.sblock("update"):
                        vr, vk = T.axis.remap("SR", [r, k])
                        C[vr, 0] = C[vr, 0] + T.Cast("int32", X[0, vk]) * T.Cast("int32", W[vr, vk])

        if pix == 1:
            s_tir.TensorIntrin.register(name, desc_m1, impl_m, override=True)
        else:
            s_tir.TensorIntrin.register(name, desc_m, impl_m, override=True)
    _REGISTERED.add(name)
    return name


_REGISTERED: set[str] = set()


def _req_intrin() -> str:
    """Register (once) the mve-4x2 requantization epilogue: the "hi" form of bitpress/backends/mcu/tvm_kernels.py
    over a tile of 4 channels x 2 pixels (Y rows `ys` apart), implemented by bp_uk_mve_req_4x2."""
    from tvm import s_tir
    from tvm.script import tirx as T

    name = "bp_mve_req_4x2"
    if name in _REGISTERED:
        return name
    ys = T.int32()

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((4, 2), "int32", offset_factor=1),
        M: T.Buffer((4,), "int32", offset_factor=1),
        B: T.Buffer((4,), "int32", offset_factor=1),
        C: T.Buffer((4,), "int32", offset_factor=1),
        S: T.Buffer((4,), "int32", offset_factor=1),
        Y: T.Buffer((4, 2), "int8", offset_factor=1, strides=[ys, 1]),
    ) -> None:
        with T.sblock("root"):
            T.reads(A[0:4, 0:2], B[0:4], M[0:4], C[0:4], S[0:4])
            T.writes(Y[0:4, 0:2])
            for r, p in T.grid(4, 2):
                with T.sblock("Y"):
                    vr, vp = T.axis.remap("SS", [r, p])
                    Y[vr, vp] = T.Cast(
                        "int8",
                        T.call_pure_extern(
                            "int32", "bp_sat8", (T.call_pure_extern("int32", "bp_mulhi", A[vr, vp] + B[vr], M[vr]) + C[vr]) >> S[vr]
                        ),
                    )

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4, 2), "int32", offset_factor=1),
        M: T.Buffer((4,), "int32", offset_factor=1),
        B: T.Buffer((4,), "int32", offset_factor=1),
        C: T.Buffer((4,), "int32", offset_factor=1),
        S: T.Buffer((4,), "int32", offset_factor=1),
        Y: T.Buffer((4, 2), "int8", offset_factor=1, strides=[ys, 1]),
    ) -> None:
        with T.sblock("root"):
            T.reads(A[0:4, 0:2], B[0:4], M[0:4], C[0:4], S[0:4])
            T.writes(Y[0:4, 0:2])
            T.evaluate(
                T.call_extern(
                    "int32",
                    "bp_uk_mve_req_4x2",
                    Y.access_ptr("w"),
                    A.access_ptr("r"),
                    M.access_ptr("r"),
                    B.access_ptr("r"),
                    C.access_ptr("r"),
                    S.access_ptr("r"),
                    ys,
                )
            )

    s_tir.TensorIntrin.register(name, desc, impl, override=True)
    _REGISTERED.add(name)
    return name


def _row_tile_value(X: Any, W: Any, M: Any, B: Any, C: Any, S: Any, vr: Any, vy: Any, vx: Any, taps: Any, sh: int, sw: int) -> Any:
    """Output [vr, vy, vx] of the `mve-4xrow` tile intrinsic (X: the tile's padded image region, W: its 4 weight rows)."""
    dot = _small_k_dot(lambda i, j, ch: X[vy * sh + i, vx * sw + j, ch], lambda t: W[0, 0, vr, t], taps)
    return _hi32(dot, vr, M, B, C, S)


def _row_intrin(geo: dict[str, int]) -> str:
    """Register (once per geometry) the `mve-4xrow` intrinsic: 4 channels x the whole OH x OW output plane of a
    K <= 16 convolution, requantized (desc: the TE body of `row_conv_value`; impl: bp_uk_mve_conv_row)."""
    from tvm import s_tir
    from tvm.script import tirx as T

    c, kh, kw, oh, ow = geo["C"], geo["kh"], geo["kw"], geo["OH"], geo["OW"]
    sh, sw, dh, dw = geo["sh"], geo["sw"], geo["dh"], geo["dw"]
    k = c * kh * kw
    name = f"bp_mve_4xrow_c{c}_k{kh}x{kw}_s{sh}x{sw}_d{dh}x{dw}_o{oh}x{ow}"
    if name in _REGISTERED:
        return name
    taps = conv_taps(k, kw, c, dh, dw)
    khx, wx = (oh - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + (kw - 1) * dw + 1
    xs0, xs1, ws0, ws1, ys, yr = T.int32(), T.int32(), T.int32(), T.int32(), T.int32(), T.int32()

    @T.prim_func(s_tir=True)
    def desc(
        X: T.Buffer((khx, wx, c), "int8", offset_factor=1, strides=[xs0, xs1, 1]),
        W: T.Buffer((1, 1, 4, k), "int8", offset_factor=1, strides=[ws0, ws1, 16, 1]),
        B: T.Buffer((4,), "int32", offset_factor=1),
        M: T.Buffer((4,), "int32", offset_factor=1),
        C: T.Buffer((4,), "int32", offset_factor=1),
        S: T.Buffer((4,), "int32", offset_factor=1),
        Y: T.Buffer((4, oh, ow), "int8", offset_factor=1, strides=[ys, yr, 1]),
    ) -> None:
        with T.sblock("root"):
            T.reads(X[0:khx, 0:wx, 0:c], W[0, 0, 0:4, 0:k], B[0:4], M[0:4], C[0:4], S[0:4])
            T.writes(Y[0:4, 0:oh, 0:ow])
            for r, py, px in T.grid(4, oh, ow):
                with T.sblock("Y"):
                    vr, vy, vx = T.axis.remap("SSS", [r, py, px])
                    Y[vr, vy, vx] = _row_tile_value(X, W, M, B, C, S, vr, vy, vx, taps, sh, sw)

    @T.prim_func(s_tir=True)
    def impl(
        X: T.Buffer((khx, wx, c), "int8", offset_factor=1, strides=[xs0, xs1, 1]),
        W: T.Buffer((1, 1, 4, k), "int8", offset_factor=1, strides=[ws0, ws1, 16, 1]),
        B: T.Buffer((4,), "int32", offset_factor=1),
        M: T.Buffer((4,), "int32", offset_factor=1),
        C: T.Buffer((4,), "int32", offset_factor=1),
        S: T.Buffer((4,), "int32", offset_factor=1),
        Y: T.Buffer((4, oh, ow), "int8", offset_factor=1, strides=[ys, yr, 1]),
    ) -> None:
        with T.sblock("root"):
            T.reads(X[0:khx, 0:wx, 0:c], W[0, 0, 0:4, 0:k], B[0:4], M[0:4], C[0:4], S[0:4])
            T.writes(Y[0:4, 0:oh, 0:ow])
            T.evaluate(
                T.call_extern(
                    "int32",
                    "bp_uk_mve_conv_row",
                    Y.access_ptr("w"),
                    X.access_ptr("r"),
                    W.access_ptr("r"),
                    M.access_ptr("r"),
                    B.access_ptr("r"),
                    C.access_ptr("r"),
                    S.access_ptr("r"),
                    ys,
                    yr,
                    xs0,
                    oh,
                    ow,
                    xs0 * sh,
                    xs1 * sw,
                    k,
                    kw * c,
                    xs0 * dh,
                )
            )

    s_tir.TensorIntrin.register(name, desc, impl, override=True)
    _REGISTERED.add(name)
    return name


def _dsp_row_tile_value(X: Any, W: Any, M: Any, BM: Any, S: Any, vy: Any, vx: Any, taps: Any, sh: int, sw: int) -> Any:
    """Output [vy, vx] of the `dsp-1xrow` tile intrinsic (X: the padded int16 image region, W: the channel's chunks)."""
    dot = _small_k_dot(lambda i, j, ch: X[vy * sh + i, vx * sw + j, ch], lambda t: W[0, t // 4, 0, t % 4 % 2 * 2 + t % 4 // 2], taps)
    return hi64_requant(dot, 0, M, BM, S)


def _dsp_row_intrin(geo: dict[str, int]) -> str:
    """Register (once per geometry) the `dsp-1xrow` intrinsic: one channel x the whole OH x OW output plane of a 3x3
    convolution over one input channel, requantized (desc: the TE body of `row_conv_value`; impl: bp_uk_dsp_conv_row)."""
    from tvm import s_tir
    from tvm.script import tirx as T

    oh, ow, sh, sw, dh = geo["OH"], geo["OW"], geo["sh"], geo["sw"], geo["dh"]
    name = f"bp_dsp_1xrow_s{sh}x{sw}_d{dh}_o{oh}x{ow}"
    if name in _REGISTERED:
        return name
    taps = conv_taps(9, 3, 1, dh, 1)
    khx, wx = (oh - 1) * sh + 2 * dh + 1, (ow - 1) * sw + 3
    xs0, xs1, ws0, ws1, ws2, yr = T.int32(), T.int32(), T.int32(), T.int32(), T.int32(), T.int32()

    @T.prim_func(s_tir=True)
    def desc(
        X: T.Buffer((khx, wx, 1), "int16", offset_factor=1, strides=[xs0, xs1, 1]),
        W: T.Buffer((1, 3, 1, 4), "int8", offset_factor=1, strides=[ws0, ws1, ws2, 1]),
        M: T.Buffer((1,), "int32", offset_factor=1),
        BM: T.Buffer((1,), "int64", offset_factor=1),
        S: T.Buffer((1,), "int32", offset_factor=1),
        Y: T.Buffer((oh, ow), "int8", offset_factor=1, strides=[yr, 1]),
    ) -> None:
        with T.sblock("root"):
            T.reads(X[0:khx, 0:wx, 0:1], W[0, 0:3, 0, 0:4], M[0:1], BM[0:1], S[0:1])
            T.writes(Y[0:oh, 0:ow])
            for py, px in T.grid(oh, ow):
                with T.sblock("Y"):
                    vy, vx = T.axis.remap("SS", [py, px])
                    Y[vy, vx] = _dsp_row_tile_value(X, W, M, BM, S, vy, vx, taps, sh, sw)

    @T.prim_func(s_tir=True)
    def impl(
        X: T.Buffer((khx, wx, 1), "int16", offset_factor=1, strides=[xs0, xs1, 1]),
        W: T.Buffer((1, 3, 1, 4), "int8", offset_factor=1, strides=[ws0, ws1, ws2, 1]),
        M: T.Buffer((1,), "int32", offset_factor=1),
        BM: T.Buffer((1,), "int64", offset_factor=1),
        S: T.Buffer((1,), "int32", offset_factor=1),
        Y: T.Buffer((oh, ow), "int8", offset_factor=1, strides=[yr, 1]),
    ) -> None:
        with T.sblock("root"):
            T.reads(X[0:khx, 0:wx, 0:1], W[0, 0:3, 0, 0:4], M[0:1], BM[0:1], S[0:1])
            T.writes(Y[0:oh, 0:ow])
            T.evaluate(
                T.call_extern(
                    "int32",
                    "bp_uk_dsp_conv_row",
                    Y.access_ptr("w"),
                    X.access_ptr("r"),
                    W.access_ptr("r"),
                    M.access_ptr("r"),
                    BM.access_ptr("r"),
                    S.access_ptr("r"),
                    yr,
                    oh,
                    ow,
                    xs0 * sh,
                    xs1 * sw,
                    xs0 * dh,
                )
            )

    s_tir.TensorIntrin.register(name, desc, impl, override=True)
    _REGISTERED.add(name)
    return name


# ----------------------------------------------------------------------------- schedules


def schedule_linear(func: Any, sched: KernelSchedule, kx: int, kp: int) -> Any:
    """Schedule the TE qlinear (blocks `xs` (DSP only), `acc`, `Y`): rows of x outer, tiles of `rows`
    outputs, the tile's whole reduction tensorized (or, for `scalar`, x[k] loaded once for 4 unrolled rows)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    y = sch.get_sblock("Y")
    m, n = sch.get_loops(y)
    no, ni = sch.split(n, [None, sched.rows])
    acc = sch.get_sblock("acc")
    sch.compute_at(acc, no)
    if sched.sxtb16:
        sch.compute_at(sch.get_sblock("xs"), m)
    own = sch.get_loops(acc)[2:]  # (rows, k): the tile's output rows and the reduction (k absent when K = 1)
    init = sch.decompose_reduction(acc, own[0])
    _finish_tile(sch, acc, sched, kx, kp, 2)
    for loop in [*sch.get_loops(init)[2:], ni]:  # zeroing and requantization of the tile unrolled
        sch.unroll(loop)
    return sch.mod["main"]


def schedule_conv(func: Any, sched: KernelSchedule, kx: int, kp: int, row: int, vector_req: bool = False) -> Any:
    """Schedule the TE qconv2d (blocks `xpad`, `patch`, `acc`, `Y`): per image the padded NHWC copy,
    per tile of `pixels` output pixels their im2col patches, per tile of `rows` channels the
    tensorized reduction, then the requantization epilogue.  `row` = kw * C (one kernel row of a patch)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    y = sch.get_sblock("Y")
    b, o, p = sch.get_loops(y)
    pt, pi = sch.split(p, [None, sched.pixels])
    ot, oi = sch.split(o, [None, sched.rows])
    sch.reorder(pt, ot, oi, pi)
    acc = sch.get_sblock("acc")
    sch.compute_at(acc, ot)
    patch = sch.get_sblock("patch")
    sch.compute_at(patch, pt)
    # one patch row (kernel row i) is `row` = kw * C contiguous values: loop over rows, then within a row
    sch.split(sch.get_loops(patch)[-1], [None, row])
    xpad = sch.get_sblock("xpad")
    sch.compute_at(xpad, b)
    # the channels of one padded pixel unrolled: the border test is made once per pixel, not once per value
    cin = sch.get_loops(xpad)[-1]
    if 1 < int(sch.get(cin).extent) <= 64:
        sch.unroll(cin)
    own = sch.get_loops(acc)[3:]  # (rows, pixels, k) under b, pixel tile, row tile
    init = sch.decompose_reduction(acc, own[0])
    _finish_tile(sch, acc, sched, kx, kp, 3)
    # the tile's zeroing and requantization epilogue unrolled: no loop overhead per tile
    for loop in sch.get_loops(init)[3:]:
        sch.unroll(loop)
    if vector_req and sched.name == "mve-4x2":
        # whole tiles in the "hi" form: the epilogue is one vector micro-kernel call
        sch.tensorize(oi, _req_intrin())
    else:
        sch.unroll(oi)
        sch.unroll(pi)
    return sch.mod["main"]


def schedule_conv_row(func: Any, sched: KernelSchedule, geo: dict[str, int]) -> Any:
    """Schedule the TE `mve-4xrow` / `dsp-1xrow` convolution (blocks `xpad`, `Y`): per image the padded NHWC copy,
    then per 4 output channels (MVE) or per channel (DSP) one micro-kernel call over the whole output plane."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    y = sch.get_sblock("Y")
    b, o, oy, ox = sch.get_loops(y)
    tile = oy
    if sched.name == "mve-4xrow":
        ot, tile = sch.split(o, [None, 4])
        sch.reorder(b, ot, tile, oy, ox)
    xpad = sch.get_sblock("xpad")
    sch.compute_at(xpad, b)
    cin = sch.get_loops(xpad)[-1]
    if 1 < int(sch.get(cin).extent) <= 64:
        sch.unroll(cin)
    sch.tensorize(tile, _row_intrin(geo) if sched.name == "mve-4xrow" else _dsp_row_intrin(geo))
    return sch.mod["main"]


def _finish_tile(sch: Any, acc: Any, sched: KernelSchedule, kx: int, kp: int, outer: int) -> None:
    """Tensorize the tile's reduction into the micro-kernel, or (scalar schedule, or K = 1) keep TVM's
    loops with the reduction outside the unrolled rows so each x[k] is loaded once per tile."""
    own = sch.get_loops(acc)[outer:]
    if sched.ukernel is not None and kx >= 2:
        sch.tensorize(own[0], _intrin(sched, kx, kp))
        return
    if kx < 2:
        sch.unroll(own[0])
        return
    sch.reorder(own[-1], *own[:-1])
    sch.unroll(sch.get_loops(acc)[outer + 1])
