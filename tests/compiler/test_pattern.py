from __future__ import annotations

import pytest
import torch

import bitpress as bp
from bitpress.compiler.builder import F, const
from bitpress.compiler.interpreter import run
from bitpress.compiler.ir import Graph, TensorType, Value
from bitpress.compiler.pattern import Pat, Reject, RuleSet, match, rule
from bitpress.compiler.rewrite import ExplainLog, RewriteError, rewrite


def mlp_graph() -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType((4, 8), "float32"))
    w1 = g.add_const(torch.randn(16, 8), "w1")
    w2 = g.add_const(torch.randn(2, 16), "w2")
    h = g.call("relu", [g.call("linear", [x, w1, None], name="fc1")])
    g.set_outputs([g.call("linear", [h, w2, None], name="fc2")])
    return g


def test_keyword_slots_bind_by_slot_name() -> None:
    g = mlp_graph()
    m = match(Pat.op("linear", x=Pat.var(), w=Pat.const(ndim=2), b=Pat.any()), g.find("fc1"))
    assert m is not None
    assert m.bindings["w"].name == "w1"
    assert m.bindings["b"] is None


def test_shape_and_dtype_constraints() -> None:
    g = mlp_graph()
    fc1 = g.find("fc1")
    assert match(Pat.op("linear", w=Pat.const(shape=(16, None))), fc1) is not None
    assert match(Pat.op("linear", w=Pat.const(shape=(8, None))), fc1) is None
    assert match(Pat.op("linear", w=Pat.const(dtype="int8")), fc1) is None
    assert match(Pat.op("linear", x=Pat.const()), fc1) is None  # x is an input, not a constant


def test_nested_pattern_and_bind() -> None:
    g = mlp_graph()
    p = Pat.op("linear", x=Pat.op("relu", bind="h", x=Pat.op("linear", x=Pat.var("inp"))))
    m = match(p, g.find("fc2"))
    assert m is not None and m.bindings["h"].name == "relu" and m.bindings["inp"].name == "x"


def test_repeated_name_must_bind_same_value() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((3,), "float32"))
    y = g.add_input("y", TensorType((3,), "float32"))
    sq = g.call("mul", [x, x], name="sq")
    xy = g.call("mul", [x, y], name="xy")
    g.set_outputs([sq, xy])
    p = Pat.op("mul", Pat.var("a"), Pat.var("a"))
    assert match(p, g.find("sq")) is not None
    assert match(p, g.find("xy")) is None


def test_attr_constraints_equality_and_predicate() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((1, 3, 8, 8), "float32"))
    w = g.add_const(torch.randn(4, 3, 3, 3), "w")
    g.set_outputs([g.call("conv2d", [x, w, None], {"stride": 2, "groups": 1}, name="c")])
    c = g.find("c")
    assert match(Pat.op("conv2d", attrs={"groups": 1}), c) is not None
    assert match(Pat.op("conv2d", attrs={"stride": lambda s: s == 1}), c) is None


def test_commutative_matching() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((3,), "float32"))
    c = g.add_const(torch.ones(3), "c")
    g.set_outputs([g.call("add", [c, x], name="s")])
    p = Pat.op("add", Pat.var("v"), Pat.const("k"), commutative=True)
    m = match(p, g.find("s"))
    assert m is not None and m.bindings["v"].name == "x" and m.bindings["k"].name == "c"
    assert match(Pat.op("add", Pat.var("v"), Pat.const("k")), g.find("s")) is None


@rule(Pat.op("relu", x=Pat.op("relu", x=Pat.var("inner"))), name="relu-relu")
def relu_relu(inner: Value) -> Value:
    """relu(relu(x)) -> relu(x)"""
    return F.relu(inner)


@rule(Pat.op("linear", x=Pat.var(), w=Pat.const(), b=Pat.any()), name="tiny-linear-only")
def tiny_only(x: Value, w: Value, b: Value | None) -> Value | Reject:
    """linear(x, W) -> linear(x, W)   (declines big layers)"""
    if w.shape[0] > 4:
        return Reject(f"out features {w.shape[0]} > 4")
    if w.name.startswith("w_copy"):
        return None
    return F.linear(x, const(w.value.clone(), "w_copy"), b)


def test_rule_fires_and_explain_log_records_declines() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((4,), "float32"))
    g.set_outputs([g.call("relu", [g.call("relu", [g.call("relu", [x])])])])
    log = ExplainLog(echo=False)
    n = rewrite(g, relu_relu, explain=log, pass_name="t")
    assert n == 2 and len(g) == 1
    assert [e.outcome for e in log.events] == ["fired", "fired"]
    assert "relu(relu(x)) -> relu(x)" in str(log)

    g2 = mlp_graph()
    log2 = ExplainLog(echo=False)
    rewrite(g2, RuleSet([tiny_only]), explain=log2, pass_name="t")
    declined = log2.declined("tiny-linear-only")
    assert [e.node for e in declined] == ["fc1"]
    assert declined[0].reason == "out features 16 > 4"
    assert len(log2.fired("tiny-linear-only")) == 1


def test_rule_sets_compose_and_reject_duplicates() -> None:
    rs = RuleSet([relu_relu]) + tiny_only
    assert [r.name for r in rs] == ["relu-relu", "tiny-linear-only"]
    with pytest.raises(ValueError, match="duplicate rule names"):
        _ = rs + relu_relu


def test_rule_names_must_be_kebab_case() -> None:
    with pytest.raises(ValueError, match="kebab-case"):
        rule(Pat.op("relu"), name="Bad_Name")(lambda: None)


@rule(Pat.op("neg", x=Pat.var()), name="neg-forever")
def neg_forever(x: Value) -> Value:
    """neg(x) -> neg(neg(neg(x)))   (never converges)"""
    return F.neg(F.neg(F.neg(x)))


def test_non_converging_rules_fail_with_rule_name() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((4,), "float32"))
    g.set_outputs([g.call("neg", [x])])
    with pytest.raises(RewriteError, match="rule neg-forever fired"):
        rewrite(g, neg_forever, max_rewrites=50)


def test_trace_env_echoes(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("BITPRESS_TRACE", "1")
    g = Graph()
    x = g.add_input("x", TensorType((4,), "float32"))
    g.set_outputs([g.call("relu", [g.call("relu", [x])])])
    rewrite(g, relu_relu, explain=ExplainLog())
    assert "relu-relu fired" in capsys.readouterr().err


def test_rule_from_torch_functions() -> None:
    def pattern(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ w) * 2.0

    def replacement(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ (w * 2.0))

    r = bp.rule_from_torch(pattern, replacement, (torch.randn(4, 8), torch.randn(8, 8)), name="scale-into-weight")

    class M(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(8, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x @ self.w) * 2.0 + torch.relu(x @ self.w) * 3.0

    from bitpress.compiler.frontend import import_module

    m, x = M().eval(), torch.randn(4, 8)
    g = import_module(m, (x,))
    assert rewrite(g, r) == 1  # only the "* 2.0" branch matches the literal constant
    ops = [n.op for n in g.nodes]
    assert ops.count("matmul") == 2
    with torch.no_grad():
        torch.testing.assert_close(run(g, [x])[0], m(x), rtol=1e-5, atol=1e-5)
