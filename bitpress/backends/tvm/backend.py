"""TvmBackend: lower a bitpress Graph to Relax, schedule, build with tvm.compile, run with the VM.

Build pipeline (per target):
  1. lower: one registered lowering per node -> a Relax `main(inputs..., params...)`;
     constants are VM parameters (the library holds code, not weights);
  2. legalize: TVM's dispatch + LegalizeOps + FuseOps + FuseTIR (PrimFuncs per fused group);
  3. schedule: tuned records from the MetaSchedule database when `tune` > 0 (tuning the
     tasks the database lacks), then bitpress.schedules' default rules for the rest;
  4. finalize: TVM's dataflow lowering + memory planning, `tvm.compile`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bitpress.backends.tvm.lowering import (
    _CURRENT,
    LowerContext,
    ParamRef,
    get_lowering,
    lowered_ops,
    param_tensors,
)
from bitpress.backends.tvm.options import TvmOptions
from bitpress.compiler.ir import Graph, Value, is_dynamic, to_torch_dtype
from bitpress.compiler.target import BuildOptions, LoweringError, parse_options
from bitpress.schedules.isa import CpuIsa, check_runnable, host_target_spec, required_features

__all__ = ["TvmBackend", "TvmExecutable", "lower_graph", "make_target"]

LIB_FILE = "tvm_model.so"
META_FILE = "tvm_meta.json"
DERIVED_FILE = "tvm_params.safetensors"


def make_target(target: str, options: dict[str, Any] | None = None) -> Any:
    """The tvm.target.Target for "llvm" (this host's CPU) or "cuda" (sm arch from options or the GPU)."""
    import tvm

    options = options or {}
    if target == "llvm":
        spec: dict[str, Any] = {"kind": "llvm", "num-cores": _num_cores(options)}
        if options.get("mcpu") or options.get("mtriple"):
            # another CPU than this host's: exactly what the user named
            for key in ("mcpu", "mtriple", "mattr"):
                if options.get(key):
                    spec[key] = options[key] if key != "mattr" else _mattr(options[key])
        else:
            spec.update(host_target_spec())
            if options.get("mattr"):
                spec["mattr"] = [*spec.get("mattr", []), *_mattr(options["mattr"])]
        try:
            return tvm.target.Target(spec)
        except Exception as e:
            raise ValueError(f"TVM backend: bad llvm target {spec}: {str(e).strip().splitlines()[-1]}") from None
    if target == "cuda":
        arch = options.get("arch") or _cuda_arch()
        # MetaSchedule's thread binding needs the per-block limits, which a bare {"kind", "arch"}
        # target lacks (these are the values of TVM's nvidia/* tags from sm_50 on)
        spec = {"kind": "cuda", "arch": arch, "max_threads_per_block": 1024, "max_shared_memory_per_block": 49152, "thread_warp_size": 32}
        return tvm.target.Target(spec, host={"kind": "llvm"})
    raise ValueError(f"TVM backend: unknown target {target!r} (use 'llvm' or 'cuda')")


def _mattr(v: Any) -> list[str]:
    """-mattr as a list: "+avx2,-avx512f" or ["+avx2", "-avx512f"]."""
    items = v.split(",") if isinstance(v, str) else list(v)
    return [str(i).strip() for i in items if str(i).strip()]


def _num_cores(options: dict[str, Any]) -> int:
    n = options.get("num_cores") or torch.get_num_threads()
    return max(1, int(n))


def _cuda_arch() -> str:
    import tvm

    dev = tvm.cuda(0)
    if dev.exist:
        return "sm_" + dev.compute_version.replace(".", "")
    return os.environ.get("BITPRESS_CUDA_ARCH", "sm_80")


# ---------------------------------------------------------------------------- lowering


@dataclass
class Lowered:
    mod: Any  # tvm.IRModule with "main"
    ctx: LowerContext
    out_dtypes: list[str]


def lower_graph(g: Graph, target: str, isa: CpuIsa | None = None) -> Lowered:
    """bitpress Graph -> Relax IRModule: `main(*inputs, *params)` returning a tuple of outputs.

    `isa` (llvm) picks the CPU kernels' data layouts (e.g. the int8 dot micro-kernel).
    """
    from tvm import relax

    bb = relax.BlockBuilder()
    ctx = LowerContext(bb=bb, target=target, graph=g, isa=isa)
    _CURRENT.append(ctx)
    try:
        return _lower_graph(g, target, ctx)
    finally:
        _CURRENT.pop()


def _lower_graph(g: Graph, target: str, ctx: LowerContext) -> Lowered:
    from tvm import relax

    bb = ctx.bb
    env: dict[int, Any] = {}
    inputs = []
    for i, v in enumerate(g.inputs):
        # symbolic dims become the function's int64 size vars (R.Tensor(("batch", 16)))
        var = relax.Var(f"in{i}", relax.TensorType(ctx.dims(v.shape), _relax_dtype(v.dtype)))
        env[id(v)] = var
        inputs.append(var)

    def arg(v: Value | None) -> Any:
        if v is None:
            return None
        if id(v) in env:
            return env[id(v)]
        if v.is_const:
            return ctx.store_param(v)
        raise LoweringError(f"value {v.name} is used before it is defined")

    with bb.function("main"):
        with bb.dataflow():
            for n in g.nodes:
                fn = get_lowering(n.op, target)
                args = [arg(v) for v in n.inputs]
                try:
                    res = fn(ctx, n, args)
                except (LoweringError, ValueError) as e:
                    raise LoweringError(f"node {n.name} ({n.op}): {e}") from None
                except Exception as e:  # TVM raises its own error types from C++
                    lines = str(e).strip().splitlines()
                    raise LoweringError(
                        f"node {n.name} ({n.op}): TVM rejected the lowering: {lines[-1] if lines else type(e).__name__}"
                    ) from None
                outs = list(res) if isinstance(res, (list, tuple)) else [res]
                if len(outs) != len(n.outputs):
                    raise LoweringError(f"node {n.name} ({n.op}): lowering gave {len(outs)} outputs, node has {len(n.outputs)}")
                for o, e in zip(n.outputs, outs, strict=True):
                    _check_type(ctx, n.name, n.op, o, e)
                    env[id(o)] = e
            outs = [arg(o) for o in g.outputs]
            # a graph output that is an input or a parameter still needs a fresh binding
            out = bb.emit_output(relax.Tuple(outs))
        params = [p for p, _ in ctx.params]
        bb.emit_func_output(out, params=inputs + params)
    mod = bb.get()
    return Lowered(mod, ctx, [o.dtype for o in g.outputs])


def _host_triple() -> str:
    from tvm.target import codegen

    return str(codegen.llvm_get_system_triple())


def _check_type(ctx: LowerContext, node: str, op: str, o: Value, e: Any) -> None:
    from tvm import sym as arith
    from tvm import tirx

    si = e.ty
    want = _relax_dtype(o.dtype)
    got = getattr(si, "shape", None)
    ok = got is not None and len(got) == o.ndim and str(si.dtype) == want
    if ok and o.type.is_static:
        ok = all(isinstance(d, tirx.IntImm) and int(d) == w for d, w in zip(got, o.shape, strict=True))
    elif ok:
        ana = arith.Analyzer()
        ok = all(ana.can_prove_equal(d, w) for d, w in zip(got, ctx.dims(o.shape), strict=True))
    if not ok:
        shape = None if got is None else [str(d) for d in got]
        raise LoweringError(f"node {node} ({op}): lowering produced {shape} {si.dtype}, the IR says {[str(d) for d in o.shape]} {want}")


def _relax_dtype(d: str) -> str:
    return str(to_torch_dtype(d)).removeprefix("torch.")


# ---------------------------------------------------------------------------- build


def _legalize(mod: Any, tgt: Any) -> Any:
    import tvm
    from tvm import relax

    with tgt:
        seq = tvm.transform.Sequential(
            [
                relax.backend.DispatchSampling(),
                relax.backend.DispatchSortScan(),
                relax.transform.LegalizeOps(),
                relax.transform.AnnotateTIROpPattern(),
                relax.transform.FoldConstant(),
                relax.transform.FuseOps(),
                relax.transform.FuseTIR(),
                relax.transform.DeadCodeElimination(),
            ]
        )
        return seq(mod)


def _finalize_pipeline(tgt: Any) -> Any:
    import tvm
    from tvm import relax

    passes = [
        relax.transform.RewriteDataflowReshape(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
        relax.transform.StaticPlanBlockMemory(),
        relax.transform.LowerAllocTensor(),
        relax.transform.KillAfterLastUse(),
        relax.transform.LowerRuntimeBuiltin(),
        relax.transform.ComputePrimValue(),
        relax.transform.VMShapeLower(),
        relax.transform.AttachGlobalSymbol(),
    ]
    return tvm.transform.Sequential(passes)


def build_module(g: Graph, target: str, options: BuildOptions) -> tuple[Any, Lowered, dict[str, Any]]:
    """Lower, schedule and compile; returns (tvm Executable, Lowered, info)."""
    import tvm

    from bitpress.schedules import apply_default_schedules, tune_and_apply

    info: dict[str, Any] = {"runtime": f"tvm {tvm.__version__} relax vm", "target": target}
    extra = dict(options.extra)
    tgt = make_target(target, extra)
    info["tvm_target"] = str(tgt)
    isa = None
    if target == "llvm":
        isa = CpuIsa.of(tgt)
        info["cpu"] = isa.describe()
        info["mcpu"] = isa.mcpu
        info["target_triple"] = str(tgt.attrs.get("mtriple", "") or "") or _host_triple()
        info["cpu_features"] = ",".join(required_features(tgt))
    t0 = time.perf_counter()
    low = lower_graph(g, target, isa)
    mod = _legalize(low.mod, tgt)
    info["lower_seconds"] = round(time.perf_counter() - t0, 3)
    if options.tune > 0:
        t1 = time.perf_counter()
        mod, tinfo = tune_and_apply(
            mod,
            tgt,
            trials=options.tune,
            cache_dir=options.cache_dir,
            quiet=options.quiet,
            isolated=bool(extra.get("tune_isolated", False)),
            hints=low.ctx.hints,
        )
        info.update(tinfo)
        info["tune_seconds"] = round(time.perf_counter() - t1, 3)
    t2 = time.perf_counter()
    mod, sinfo = apply_default_schedules(mod, tgt, low.ctx.hints)
    info.update(sinfo)
    ex = tvm.compile(mod, tgt, relax_pipeline=_finalize_pipeline(tgt))
    info["compile_seconds"] = round(time.perf_counter() - t2, 3)
    info["params"] = len(low.ctx.params)
    return ex, low, info


# ---------------------------------------------------------------------------- run


@dataclass
class TvmExecutable:
    target: str
    module: Any  # runtime module (Executable or loaded library)
    param_refs: list[ParamRef]
    params_torch: list[torch.Tensor]
    out_dtypes: list[str]
    derived: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    _vm: Any = None
    _dev: Any = None
    _params: list[Any] = field(default_factory=list)

    def _ensure_vm(self) -> None:
        # Made on first run, so a CUDA build can be compiled and saved on a machine without a GPU.
        if self._vm is not None:
            return
        import tvm
        from tvm import relax

        if self.target == "llvm" and self.info.get("cpu_features"):
            check_runnable(str(self.info["cpu_features"]).split(","), what="this llvm build", mcpu=str(self.info.get("mcpu", "")))
        self._dev = tvm.cpu(0) if self.target == "llvm" else tvm.cuda(0)
        if not self._dev.exist:
            raise RuntimeError(f"target {self.target}: no {self.target} device on this machine to run the compiled model")
        self._vm = relax.VirtualMachine(self.module, self._dev)
        self._params = [self._to_dev(t) for t in self.params_torch]

    def _to_dev(self, t: torch.Tensor) -> Any:
        import tvm

        t = t.detach().contiguous()
        if self.target == "llvm":
            if t.dtype == torch.bfloat16:
                from bitpress.backends.tvm.lowering import _to_numpy

                return tvm.runtime.tensor(_to_numpy(t), self._dev)
            if t.data_ptr() % 64:  # TVM needs 64-byte aligned data; fresh torch allocations are
                t = t.clone()
            return tvm.runtime.from_dlpack(t)
        from bitpress.backends.tvm.lowering import _to_numpy

        return tvm.runtime.tensor(_to_numpy(t), self._dev)

    def run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        self._ensure_vm()
        args = [self._to_dev(x) for x in inputs]
        res = self._vm["main"](*args, *self._params)
        outs = [res[i] for i in range(len(res))]
        return [_to_torch(o, d) for o, d in zip(outs, self.out_dtypes, strict=True)]

    def save(self, directory: Path) -> list[str]:
        directory = Path(directory)
        self.module.export_library(str(directory / LIB_FILE))
        files = [LIB_FILE, META_FILE]
        if self.derived:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in self.derived.items()}, str(directory / DERIVED_FILE))
            files.append(DERIVED_FILE)
        meta = {
            "target": self.target,
            "params": [[r.kind, r.key, r.transform] for r in self.param_refs],
            "out_dtypes": self.out_dtypes,
            "info": {k: v for k, v in self.info.items() if isinstance(v, (str, int, float, bool))},
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=1))
        return files


