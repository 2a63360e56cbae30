"""Integer arithmetic shared by the quantized formats and every backend that runs them bit-exactly.

- `requantize`: int32/int64 accumulator -> int8 with a per-channel fixed-point multiplier
  (gemmlowp/TFLite): y = clamp(((acc * m + 2^(r-1)) >> r) + zp, -128, 127).
- `quant_multiplier`: a positive real multiplier as (m int32 in [2^30, 2^31), right shift r).
- `SOFTMAX_SCALE`, `SOFTMAX_ZERO_POINT`: the fixed int8 quantization of softmax outputs.
"""

from __future__ import annotations

import torch

__all__ = ["SOFTMAX_SCALE", "SOFTMAX_ZERO_POINT", "quant_multiplier", "requantize"]

SOFTMAX_SCALE = 1.0 / 256.0  # probabilities in [0, 255/256] (TFLite's int8 softmax output)
SOFTMAX_ZERO_POINT = -128


def requantize(
    acc: torch.Tensor, multiplier: torch.Tensor, shift: torch.Tensor, out_zero_point: int, channel_dim: int = -1
) -> torch.Tensor:
    """y = clamp(((acc * m + 2^(r-1)) >> r) + zp, -128, 127)   integer-only, per output channel."""
    view = [1] * acc.ndim
    view[channel_dim] = -1
    m = multiplier.to(torch.int64).reshape(view)
    r = shift.to(torch.int64).reshape(view)
    y = (acc.to(torch.int64) * m + (torch.ones_like(r) << (r - 1))) >> r
    return (y + out_zero_point).clamp(-128, 127).to(torch.int8)


def quant_multiplier(real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """real = m * 2^-r with m an int32 in [2^30, 2^31) and 1 <= r <= 62 (gemmlowp/TFLite style)."""
    r = real.double()
    if (r <= 0).any():
        raise ValueError("requantization multipliers must be positive")
    mant, exp = torch.frexp(r)  # r = mant * 2^exp, mant in [0.5, 1)
    m = torch.round(mant * (1 << 31)).to(torch.int64)
    carry = m == (1 << 31)
    m = torch.where(carry, m // 2, m)
    exp = exp.to(torch.int64) + carry.to(torch.int64)
    shift = 31 - exp
    # keep the shift in [1, 62]: very small multipliers lose low bits of m, very large ones are clamped
    low = shift > 62
    m = torch.where(low, torch.round(r * 2.0**62).to(torch.int64), m)
    shift = torch.where(low, torch.full_like(shift, 62), shift)
    if (shift < 1).any():
        raise ValueError("requantization multiplier >= 2^30 is not representable")
    return m.to(torch.int32), shift.to(torch.int32)
