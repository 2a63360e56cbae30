"""bitpress IR: a graph of nodes in SSA form over typed values.

A `Graph` owns an ordered (doubly linked) list of `Node`s, its input `Value`s, its
output `Value`s and a tensor store holding every constant.  Each `Value` is defined
exactly once: by a graph input, by a constant in the store, or as an output of one
node.  Values know their users, so replacing all uses and dead-code elimination are
O(uses).

Packed storage types (int4, int3, int2, int1 and their unsigned forms) describe a
constant whose store entry is a flat uint8 tensor of packed bytes; the TensorType
holds the logical shape, so `pack_bits` / `unpack_bits` round-trip it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from bitpress.compiler.symbolic import Dim, SymDim, evaluate, has_symbolic, resolve

__all__ = [
    "DTYPES",
    "PACKED_BITS",
    "Dim",
    "Graph",
    "IRError",
    "Node",
    "SymDim",
    "TensorType",
    "Value",
    "dtype_bits",
    "input_dims",
    "is_dynamic",
    "is_packed",
    "pack_bits",
    "specialize",
    "to_torch_dtype",
    "unpack_bits",
]


class IRError(ValueError):
    """A malformed graph, type or value (raised by the verifier and builders)."""


_TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
# Packed sub-byte storage: name -> (bits, signed).
PACKED_BITS: dict[str, tuple[int, bool]] = {
    "int4": (4, True),
    "uint4": (4, False),
    "int3": (3, True),
    "uint3": (3, False),
    "int2": (2, True),
    "uint2": (2, False),
    "uint1": (1, False),
}
DTYPES: frozenset[str] = frozenset(_TORCH_DTYPES) | frozenset(PACKED_BITS)
_FROM_TORCH = {v: k for k, v in _TORCH_DTYPES.items()}


def to_torch_dtype(dtype: str) -> torch.dtype:
    """The torch dtype a value of `dtype` has at run time (packed types run as uint8 bytes)."""
    if dtype in PACKED_BITS:
        return torch.uint8
    try:
        return _TORCH_DTYPES[dtype]
    except KeyError:
        raise IRError(f"unknown dtype {dtype!r}; known: {sorted(DTYPES)}") from None


def from_torch_dtype(dtype: torch.dtype) -> str:
    try:
        return _FROM_TORCH[dtype]
    except KeyError:
        raise IRError(f"unsupported torch dtype {dtype}") from None


def is_packed(dtype: str) -> bool:
    return dtype in PACKED_BITS


def dtype_bits(dtype: str) -> int:
    if dtype in PACKED_BITS:
        return PACKED_BITS[dtype][0]
    if dtype == "bool":
        return 8
    return torch.finfo(_TORCH_DTYPES[dtype]).bits if _TORCH_DTYPES[dtype].is_floating_point else torch.iinfo(_TORCH_DTYPES[dtype]).bits


@dataclass(frozen=True, slots=True)
class TensorType:
    """Shape and element type of a value.

    Dims are ints (static) or `SymDim`s (a named size such as `batch` with a range, or an
    expression over names such as `2*batch`); constants are always static.
    """

    shape: tuple[Dim, ...]
    dtype: str

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise IRError(f"unknown dtype {self.dtype!r}; known: {sorted(DTYPES)}")
        for d in self.shape:
            if not isinstance(d, (int, SymDim)) or isinstance(d, bool):
                raise IRError(f"shape {self.shape}: dim {d!r} is neither an int nor a SymDim")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def numel(self) -> Dim:
        """Element count: an int, or a symbolic expression when a dim is symbolic."""
        if self.is_static:
            return math.prod(self.static_shape())
        n: Dim = 1
        for d in self.shape:
            n = n * d
        return n

    @property
    def nbytes(self) -> int:
        """Bytes as stored: packed types use ceil(numel * bits / 8)."""
        n = self.numel
        if not isinstance(n, int):
            raise IRError(f"{self} has a symbolic shape: its size in bytes is not known before run time")
        return math.ceil(n * dtype_bits(self.dtype) / 8)

    def static_shape(self) -> tuple[int, ...]:
        """The shape as ints; raises IRError naming the symbolic dims."""
        if not self.is_static:
            raise IRError(f"{self} has symbolic dims where a static shape is needed")
        return tuple(d for d in self.shape if isinstance(d, int))

    @property
    def static_numel(self) -> int:
        """Element count of a static type (constants); raises IRError for a symbolic one."""
        return math.prod(self.static_shape())

    def resolve(self, env: dict[str, int]) -> TensorType:
        """This type with its symbolic dims bound to sizes."""
        return TensorType(tuple(evaluate(d, env) for d in self.shape), self.dtype)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.shape))}]"

    @staticmethod
    def of(t: torch.Tensor) -> TensorType:
        return TensorType(tuple(t.shape), from_torch_dtype(t.dtype))


# ----------------------------------------------------------------------------- packing


def pack_bits(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes into a flat uint8 tensor, little-endian within each byte.

    `q` holds codes in [0, 2**bits) (unsigned storage; signed types store two's complement
    low bits).  Codes are laid out along the flattened tensor; 3-bit codes cross byte
    boundaries (a bit stream), the others pack 8 // bits codes per byte.
    """
    if bits not in (1, 2, 3, 4, 8):
        raise IRError(f"cannot pack {bits}-bit codes")
    flat = q.reshape(-1).to(torch.int64) & ((1 << bits) - 1)
    if bits == 8:
        return flat.to(torch.uint8)
    if bits == 3:
        n = flat.numel()
        pad = (-n) % 8
        flat = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, 8)
        # 8 codes of 3 bits -> 24 bits -> 3 bytes
        word = (flat << (torch.arange(8, dtype=torch.int64) * 3)).sum(-1)
        out = torch.stack([(word >> s) & 0xFF for s in (0, 8, 16)], -1).reshape(-1)
        return out[: math.ceil(n * 3 / 8)].to(torch.uint8)
    per = 8 // bits
    pad = (-flat.numel()) % per
    flat = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, per)
    shifts = torch.arange(per, dtype=torch.int64) * bits
    return (flat << shifts).sum(-1).to(torch.uint8)


