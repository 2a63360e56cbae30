"""The declarative rewrite language: patterns (`Pat`), rules (`@rule`), rule sets.

A rule is data: a pattern, a guard+replacement function, and a stable kebab-case name.

    @rule(Pat.op("linear", x=Pat.var(), w=Pat.const(ndim=2), b=Pat.any()), name="factor-linear")
    def factor_linear(x, w, b, *, cfg):
        '''linear(x, W, b) -> linear(linear(x, V), U, b)'''
        ...

Names in a pattern bind values: a leaf given as a keyword slot binds under the slot
name (`w=Pat.const()` binds `w`), or under its own name (`Pat.var("a")`; positional
leaves bind only this way); an op
sub-pattern binds its output when given `bind=`.  A name bound twice must bind the same
value.  The function receives the bound values whose names its signature declares, plus
the keyword-only `ctx`, `cfg` and `node` (the matched root) when it asks for them.  It
returns a replacement value (or a tuple, one per root output), `None`, or
`Reject("why")`; "does not apply" is never an exception.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from bitpress.compiler.ir import Node, Value

__all__ = ["Match", "Pat", "Reject", "Rule", "RuleSet", "rule"]


@dataclass(frozen=True)
class Reject:
    """A rule declined to rewrite a match; `reason` goes to the explain log."""

    reason: str


# ----------------------------------------------------------------------------- patterns


@dataclass(frozen=True)
class _Leaf:
    kind: str  # "var" | "const" | "any"
    name: str | None = None
    shape: tuple[int | None, ...] | None = None
    ndim: int | None = None
    dtype: str | tuple[str, ...] | None = None
    where: Callable[[Value], bool] | None = None

    def check(self, v: Value | None) -> bool:
        if v is None:
            return self.kind == "any"
        if self.kind == "const" and not v.is_const:
            return False
        if self.ndim is not None and v.ndim != self.ndim:
            return False
        if self.shape is not None:
            if len(self.shape) != v.ndim or any(s is not None and s != d for s, d in zip(self.shape, v.shape, strict=True)):
                return False
        if self.dtype is not None:
            want = (self.dtype,) if isinstance(self.dtype, str) else self.dtype
            if v.dtype not in want:
                return False
        return self.where is None or bool(self.where(v))


@dataclass(frozen=True)
class _OpPat:
    ops: tuple[str, ...]
    args: tuple[Any, ...]
    slots: tuple[tuple[str, Any], ...]
    attrs: tuple[tuple[str, Any], ...]
    bind: str | None
    commutative: bool

    def root_ops(self) -> tuple[str, ...]:
        return self.ops


class Pat:
    """Pattern constructors (all static)."""

    @staticmethod
    def op(
        op: str | Sequence[str],
        *args: Any,
        bind: str | None = None,
        attrs: dict[str, Any] | None = None,
        commutative: bool = False,
        **slots: Any,
    ) -> _OpPat:
        """Match a node running `op` (or any of several ops); `attrs` values are equalities or predicates."""
        ops = (op,) if isinstance(op, str) else tuple(op)
        return _OpPat(ops, args, tuple(slots.items()), tuple((attrs or {}).items()), bind, commutative)

    @staticmethod
    def var(
        name: str | None = None,
        *,
        shape: Sequence[int | None] | None = None,
        ndim: int | None = None,
        dtype: str | tuple[str, ...] | None = None,
        where: Callable[[Value], bool] | None = None,
    ) -> _Leaf:
        """Match any present value (input, constant or node output)."""
        return _Leaf("var", name, None if shape is None else tuple(shape), ndim, dtype, where)

    @staticmethod
    def const(
        name: str | None = None,
        *,
        shape: Sequence[int | None] | None = None,
        ndim: int | None = None,
        dtype: str | tuple[str, ...] | None = None,
        where: Callable[[Value], bool] | None = None,
    ) -> _Leaf:
        """Match a constant from the tensor store."""
        return _Leaf("const", name, None if shape is None else tuple(shape), ndim, dtype, where)

    @staticmethod
    def any(name: str | None = None) -> _Leaf:
        """Match anything, including an absent optional input (bound as None)."""
        return _Leaf("any", name)


@dataclass
class Match:
    root: Node
    bindings: dict[str, Value | None] = field(default_factory=dict)


def _bind(b: dict[str, Value | None], name: str | None, v: Value | None) -> bool:
    if name is None:
        return True
    if name in b:
        return b[name] is v
    b[name] = v
    return True


def _match_value(p: Any, v: Value | None, slot: str | None, b: dict[str, Value | None]) -> bool:
    if isinstance(p, _Leaf):
        return p.check(v) and _bind(b, p.name or slot, v)
    if isinstance(p, _OpPat):
        if v is None or v.producer is None or v.index != 0:
            return False
        return _match_node(p, v.producer, b)
    raise TypeError(f"not a pattern: {p!r}")


def _match_node(p: _OpPat, n: Node, b: dict[str, Value | None]) -> bool:
    if n.op not in p.ops:
        return False
    for k, want in p.attrs:
        got = n.attrs.get(k)
        if callable(want):
            if not want(got):
                return False
        elif got != want and not (isinstance(got, (list, tuple)) and isinstance(want, (list, tuple)) and list(got) == list(want)):
            return False
    from bitpress.compiler.ops import get_op

    opdef = get_op(n.op)
    if p.args:
        ins = list(n.inputs)
        if len(ins) < len(p.args) or (opdef.variadic and len(ins) != len(p.args)):
            return False
        orders = [list(p.args)]
        if p.commutative and len(p.args) == 2:
            orders.append([p.args[1], p.args[0]])
        for order in orders:
            trial = dict(b)
            # positional sub-patterns bind only under their own names
            if all(_match_value(sp, ins[i], None, trial) for i, sp in enumerate(order)):
                b.clear()
                b.update(trial)
                break
        else:
            return False
    for slot, sp in p.slots:
        if slot not in opdef.slots:
            return False
        i = opdef.slots.index(slot)
        v = n.inputs[i] if i < len(n.inputs) else None
        if not _match_value(sp, v, slot, b):
            return False
    return _bind(b, p.bind, n.outputs[0] if n.outputs else None)


def match(pattern: _OpPat, node: Node) -> Match | None:
    b: dict[str, Value | None] = {}
    if _match_node(pattern, node, b):
        return Match(node, b)
    return None


# ----------------------------------------------------------------------------- rules

_KEBAB = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_SPECIAL = ("ctx", "cfg", "node")


@dataclass(frozen=True)
class Rule:
    """pattern + function + stable name; compose with `+` into a RuleSet."""

    pattern: _OpPat
    fn: Callable[..., Any]
    name: str
    doc: str
    params: tuple[str, ...]
    special: tuple[str, ...]

    def __call__(self, m: Match, *, ctx: Any = None, cfg: Any = None) -> Any:
        kwargs: dict[str, Any] = {p: m.bindings.get(p) for p in self.params}
        for s in self.special:
            kwargs[s] = {"ctx": ctx, "cfg": cfg, "node": m.root}[s]
        return self.fn(**kwargs)

    def __add__(self, other: Rule | RuleSet) -> RuleSet:
        return RuleSet([self]) + other

    def __iter__(self) -> Iterator[Rule]:
        yield self


def rule(pattern: _OpPat, name: str | None = None) -> Callable[[Callable[..., Any]], Rule]:
    """Decorator turning `fn` into a named `Rule` matching `pattern` (see the module docstring)."""
    if not isinstance(pattern, _OpPat):
        raise TypeError("a rule's pattern must be Pat.op(...) at the root")

    def deco(fn: Callable[..., Any]) -> Rule:
        rname = name or fn.__name__.replace("_", "-")
        if not _KEBAB.match(rname):
            raise ValueError(f"rule name {rname!r} must be kebab-case")
        sig = inspect.signature(fn)
        params, special = [], []
        for p in sig.parameters.values():
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name in _SPECIAL:
                special.append(p.name)
            elif p.kind is inspect.Parameter.VAR_KEYWORD:
                continue
            else:
                params.append(p.name)
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        return Rule(pattern, fn, rname, doc, tuple(params), tuple(special))

    return deco


class RuleSet:
    """An ordered collection of rules, indexed by root op; rule sets compose with `+`."""

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        names = [r.name for r in self.rules]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate rule names in rule set: {sorted(dup)}")
        self._by_op: dict[str, list[Rule]] = {}
        for r in self.rules:
            for op in r.pattern.root_ops():
                self._by_op.setdefault(op, []).append(r)

    def __add__(self, other: Rule | RuleSet) -> RuleSet:
        return RuleSet(self.rules + tuple(other))

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def for_op(self, op: str) -> list[Rule]:
        return self._by_op.get(op, [])

    def __repr__(self) -> str:
        return f"RuleSet({[r.name for r in self.rules]})"
