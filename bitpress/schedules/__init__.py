"""Kernel schedules for TVM targets: default rules per target and MetaSchedule tuning records.

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
