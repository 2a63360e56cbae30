"""Kernel schedules for TVM targets: what the target can do, the rules every kernel gets, and tuning.

What lives here (and what does not):
- `isa.py`: the target's CPU (vector width and registers, int8 dot instruction, features an
  artifact needs): every CPU choice reads it, none reads the build machine.
- `default.py`: the generic rules applied to any kernel (cpu-gemm, injective, reductions, DLight).
- Micro-kernels and the schedules several lowerings share: `cpu_int8.py` (x86 int8 GEMMs: W8A8
  linear/conv, qlinear_dyn), `mcu.py` (Cortex-M), `neon.py` (aarch64).
- `tuning.py`: MetaSchedule and its records.
A schedule that serves one lowering only (the W4 GEMV/GEMM, sparse and binary kernels) stays
beside its compute in `backends/tvm/lower_*.py`, handed over with `ctx.schedule_hint(name,
schedule=fn)`: its block names are that compute's.

- `apply_default_schedules(mod, target, hints)`: every PrimFunc not yet scheduled gets the
  first rule that applies (CPU: bitpress GEMM/conv/elementwise rules + DLight CPU rules;
  CUDA: DLight GPU rules).
- `tune_and_apply(mod, target, trials, cache_dir)`: MetaSchedule over the module's tasks
  that the persistent database lacks, then the database's best records.
"""

from __future__ import annotations

from bitpress.schedules.default import apply_default_schedules
from bitpress.schedules.tuning import default_cache_dir, tune_and_apply

__all__ = ["apply_default_schedules", "default_cache_dir", "tune_and_apply"]
