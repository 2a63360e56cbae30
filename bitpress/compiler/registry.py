"""One registry type for every name -> thing table: ops, passes, backends, lowerings, methods, commands.

One duplicate policy: registering a key again with a different value is an error unless
`replace=True` (registering the very same value again is a no-op, so a module imported twice
is harmless).  One lookup error: `UnknownKeyError` names the kind and lists the known keys.

    methods: Registry[type] = Registry("quantization method")

    @methods.decorator("rtn")
    class Rtn: ...

    methods["gptq"]   # UnknownKeyError: unknown quantization method 'gptq'; known: rtn
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["DuplicateKeyError", "Registry", "UnknownKeyError"]

T = TypeVar("T")
V = TypeVar("V")


class UnknownKeyError(KeyError, ValueError):
    """A lookup of a key nobody registered; the message lists the known keys."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class DuplicateKeyError(ValueError):
    """A second, different registration under a key already taken."""


class Registry(dict[str, T]):
    """An ordered name -> value table (a dict) with one duplicate policy and errors that list the known keys."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, key: str, value: T, *, replace: bool = False) -> T:
        """Add `value` under `key`; a different value under a taken key raises unless `replace`."""
        old = self.get(key)
        if old is not None and old is not value and old != value and not replace:
            raise DuplicateKeyError(f"{self.kind} {key!r} is already registered ({_where(old)})")
        self[key] = value
        return value

    def decorator(self, *keys: str, replace: bool = False) -> Callable[[V], V]:
        """`@registry.decorator("a", "b")` registers the decorated object under each key."""

        def deco(value: V) -> V:
            for k in keys:
                self.register(k, value, replace=replace)  # type: ignore[arg-type]
            return value

        return deco

    def __missing__(self, key: str) -> T:
        raise UnknownKeyError(self.unknown(key))

    def unknown(self, key: str) -> str:
        """The one-line message for an unknown `key`."""
        return f"unknown {self.kind} {key!r}; known: {', '.join(self) or 'none'}"

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} keys)"


def _where(value: object) -> str:
    mod = getattr(value, "__module__", None) or type(value).__module__
    name = getattr(value, "__qualname__", None) or type(value).__qualname__
    return f"{mod}.{name}"


class LoweringTable(Generic[T]):
    """(op, target) -> lowering for one backend: the table behind every backend's
    `register_lowering(op, target=...)`, with the registry's duplicate policy."""

    def __init__(self, backend: str, targets: tuple[str, ...], *, article: str = "a") -> None:
        self.backend = backend
        self.targets = targets
        self._what = f"{article} {backend} lowering"
        self._by_op: dict[str, dict[str, T]] = {}

    def _targets(self, target: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
        ts = self.targets if target is None else (target,) if isinstance(target, str) else tuple(target)
        bad = [t for t in ts if t not in self.targets]
        if bad:
            raise UnknownKeyError(f"unknown {self.backend} target(s) {bad}; known: {list(self.targets)}")
        return ts

    def register(self, op: str, fn: T, target: str | tuple[str, ...] | list[str] | None = None, *, replace: bool = False) -> T:
        per = self._by_op.setdefault(op, {})
        for t in self._targets(target):
            old = per.get(t)
            if old is not None and old is not fn and not replace:
                raise DuplicateKeyError(f"op {op!r} already has {self._what} for {t} ({_where(old)})")
            per[t] = fn
        return fn

    def decorator(self, op: str, target: str | tuple[str, ...] | list[str] | None = None, *, replace: bool = False) -> Callable[[V], V]:
        self._targets(target)  # fail at the decorator line, not when the function is defined

        def deco(fn: V) -> V:
            self.register(op, fn, target, replace=replace)  # type: ignore[arg-type]
            return fn

        return deco

    def get(self, op: str, target: str | None = None) -> T | None:
        per = self._by_op.get(op, {})
        return per.get(target if target is not None else self.targets[0])

    def lookup(self, op: str, target: str) -> T:
        """The lowering of `op` on `target`; the error names the targets that have one."""
        per = self._by_op.get(op, {})
        if target not in per:
            have = sorted(per)
            raise UnknownKeyError(
                f"op {op!r} has no {self.backend} lowering for target {target!r}" + (f"; it has one for {have}" if have else "")
            )
        return per[target]

    def ops(self, target: str | None = None) -> set[str]:
        """Ops with a lowering on `target` (default: on any target)."""
        return {op for op, per in self._by_op.items() if per and (target is None or target in per)}
