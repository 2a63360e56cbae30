"""Build an ONNX model from a Graph, check it, and run it with onnxruntime."""

from __future__ import annotations

import importlib
import logging
import math
import pkgutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper

from bitpress.backends.onnx.lowering import (
    OPSET,
    OnnxLowerContext,
    get_onnx_lowering,
    make_tensor,
    onnx_dtype,
    onnx_lowered_ops,
)
from bitpress.compiler.ir import Graph, SymDim, Value, is_packed
from bitpress.compiler.target import BuildOptions, LoweringError, parse_options

__all__ = ["OnnxBackend", "OnnxExecutable", "initializer_bytes", "lower_to_onnx"]

log = logging.getLogger("bitpress.backends.onnx")
MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
IR_VERSION = 10  # the IR version that goes with opset 21
_PROTO_LIMIT = 1_800_000_000  # below protobuf's 2 GiB; larger models keep weights in DATA_FILE
_LOADED = False


def _import_lowerings() -> None:
    """Import every `lower_*.py` module of this package (each registers its lowerings)."""
    global _LOADED
    if _LOADED:
        return
    pkg = importlib.import_module("bitpress.backends.onnx")
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("lower_"):
            importlib.import_module(f"bitpress.backends.onnx.{info.name}")
    _LOADED = True


def _value_info(name: str, v: Value) -> onnx.ValueInfoProto:
    if is_packed(v.dtype):
        return helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, [v.type.nbytes])
    # symbolic dims are dim_params ("batch"): dynamic axes of the emitted model
    return helper.make_tensor_value_info(name, onnx_dtype(v.dtype), [d if isinstance(d, int) else str(d) for d in v.shape])


def _const_tensor(v: Value, name: str) -> Any:
    # packed constants go in as the flat uint8 bytes of the store (lowerings that want
    # ONNX int4 tensors or another layout emit their own initializer from node attrs)
    return lambda: make_tensor(v.value, name)


def lower_to_onnx(g: Graph, *, opset: int = OPSET) -> onnx.ModelProto:
    """Lower `g` to an ONNX model; raises LoweringError listing every op without a lowering."""
    _import_lowerings()
    missing: dict[str, list[str]] = {}
    for n in g.nodes:
        if get_onnx_lowering(n.op) is None:
            missing.setdefault(n.op, []).append(n.name)
    if missing:
        parts = [
            f"op '{op}' at {', '.join(ns[:3])}" + (f" (+{len(ns) - 3} more)" if len(ns) > 3 else "") for op, ns in sorted(missing.items())
        ]
        raise LoweringError("target onnx cannot lower: " + "; ".join(parts))
    ctx = OnnxLowerContext(opset)
    env: dict[int, str] = {}
    inputs = []
    for v in g.inputs:
        name = ctx.fresh(v.name)
        env[id(v)] = name
        inputs.append(_value_info(name, v))
        for axis, d in enumerate(v.shape):
            if isinstance(d, SymDim) and d.is_symbol:
                ctx.sym_sources.setdefault(d.expr, (name, axis))
    for v in g.consts.values():
        name = ctx.fresh(v.name)
        env[id(v)] = name
        ctx.add_lazy_initializer(name, _const_tensor(v, name))
    for n in g.nodes:
        fn = get_onnx_lowering(n.op)
        assert fn is not None
        ctx.node = n
        ins = [None if v is None else env[id(v)] for v in n.inputs]
        try:
            outs = fn(ctx, n, ins)
        except (ValueError, NotImplementedError) as e:
            raise LoweringError(f"target onnx cannot lower node {n.name} ({n.op}): {e}") from None
        if len(outs) != len(n.outputs):
            raise LoweringError(f"ONNX lowering of {n.op} returned {len(outs)} outputs for node {n.name}, which has {len(n.outputs)}")
        for o, name in zip(n.outputs, outs):
            env[id(o)] = name
    ctx.node = None
    outputs = []
    taken: set[str] = set()
    graph_in = {i.name for i in inputs}
    for i, o in enumerate(g.outputs):
        name = env[id(o)]
        if name in taken or name in graph_in or name in ctx.lazy_initializers or name in ctx.initializers:
            name = ctx.add_node("Identity", [name], name_hint=f"output_{i}")[0]
        taken.add(name)
        outputs.append(_value_info(name, o))
    used = {i for node in ctx.nodes for i in node.input} | taken
    inits = [t for name, t in ctx.initializers.items() if name in used]
    inits += [make() for name, make in ctx.lazy_initializers.items() if name in used]
    graph = helper.make_graph(ctx.nodes, "bitpress", inputs, outputs, initializer=inits)
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in sorted(ctx.domains.items())]
    model = helper.make_model(graph, opset_imports=imports, producer_name="bitpress", ir_version=IR_VERSION)
    return model


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the model's initializers as stored (INT4/UINT4 pack two elements per byte)."""
    total = 0
    for t in model.graph.initializer:
        n = math.prod(t.dims)
        if t.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            total += (n + 1) // 2
        else:
            total += n * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    return total


