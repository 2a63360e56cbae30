"""Readable text form of a Graph (what `print(graph)` shows)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bitpress.compiler.ir import Graph, Value


def _fmt_attr(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt_attr(x) for x in v) + "]"
    return repr(v) if isinstance(v, str) else str(v)


def _ref(v: Value | None) -> str:
    return "_" if v is None else f"%{v.name}"


def format_graph(g: Graph, max_consts: int = 64) -> str:
    from bitpress.compiler.ir import input_dims

    dims = input_dims(g)
    where = (" where " + ", ".join(f"{n} in {d.range_str()}" for n, d in dims.items())) if dims else ""
    lines = ["graph(" + ", ".join(f"%{v.name}: {v.type}" for v in g.inputs) + f"){where} {{"]
    consts = list(g.consts.values())
    for v in consts[:max_consts]:
        lines.append(f"  %{v.name}: {v.type} = const")
    if len(consts) > max_consts:
        lines.append(f"  ... {len(consts) - max_consts} more constants")
    for n in g.nodes:
        outs = ", ".join(f"%{o.name}: {o.type}" for o in n.outputs)
        attrs = ", ".join(f"{k}={_fmt_attr(v)}" for k, v in n.attrs.items())
        args = ", ".join(_ref(v) for v in n.inputs)
        lines.append(f"  {outs} = {n.op}({args}{', ' if attrs and args else ''}{attrs})")
    lines.append("  return " + ", ".join(_ref(v) for v in g.outputs))
    lines.append("}")
    return "\n".join(lines)
