"""Graph serialization: structure as JSON, constants as safetensors."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from bitpress.compiler.ir import Graph, IRError, Node, SymDim, TensorType, Value

__all__ = ["graph_from_json", "graph_to_json", "load_graph", "save_graph"]

FORMAT = "bitpress-graph/1"


def _dim_json(d: Any) -> Any:
    if isinstance(d, SymDim):
        return {"sym": d.expr, "min": d.min, "max": d.max}
    return d


def _dim_unjson(d: Any) -> Any:
    if isinstance(d, dict):
        if set(d) != {"sym", "min", "max"}:
            raise IRError(f"bad dim {d!r}: expected an int or {{sym, min, max}}")
        return SymDim(str(d["sym"]), int(d["min"]), None if d["max"] is None else int(d["max"]))
    if not isinstance(d, int):
        raise IRError(f"bad dim {d!r}: expected an int or {{sym, min, max}}")
    return d


def _jsonable(x: Any) -> Any:
    if isinstance(x, SymDim):
        return _dim_json(x)
    if isinstance(x, tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, list):
        return [_jsonable(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, float) and not math.isfinite(x):
        return {"float": repr(x)}
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, torch.Tensor) and x.numel() <= 16:
        return {"tensor": x.tolist(), "dtype": str(x.dtype).removeprefix("torch.")}
    return str(x)


def _unjson(x: Any) -> Any:
    if isinstance(x, dict):
        if set(x) == {"float"}:
            return float(x["float"])
        if set(x) == {"sym", "min", "max"}:
            return _dim_unjson(x)
        if set(x) == {"tensor", "dtype"}:
            return torch.tensor(x["tensor"], dtype=getattr(torch, x["dtype"]))
        return {k: _unjson(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_unjson(v) for v in x]
    return x


def _t(t: TensorType) -> dict[str, Any]:
    return {"shape": [_dim_json(d) for d in t.shape], "dtype": t.dtype}


def _type(d: dict[str, Any]) -> TensorType:
    return TensorType(tuple(_dim_unjson(x) for x in d["shape"]), d["dtype"])


def graph_to_json(g: Graph) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "inputs": [{"name": v.name, **_t(v.type)} for v in g.inputs],
        "consts": [{"name": v.name, **_t(v.type)} for v in g.consts.values()],
        "nodes": [
            {
                "op": n.op,
                "name": n.name,
                "inputs": [None if v is None else v.name for v in n.inputs],
                "attrs": _jsonable(n.attrs),
                "outputs": [{"name": o.name, **_t(o.type)} for o in n.outputs],
                "meta": _jsonable({k: v for k, v in n.meta.items() if not k.startswith("_")}),
            }
            for n in g.nodes
        ],
        "outputs": [v.name for v in g.outputs],
        "meta": _jsonable(g.meta),
    }


def graph_from_json(d: dict[str, Any], store: dict[str, torch.Tensor]) -> Graph:
    if d.get("format") != FORMAT:
        raise IRError(f"not a bitpress graph (format {d.get('format')!r}, expected {FORMAT!r})")
    g = Graph()
    g.meta = _unjson(d.get("meta", {}))
    env: dict[str, Value] = {}
    for i in d["inputs"]:
        env[i["name"]] = g.add_input(i["name"], _type(i))
    for c in d["consts"]:
        if c["name"] not in store:
            raise IRError(f"constant {c['name']} missing from the weights file")
        v = Value(g, c["name"], _type(c), "const")
        g._names.add(v.name)
        g.store[v.name] = store[c["name"]]
        g.consts[v.name] = v
        env[v.name] = v
    for nd in d["nodes"]:
        try:
            ins = [None if n is None else env[n] for n in nd["inputs"]]
        except KeyError as e:
            raise IRError(f"node {nd['name']} reads undefined value {e}") from None
        node = Node(g, nd["op"], ins, _unjson(nd["attrs"]), nd["name"])
        g._names.add(node.name)
        node.meta = _unjson(nd.get("meta", {}))
        for k, o in enumerate(nd["outputs"]):
            ov = Value(g, o["name"], _type(o), "node", node, k)
            node.outputs.append(ov)
            env[ov.name] = ov
        for iv in ins:
            if iv is not None:
                iv.users[node] = None
        g._link(node, None)
    g.outputs = [env[n] for n in d["outputs"]]
    g.verify()
    return g


def save_graph(g: Graph, directory: Path) -> list[str]:
    """Write graph.json and weights.safetensors into `directory`; returns the file names."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "graph.json").write_text(json.dumps(graph_to_json(g), indent=1))
    tensors = {k: v.contiguous().clone() if v.data_ptr() in _shared_ptrs(g) else v.contiguous() for k, v in g.store.items()}
    save_file(tensors, str(directory / "weights.safetensors"))
    return ["graph.json", "weights.safetensors"]


def _shared_ptrs(g: Graph) -> set[int]:
    seen: dict[int, int] = {}
    for t in g.store.values():
        seen[t.data_ptr()] = seen.get(t.data_ptr(), 0) + 1
    return {p for p, c in seen.items() if c > 1 and p != 0}


def load_graph(directory: Path) -> Graph:
    d = json.loads((directory / "graph.json").read_text())
    store = load_file(str(directory / "weights.safetensors"))
    return graph_from_json(d, store)
