"""Symbolic dimensions: named sizes (with a range) and expressions over them.

A dimension of a `TensorType` is an `int` (static) or a `SymDim`: a named size such as
`batch` with an allowed range `[min, max]` (`max=None`: unbounded), or an integer
expression over such names (`2*batch`, `batch*seq`, `FloorDiv(batch, 2)`) as shape
inference derives it.  Two SymDims are equal when their canonical expressions are; the
range is carried along for checking inputs and for printing, not compared.

The expressions are sympy expressions (sympy ships with torch) kept as canonical text,
so types stay hashable, printable and JSON-serializable.  Shape inference on symbolic
types goes through torch's own symbolic shapes (`ShapeEnv` + fake tensors, see
`ops.OpDef.infer`), whose `FloorDiv` / `Mod` / ... functions are accepted when parsing.

Example:
    >>> b = SymDim("batch", 1, 64)
    >>> (b * 4).expr
    '4*batch'
    >>> evaluate(b * 4, {"batch": 3})
    12
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Dim", "SymDim", "dim_range", "evaluate", "free_symbols", "has_symbolic", "make_dim", "resolve", "sym_expr"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SymbolicShapeError(ValueError):
    """A symbolic dimension that cannot be evaluated, compared or parsed."""


@dataclass(frozen=True, slots=True)
class SymDim:
    """A symbolic size: a name (or an expression over names) and the range it may take.

    `min`/`max` are the declared range of a plain name, or the range an expression takes
    when every name stays within its own (None when unknown / unbounded).
    """

    expr: str
    min: int = field(default=1, compare=False)
    max: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.expr, str) or not self.expr:
            raise SymbolicShapeError(f"a symbolic dim needs a non-empty name or expression, got {self.expr!r}")

    @property
    def is_symbol(self) -> bool:
        """True for a plain name (`batch`), False for an expression (`2*batch`)."""
        return _IDENT.fullmatch(self.expr) is not None

    @property
    def symbols(self) -> frozenset[str]:
        return free_symbols(self)

    def range_str(self) -> str:
        return f"{self.min}..{'inf' if self.max is None else self.max}"

    def __str__(self) -> str:
        return self.expr

    def __repr__(self) -> str:
        return f"SymDim({self.expr!r}, {self.min}, {self.max})"

    # arithmetic builds expressions (what shape code like `b * 4` needs); ordering comparisons
    # are deliberately absent: `batch < 64` has no answer at compile time
    def _op(self, other: Any, fn: str, reverse: bool = False) -> Dim:
        if not isinstance(other, (int, SymDim)) or isinstance(other, bool):
            return NotImplemented
        import sympy

        a, b = sym_expr(self), sym_expr(other)
        if reverse:
            a, b = b, a
        if fn == "floordiv":
            from torch.utils._sympy.functions import FloorDiv

            e = FloorDiv(a, b)
        else:
            e = {"add": sympy.Add, "mul": sympy.Mul}[fn](a, b) if fn != "sub" else a - b
        return make_dim(e, _ranges_of(self, other))

    def __add__(self, o: Any) -> Dim:
        return self._op(o, "add")

    def __radd__(self, o: Any) -> Dim:
        return self._op(o, "add", True)

    def __sub__(self, o: Any) -> Dim:
        return self._op(o, "sub")

    def __rsub__(self, o: Any) -> Dim:
        return self._op(o, "sub", True)

    def __mul__(self, o: Any) -> Dim:
        return self._op(o, "mul")

    def __rmul__(self, o: Any) -> Dim:
        return self._op(o, "mul", True)

    def __floordiv__(self, o: Any) -> Dim:
        return self._op(o, "floordiv")

    def __rfloordiv__(self, o: Any) -> Dim:
        return self._op(o, "floordiv", True)


Dim = int | SymDim


def _ranges_of(*dims: Any) -> dict[str, tuple[int, int | None]]:
    out: dict[str, tuple[int, int | None]] = {}
    for d in dims:
        if isinstance(d, SymDim) and d.is_symbol:
            out[d.expr] = (d.min, d.max)
    return out


@functools.lru_cache(maxsize=4096)
def _parse(expr: str) -> Any:
    import sympy
    from torch.utils._sympy import functions as tsf

    names: dict[str, Any] = {}
    for name in set(_IDENT.findall(expr)):
        fn = getattr(tsf, name, None)
        if fn is not None and isinstance(fn, type):
            names[name] = fn
        elif name in ("Max", "Min", "Mod", "floor", "ceiling"):
            names[name] = getattr(sympy, name)
        else:
            names[name] = sympy.Symbol(name, integer=True, positive=True)
    try:
        return sympy.sympify(expr, locals=names)
    except (sympy.SympifyError, TypeError, SyntaxError) as e:
        raise SymbolicShapeError(f"cannot parse symbolic dim {expr!r}: {e}") from None


def sym_expr(d: Dim) -> Any:
    """The sympy expression of a dim (an Integer for a static one)."""
    import sympy

    if isinstance(d, SymDim):
        return _parse(d.expr)
    return sympy.Integer(int(d))


def free_symbols(d: Any) -> frozenset[str]:
    if not isinstance(d, SymDim):
        return frozenset()
    if d.is_symbol:
        return frozenset((d.expr,))
    return frozenset(str(s) for s in _parse(d.expr).free_symbols)


def make_dim(e: Any, ranges: Mapping[str, tuple[int, int | None]] | None = None) -> Dim:
    """A sympy expression (over named symbols) as a Dim: an int when it is a constant."""
    import sympy

    e = sympy.sympify(e)
    if e.is_Integer or e.is_number:
        return int(e)
    names = {str(s) for s in e.free_symbols}
    ranges = ranges or {}
    lo: int = 1
    hi: int | None = None
    if isinstance(e, sympy.Symbol):
        lo, hi = ranges.get(str(e), (1, None))
    elif names and all(n in ranges for n in names):
        # shape expressions are monotone non-decreasing in each size (products, sums, floor
        # divisions by constants), so the corners of the box give the range
        try:
            lo = max(1, int(e.subs({sympy.Symbol(n, integer=True, positive=True): ranges[n][0] for n in names})))
            if all(ranges[n][1] is not None for n in names):
                hi = int(e.subs({sympy.Symbol(n, integer=True, positive=True): ranges[n][1] for n in names}))
        except (TypeError, ValueError):
            lo, hi = 1, None
    return SymDim(str(e), lo, hi)


def evaluate(d: Any, env: Mapping[str, int]) -> int:
    """The value of a dim once every name is bound (`env`: name -> size)."""
    if not isinstance(d, SymDim):
        return int(d)
    if d.is_symbol:
        try:
            return int(env[d.expr])
        except KeyError:
            raise SymbolicShapeError(f"symbolic dim {d.expr} is not bound (known: {sorted(env)})") from None
    e = _parse(d.expr)
    missing = {str(s) for s in e.free_symbols} - set(env)
    if missing:
        raise SymbolicShapeError(f"symbolic dim {d.expr}: {sorted(missing)} not bound (known: {sorted(env)})")
    v = e.subs({s: int(env[str(s)]) for s in e.free_symbols})
    if not v.is_Integer:
        raise SymbolicShapeError(f"symbolic dim {d.expr} does not evaluate to an integer: {v}")
    return int(v)


def has_symbolic(x: Any) -> bool:
    """True when `x` (a dim, a shape, attrs: nested lists / tuples / dicts) holds a SymDim."""
    if isinstance(x, SymDim):
        return True
    if isinstance(x, (list, tuple)):
        return any(has_symbolic(v) for v in x)
    if isinstance(x, dict):
        return any(has_symbolic(v) for v in x.values())
    return False


def resolve(x: Any, env: Mapping[str, int]) -> Any:
    """`x` with every SymDim evaluated under `env` (same container structure)."""
    if isinstance(x, SymDim):
        return evaluate(x, env)
    if isinstance(x, list):
        return [resolve(v, env) for v in x]
    if isinstance(x, tuple):
        return tuple(resolve(v, env) for v in x)
    if isinstance(x, dict):
        return {k: resolve(v, env) for k, v in x.items()}
    return x


def dim_range(d: Dim) -> tuple[int, int | None]:
    if isinstance(d, SymDim):
        return d.min, d.max
    return d, d
