"""Static memory plan: one arena, sized at compile time from value lifetimes.

Every run-time tensor (graph inputs, node outputs, per-node scratch) is a buffer with a lifetime
[first step, last step] over the node order.  Layout ops alias their input; elementwise ops
that may overwrite their input (see `IN_PLACE`) reuse its buffer when the input dies there.
Buffers whose lifetimes overlap interfere (a networkx graph); they are placed greedily, largest
first, at the lowest aligned offset clear of every placed neighbour (TFLite Micro's greedy plan).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from bitpress.compiler.ir import Graph, Value

__all__ = ["ALIAS_OPS", "IN_PLACE", "Buffer", "MemoryPlan", "plan_memory"]

ALIGN = 16
ALIAS_OPS = frozenset({"reshape", "flatten", "squeeze", "unsqueeze", "dropout", "identity"})
# ops whose kernel reads x[i] before writing y[i] at a byte offset <= x[i]'s (same or smaller element)
IN_PLACE = frozenset({"lut_int8", "quantize_act", "relu", "gelu", "sigmoid", "tanh", "silu", "add", "sub", "mul", "div"})


@dataclass
class Buffer:
    name: str
    size: int
    start: int
    end: int
    offset: int = -1
    values: list[str] = field(default_factory=list)


@dataclass
class MemoryPlan:
    buffers: list[Buffer]
    offsets: dict[str, int]  # value name -> arena offset (aliases included)
    scratch: dict[tuple[str, int], int]  # (node name, index) -> arena offset
    peak: int

    def to_dict(self) -> dict[str, object]:
        return {
            "arena_bytes": self.peak,
            "buffers": [{"values": b.values, "bytes": b.size, "offset": b.offset, "live": [b.start, b.end]} for b in self.buffers],
        }


def _nbytes(v: Value) -> int:
    return v.type.nbytes


def plan_memory(g: Graph, scratch: dict[str, list[int]] | None = None) -> MemoryPlan:
    """Plan the arena for `g`; `scratch[node name]` lists per-node workspace sizes in bytes."""
    scratch = scratch or {}
    nodes = list(g.nodes)
    step = {n: i for i, n in enumerate(nodes)}
    end_step = len(nodes)
    root: dict[int, Buffer] = {}
    buffers: list[Buffer] = []

    def new(v: Value, start: int) -> Buffer:
        b = Buffer(v.name, _nbytes(v), start, start, values=[v.name])
        buffers.append(b)
        root[id(v)] = b
        return b

    def use(v: Value | None, at: int) -> None:
        if v is not None and id(v) in root:
            b = root[id(v)]
            b.end = max(b.end, at)

    for v in g.inputs:
        new(v, 0)
    last_use: dict[int, int] = {}
    for n in nodes:
        for v in n.inputs:
            if v is not None:
                last_use[id(v)] = step[n]
    outs = {id(o) for o in g.outputs}
    for n in nodes:
        i = step[n]
        for v in n.inputs:
            use(v, i)
        x = n.inputs[0] if n.inputs else None
        if x is not None and not x.is_const and id(x) in root and len(n.outputs) == 1:
            o = n.output
            b = root[id(x)]
            aliasing = n.op in ALIAS_OPS
            dies_here = last_use.get(id(x)) == i and id(x) not in outs and _shares(b, root, x, last_use, i)
            in_place = n.op in IN_PLACE and dies_here and _nbytes(o) <= _nbytes(x) and o.shape == x.shape
            if aliasing or in_place:
                root[id(o)] = b
                b.values.append(o.name)
                continue
        for o in n.outputs:
            new(o, i)
        for j, size in enumerate(scratch.get(n.name, [])):
            buffers.append(Buffer(f"{n.name}#scratch{j}", size, i, i))
    for o in g.outputs:
        use(o, end_step)

    conflicts = nx.Graph()
    conflicts.add_nodes_from(range(len(buffers)))
    order = sorted(range(len(buffers)), key=lambda k: buffers[k].start)
    for a_i, a in enumerate(order):
        for b in order[a_i + 1 :]:
            if buffers[b].start > buffers[a].end:
                break
            conflicts.add_edge(a, b)
    peak = 0
    for k in sorted(range(len(buffers)), key=lambda k: (-buffers[k].size, buffers[k].start)):
        b = buffers[k]
        taken = sorted((buffers[j].offset, buffers[j].offset + buffers[j].size) for j in conflicts[k] if buffers[j].offset >= 0)
        off = 0
        for lo, hi in taken:
            if off + b.size <= lo:
                break
            off = max(off, -(-hi // ALIGN) * ALIGN)
        b.offset = off
        peak = max(peak, off + b.size)
    offsets: dict[str, int] = {}
    scratch_off: dict[tuple[str, int], int] = {}
    for b in buffers:
        if "#scratch" in b.name:
            node, j = b.name.split("#scratch")
            scratch_off[(node, int(j))] = b.offset
        for name in b.values:
            offsets[name] = b.offset
    return MemoryPlan(buffers, offsets, scratch_off, peak)


def _shares(b: Buffer, root: dict[int, Buffer], x: Value, last_use: dict[int, int], i: int) -> bool:
    """x's buffer holds no other value still needed after step i (aliases of x included)."""
    g = x.graph
    for v in [*g.inputs, *(o for n in g.nodes for o in n.outputs)]:
        if v is not x and root.get(id(v)) is b and last_use.get(id(v), -1) > i:
            return False
    return not any(root.get(id(o)) is b and o is not x for o in g.outputs)
