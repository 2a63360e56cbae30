"""The composition root: compile(), CompiledModel, save/load of artifacts.

The one module (with cli.py) that may import every layer: the core (compiler/),
the passes and the backends.

Example:
    >>> import torch, bitpress as bp
    >>> m = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU())
    >>> cm = bp.compile(m, (torch.randn(2, 8),), target="torch")
    >>> y = cm(torch.randn(2, 8))
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

import bitpress.backends  # noqa: F401  (registers every target)
from bitpress.compiler.interpreter import bind_inputs, check_inputs
from bitpress.compiler.ir import Graph, IRError, input_dims, is_dynamic, specialize
from bitpress.compiler.pass_manager import CompileError, Pass, PassContext, Pipeline
from bitpress.compiler.recipe import load_recipe
from bitpress.compiler.report import Report
from bitpress.compiler.serialize import graph_from_json, save_graph
from bitpress.compiler.target import BuildOptions, Executable, LoweringError, get_backend, legalize_check, resolve_target
from bitpress.passes import canonicalize_pipeline  # importing bitpress.passes registers every pass and its ops

__all__ = ["ArtifactError", "CompiledModel", "compile", "load"]

log = logging.getLogger("bitpress")
ARTIFACT_FORMAT = "bitpress-artifact/1"


class ArtifactError(ValueError):
    """A saved artifact is missing, corrupt or from an incompatible version."""


class CompiledModel:
    """A compressed model lowered to a target: callable, with a report, save() and the IR."""

    def __init__(self, graph: Graph, executable: Executable, report: Report, target: str, explain_log: Any = None):
        self.graph = graph
        self.executable = executable
        self.report = report
        self.target = target
        self._explain = explain_log

    def __call__(self, *inputs: torch.Tensor) -> Any:
        outs = self.executable.run(check_inputs(self.graph, inputs))
        return outs[0] if len(outs) == 1 else tuple(outs)

    def explain(self) -> str:
        """Which rule fired or declined on which node, and why."""
        return str(self._explain) if self._explain is not None else "(explain log not kept for loaded models)"

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the deployable artifact, the IR, the weights and the report, atomically."""
        dest = Path(directory).resolve()
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        try:
            files = save_graph(self.graph, tmp)
            (tmp / "report.json").write_text(json.dumps(self.report.to_dict(), indent=1))
            files.append("report.json")
            files += self.executable.save(tmp)
            manifest = {
                "format": ARTIFACT_FORMAT,
                "target": self.target,
                "inputs": [{"name": v.name, "shape": [str(d) for d in v.shape], "dtype": v.dtype} for v in self.graph.inputs],
                "files": {f: _sha256(tmp / f) for f in sorted(set(files))},
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
            old = None
            if dest.exists():
                old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
                dest.rename(old)
            tmp.rename(dest)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest

    def __repr__(self) -> str:
        return f"CompiledModel(target={self.target!r}, nodes={len(self.graph)}, bytes={self.report.total_bytes:,})"


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(directory: str | os.PathLike[str]) -> CompiledModel:
    """Load a saved artifact, verifying every file's hash; runs without recompiling."""
    d = Path(directory)
    mpath = d / "manifest.json"
    if not mpath.is_file():
        raise ArtifactError(f"{d} is not a bitpress artifact (no manifest.json)")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{mpath} is corrupt: {e}") from None
    if manifest.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"{d}: unsupported artifact format {manifest.get('format')!r} (expected {ARTIFACT_FORMAT})")
    for f, digest in manifest["files"].items():
        p = d / f
        if not p.is_file():
            raise ArtifactError(f"{p} is missing from the artifact")
        if _sha256(p) != digest:
            raise ArtifactError(f"{p} is corrupt: sha256 does not match the manifest")
    try:
        from safetensors.torch import load_file

        g = graph_from_json(json.loads((d / "graph.json").read_text()), load_file(str(d / "weights.safetensors")))
        report = Report.from_dict(json.loads((d / "report.json").read_text()))
    except (IRError, KeyError, ValueError) as e:
        raise ArtifactError(f"{d}: cannot read the graph: {e}") from None
    target = manifest["target"]
    exe = get_backend(target).load(d, g, target)
    return CompiledModel(g, exe, report, target)


