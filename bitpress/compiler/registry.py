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

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["DuplicateKeyError", "Registry", "UnknownKeyError"]

T = TypeVar("T")
V = TypeVar("V")


class UnknownKeyError(LookupError, ValueError):
    """A lookup of a key nobody registered; the message lists the known keys."""

    def __str__(self) -> str:  # KeyError-style quoting would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class DuplicateKeyError(ValueError):
    """A second, different registration under a key already taken."""


class Registry(Generic[T]):
    """An ordered name -> value table with one duplicate policy and errors that list the known keys."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, key: str, value: T, *, replace: bool = False) -> T:
        """Add `value` under `key`; a different value under a taken key raises unless `replace`."""
        old = self._items.get(key)
        if old is not None and old is not value and not replace:
            raise DuplicateKeyError(f"{self.kind} {key!r} is already registered ({_where(old)})")
        self._items[key] = value
        return value

    def decorator(self, *keys: str, replace: bool = False) -> Callable[[V], V]:
        """`@registry.decorator("a", "b")` registers the decorated object under each key."""

        def deco(value: V) -> V:
            for k in keys:
                self.register(k, value, replace=replace)  # type: ignore[arg-type]
            return value

        return deco

    def __getitem__(self, key: str) -> T:
        try:
            return self._items[key]
        except KeyError:
            raise UnknownKeyError(self.unknown(key)) from None

    def unknown(self, key: str) -> str:
        """The one-line message for an unknown `key`."""
        known = ", ".join(self._items) or "none"
        return f"unknown {self.kind} {key!r}; known: {known}"

    def get(self, key: str, default: T | None = None) -> T | None:
        return self._items.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[str]:
        """Keys in registration order."""
        return list(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def as_dict(self) -> dict[str, T]:
        return dict(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._items)} keys)"


def _where(value: object) -> str:
    mod = getattr(value, "__module__", None) or type(value).__module__
    name = getattr(value, "__qualname__", None) or type(value).__qualname__
    return f"{mod}.{name}"
