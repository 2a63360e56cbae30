"""`bitpress compile|report|run|merge|bench` command line.

    bitpress compile model.onnx --recipe r.yaml --target torch -o out/
    bitpress report out/
    bitpress merge --base b.safetensors --models a.safetensors c.safetensors --method ties --density 0.2 -o merged.safetensors

Errors a user can cause (bad recipe, unsupported op, corrupt artifact) print one line
and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "register_command"]

from bitpress.compiler.commands import COMMANDS, register_command


def _load_model(path: str, inputs: str | None) -> tuple[Any, tuple[Any, ...] | None]:
    import torch

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if p.suffix == ".onnx":
        return str(p), _example_inputs(inputs)
    if p.suffix in (".pt", ".pt2"):
        ep = torch.export.load(str(p))
        from bitpress.compiler.frontend import import_exported

        return import_exported(ep), None
    raise ValueError(f"{path}: expected an .onnx model or a torch.export .pt2 file")


def _example_inputs(spec: str | None) -> tuple[Any, ...] | None:
    """'1x3x224x224:float32,1x16:int64' -> random tensors of those shapes."""
    if not spec:
        return None
    import torch

    out = []
    gen = torch.Generator().manual_seed(0)
    for part in spec.split(","):
        shape_s, _, dt = part.partition(":")
        shape = tuple(int(s) for s in shape_s.lower().split("x"))
        dt = dt or "float32"
        if dt.startswith("int"):
            out.append(torch.randint(0, 8, shape, generator=gen, dtype=getattr(torch, dt)))
        else:
            out.append(torch.randn(shape, generator=gen, dtype=getattr(torch, dt)))
    return tuple(out)


def _cmd_compile(a: argparse.Namespace) -> int:
    import bitpress as bp

    model, ex = _load_model(a.model, a.inputs)
    passes = a.recipe if a.recipe else []
    tol = {"sqnr_db": a.min_sqnr} if a.min_sqnr is not None else None
    cm = bp.compile(model, ex, passes=passes, target=a.target, tolerance=tol, tune=a.tune)
    print(cm.report)
    if a.output:
        out = cm.save(a.output)
        print(f"saved {out}")
    return 0


def _cmd_report(a: argparse.Namespace) -> int:
    import bitpress as bp

    cm = bp.load(a.artifact)
    print(json.dumps(cm.report.to_dict(), indent=1) if a.json else cm.report)
    return 0


def _cmd_run(a: argparse.Namespace) -> int:
    import torch

    import bitpress as bp

    cm = bp.load(a.artifact)
    ex = tuple(torch.zeros(v.shape, dtype=getattr(torch, v.dtype)) for v in cm.graph.inputs)
    if a.inputs:
        ex = _example_inputs(a.inputs) or ex
    y = cm(*ex)
    ys = y if isinstance(y, tuple) else (y,)
    for i, t in enumerate(ys):
        print(f"output {i}: shape {list(t.shape)} dtype {t.dtype} sum {float(t.double().sum()):.6g}")
    return 0


def _cmd_bench(a: argparse.Namespace) -> int:
    import runpy

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{a.name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark {a.name!r} ({path})")
    runpy.run_path(str(path), run_name="__main__")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bitpress", description="compress and compile neural networks")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compile", help="compile a model (.onnx or torch.export .pt2)")
    c.add_argument("model")
    c.add_argument("--recipe", help="YAML recipe with a `passes:` list")
    c.add_argument("--target", default="torch")
    c.add_argument("--inputs", help="example input shapes, e.g. 1x3x32x32:float32 (ONNX models with dynamic dims)")
    c.add_argument("--tune", type=int, default=0, help="MetaSchedule trials (TVM targets)")
    c.add_argument("--min-sqnr", type=float, default=None, help="fail if any pass drops output SQNR below this (dB)")
    c.add_argument("-o", "--output", help="artifact directory to write")
    c.set_defaults(fn=_cmd_compile)
    r = sub.add_parser("report", help="print the report of a saved artifact")
    r.add_argument("artifact")
    r.add_argument("--json", action="store_true")
    r.set_defaults(fn=_cmd_report)
    rn = sub.add_parser("run", help="run a saved artifact on zeros (or random inputs of --inputs shapes)")
    rn.add_argument("artifact")
    rn.add_argument("--inputs")
    rn.set_defaults(fn=_cmd_run)
    b = sub.add_parser("bench", help="run a benchmark script from benchmarks/")
    b.add_argument("name")
    b.set_defaults(fn=_cmd_bench)
    for mod in ("bitpress.passes.merge.cli",):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name is None or not mod.startswith(e.name):
                raise
    for name, (configure, run) in COMMANDS.items():
        sp = sub.add_parser(name)
        configure(sp)
        sp.set_defaults(fn=run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, RuntimeError, FileNotFoundError, TypeError, OSError) as e:
        print(f"bitpress: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # re-enter through the package module so subcommands registered by pass packages
    # (which import `bitpress.cli`) land in the same registry
    from bitpress.cli import main as _main

    sys.exit(_main())
