"""Canonicalization passes: structure before/after, exact numerics, decline reasons."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bitpress.compiler.frontend import import_module
from bitpress.compiler.interpreter import run
from bitpress.compiler.ir import Graph, TensorType
from bitpress.compiler.pass_manager import PassContext
from bitpress.passes.canonicalize import (
    CommonSubexpressionElimination,
    DeadCodeElimination,
    DropIdentity,
    FoldBatchNorm,
    FoldConstants,
)


def ops(g: Graph) -> list[str]:
    return [n.op for n in g.nodes]


def randomize_bn(m: nn.Module) -> nn.Module:
    with torch.no_grad():
        for b in m.modules():
            if isinstance(b, (nn.BatchNorm1d, nn.BatchNorm2d)):
                b.running_mean.uniform_(-1, 1)
                b.running_var.uniform_(0.3, 3)
                b.weight.uniform_(0.5, 1.5)
                b.bias.uniform_(-0.5, 0.5)
    return m.eval()


@settings(max_examples=8)
@given(cin=st.integers(1, 4), cout=st.integers(1, 6), k=st.sampled_from([1, 3]), bias=st.booleans(), groups=st.sampled_from([1, 2]))
def test_fold_bn_conv(cin: int, cout: int, k: int, bias: bool, groups: int) -> None:
    if cin % groups or cout % groups:
        cin, cout = cin * groups, cout * groups
    m = randomize_bn(nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias, groups=groups), nn.BatchNorm2d(cout), nn.ReLU()))
    x = torch.randn(2, cin, 6, 6)
    g = import_module(m, (x,))
    assert ops(g) == ["conv2d", "batch_norm", "relu"]
    res = FoldBatchNorm().apply(g, PassContext())
    assert res.modified and ops(g) == ["conv2d", "relu"]
    assert g.find("0").op == "conv2d"  # the folded conv keeps the module's name
    with torch.no_grad():
        torch.testing.assert_close(run(g, [x])[0], m(x), rtol=1e-5, atol=1e-5)


def test_fold_bn_linear() -> None:
    m = randomize_bn(nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7)))
    x = torch.randn(4, 5)
    g = import_module(m, (x,))
    FoldBatchNorm().apply(g, PassContext())
    assert ops(g) == ["linear"]
    with torch.no_grad():
        torch.testing.assert_close(run(g, [x])[0], m(x), rtol=1e-5, atol=1e-5)


def test_fold_bn_declines_when_conv_output_is_shared() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c, self.b = nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.c(x)
            return self.b(y) + y

    g = import_module(randomize_bn(Shared()), (torch.randn(1, 2, 5, 5),))
    ctx = PassContext()
    res = FoldBatchNorm().apply(g, ctx)
    assert not res.modified
    (ev,) = ctx.explain.declined("fold-bn-conv")
    assert ev.reason == "the conv output has other users"


def test_drop_identity_and_noops() -> None:
    class M(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = nn.functional.dropout(x, 0.3, training=False)
            y = y.reshape(2, 3).reshape(6).reshape(2, 3)
            return (y * 1.0 + 0.0).to(torch.float32)

    x = torch.randn(2, 3)
    g = import_module(M().eval(), (x,))
    DropIdentity().apply(g, PassContext())
    assert ops(g) == []
    torch.testing.assert_close(run(g, [x])[0], x)


def test_fold_constants_and_cse_and_dce() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((3,), "float32"))
    a = g.add_const(torch.tensor([1.0, 2.0, 3.0]), "a")
    b = g.call("exp", [a], name="exp_a")  # constant subexpression
    s1 = g.call("add", [x, b], name="s1")
    s2 = g.call("add", [x, b], name="s2")  # same as s1
    g.call("neg", [x], name="dead")
    g.set_outputs([g.call("mul", [s1, s2], name="out")])
    xin = torch.randn(3)
    ref = run(g, [xin])[0]
    ctx = PassContext()
    assert FoldConstants().apply(g, ctx).modified
    assert "exp" not in ops(g)
    assert CommonSubexpressionElimination().apply(g, ctx).stats["merged"] == 1
    DeadCodeElimination().apply(g, ctx)
    assert ops(g) == ["add", "mul"]
    torch.testing.assert_close(run(g, [xin])[0], ref)


def test_fold_constants_refuses_to_blow_up_the_store() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((256, 256), "float32"))
    c = g.add_const(torch.ones(1, 256), "row")
    big = g.call("expand", [c], {"shape": [256, 256]}, name="big")
    g.set_outputs([g.call("add", [x, big])])
    FoldConstants().apply(g, PassContext())
    assert "expand" in ops(g)