def _import_model(model: Any, example_inputs: Sequence[Any], dynamic_shapes: Any = None, dynamic: str | None = "batch") -> Graph:
    if isinstance(model, Graph):
        return model.clone()
    if isinstance(model, torch.nn.Module):
        from bitpress.compiler.frontend.torch_fx import import_module

        return import_module(model, example_inputs, dynamic_shapes=dynamic_shapes, dynamic=dynamic)
    if isinstance(model, (str, os.PathLike)) and Path(model).is_dir():
        from bitpress.compiler.frontend.hf import import_pretrained_dir

        return import_pretrained_dir(model, example_inputs, dynamic_shapes=dynamic_shapes, dynamic=dynamic)  # save_pretrained output
    if isinstance(model, (str, os.PathLike)) or type(model).__name__ == "ModelProto":
        from bitpress.compiler.frontend.onnx_import import import_onnx

        return import_onnx(model, tuple(example_inputs) or None)  # example inputs fix symbolic dims
    raise TypeError(f"cannot compile a {type(model).__name__}: pass a torch.nn.Module, an ONNX model or path, or a bitpress Graph")


def _as_batches(calibration: Iterable[Any] | None) -> list[tuple[torch.Tensor, ...]]:
    if calibration is None:
        return []
    out = []
    for b in calibration:
        out.append(tuple(b) if isinstance(b, (tuple, list)) else (b,))
    return out


def compile(
    model: Any,
    example_inputs: Sequence[torch.Tensor] | None = None,
    passes: Sequence[Pass] | str | os.PathLike[str] | dict[str, Any] | None = None,
    target: str = "torch",
    calibration: Iterable[Any] | None = None,
    tolerance: dict[str, float] | None = None,
    *,
    tune: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    canonicalize: bool = True,
    quiet: bool | None = None,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    dynamic_shapes: Any = None,
    dynamic: str | None = "batch",
) -> CompiledModel:
    """Compress `model` with `passes` and lower it to `target`.

    Args:
        model: a torch.nn.Module, an onnx.ModelProto or .onnx path, or a bitpress Graph.
        example_inputs: a tuple of tensors fixing shapes and dtypes (and used to measure each pass's error).
        passes: Pass objects, or a recipe (YAML path or dict with a `passes:` list).
        target: "torch" (reference), "onnx", "llvm"/"cpu", "cuda", "cortex-m4", ...
        calibration: iterable of input tuples for data-aware passes.
        tolerance: e.g. {"sqnr_db": 20}: the pass that pushes output SQNR below it fails the compile.
        tune: MetaSchedule trials for TVM targets (0: default schedules only).
        dynamic_shapes: torch.export's spec (`torch.export.Dim` objects in dicts / tuples per input).
        dynamic: without `dynamic_shapes`, "batch" (default) makes every input's leading dim symbolic
            (torch.export's automatic dims: a model that needs a static batch is specialized, and the
            report says so); None keeps every dim static.  ONNX inputs keep their dim_param dims.
            Static-memory targets specialize at build time to `options={"static_shapes": {"batch": 1}}`
            or to the example's sizes.

    Returns:
        A callable CompiledModel with `.report`, `.graph`, `.save()`.
    """
    t0 = time.perf_counter()
    target = resolve_target(target)
    if quiet is None:
        quiet = os.environ.get("BITPRESS_QUIET", "") not in ("", "0") or not os.isatty(2)
    if isinstance(passes, (str, os.PathLike, dict)):
        plist = load_recipe(passes)
    else:
        plist = list(passes or [])
    cal = _as_batches(calibration)
    if example_inputs is None:
        if isinstance(model, torch.nn.Module) and not cal:
            raise ValueError("example_inputs are required to trace a torch module")
        example_inputs = cal[0] if cal else ()
    ex = tuple(example_inputs)
    g = _import_model(model, ex, dynamic_shapes, dynamic)
    if not ex:
        if is_dynamic(g):
            raise ValueError(f"example_inputs are required: the model's inputs have symbolic dims {list(input_dims(g))}")
        ex = tuple(torch.zeros(v.type.static_shape(), dtype=_torch_dtype(v.dtype)) for v in g.inputs)
    _, example_sizes = bind_inputs(g, ex)
    _check_weights(g)
    source = g.clone()
    ctx = PassContext(example_inputs=ex, calibration=cal, quiet=quiet, seed=seed, source_graph=source)
    pipeline = Pipeline((canonicalize_pipeline() if canonicalize else []) + plist, tolerance=tolerance)
    g, records = pipeline.run(g, ctx)
    legalize_check(g, target)
    tb = time.perf_counter()
    backend = get_backend(target)
    extra = dict(options or {})
    static_shapes = extra.pop("static_shapes", None)  # read here; backends never see it
    bopts = BuildOptions(tune=tune, cache_dir=Path(cache_dir) if cache_dir else None, quiet=quiet, example_inputs=ex, extra=extra)
    notes = list(g.meta.get("shape_notes", []))
    if is_dynamic(g) and not getattr(backend, "symbolic_shapes", False):
        sizes = _static_sizes(g, example_sizes, static_shapes)
        g = specialize(g, sizes)
        notes.append(f"target {target} builds static shapes: specialized to {_fmt_sizes(sizes)}")
    try:
        exe = backend.build(g, target, bopts)
    except LoweringError as e:
        if not is_dynamic(g):
            raise
        # a lowering without symbolic-shape support: build at the example's sizes, and say so
        sizes = _static_sizes(g, example_sizes, static_shapes)
        g = specialize(g, sizes)
        notes.append(f"target {target}: {e}; specialized to {_fmt_sizes(sizes)}")
        log.warning("%s", notes[-1])
        exe = backend.build(g, target, bopts)
    report = Report.build(g, source.weight_bytes(), records, target)
    report.shapes = _shapes_info(g, notes)
    report.build_seconds = time.perf_counter() - tb
    report.backend = dict(getattr(exe, "info", {}) or {})
    log.info("compiled for %s in %.2fs", target, time.perf_counter() - t0)
    return CompiledModel(g, exe, report, target, ctx.explain)


