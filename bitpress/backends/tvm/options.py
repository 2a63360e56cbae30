"""The TVM backend's options: `compile(..., target="llvm" | "cuda", options={...})`.

Unknown keys fail in `TvmBackend.build` with the list below; add a field here with each new option.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TvmOptions"]


@dataclass(frozen=True)
class TvmOptions:
    """mcpu / mtriple / mattr: the LLVM CPU, triple and extra features (default: this host's CPU).
    arch: the CUDA architecture (e.g. "sm_90"; default: the GPU's).  num_cores: CPU threads the
    schedules plan for.  tune_isolated: MetaSchedule builds and times candidates in subprocesses."""

    mcpu: str | None = None
    mtriple: str | None = None
    mattr: str | list[str] | tuple[str, ...] | None = None
    arch: str | None = None
    num_cores: int | None = None
    tune_isolated: bool = False
