"""Prune(structure="channel" | "head"): coupled groups found through the graph, tensors shrunk."""

from __future__ import annotations

import pytest
import torch

import bitpress as bp
from bitpress.compiler.ir import TensorType
from bitpress.compiler.pass_manager import PassContext, sqnr_db
from bitpress.passes.prune import Prune, find_groups
from bitpress.passes.prune.structured import Segment, _reshape_map
from tests.passes.prune.conftest import traced


@pytest.fixture(scope="module")
def fashion() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    from bitpress.models import load_fashion_cnn, load_fashion_mnist

    x, y = load_fashion_mnist("test", limit=400)
    return load_fashion_cnn(), x, y


def _acc(cm: bp.CompiledModel, x: torch.Tensor, y: torch.Tensor) -> float:  # type: ignore[name-defined]
    return sum(int((cm(x[i : i + 100]).argmax(1) == y[i : i + 100]).sum()) for i in range(0, x.shape[0], 100)) / x.shape[0]


def test_residual_cnn_groups(fashion: tuple[torch.nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, _ = fashion
    g = traced(model, (x[:8],))
    layers = {n.name: n for n in g.nodes if n.op in ("conv2d", "linear")}
    srcs = [Segment(n.inputs[1].name, 0, 0, 1, n.inputs[1].shape[0]) for n in layers.values()]
    _, groups = find_groups(g, srcs)
    by_weight = {s.value: grp for grp in groups for s in grp.segments if s.value in {n.inputs[1].name for n in layers.values()}}
    w = {k: n.inputs[1].name for k, n in layers.items()}
    # conv2 and conv3 output channels meet at the residual add: one group, which also covers
    # conv3's input channels and fc1's input columns in blocks of 3*3 after flatten
    res = by_weight[w["conv3"]]
    assert by_weight[w["conv2"]] is res and not res.blocked and res.count == 32
    assert Segment(w["fc1"], 1, 0, 9, 32) in res.segments
    assert Segment(w["conv3"], 1, 0, 1, 32) in res.segments and Segment(w["conv3"], 0, 0, 1, 32) in res.segments
    # fc2 produces the model output: its group may not change
    assert "graph input or output" in (by_weight[w["fc2"]].blocked or "")


def test_channel_pruning_shrinks_the_cnn(fashion: tuple[torch.nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = fashion
    cal = [(x[i : i + 100],) for i in range(0, 200, 100)]
    cm = bp.compile(model, cal[0], passes=[Prune(method="magnitude", structure="channel", sparsity=0.5)], calibration=cal)
    shapes = {n.name: tuple(n.inputs[1].shape) for n in cm.graph.nodes if n.op in ("conv2d", "linear")}
    assert shapes == {"conv1": (8, 1, 3, 3), "conv2": (16, 8, 3, 3), "conv3": (16, 16, 3, 3), "fc1": (32, 144), "fc2": (10, 32)}
    assert cm.report.total_bytes < 0.3 * cm.report.original_bytes
    cm.graph.verify()
    out = cm(x[:100])
    assert out.shape == (100, 10) and torch.isfinite(out).all()
    # no masks: every constant is dense and smaller
    assert all(not bool((v.value == 0).all(dim=0).any()) for v in cm.graph.consts.values() if v.ndim == 2)
    assert _acc(cm, x, y) > 0.2  # far above chance (0.1) without any fine-tuning


def test_reconstruction_recovers_accuracy(fashion: tuple[torch.nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, y = fashion
    cal = [(x[i : i + 64],) for i in range(0, 192, 64)]
    plain = bp.compile(model, cal[0], passes=[Prune(method="wanda", structure="channel", sparsity=0.5)], calibration=cal)
    refit = bp.compile(model, cal[0], passes=[Prune(method="wanda", structure="channel", sparsity=0.5, reconstruct=True)], calibration=cal)
    held, yh = x[192:384], y[192:384]  # not used for calibration
    ref = model(held)
    out = {k: torch.cat([cm(held[i : i + 64]) for i in range(0, 192, 64)]) for k, cm in (("plain", plain), ("refit", refit))}
    assert sqnr_db(ref, out["refit"]) > sqnr_db(ref, out["plain"]) + 3.0
    assert (out["refit"].argmax(1) == yh).float().mean() > (out["plain"].argmax(1) == yh).float().mean()
    rows = {r["name"]: r for r in refit.report.layers}
    assert all(rows[k]["sqnr_db"] is not None for k in ("conv2", "conv3", "fc1", "fc2"))


def test_round_to_and_explain(fashion: tuple[torch.nn.Module, torch.Tensor, torch.Tensor]) -> None:
    model, x, _ = fashion
    cm = bp.compile(model, (x[:4],), passes=[Prune(structure="channel", sparsity=0.3, round_to=4)])
    shapes = [n.inputs[1].shape[0] for n in cm.graph.nodes if n.op == "conv2d"]
    assert shapes == [12, 24, 24]  # 30% of 16 -> 4 (a multiple of 4); of 32 -> 8
    fired = [e for e in cm._explain.events if e.rule == "prune-channel-group"]
    assert any(e.outcome == "fired" and "removed 4 of 16" in e.reason for e in fired)
    assert any(e.outcome == "declined" and "graph input or output" in e.reason for e in fired)


def test_reshape_map_rescales_units() -> None:
    g = bp.Graph()
    v = g.add_input("v", TensorType((2, 16, 384), "float32"))
    # head split: 32 channels per head -> one head index
    assert _reshape_map((2, 16, 384), (2, 16, 12, 32), Segment("a", 2, 0, 32, 12), v)[1] == Segment("v", 2, 0, 1, 12)
    assert _reshape_map((2, 16, 12, 32), (2, 16, 384), Segment("a", 2, 0, 1, 12), v)[1] == Segment("v", 2, 0, 32, 12)
    assert _reshape_map((4, 32, 3, 3), (4, 288), Segment("a", 1, 0, 1, 32), v)[1] == Segment("v", 1, 0, 9, 32)
    with pytest.raises(Exception, match="splits a pruning unit"):
        _reshape_map((2, 16, 384), (2, 16, 12, 32), Segment("a", 2, 0, 1, 384), v)


def test_concat_offsets() -> None:
    class Cat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = torch.nn.Linear(8, 6), torch.nn.Linear(8, 4), torch.nn.Linear(10, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(torch.relu(torch.cat([self.a(x), self.b(x)], dim=-1)))

    m = Cat().eval()
    x = torch.randn(5, 8)
    cm = bp.compile(m, (x,), passes=[Prune(structure="channel", sparsity=0.5)])
    shapes = {n.name: tuple(n.inputs[1].shape) for n in cm.graph.nodes if n.op == "linear"}
    assert shapes == {"a": (3, 8), "b": (2, 8), "c": (3, 5)}
    # the kept columns of c are exactly the kept rows of a and b, in order
    keep_a = [i for i in range(6) if any(torch.equal(m.a.weight[i], r) for r in cm.graph.find("a").inputs[1].value)]
    keep_b = [i for i in range(4) if any(torch.equal(m.b.weight[i], r) for r in cm.graph.find("b").inputs[1].value)]
    torch.testing.assert_close(cm.graph.find("c").inputs[1].value, m.c.weight[:, keep_a + [6 + i for i in keep_b]])
    ha = torch.relu(torch.cat([x @ m.a.weight[keep_a].t() + m.a.bias[keep_a], x @ m.b.weight[keep_b].t() + m.b.bias[keep_b]], -1))
    torch.testing.assert_close(cm(x), ha @ cm.graph.find("c").inputs[1].value.t() + m.c.bias)


@pytest.mark.slow
def test_minilm_heads() -> None:
    from bitpress.models import SENTENCES, MiniLMEncoder, encode_batch, load_minilm, mean_pool

    model, tok = load_minilm()
    enc = MiniLMEncoder(model).eval()
    cal = [encode_batch(tok, SENTENCES[i : i + 8], 20) for i in (0, 8)]
    ids, mask = encode_batch(tok, SENTENCES[32:40], 20)
    g = traced(enc, cal[0])
    ctx = PassContext(example_inputs=cal[0], calibration=cal)
    before = g.weight_bytes()
    res = Prune(method="wanda", structure="head", sparsity=0.25).apply(g, ctx)
    assert res.stats["groups_pruned"] == 6
    g.verify()
    for layer in range(6):
        p = f"model.encoder.layer.{layer}.attention"
        for proj in ("self.query", "self.key", "self.value"):
            assert g.find(f"{p}.{proj}").inputs[1].shape == (288, 384)  # 9 of 12 heads x 32
        assert g.find(f"{p}.output.dense").inputs[1].shape == (384, 288)
        sd = next(n for n in g.nodes if n.op == "sdpa" and n.name.startswith(p))
        assert sd.inputs[0].shape == (8, 9, 20, 32)
        assert next(n for n in g.nodes if n.op == "reshape" and n.name.startswith(p + ".self")).attrs["shape"] == [8, 20, 9, 32]
    assert g.weight_bytes() < before - 6 * 4 * 384 * 96 * 4 * 0.99
    from bitpress.compiler.interpreter import run

    out = run(g, (ids, mask))[0]
    ref = mean_pool(enc(ids, mask), mask)
    cos = torch.nn.functional.cosine_similarity(mean_pool(out, mask), ref).mean().item()
    assert out.shape == (8, 20, 384) and cos > 0.85


def test_prune_then_quantize(fashion: tuple[torch.nn.Module, torch.Tensor, torch.Tensor]) -> None:
    """Structured pruning leaves plain (smaller) conv/linear ops that Quantize packs."""
    model, x, _ = fashion
    passes = [Prune(structure="channel", sparsity=0.5), bp.passes.Quantize(method="rtn", bits=8, group_size=None, weight_clip="minmax")]
    cm = bp.compile(model, (x[:32],), passes=passes, calibration=[(x[:32],)])
    ops = [n.op for n in cm.graph.nodes if n.op.startswith("q")]
    assert ops == ["qconv2d", "qconv2d", "qconv2d", "qlinear", "qlinear"]
    assert [n.attrs["shape"][0] for n in cm.graph.nodes if n.op.startswith("q")] == [8, 16, 16, 32, 10]
    pruned_only = bp.compile(model, (x[:32],), passes=passes[:1])
    assert sqnr_db(pruned_only(x[32:64]), cm(x[32:64])) > 25.0  # int8 on top of the pruned model
    assert cm.report.total_bytes < pruned_only.report.total_bytes / 3
