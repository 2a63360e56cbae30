"""Rewrite-driver scaling: cost per node for graphs of 1k, 10k and 100k nodes.

Each graph is a chain of blocks  relu(relu(x + c)) -> identity -> x * 1 -> neg -> neg
so the canonicalization rules plus two user rules fire on about half the nodes and
decline or miss on the rest.  Reports build time, rewrite time, microseconds per node
and the number of rewrites; the cost per node should stay about flat.

    .venv/bin/python benchmarks/rewrite_scaling.py
"""

from __future__ import annotations

import argparse
import time

import torch

from bitpress.compiler.builder import B
from bitpress.compiler.ir import Graph, TensorType, Value
from bitpress.compiler.pattern import Pat, rule
from bitpress.compiler.rewrite import ExplainLog, rewrite
from bitpress.passes.canonicalize import identity_rules


@rule(Pat.op("relu", x=Pat.op("relu", x=Pat.var("inner"))), name="relu-relu")
def relu_relu(inner: Value) -> Value:
    """relu(relu(x)) -> relu(x)"""
    return B.relu(inner)


@rule(Pat.op("neg", x=Pat.op("neg", x=Pat.var("inner"))), name="neg-neg")
def neg_neg(inner: Value) -> Value:
    """neg(neg(x)) -> x"""
    return inner


RULES = identity_rules + relu_relu + neg_neg


def build(n_nodes: int) -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType((4,), "float32"))
    c = g.add_const(torch.ones(4), "c")
    one = g.add_const(torch.tensor(1.0), "one")
    while len(g) < n_nodes:
        x = g.call("add", [x, c])
        x = g.call("relu", [g.call("relu", [x])])
        x = g.call("identity", [x])
        x = g.call("mul", [x, one])
        x = g.call("neg", [g.call("neg", [x])])
    g.set_outputs([x])
    return g


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,100000")
    args = ap.parse_args()
    print(f"{'nodes':>8} {'build s':>8} {'rewrite s':>10} {'us/node':>8} {'rewrites':>9} {'nodes after':>11}")
    for n in map(int, args.sizes.split(",")):
        t0 = time.perf_counter()
        g = build(n)
        t1 = time.perf_counter()
        size = len(g)
        k = rewrite(g, RULES, explain=ExplainLog(echo=False))
        t2 = time.perf_counter()
        g.verify()
        print(f"{size:>8} {t1 - t0:>8.2f} {t2 - t1:>10.3f} {1e6 * (t2 - t1) / size:>8.1f} {k:>9} {len(g):>11}")


if __name__ == "__main__":
    main()
