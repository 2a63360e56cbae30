"""MetaSchedule tuning with a persistent record database per target.

Records live in `<cache_dir>/<target-key>/` (a MetaSchedule JSONDatabase), cache_dir
defaulting to $BITPRESS_CACHE or ~/.cache/bitpress/tuning.  Workloads are keyed by their
structural hash, so compiling the same shapes again finds every task in the database
and tunes nothing; only tasks missing from it are tuned.  Only contraction kernels
(matmul, conv) are tuned: the rest keep their default schedules.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

__all__ = ["TUNED_KERNELS", "default_cache_dir", "target_key", "tune_and_apply"]

TUNED_KERNELS: tuple[str, ...] = ("matmul", "conv", "dense")


def default_cache_dir() -> Path:
    env = os.environ.get("BITPRESS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "bitpress" / "tuning"


def target_key(target: Any) -> str:
    """A directory name per target (kind + hash of its full description)."""
    return f"{target.kind.name}-{hashlib.sha256(str(target).encode()).hexdigest()[:12]}"


def open_database(cache_dir: Path | None, target: Any) -> tuple[Any, Path]:
    from tvm.s_tir import meta_schedule as ms

    work = (cache_dir or default_cache_dir()) / target_key(target)
    work.mkdir(parents=True, exist_ok=True)
    db = ms.database.JSONDatabase(str(work / "workloads.json"), str(work / "records.json"), allow_missing=True)
    return db, work


def tune_and_apply(mod: Any, target: Any, *, trials: int, cache_dir: Path | None = None, quiet: bool = True) -> tuple[Any, dict[str, Any]]:
    """Tune the module's contraction tasks missing from the database (`trials` in all), then apply its records."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    db, work = open_database(cache_dir, target)
    tasks = [t for t in ms.relax_integration.extract_tasks(mod, target) if any(k in t.task_name for k in TUNED_KERNELS)]
    missing = [t for t in tasks if not _has_record(db, t.dispatched[0], target)]
    info: dict[str, Any] = {
        "tune_tasks": len(tasks),
        "tune_tasks_tuned": len(missing),
        "tune_trials": trials,
        "tune_db": str(work),
    }
    if missing:
        per_task = max(1, -(-trials // len(missing)))
        # Evolutionary search samples a population of thousands before its first trial: worth it
        # for real budgets, minutes of overhead for a handful of trials.
        strategy = "evolutionary" if per_task >= 32 else "replay-trace"
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(missing, work_dir=str(work / "logs"), strategy=strategy)
        ms.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=str(work / "logs"),
            max_trials_global=max(trials, len(missing)),
            max_trials_per_task=per_task,
            num_trials_per_iter=min(per_task, 16),
            builder=ms.builder.LocalBuilder(max_workers=1, timeout_sec=120),
            runner=ms.runner.LocalRunner(timeout_sec=60),
            database=db,
            cost_model="xgb" if per_task >= 32 else "random",
        )
    info["tune_records_used"] = sum(1 for t in tasks if _has_record(db, t.dispatched[0], target))
    with db, target, tvm.transform.PassContext(opt_level=3):
        mod = tvm.relax.transform.MetaScheduleApplyDatabase(enable_warning=not quiet)(mod)
    return mod, info


def _has_record(db: Any, mod: Any, target: Any) -> bool:
    if not db.has_workload(mod):
        return False
    return db.query_tuning_record(mod, target, "main") is not None