def _static_sizes(g: Graph, example: dict[str, int], static_shapes: Any) -> dict[str, int]:
    """The sizes a static build uses: `static_shapes` ({name: size} or one shape per input), else the example's."""
    dims = input_dims(g)
    if static_shapes is None:
        return {n: example[n] for n in dims}
    if isinstance(static_shapes, dict):
        sizes = {str(k): int(v) for k, v in static_shapes.items()}
    else:
        shapes = list(static_shapes)
        if len(shapes) != len(g.inputs):
            raise ValueError(f"static_shapes: {len(shapes)} shapes for {len(g.inputs)} inputs")
        zeros = [torch.empty(tuple(s), dtype=_torch_dtype(v.dtype), device="meta") for s, v in zip(shapes, g.inputs, strict=True)]
        sizes = bind_inputs(g, zeros)[1]
    unknown = sorted(set(sizes) - set(dims))
    if unknown:
        raise ValueError(f"static_shapes: unknown dim(s) {unknown}; the model's symbolic dims are {list(dims)}")
    for n, d in dims.items():
        if n not in sizes:
            sizes[n] = example[n]
        if sizes[n] < d.min or (d.max is not None and sizes[n] > d.max):
            raise ValueError(f"static_shapes: {n}={sizes[n]} is outside its range {d.range_str()}")
    return sizes


def _fmt_sizes(sizes: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sizes.items())


def _shapes_info(g: Graph, notes: list[str]) -> dict[str, Any]:
    dims = input_dims(g)
    return {
        "inputs": {v.name: str(v.type) for v in g.inputs},
        "dims": {n: [d.min, d.max] for n, d in dims.items()},
        "notes": notes,
    }


def _torch_dtype(d: str) -> torch.dtype:
    from bitpress.compiler.ir import to_torch_dtype

    return to_torch_dtype(d)


# ops whose constant operands are weights (a weight may not hold inf; a mask or a fill value may:
# GPT-2's causal mask is -inf where a token may not attend)
_WEIGHT_OPS = {"linear", "matmul", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "embedding", "layer_norm", "rms_norm", "group_norm", "batch_norm"}  # fmt: skip


def _check_weights(g: Graph) -> None:
    """NaN in any constant, or inf in a constant consumed as a weight, is an error."""
    weights = {id(v) for n in g.nodes if n.op in _WEIGHT_OPS for v in n.inputs if v is not None and v.is_const}
    bad = [
        v.name
        for v in g.consts.values()
        if v.value.is_floating_point()
        and (bool(torch.isnan(v.value).any()) or (id(v) in weights and not bool(torch.isfinite(v.value).all())))
    ]
    if bad:
        shown = ", ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        raise CompileError(f"model has NaN/inf weights in {shown}")
