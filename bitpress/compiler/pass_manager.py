"""Passes, the pass context and the pipeline that verifies and measures after each pass.

A pass is a frozen dataclass with a stable kebab-case `name` and
`apply(graph, ctx) -> PassResult`; its fields are its options.  `Pipeline.run`:

1. applies each pass in order;
2. verifies the graph (types, SSA, order);
3. runs the example/calibration inputs through the interpreter and records the SQNR of
   the outputs against the original model;
4. fails the compile, naming the pass, when a tolerance (`{"sqnr_db": 20}`) breaks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from bitpress.compiler.interpreter import run
from bitpress.compiler.ir import Graph, IRError
from bitpress.compiler.pattern import Rule, RuleSet
from bitpress.compiler.registry import Registry
from bitpress.compiler.rewrite import ExplainLog, rewrite

__all__ = [
    "CompileError",
    "Pass",
    "PassContext",
    "PassRecord",
    "PassResult",
    "Pipeline",
    "ToleranceError",
    "pass_registry",
    "register_pass",
    "rewrite_pass",
    "sqnr_db",
]

log = logging.getLogger("bitpress.passes")


class CompileError(RuntimeError):
    """A pass or backend could not produce a correct model; the message names which."""


class ToleranceError(CompileError):
    """A pass pushed the model's error past the user's tolerance."""


def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when exact)."""
    ref64 = ref.detach().double().flatten()
    err = (ref64 - test.detach().double().flatten()).pow(2).sum().item()
    sig = ref64.pow(2).sum().item()
    if err == 0.0:
        return math.inf
    if not math.isfinite(err):
        return -math.inf
    return 10.0 * math.log10(max(sig, 1e-30) / err)


@dataclass(frozen=True)
class PassResult:
    graph: Graph
    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Pass(Protocol):
    name: ClassVar[str]

    def apply(self, g: Graph, ctx: PassContext) -> PassResult: ...


_PASSES: Registry[type] = Registry("pass")


def register_pass(cls: type) -> type:
    """Make a pass class available to recipes under its `name`."""
    return _PASSES.register(cls.name, cls)  # type: ignore[attr-defined]


def pass_registry() -> dict[str, type]:
    return dict(_PASSES)


@dataclass
class PassContext:
    """What passes may read: example and calibration inputs, cached analyses, the explain log."""

    example_inputs: tuple[torch.Tensor, ...] = ()
    calibration: list[tuple[torch.Tensor, ...]] = field(default_factory=list)
    explain: ExplainLog = field(default_factory=ExplainLog)
    seed: int = 0
    quiet: bool = False
    source_graph: Graph | None = None
    _analyses: dict[tuple[str, int, int], Any] = field(default_factory=dict)

    def data(self, limit: int | None = None) -> list[tuple[torch.Tensor, ...]]:
        """Calibration batches, or the example inputs when none were given."""
        batches = self.calibration or ([self.example_inputs] if self.example_inputs else [])
        return batches[:limit] if limit else batches

    def analysis(self, key: str, g: Graph, compute: Callable[[], Any]) -> Any:
        """Cache `compute()` for this graph state (invalidated by any mutation)."""
        k = (key, id(g), g.version)
        if k not in self._analyses:
            self._analyses[k] = compute()
        return self._analyses[k]

    def require_calibration(self, pass_name: str) -> list[tuple[torch.Tensor, ...]]:
        if not self.calibration:
            raise CompileError(f"pass {pass_name} needs calibration data: pass calibration=[(x,), ...] to compile()")
        return self.calibration


def rewrite_pass(g: Graph, rules: RuleSet | Rule, *, ctx: PassContext, cfg: Any = None, name: str = "rewrite") -> PassResult:
    """The body of a rule-based pass: rewrite to a fixed point and report whether anything changed."""
    n = rewrite(g, rules, ctx=ctx, cfg=cfg, explain=ctx.explain, pass_name=name)
    return PassResult(g, n > 0, {"rewrites": n})


@dataclass
class PassRecord:
    name: str
    seconds: float
    modified: bool
    sqnr_db: float | None
    weight_bytes: int
    stats: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "seconds": round(self.seconds, 4),
            "modified": self.modified,
            "sqnr_db": _json_float(self.sqnr_db),
            "weight_bytes": self.weight_bytes,
            "stats": {k: (_json_float(v) if isinstance(v, float) else v) for k, v in self.stats.items()},
        }


def _json_float(x: float | None) -> float | str | None:
    if x is None:
        return None
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return round(x, 3)


class Pipeline:
    """An explicit, readable list of passes run in order, each verified and measured."""

    def __init__(self, passes: Iterable[Pass], *, tolerance: dict[str, float] | None = None, check_every_pass: bool = True):
        self.passes = list(passes)
        for p in self.passes:
            if not isinstance(p, Pass):
                raise TypeError(f"{p!r} is not a Pass (needs a `name` and `apply(graph, ctx)`)")
        self.tolerance = _check_tolerance(tolerance)
        self.check_every_pass = check_every_pass

    def run(self, g: Graph, ctx: PassContext, reference: Sequence[torch.Tensor] | None = None) -> tuple[Graph, list[PassRecord]]:
        inputs = ctx.example_inputs
        if reference is None and inputs:
            reference = run(g, inputs)
        records: list[PassRecord] = []
        for p in self.passes:
            t0 = time.perf_counter()
            try:
                res = p.apply(g, ctx)
            except (CompileError, ValueError, IRError) as e:
                raise type(e)(f"pass {p.name}: {e}") if not str(e).startswith(f"pass {p.name}") else e from None
            dt = time.perf_counter() - t0
            g = res.graph
            try:
                g.verify()
            except IRError as e:
                raise CompileError(f"pass {p.name} produced an invalid graph: {e}") from None
            s = None
            if reference is not None and (self.check_every_pass or p is self.passes[-1]):
                outs = run(g, inputs)
                s = min((sqnr_db(r, o) for r, o in zip(reference, outs, strict=True) if r.is_floating_point()), default=math.inf)
                for o in outs:
                    if o.is_floating_point() and not torch.isfinite(o).all():
                        raise CompileError(f"pass {p.name} made the model produce NaN/inf outputs")
            rec = PassRecord(p.name, dt, res.modified, s, g.weight_bytes(), dict(res.stats))
            records.append(rec)
            log.info("pass %s: %.3fs modified=%s sqnr=%s bytes=%d", p.name, dt, res.modified, s, rec.weight_bytes)
            floor = self.tolerance.get("sqnr_db")
            if floor is not None and s is not None and s < floor:
                raise ToleranceError(f"pass {p.name} broke the tolerance: output SQNR {s:.2f} dB < {floor} dB")
        return g, records


def _check_tolerance(tol: dict[str, float] | None) -> dict[str, float]:
    if tol is None:
        return {}
    if not isinstance(tol, dict):
        raise ValueError(f"tolerance must be a dict like {{'sqnr_db': 20}}, got {type(tol).__name__}")
    known = {"sqnr_db"}
    bad = set(tol) - known
    if bad:
        raise ValueError(f"unknown tolerance key(s) {sorted(bad)}; known: {sorted(known)}")
    return {k: float(v) for k, v in tol.items()}
