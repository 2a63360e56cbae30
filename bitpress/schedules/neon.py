"""Aarch64 (Armv8.2-A NEON + dot product) schedules for the TVM-generated int8 kernels of the C backends.

The aarch64 backend (bitpress/backends/aarch64) generates the same TE computes as the Cortex-M backend
(bitpress/backends/mcu/tvm_kernels.py: int8 x int8 -> int32, folded bias, integer requantization) and
schedules them with bitpress.schedules.mcu's machinery; only the register tile, the weight layout and
the micro-kernel differ (bitpress/backends/aarch64/c/bp_ukernels_neon.h):

- `neon-16x1` (linear): 16 output rows x 1 row of x per pass over K.  Weights in blocks of 16 rows
  with 4-byte pieces interleaved (per 4 values of K, 16 rows x 4 bytes = 4 vectors of 4 rows), K
  zero-padded to 4.  Per 16 values of K: one 16-byte x load, 16 weight loads, 16 SDOT by element
  (`vdotq_laneq_s32`: 4 rows x 4 MACs each, x's 4-byte group broadcast from a lane), 4 int32x4
  accumulators; no horizontal reduction (the accumulators hold 4 rows each).
- `neon-8x4` (convolution over im2col patches): 8 output channels x 4 pixels share every weight
  vector: per 16 values of K 4 x loads + 8 weight loads + 32 SDOT into 8 accumulators.
- `neon-mm-8x4` (convolution on CPUs with the int8 matrix multiply extension, Armv8.6-A +i8mm, e.g.
  neoverse-v1/n2, cortex-a710): the same tile as 4 x 2 blocks of 2 channels x 2 pixels, weights in
  8-byte groups (rows 2i and 2i + 1 of a group are one vector, SMMLA's B operand), K padded to 8: per
  8 values of K 4 x loads + 4 weight loads + 8 SMMLA (32 MACs each, twice SDOT's).  Its CPUs' linear
  layers keep the SDOT kernel (`neon-16x1-mm`: the same kernel, paired with this convolution; SMMLA
  needs two rows of x, a GEMV has one).

K tails (K not a multiple of 16) read x through a zero-filled 16-byte copy and only the weight groups
that exist (the padded weights are zero past K within the last group).  Without the dot-product
extension (Armv8.0: -mcpu=cortex-a53, cortex-a72) the same layout runs on SMULL + SADALP (5
instructions per 16 MACs; the header chooses on __ARM_FEATURE_DOTPROD).
"""

from __future__ import annotations

from bitpress.schedules.mcu import KernelSchedule, add_schedule_pair

__all__ = ["NEON_CONV", "NEON_CONV_MM", "NEON_LINEAR", "NEON_LINEAR_MM", "neon_schedules"]

NEON_LINEAR = KernelSchedule("neon-16x1", 16, 1, "int8", 4, "bp_uk_neon_16x1", 4)
NEON_CONV = KernelSchedule("neon-8x4", 8, 4, "int8", 4, "bp_uk_neon_8x4", 4)

NEON_LINEAR_MM = KernelSchedule("neon-16x1-mm", 16, 1, "int8", 4, "bp_uk_neon_16x1", 4)
NEON_CONV_MM = KernelSchedule("neon-mm-8x4", 8, 4, "int8", 8, "bp_uk_neon_mm_8x4", 8)

add_schedule_pair(NEON_LINEAR, NEON_CONV)
add_schedule_pair(NEON_LINEAR_MM, NEON_CONV_MM)


def neon_schedules(features: dict[str, bool], override: str | None = None) -> tuple[KernelSchedule, KernelSchedule]:
    """(linear, convolution) schedules for a CPU with `features` ("dotprod", "i8mm": its ACLE feature macros), or
    the convolution schedule `override` names ("neon-8x4" | "neon-mm-8x4") where the CPU can run it."""
    if override is not None:
        if override not in (NEON_CONV.name, NEON_CONV_MM.name):
            raise ValueError(f"unknown aarch64 schedule {override!r}; known: {NEON_CONV.name}, {NEON_CONV_MM.name}")
        if override == NEON_CONV_MM.name and not features.get("i8mm"):
            raise ValueError(f"aarch64 schedule {override!r} needs a CPU with the int8 matrix multiply extension (+i8mm)")
        return (NEON_LINEAR_MM, NEON_CONV_MM) if override == NEON_CONV_MM.name else (NEON_LINEAR, NEON_CONV)
    return (NEON_LINEAR_MM, NEON_CONV_MM) if features.get("i8mm") else (NEON_LINEAR, NEON_CONV)
