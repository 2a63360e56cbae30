"""MetaSchedule tuning with a persistent record database per target.

Records live in `<cache_dir>/<target-key>/` (a MetaSchedule JSONDatabase), cache_dir
defaulting to $BITPRESS_CACHE or ~/.cache/bitpress/tuning.  Workloads are keyed by their
structural hash, so compiling the same shapes again finds every task in the database
and tunes nothing; only tasks missing from it are tuned.  Only contraction kernels
(matmul, conv) are tuned: the rest keep their default schedules.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import linecache
import logging
import os
import sys
from collections.abc import Iterator
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


def _fast_stack(context: int = 1) -> list[inspect.FrameInfo]:
    """inspect.stack() without its per-frame module search (linecache only)."""
    frame = sys._getframe(1)
    out = []
    while frame is not None:
        code = frame.f_code
        line = linecache.getline(code.co_filename, frame.f_lineno)
        out.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name, [line] if line else None, 0 if line else None))
        frame = frame.f_back  # type: ignore[assignment]
    return out


def _import_tensor_intrin() -> None:
    """Import tvm.s_tir.tensor_intrin (MetaSchedule needs it) quickly.

    It parses hundreds of TVMScript functions, and the parser calls inspect.stack() for
    each; with torch and transformers loaded, inspect.stack's module search makes that
    import take minutes.  The parser only needs frames and their source lines.
    """
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    with fast_tvmscript():
        import tvm.s_tir.tensor_intrin  # noqa: F401


@contextlib.contextmanager
def fast_tvmscript() -> Iterator[None]:
    """Parse TVMScript (`@T.prim_func`) with the cheap inspect.stack (see _import_tensor_intrin)."""
    saved = inspect.stack
    inspect.stack = _fast_stack  # type: ignore[assignment]
    try:
        yield
    finally:
        inspect.stack = saved


def open_database(cache_dir: Path | None, target: Any) -> tuple[Any, Path]:
    from tvm.s_tir import meta_schedule as ms

    work = (cache_dir or default_cache_dir()) / target_key(target)
    work.mkdir(parents=True, exist_ok=True)
    db = ms.database.JSONDatabase(str(work / "workloads.json"), str(work / "records.json"), allow_missing=True)
    return db, work


def _static_workload(mod: Any) -> bool:
    from tvm import tirx

    for func in mod.functions.values():
        for param in getattr(func, "params", []):
            shape = getattr(param.ty, "shape", None)  # buffer parameters carry their shapes in their type
            if shape is not None and not all(isinstance(d, tirx.IntImm) for d in shape):
                return False
    return True


def tune_and_apply(
    mod: Any,
    target: Any,
    *,
    trials: int,
    cache_dir: Path | None = None,
    quiet: bool = True,
    isolated: bool = False,
    hints: dict[str, dict[str, Any]] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Tune the module's contraction tasks missing from the database (`trials` in all), then apply its records.

    Candidates are built and timed in this process by default: MetaSchedule's LocalBuilder
    starts a fresh worker per batch, which imports tvm and parses tvm.s_tir.tensor_intrin
    (minutes on a loaded 2-core machine, longer than its build timeout).  `isolated=True`
    uses the subprocess builder/runner instead (a crashing candidate cannot take the
    compiler down with it).
    """
    import tvm
    from tvm.s_tir import meta_schedule as ms

    _import_tensor_intrin()
    db, work = open_database(cache_dir, target)
    tasks = [t for t in ms.relax_integration.extract_tasks(mod, target) if any(k in t.task_name for k in TUNED_KERNELS)]
    # a kernel over a symbolic batch has no one workload to measure: it keeps its default schedule
    symbolic = [t for t in tasks if not _static_workload(t.dispatched[0])]
    tasks = [t for t in tasks if _static_workload(t.dispatched[0])]
    missing = [t for t in tasks if not _has_record(db, t.dispatched[0], target)]
    info: dict[str, Any] = {
        "tune_tasks": len(tasks),
        "tune_tasks_symbolic": len(symbolic),
        "tune_tasks_tuned": len(missing),
        "tune_trials": trials,
        "tune_db": str(work),
    }
    if missing:
        if quiet:  # MetaSchedule's console handler takes its level from this logger; its log files keep DEBUG
            logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
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
            builder=_builder(isolated),
            runner=_runner(isolated),
            database=db,
            cost_model="xgb" if per_task >= 32 else "random",
        )
        # The default schedule competes as one more candidate: with a handful of trials the
        # search can end below it, and the database must never make a build slower.
        info["tune_default_kept"] = sum(_commit_default(db, t, target, hints) for t in missing)
    info["tune_records_used"] = sum(1 for t in tasks if _has_record(db, t.dispatched[0], target))
    with db, target, tvm.transform.PassContext(opt_level=3):
        mod = tvm.relax.transform.MetaScheduleApplyDatabase(enable_warning=not quiet)(mod)
    return mod, info


