"""The rewrite driver: match rules on a worklist until a fixed point, with an explain log.

Each node is visited once, plus again whenever something it reads from, or something
that reads from it, is rewritten; rules are indexed by root op, so the cost per node is
flat in the graph's size (benchmarks/rewrite_scaling.py).  A bound on the number of
rewrites turns a rule set that never converges into an error naming the rule.

`BITPRESS_TRACE=1` echoes every event of the explain log to stderr.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bitpress.compiler.builder import building
from bitpress.compiler.ir import Graph, IRError, Node, Value
from bitpress.compiler.ops import _freeze, get_op
from bitpress.compiler.pattern import Reject, Rule, RuleSet, match

__all__ = ["ExplainEvent", "ExplainLog", "RewriteError", "common_subexpression_elimination", "dead_code_elimination", "rewrite"]

log = logging.getLogger("bitpress.rewrite")


class RewriteError(RuntimeError):
    """A rule produced something invalid, or a rule set did not converge."""


@dataclass(frozen=True)
class ExplainEvent:
    pass_name: str
    rule: str
    node: str
    op: str
    outcome: str  # "fired" | "declined"
    reason: str = ""

    def __str__(self) -> str:
        tail = f": {self.reason}" if self.reason else ""
        return f"[{self.pass_name}] {self.rule} {self.outcome} on {self.node} ({self.op}){tail}"


@dataclass
class ExplainLog:
    """Which rule fired or declined on which node, and why."""

    events: list[ExplainEvent] = field(default_factory=list)
    echo: bool = field(default_factory=lambda: os.environ.get("BITPRESS_TRACE", "") not in ("", "0"))

    def add(self, ev: ExplainEvent) -> None:
        self.events.append(ev)
        if self.echo:
            print(f"bitpress: {ev}", file=sys.stderr)

    def fired(self, rule: str | None = None) -> list[ExplainEvent]:
        return [e for e in self.events if e.outcome == "fired" and (rule is None or e.rule == rule)]

    def declined(self, rule: str | None = None) -> list[ExplainEvent]:
        return [e for e in self.events if e.outcome == "declined" and (rule is None or e.rule == rule)]

    def __str__(self) -> str:
        return "\n".join(map(str, self.events)) or "(no rule fired or declined)"


def _normalize(result: Any, root: Node, rule: Rule) -> list[Value] | None:
    if result is None or isinstance(result, Reject):
        return None
    vals = list(result) if isinstance(result, (tuple, list)) else [result]
    if len(vals) != len(root.outputs):
        raise RewriteError(f"rule {rule.name} returned {len(vals)} values for {root.name} with {len(root.outputs)} outputs")
    for old, new in zip(root.outputs, vals, strict=True):
        if not isinstance(new, Value):
            raise RewriteError(f"rule {rule.name} returned {type(new).__name__}, expected a Value, None or Reject")
        if new.type.shape != old.type.shape:
            raise RewriteError(f"rule {rule.name} on {root.name}: replacement shape {new.type} differs from {old.type}")
    return vals


def _erase_dead(g: Graph, start: Sequence[Node]) -> None:
    """Erase `start` nodes and then producers that became unused (pure ops only)."""
    outs = {id(o) for o in g.outputs}
    stack = list(start)
    while stack:
        n = stack.pop()
        if n._erased or any(o.users or id(o) in outs for o in n.outputs):
            continue
        if not get_op(n.op).pure:
            continue
        producers = [v.producer for v in n.inputs if v is not None and v.producer is not None]
        g.erase_node(n)
        stack.extend(producers)


def rewrite(
    g: Graph,
    rules: RuleSet | Rule,
    *,
    ctx: Any = None,
    cfg: Any = None,
    explain: ExplainLog | None = None,
    pass_name: str = "rewrite",
    max_rewrites: int | None = None,
) -> int:
    """Apply `rules` to `g` in place until no rule fires; returns the number of rewrites."""
    rs = rules if isinstance(rules, RuleSet) else RuleSet(rules)
    if explain is None and ctx is not None:
        explain = getattr(ctx, "explain", None)
    bound = max_rewrites if max_rewrites is not None else 16 * len(g) + 1024
    work: deque[Node] = deque(n for n in g.nodes if rs.for_op(n.op))
    queued: set[Node] = set(work)
    count = 0
    fired_by: dict[str, int] = {}
    while work:
        node = work.popleft()
        queued.discard(node)
        if node._erased:
            continue
        for r in rs.for_op(node.op):
            m = match(r.pattern, node)
            if m is None:
                continue
            before = node.prev
            hint = node.name
            # the replacement may take over the root's name (it is erased when replaced)
            g._names.discard(hint)
            with g.inserting_before(node), building(g, hint):
                try:
                    result = r(m, ctx=ctx, cfg=cfg)
                except (IRError, RewriteError) as e:
                    raise RewriteError(f"rule {r.name} failed on {node.name} ({node.op}): {e}") from None
            new_nodes = []
            cur = before.next if before is not None else g._head
            while cur is not None and cur is not node:
                new_nodes.append(cur)
                cur = cur.next
            if isinstance(result, Reject) or result is None:
                _erase_dead(g, new_nodes[::-1])
                g._names.add(hint)
                if isinstance(result, Reject) and explain is not None:
                    explain.add(ExplainEvent(pass_name, r.name, node.name, node.op, "declined", result.reason))
                continue
            vals = _normalize(result, node, r)
            assert vals is not None
            if all(a is b for a, b in zip(node.outputs, vals, strict=True)):
                g._names.add(hint)
                continue
            users: list[Node] = []
            for old, new in zip(node.outputs, vals, strict=True):
                users.extend(old.users)
                g.replace_all_uses(old, new)
            _erase_dead(g, [node])
            for n in new_nodes:
                want = n.meta.pop("_want_name", None)
                if want is not None and not n._erased and want not in g._names:
                    g.rename(n, want)
            count += 1
            fired_by[r.name] = fired_by.get(r.name, 0) + 1
            if explain is not None:
                explain.add(ExplainEvent(pass_name, r.name, node.name, node.op, "fired", r.doc))
            if count > bound:
                worst = max(fired_by, key=fired_by.__getitem__)
                raise RewriteError(
                    f"{pass_name}: no fixed point after {count} rewrites (rule {worst} fired {fired_by[worst]} times); "
                    "a rule probably undoes another"
                )
            for n in new_nodes + users:
                if not n._erased and n not in queued and rs.for_op(n.op):
                    work.append(n)
                    queued.add(n)
            break
    if count:
        g.prune_consts()
    return count


def dead_code_elimination(g: Graph) -> int:
    """Remove pure nodes whose outputs nobody uses, and unused constants; returns nodes removed."""
    before = len(g)
    outs = {id(o) for o in g.outputs}
    n = g._tail
    while n is not None:
        prev = n.prev
        if get_op(n.op).pure and not any(o.users or id(o) in outs for o in n.outputs):
            g.erase_node(n)
        n = prev
    g.prune_consts()
    return before - len(g)


def common_subexpression_elimination(g: Graph) -> int:
    """Merge pure nodes computing the same op on the same inputs with the same attributes; returns nodes merged."""
    seen: dict[Any, Node] = {}
    n = 0
    for node in list(g.nodes):
        if node._erased or not get_op(node.op).pure:
            continue
        key = (node.op, tuple(id(v) if v is not None else None for v in node.inputs), _freeze(node.attrs))
        prev = seen.get(key)
        if prev is None:
            seen[key] = node
            continue
        for a, b in zip(node.outputs, prev.outputs, strict=True):
            g.replace_all_uses(a, b)
        g.erase_node(node)
        n += 1
    return n