def unpack_bits(data: torch.Tensor, bits: int, shape: Sequence[int], signed: bool = False) -> torch.Tensor:
    """Inverse of `pack_bits`: codes as int8 (signed, sign-extended) or uint8, reshaped to `shape`."""
    n = math.prod(shape)
    b = data.reshape(-1).to(torch.int64)
    if bits == 8:
        codes = b[:n]
    elif bits == 3:
        pad = (-b.numel()) % 3
        b = torch.cat([b, b.new_zeros(pad)]).reshape(-1, 3)
        word = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        codes = ((word[:, None] >> (torch.arange(8) * 3)) & 7).reshape(-1)[:n]
    else:
        per = 8 // bits
        codes = ((b[:, None] >> (torch.arange(per) * bits)) & ((1 << bits) - 1)).reshape(-1)[:n]
    if signed:
        codes = torch.where(codes >= (1 << (bits - 1)), codes - (1 << bits), codes)
        return codes.to(torch.int8).reshape(tuple(shape))
    return codes.to(torch.uint8).reshape(tuple(shape))


# ----------------------------------------------------------------------------- values and nodes


class Value:
    """One SSA value: a graph input, a constant, or a node output."""

    __slots__ = ("graph", "index", "kind", "name", "producer", "type", "users")

    def __init__(self, graph: Graph, name: str, type: TensorType, kind: str, producer: Node | None = None, index: int = 0):
        self.graph = graph
        self.name = name
        self.type = type
        self.kind = kind  # "input" | "const" | "node"
        self.producer = producer
        self.index = index
        self.users: dict[Node, None] = {}  # ordered set

    # convenient views used by rules
    @property
    def shape(self) -> tuple[Dim, ...]:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    @property
    def ndim(self) -> int:
        return self.type.ndim

    @property
    def numel(self) -> Dim:
        return self.type.numel

    @property
    def is_const(self) -> bool:
        return self.kind == "const"

    @property
    def value(self) -> torch.Tensor:
        """The stored tensor of a constant (packed types: the uint8 bytes)."""
        if self.kind != "const":
            raise IRError(f"%{self.name} is not a constant")
        return self.graph.store[self.name]

    def __repr__(self) -> str:
        return f"%{self.name}:{self.type}"