def _has_record(db: Any, mod: Any, target: Any) -> bool:
    if not db.has_workload(mod):
        return False
    return db.query_tuning_record(mod, target, "main") is not None


def _builder(isolated: bool) -> Any:
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export

    if isolated:
        return ms.builder.LocalBuilder(max_workers=1, timeout_sec=120)

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs: list[Any]) -> list[Any]:
            out = []
            for bi in build_inputs:
                try:
                    out.append(BuilderResult(default_export(default_build(bi.mod, bi.target, None)), None))
                except Exception as e:  # a candidate that fails to build is a failed trial
                    out.append(BuilderResult(None, f"build failed: {type(e).__name__}: {e}"))
            return out

    return InProcessBuilder()


def _runner(isolated: bool) -> Any:
    import tvm
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, PyRunner
    from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture, default_alloc_argument, default_run_evaluator

    if isolated:
        return ms.runner.LocalRunner(timeout_sec=60)
    config = EvaluatorConfig._normalized(EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20, enable_cpu_cache_flush=False))

    @derived_object
    class InProcessRunner(PyRunner):
        def run(self, runner_inputs: list[Any]) -> list[Any]:
            out = []
            for ri in runner_inputs:
                try:
                    lib = tvm.runtime.load_module(str(ri.artifact_path))
                    dev = tvm.runtime.device(str(ri.device_type), 0)
                    args = default_alloc_argument(dev, tuple(a.as_json() for a in ri.args_info), 1)
                    out.append(LocalRunnerFuture(res=default_run_evaluator(lib, dev, config, args)))
                except Exception as e:  # a candidate that fails to run is a failed trial
                    out.append(LocalRunnerFuture(error_message=f"run failed: {type(e).__name__}: {e}"))
            return out

    return InProcessRunner()


def _commit_default(db: Any, task: Any, target: Any, hints: dict[str, dict[str, Any]] | None) -> bool:
    """Measure the default schedule of `task` and commit it as a record; True if it is the best one."""
    from tvm.s_tir import meta_schedule as ms

    from bitpress.schedules.default import schedule_function

    mod = task.dispatched[0]
    func = mod["main"]
    _, sch = schedule_function(task.task_name, func, target, hints)
    if sch is None:
        return False
    try:
        args_info = ms.arg_info.ArgInfo.from_prim_func(func)
        built = _builder(False).build([ms.builder.BuilderInput(sch.mod, target)])[0]
        if built.error_msg:
            return False
        runner_input = ms.runner.RunnerInput(
            built.artifact_path, device_type="cpu" if target.kind.name == "llvm" else target.kind.name, args_info=args_info
        )
        res = _runner(False).run([runner_input])[0].result()
        if res.error_msg or not res.run_secs:
            return False
        best = db.query_tuning_record(mod, target, "main")
        wl = db.commit_workload(mod)
        db.commit_tuning_record(ms.database.TuningRecord(sch.trace, wl, res.run_secs, target, args_info))
    except Exception:  # the default schedule still applies at build time; only the comparison is lost
        return False
    mine = sum(float(x) for x in res.run_secs) / len(res.run_secs)
    theirs = sum(float(x) for x in best.run_secs) / len(best.run_secs) if best is not None and best.run_secs else float("inf")
    return mine <= theirs
