"""Cortex-M kernel schedules for the int8 GEMV at the heart of qlinear_w8a8 / qconv2d_w8a8.

A schedule is data: the kernel variant in bp_kernels.h, the weight layout it reads (computed
once at compile time, same bytes as the pass left them, only reordered) and the scratch it needs.

- `scalar`   (M0, M3): row-major weights, one MAC per multiply-accumulate instruction.
- `dsp-4row` (M4, M7, M33): the DSP extension's SMLAD does two 16x16 MACs.  Activations are
  sign-extended once per layer into int16 pairs in SXTB16 order [x0 x2 x1 x3]; weights are
  stored in blocks of four rows with the rows' 4-byte chunks interleaved, so one pass over K
  loads x once for four output channels and each weight word costs 2 SXTB16 + 2 SMLAD.
- `dsp-2x2`  (conv on M4, M7, M33): two output pixels per pass share each weight word (2-row
  blocks, chunks interleaved, bytes [w0 w2 w1 w3] per chunk), so 4 SXTB16 + 8 SMLAD cover 16
  MACs; im2col writes int16 activations in natural order, so no separate expansion pass.
- `mve-4row` (M55): Helium's VMLADAVA.S8 does 16 int8 MACs; four rows share each x load and
  the K % 16 tail uses a tail-predicated load (no weight padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SCHEDULES", "GemvSchedule", "conv_schedule", "gemv_schedule"]


@dataclass(frozen=True)
class GemvSchedule:
    """One int8 GEMV kernel variant: `y[n] = requant(sum_k x[k] w[n, k] + b[n])`."""

    name: str
    kernel: str  # C function in bp_kernels.h
    rows: int  # output rows per pass over K
    expand: str | None  # C function preparing x (None: the kernel reads int8 x directly)

    def layout(self, w: torch.Tensor) -> torch.Tensor:
        """Weights [N, K] int8 -> the flat int8 array the kernel reads (a permutation of w)."""
        w = w.contiguous()
        if not self.name.startswith("dsp"):
            return w.reshape(-1)
        r = self.rows
        n, k = w.shape
        nb, k4 = n // r, k - k % 4
        if self.name == "dsp-2x2":  # bytes [w0 w2 w1 w3] per chunk: SXTB16 then pairs with int16 x in natural order
            perm = torch.arange(k)
            perm[:k4] = perm[:k4].reshape(-1, 4)[:, [0, 2, 1, 3]].reshape(-1)
            w = w[:, perm]
        parts = []
        if nb:
            blocks = w[: nb * r].reshape(nb, r, k)
            chunks = blocks[:, :, :k4].reshape(nb, r, k4 // 4, 4).permute(0, 2, 1, 3).reshape(nb, -1)
            tails = blocks[:, :, k4:].reshape(nb, -1)
            parts.append(torch.cat([chunks, tails], 1).reshape(-1))
        parts.append(w[nb * r :].reshape(-1))
        return torch.cat(parts)

    def x_scratch_bytes(self, k: int) -> int:
        """Scratch for the prepared activation vector (int16 for the DSP schedule)."""
        return 2 * k if self.expand else 0


SCHEDULES: dict[str, GemvSchedule] = {
    "scalar": GemvSchedule("scalar", "bp_gemv_s8_scalar", 1, None),
    "dsp-4row": GemvSchedule("dsp-4row", "bp_gemv_s8_dsp4", 4, "bp_expand_s8_dsp"),
    "mve-4row": GemvSchedule("mve-4row", "bp_gemv_s8_mve4", 4, None),
    "dsp-2x2": GemvSchedule("dsp-2x2", "bp_gemm_s8_dsp2x2", 2, "bp_im2col_s16"),
}


def conv_schedule(gemv: GemvSchedule) -> GemvSchedule:
    """Convolutions reuse each weight word over two pixels on DSP cores; otherwise the GEMV schedule."""
    return SCHEDULES["dsp-2x2"] if gemv.name == "dsp-4row" else gemv


def gemv_schedule(*, dsp: bool, mve: bool, override: str | None = None) -> GemvSchedule:
    """The best GEMV schedule the core supports (or `override`, when the core can run it)."""
    if override is not None:
        if override not in SCHEDULES:
            raise ValueError(f"unknown MCU schedule {override!r}; known: {', '.join(SCHEDULES)}")
        if (override == "dsp-4row" and not dsp) or (override == "mve-4row" and not mve):
            raise ValueError(f"MCU schedule {override!r} needs a core with {'DSP' if override == 'dsp-4row' else 'MVE'}")
        return SCHEDULES[override]
    if mve:
        return SCHEDULES["mve-4row"]
    if dsp:
        return SCHEDULES["dsp-4row"]
    return SCHEDULES["scalar"]