class Node:
    """An operation: `outputs = op(inputs, **attrs)`.  `name` is the source module path."""

    __slots__ = ("_erased", "attrs", "graph", "inputs", "meta", "name", "next", "op", "outputs", "prev")

    def __init__(self, graph: Graph, op: str, inputs: list[Value | None], attrs: dict[str, Any], name: str):
        self.graph = graph
        self.op = op
        self.inputs = inputs
        self.attrs = attrs
        self.outputs: list[Value] = []
        self.name = name
        self.meta: dict[str, Any] = {}
        self.prev: Node | None = None
        self.next: Node | None = None
        self._erased = False

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise IRError(f"node {self.name} ({self.op}) has {len(self.outputs)} outputs")
        return self.outputs[0]

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    def __repr__(self) -> str:
        return f"Node({self.op} {self.name})"

    def replace_input(self, old: Value, new: Value) -> None:
        for i, v in enumerate(self.inputs):
            if v is old:
                self.inputs[i] = new
        old.users.pop(self, None)
        new.users[self] = None


class Graph:
    """A dataflow graph in SSA form.

    Example:
        >>> g = Graph()
        >>> x = g.add_input("x", TensorType((2, 3), "float32"))
        >>> w = g.add_const(torch.ones(4, 3), "w")
        >>> y = g.call("linear", [x, w, None])
        >>> g.set_outputs([y])
    """

    def __init__(self) -> None:
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.store: dict[str, torch.Tensor] = {}
        self.consts: dict[str, Value] = {}
        self.meta: dict[str, Any] = {}
        self._head: Node | None = None
        self._tail: Node | None = None
        self._names: set[str] = set()
        self._counter = itertools.count()
        self._len = 0
        self._insert_before: Node | None = None  # None: append at the end
        self.version = 0  # bumped by every mutation (keys cached analyses)

    # -- naming
    def _fresh(self, hint: str) -> str:
        hint = hint or "v"
        if hint not in self._names:
            self._names.add(hint)
            return hint
        while True:
            name = f"{hint}_{next(self._counter)}"
            if name not in self._names:
                self._names.add(name)
                return name

    # -- building
    def add_input(self, name: str, type: TensorType) -> Value:
        v = Value(self, self._fresh(name), type, "input")
        self.inputs.append(v)
        return v

    def add_const(self, tensor: torch.Tensor, name: str = "c", type: TensorType | None = None) -> Value:
        """Put `tensor` in the store; `type` overrides the type for packed storage."""
        if not isinstance(tensor, torch.Tensor):
            tensor = torch.as_tensor(tensor)
        tensor = tensor.detach()
        t = type or TensorType.of(tensor)
        if type is not None and is_packed(type.dtype):
            if tensor.dtype != torch.uint8 or tensor.numel() != type.nbytes:
                raise IRError(f"packed {type} needs {type.nbytes} uint8 bytes, got {tensor.dtype}[{tensor.numel()}]")
        v = Value(self, self._fresh(name), t, "const")
        self.store[v.name] = tensor
        self.consts[v.name] = v
        self.version += 1
        return v

    def set_const(self, v: Value, tensor: torch.Tensor) -> None:
        """Replace a constant's tensor in place (same type), e.g. after merging weights."""
        if TensorType.of(tensor) != v.type and not is_packed(v.dtype):
            raise IRError(f"constant %{v.name} is {v.type}; cannot store {TensorType.of(tensor)}")
        self.store[v.name] = tensor.detach()
        self.version += 1

    def call(
        self,
        op: str,
        inputs: Sequence[Value | None],
        attrs: dict[str, Any] | None = None,
        name: str | None = None,
        types: Sequence[TensorType] | None = None,
    ) -> Value:
        """Append (or insert at the insertion point) a node; returns its first output."""
        return self.create_node(op, inputs, attrs, name, types).outputs[0]

    def create_node(
        self,
        op: str,
        inputs: Sequence[Value | None],
        attrs: dict[str, Any] | None = None,
        name: str | None = None,
        types: Sequence[TensorType] | None = None,
    ) -> Node:
        from bitpress.compiler.ops import get_op

        opdef = get_op(op)
        attrs = dict(attrs or {})
        ins = list(inputs)
        for v in ins:
            if v is not None and v.graph is not self:
                raise IRError(f"value %{v.name} belongs to another graph")
        if types is None:
            types = opdef.infer([None if v is None else v.type for v in ins], attrs)
        want = name or op
        node = Node(self, op, ins, attrs, self._fresh(want))
        if node.name != want:
            node.meta["_want_name"] = want  # the rewrite driver renames once the old holder is gone
        for i, t in enumerate(types):
            node.outputs.append(Value(self, node.name if i == 0 else f"{node.name}#{i}", t, "node", node, i))
        for v in ins:
            if v is not None:
                v.users[node] = None
        self._link(node, self._insert_before)
        return node

    def _link(self, node: Node, before: Node | None) -> None:
        if before is None:
            node.prev, node.next = self._tail, None
            if self._tail is None:
                self._head = node
            else:
                self._tail.next = node
            self._tail = node
        else:
            if before._erased:
                raise IRError(f"cannot insert before erased node {before.name}")
            node.prev, node.next = before.prev, before
            if before.prev is None:
                self._head = node
            else:
                before.prev.next = node
            before.prev = node
        self._len += 1
        self.version += 1

    def rename(self, node: Node, name: str) -> None:
        """Give `node` (and its outputs) a name that is free."""
        if name in self._names:
            raise IRError(f"name {name!r} is taken")
        self._names.discard(node.name)
        self._names.add(name)
        node.name = name
        for i, o in enumerate(node.outputs):
            o.name = name if i == 0 else f"{name}#{i}"
        self.version += 1

    def inserting_before(self, node: Node | None) -> _InsertionPoint:
        """Context manager: nodes created inside go before `node` (None: at the end)."""
        return _InsertionPoint(self, node)

    def set_outputs(self, outputs: Sequence[Value]) -> None:
        self.outputs = list(outputs)

    # -- mutation
    def replace_all_uses(self, old: Value, new: Value) -> None:
        if old is new:
            return
        self.version += 1
        for user in list(old.users):
            user.replace_input(old, new)
        self.outputs = [new if o is old else o for o in self.outputs]

    def erase_node(self, node: Node) -> None:
        for o in node.outputs:
            if o.users:
                raise IRError(f"cannot erase {node.name}: output %{o.name} still used by {next(iter(o.users)).name}")
            if any(o is out for out in self.outputs):
                raise IRError(f"cannot erase {node.name}: it defines a graph output")
        for v in node.inputs:
            if v is not None:
                v.users.pop(node, None)
        if node.prev is None:
            self._head = node.next
        else:
            node.prev.next = node.next
        if node.next is None:
            self._tail = node.prev
        else:
            node.next.prev = node.prev
        node._erased = True
        self._names.discard(node.name)
        self._len -= 1
        self.version += 1

    def remove_const(self, v: Value) -> None:
        if v.users:
            raise IRError(f"constant %{v.name} is still used")
        self.consts.pop(v.name, None)
        self.store.pop(v.name, None)
        self.version += 1

    def prune_consts(self) -> int:
        """Drop constants that no node or output uses; returns how many went."""
        outs = {id(o) for o in self.outputs}
        dead = [v for v in self.consts.values() if not v.users and id(v) not in outs]
        for v in dead:
            self.remove_const(v)
        return len(dead)

    # -- iteration
    @property
    def nodes(self) -> Iterator[Node]:
        n = self._head
        while n is not None:
            nxt = n.next
            yield n
            n = nxt

    def __len__(self) -> int:
        return self._len

    def find(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def values(self) -> Iterable[Value]:
        yield from self.inputs
        yield from self.consts.values()
        for n in self.nodes:
            yield from n.outputs

    # -- analysis
    def weight_bytes(self) -> int:
        """Bytes of all constants as stored (packed types count packed bytes)."""
        return sum(v.type.nbytes for v in self.consts.values())

    def verify(self) -> None:
        """Check SSA, order, types and dangling values; raises IRError naming the node."""
        from bitpress.compiler.ops import get_op

        defined: set[int] = {id(v) for v in self.inputs} | {id(v) for v in self.consts.values()}
        for name, v in self.consts.items():
            if name not in self.store:
                raise IRError(f"constant %{name} has no tensor in the store")
            t = self.store[name]
            if is_packed(v.dtype):
                if t.numel() != v.type.nbytes:
                    raise IRError(f"packed constant %{name}: {t.numel()} bytes, type {v.type} needs {v.type.nbytes}")
            elif TensorType.of(t) != v.type:
                raise IRError(f"constant %{name}: stored {TensorType.of(t)} but typed {v.type}")
        seen: set[int] = set()
        prev: Node | None = None
        for node in self.nodes:
            if node.prev is not prev:
                raise IRError(f"node list broken at {node.name}")
            prev = node
            if id(node) in seen:
                raise IRError(f"node {node.name} appears twice")
            seen.add(id(node))
            opdef = get_op(node.op)
            for i, iv in enumerate(node.inputs):
                if iv is None:
                    continue
                if id(iv) not in defined:
                    raise IRError(f"node {node.name} ({node.op}) input {i} %{iv.name} is used before it is defined")
                if node not in iv.users:
                    raise IRError(f"use list of %{iv.name} misses {node.name}")
            try:
                want = opdef.infer([None if v is None else v.type for v in node.inputs], node.attrs)
            except Exception as e:
                raise IRError(f"node {node.name} ({node.op}): type inference failed: {e}") from None
            got = [o.type for o in node.outputs]
            if list(want) != got:
                raise IRError(f"node {node.name} ({node.op}): outputs typed {got}, inference gives {list(want)}")
            for o in node.outputs:
                if id(o) in defined:
                    raise IRError(f"value %{o.name} defined twice")
                defined.add(id(o))
        for o in self.outputs:
            if id(o) not in defined:
                raise IRError(f"graph output %{o.name} is not defined")
        if len(seen) != self._len:
            raise IRError("node count out of sync")

    # -- printing
    def __str__(self) -> str:
        from bitpress.compiler.printer import format_graph

        return format_graph(self)

    def clone(self) -> Graph:
        """A deep copy of the structure sharing constant tensors (they are immutable by convention)."""
        g = Graph()
        g.meta = dict(self.meta)
        vmap: dict[int, Value] = {}
        for v in self.inputs:
            vmap[id(v)] = g.add_input(v.name, v.type)
        for v in self.consts.values():
            nv = Value(g, v.name, v.type, "const")
            g._names.add(v.name)
            g.store[v.name] = self.store[v.name]
            g.consts[v.name] = nv
            vmap[id(v)] = nv
        for n in self.nodes:
            nn = Node(g, n.op, [None if v is None else vmap[id(v)] for v in n.inputs], dict(n.attrs), n.name)
            g._names.add(n.name)
            nn.meta = dict(n.meta)
            for o in n.outputs:
                no = Value(g, o.name, o.type, "node", nn, o.index)
                nn.outputs.append(no)
                vmap[id(o)] = no
            for iv in nn.inputs:
                if iv is not None:
                    iv.users[nn] = None
            g._link(nn, None)
        g.outputs = [vmap[id(o)] for o in self.outputs]
        return g


def input_dims(g: Graph) -> dict[str, SymDim]:
    """The named symbolic sizes of the graph's inputs (name -> SymDim with its range), in order."""
    out: dict[str, SymDim] = {}
    for v in g.inputs:
        for d in v.shape:
            if isinstance(d, SymDim) and d.is_symbol and d.expr not in out:
                out[d.expr] = d
    return out


def is_dynamic(g: Graph) -> bool:
    return any(not v.type.is_static for v in g.inputs)


def specialize(g: Graph, env: dict[str, int]) -> Graph:
    """A copy of `g` with the named sizes in `env` made static, in every type and attribute.

    Static-memory targets (microcontrollers, FPGAs) build from this; names not in `env`
    stay symbolic.
    """
    missing = [n for n in input_dims(g) if n not in env]
    if missing:
        raise IRError(f"specialize: no size given for symbolic dim(s) {missing}")

    def rt(t: TensorType) -> TensorType:
        return t.resolve(env) if not t.is_static else t

    out = g.clone()
    for v in out.values():
        v.type = rt(v.type)
    for n in out.nodes:
        if has_symbolic(n.attrs):
            n.attrs = resolve(n.attrs, env)
    out.meta = dict(out.meta, specialized=dict(env))
    out.version += 1
    out.verify()
    return out


@dataclass
class _InsertionPoint:
    graph: Graph
    node: Node | None
    _saved: list[Node | None] = field(default_factory=list)

    def __enter__(self) -> Graph:
        self._saved.append(self.graph._insert_before)
        self.graph._insert_before = self.node
        return self.graph

    def __exit__(self, *exc: object) -> None:
        self.graph._insert_before = self._saved.pop()