def _to_torch(o: Any, dtype: str) -> torch.Tensor:
    want = to_torch_dtype(dtype)
    try:
        t = torch.from_dlpack(o)
    except Exception:
        t = torch.from_numpy(o.numpy())
    if t.device.type != "cpu":
        t = t.cpu()
    return t if t.dtype == want else t.to(want)


class TvmBackend:
    """Targets "llvm" (alias "cpu") and "cuda"."""

    name = "tvm"
    symbolic_shapes = True  # Relax size vars; a lowering without symbolic support raises LoweringError

    def supported_ops(self, target: str) -> set[str]:
        return lowered_ops(target)

    def build(self, g: Graph, target: str, options: BuildOptions) -> TvmExecutable:
        parse_options(TvmOptions, options.extra, "TVM")  # unknown keys fail here (options.py lists the valid ones)
        try:
            ex, low, info = build_module(g, target, options)
        except LoweringError:
            raise
        except Exception as e:
            if not is_dynamic(g):
                raise
            # a kernel whose schedule needs static extents (e.g. a tensorized one): the caller
            # builds the example's shapes instead and reports it
            lines = str(e).strip().splitlines()
            raise LoweringError(
                f"TVM cannot build a kernel with symbolic shapes ({type(e).__name__}: {lines[0] if lines else ''})"
            ) from None
        refs = [r for _, r in low.ctx.params]
        tensors = param_tensors(low.ctx.params, g.store, low.ctx.derived)
        return TvmExecutable(target, ex, refs, tensors, low.out_dtypes, dict(low.ctx.derived), info)

    def load(self, directory: Path, g: Graph, target: str) -> TvmExecutable:
        import tvm

        directory = Path(directory)
        try:
            meta = json.loads((directory / META_FILE).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{directory}: cannot read {META_FILE}: {e}") from None
        derived: dict[str, torch.Tensor] = {}
        if (directory / DERIVED_FILE).is_file():
            from safetensors.torch import load_file

            derived = load_file(str(directory / DERIVED_FILE))
        refs = [ParamRef(*p) for p in meta["params"]]
        missing = [r.key for r in refs if (r.kind == "store" and r.key not in g.store) or (r.kind == "derived" and r.key not in derived)]
        if missing:
            raise ValueError(f"{directory}: artifact lacks parameters {missing[:5]}")
        tensors = [r.resolve(g.store, derived) for r in refs]
        info = dict(meta.get("info", {}))
        if target == "llvm" and info.get("cpu_features"):
            # before loading the library: its static initializers may already use the features
            check_runnable(str(info["cpu_features"]).split(","), what=f"artifact {directory}", mcpu=str(info.get("mcpu", "")))
        lib = tvm.runtime.load_module(str(directory / LIB_FILE))
        info["loaded_from"] = str(directory)
        return TvmExecutable(target, lib, refs, tensors, list(meta["out_dtypes"]), derived, info)


def generated_source(exe: TvmExecutable, kind: str = "cuda") -> str:
    """The device source TVM generated for `exe` (e.g. the CUDA C of a "cuda" build)."""
    found: list[str] = []

    def walk(m: Any) -> None:
        if getattr(m, "kind", None) == kind:
            found.append(m.inspect_source())
        for im in m.imports:
            walk(im)

    walk(exe.module.mod if hasattr(exe.module, "mod") else exe.module)
    if not found:
        raise ValueError(f"no {kind} module in this executable (target {exe.target})")
    return "\n".join(found)