def _save_external(model: onnx.ModelProto, path: Path) -> None:
    """Save with weights in DATA_FILE next to `path` (onnx converts the proto in place, so a copy goes)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=DATA_FILE)


def _is_large(model: onnx.ModelProto) -> bool:
    """Too big for one protobuf message (weights must go to an external data file)."""
    return initializer_bytes(model) >= _PROTO_LIMIT


def _check(model: onnx.ModelProto, data: bytes | None) -> None:
    """onnx.checker on the serialized model (or, when large, on a saved copy with external data)."""
    try:
        if data is not None:
            onnx.checker.check_model(data)
        else:
            with tempfile.TemporaryDirectory() as d:
                p = Path(d) / MODEL_FILE
                _save_external(model, p)
                onnx.checker.check_model(str(p))
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0]
        raise LoweringError(f"emitted ONNX model fails onnx.checker: {first}") from None


class OnnxExecutable:
    """An ONNX model and the onnxruntime session that runs it."""

    def __init__(
        self,
        model: onnx.ModelProto,
        g: Graph,
        options: dict[str, Any] | None = None,
        path: Path | None = None,
        data: bytes | None = None,
    ) -> None:
        import onnxruntime as ort

        self.model = model
        self.graph = g
        opts = dict(options or {})
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if "threads" in opts:
            threads = opts["threads"]
            if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
                raise ValueError(f"options['threads'] must be an int >= 0 (0: onnxruntime's default), got {threads!r}")
            so.intra_op_num_threads = threads
        levels = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        level = opts.get("onnx_optimization", "all")
        if level not in levels:
            raise ValueError(f"options['onnx_optimization'] must be one of {sorted(levels)}, got {level!r}")
        so.graph_optimization_level = levels[level]
        providers = list(opts.get("providers", ["CPUExecutionProvider"]))
        unknown = [p for p in providers if p not in ort.get_available_providers()]
        if unknown:
            raise ValueError(f"options['providers']: {unknown} not available; onnxruntime has {ort.get_available_providers()}")
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if path is not None:
            src: Any = str(path)
            size = path.stat().st_size + (path.with_name(DATA_FILE).stat().st_size if path.with_name(DATA_FILE).is_file() else 0)
        elif data is not None or not _is_large(model):
            src = data if data is not None else model.SerializeToString()
            size = len(src)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="bitpress-onnx-")
            src = str(Path(self._tmp.name) / MODEL_FILE)
            _save_external(model, Path(src))
            size = sum(f.stat().st_size for f in Path(self._tmp.name).iterdir())
        self.session = ort.InferenceSession(src, so, providers=providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.info: dict[str, Any] = {
            "runtime": f"onnxruntime {ort.__version__}",
            "providers": self.session.get_providers(),
            "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
            "onnx_nodes": len(model.graph.node),
            "onnx_ops": sorted({n.op_type for n in model.graph.node}),
            "initializer_bytes": initializer_bytes(model),
            "model_bytes": size,
        }

    def run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        feeds = {name: _np(t) for name, t in zip(self.input_names, inputs)}
        outs = self.session.run(self.output_names, feeds)
        return [torch.from_numpy(o if o.flags.c_contiguous else o.copy()) for o in outs]

    def save(self, directory: Path) -> list[str]:
        if not _is_large(self.model):
            onnx.save_model(self.model, str(directory / MODEL_FILE))
            return [MODEL_FILE]
        _save_external(self.model, directory / MODEL_FILE)
        return [MODEL_FILE, DATA_FILE]


def _np(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        raise ValueError("onnxruntime inputs cannot be bfloat16 from numpy; cast the input to float32")
    return t.numpy()


@dataclass(frozen=True)
class OnnxOptions:
    """`compile(..., target="onnx", options={...})`: onnxruntime session settings.

    threads: intra-op threads (0: onnxruntime's default).  onnx_optimization: graph optimization
    level ("none", "basic", "extended", "all").  providers: execution providers, in order.
    """

    threads: int = 0
    onnx_optimization: str = "all"
    providers: tuple[str, ...] | list[str] = ("CPUExecutionProvider",)


class OnnxBackend:
    symbolic_shapes = True  # dim_params on the inputs/outputs; shape operands computed from Shape at run time
    """target "onnx": IR -> ONNX (opset 21, com.microsoft contrib ops) -> onnxruntime."""

    name = "onnx"

    def supported_ops(self, target: str) -> set[str]:
        _import_lowerings()
        return onnx_lowered_ops()

    def build(self, g: Graph, target: str, options: BuildOptions) -> OnnxExecutable:
        parse_options(OnnxOptions, options.extra, "ONNX")  # unknown keys fail here; values are checked by OnnxExecutable
        model = lower_to_onnx(g)
        data = None if _is_large(model) else model.SerializeToString()
        _check(model, data)
        return OnnxExecutable(model, g, options.extra, data=data)

    def load(self, directory: Path, g: Graph, target: str) -> OnnxExecutable:
        path = Path(directory) / MODEL_FILE
        model = onnx.load_model(str(path), load_external_data=True)
        return OnnxExecutable(model, g, path=path)
