"""Rules written as two plain torch functions, traced once (torch.fx `replace_pattern` style).

    def pattern(x, w):
        return torch.relu(x @ w) * 2.0

    def replacement(x, w):
        return torch.relu(x @ (w * 2.0))

    r = rule_from_torch(pattern, replacement, (torch.randn(4, 8), torch.randn(8, 8)), name="scale-into-weight")

The pattern function is traced to IR and turned into a `Pat` tree: its arguments
become variables (an argument used twice must bind one value), its literal constants
must match by value, and attributes must match exactly except shapes fixed by the
example (`reshape`/`expand`), which the replacement re-derives only when the matched
shapes equal the example's; otherwise the rule declines with a reason.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from bitpress.compiler.builder import const, emit_node
from bitpress.compiler.ir import Graph, Value
from bitpress.compiler.pattern import Pat, Reject, Rule, rule

__all__ = ["rule_from_torch"]

_SHAPE_ATTRS = {"shape"}


class _Fn(torch.nn.Module):
    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        return self.fn(*args)


def _trace(fn: Callable[..., Any], example: Sequence[torch.Tensor]) -> Graph:
    from bitpress.compiler.frontend.torch_fx import import_exported

    ep = torch.export.export(_Fn(fn), tuple(example), strict=False)
    return import_exported(ep)


def _const_equal(c: torch.Tensor) -> Callable[[Value], bool]:
    return lambda v: v.value.shape == c.shape and bool(torch.equal(v.value, c.to(v.value.dtype)))


def _to_pat(v: Value, names: dict[int, str]) -> Any:
    if v.kind == "input":
        return Pat.var(names[id(v)])
    if v.kind == "const":
        return Pat.const(where=_const_equal(v.value))
    n = v.producer
    assert n is not None
    if len(n.outputs) != 1:
        raise ValueError(f"pattern node {n.name} ({n.op}) has several outputs; patterns must be single-output trees")
    attrs = {k: a for k, a in n.attrs.items() if k not in _SHAPE_ATTRS}
    return Pat.op(n.op, *[Pat.any() if a is None else _to_pat(a, names) for a in n.inputs], attrs=attrs)


def rule_from_torch(
    pattern: Callable[..., Any],
    replacement: Callable[..., Any],
    example_inputs: Sequence[torch.Tensor],
    *,
    name: str,
) -> Rule:
    """Build a Rule from a pattern function and a replacement function with the same signature."""
    params = list(inspect.signature(pattern).parameters)
    if list(inspect.signature(replacement).parameters) != params:
        raise ValueError("pattern and replacement must take the same arguments")
    pg, rg = _trace(pattern, example_inputs), _trace(replacement, example_inputs)
    if len(pg.outputs) != 1 or len(rg.outputs) != 1:
        raise ValueError("pattern and replacement must return one tensor")
    names = {id(v): p for v, p in zip(pg.inputs, params, strict=True)}
    out = pg.outputs[0]
    if out.producer is None:
        raise ValueError("the pattern must compute something (its output is an input or a constant)")
    pat = _to_pat(out, names)
    shapes = {p: tuple(t.shape) for p, t in zip(params, example_inputs, strict=True)}
    shape_bound = any(k in n.attrs for n in rg.nodes for k in _SHAPE_ATTRS)
    doc = f"{pattern.__name__}(...) -> {replacement.__name__}(...)   (traced torch functions)"

    def apply(**bound: Value | None) -> Value | Reject:
        if shape_bound and any(v is not None and v.shape != shapes[p] for p, v in bound.items()):
            return Reject("matched shapes differ from the traced example and the replacement fixes shapes")
        return _inline(rg, [bound[p] for p in params])

    apply.__signature__ = inspect.Signature([inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in params])  # type: ignore[attr-defined]
    apply.__doc__ = doc
    return rule(pat, name=name)(apply)


def _inline(rg: Graph, args: Sequence[Value | None]) -> Value:
    env: dict[int, Value | None] = {id(v): a for v, a in zip(rg.inputs, args, strict=True)}
    for c in rg.consts.values():
        env[id(c)] = const(c.value, "c")
    for n in rg.nodes:
        node = emit_node(n.op, *[None if v is None else env[id(v)] for v in n.inputs], **n.attrs)
        for o, no in zip(n.outputs, node.outputs, strict=True):
            env[id(o)] = no
    res = env[id(rg.outputs[0])]
    if res is None:
        raise ValueError("replacement produced no value")
    return res
