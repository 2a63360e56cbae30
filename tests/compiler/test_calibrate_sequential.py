"""calibrate.sequential: layer-wise calibration on the partly compressed graph."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bitpress.compiler.calibrate import block_key, collect, sequential
from bitpress.compiler.frontend import import_module
from bitpress.compiler.ir import Graph


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.up = nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(x)))


class Stack(nn.Module):
    def __init__(self, d: int = 8, depth: int = 3) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block(d) for _ in range(depth))
        self.head = nn.Linear(d, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.layers:
            x = b(x)
        return self.head(x)


def _graph() -> tuple[Graph, list[tuple[torch.Tensor]]]:
    torch.manual_seed(0)
    batches = [(torch.randn(5, 8),) for _ in range(3)]
    return import_module(Stack().eval(), batches[0]), batches


def _halve(g: Graph, name: str) -> None:
    n = g.find(name)
    w = n.inputs[1]
    assert w is not None
    n.replace_input(w, g.add_const(w.value * 0.5, w.name))


def test_block_key() -> None:
    assert block_key("model.layers.3.mlp.up_proj") == "model.layers.3"
    assert block_key("layer1.0.conv2") == "layer1.0"
    assert block_key("2") == "2"
    assert block_key("fc1") == "fc1"


def test_unmodified_graph_gives_the_same_stats_as_collect() -> None:
    g, batches = _graph()
    ref = collect(g, batches, hessian=True)
    steps = list(sequential(g, batches, hessian=True))
    assert [s.key for s in steps] == ["layers.0", "layers.1", "layers.2", "head"]
    assert [n.name for n in steps[0].nodes] == ["layers.0.up", "layers.0.down"]
    got = {k: v for s in steps for k, v in s.stats.items()}
    assert set(got) == set(ref)
    for k in ref:
        assert got[k].rows == ref[k].rows == 15
        torch.testing.assert_close(got[k].hessian, ref[k].hessian)
        torch.testing.assert_close(got[k].sqsum, ref[k].sqsum)
        assert got[k].in_max == pytest.approx(ref[k].in_max)


def test_later_groups_see_the_modified_earlier_groups() -> None:
    g, batches = _graph()
    dense = collect(g, batches, hessian=True)
    seen = {}
    for step in sequential(g, batches, hessian=True):
        seen.update(step.stats)
        if step.key == "layers.0":
            _halve(g, "layers.0.down")  # changes what every later layer receives
        if step.key == "layers.1":
            g.store[g.find("layers.1.up").inputs[1].name].mul_(2.0)  # an in-place edit counts too
    # the reference: the graph in its final state, collected in one pass
    final = collect(g, batches, hessian=True)
    for name in ("layers.1.up", "layers.2.up", "layers.2.down", "head"):
        torch.testing.assert_close(seen[name].hessian, final[name].hessian)
        assert not torch.allclose(seen[name].hessian, dense[name].hessian)
    # layers.0 was calibrated before it was changed
    torch.testing.assert_close(seen["layers.0.down"].hessian, dense["layers.0.down"].hessian)
    # layers.1.down was calibrated before layers.1.up was doubled, after layers.0 was halved
    assert not torch.allclose(seen["layers.1.down"].hessian, final["layers.1.down"].hessian)


def test_custom_groups_and_node_selection() -> None:
    g, batches = _graph()
    steps = list(sequential(g, batches, nodes=lambda n: n.op == "linear" and "down" in n.name, group=lambda n: n.name))
    assert [s.key for s in steps] == ["layers.0.down", "layers.1.down", "layers.2.down"]
    assert all(set(s.stats) == {s.key} for s in steps)


def test_interleaved_groups_and_structural_edits_are_refused() -> None:
    g, batches = _graph()
    with pytest.raises(ValueError, match="not contiguous"):
        list(sequential(g, batches, group=lambda n: "up" if "up" in n.name else "rest"))
    it = sequential(g, batches)
    next(it)
    with g.inserting_before(g.find("head")):
        g.call("relu", [g.find("layers.0.up").output])
    with pytest.raises(RuntimeError, match="nodes changed"):
        next(it)


def test_linears_sharing_an_input_get_their_own_exact_stats() -> None:
    class Fork(nn.Module):  # q/k/v-like: three linears read the same tensor
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v = nn.Linear(6, 3), nn.Linear(6, 3), nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.q(x) + self.k(x) * self.v(x)

    batches = [(torch.randn(4, 6),), (torch.randn(4, 6),)]
    g = import_module(Fork().eval(), batches[0])
    x = torch.cat([b[0] for b in batches]).double()
    for st in (collect(g, batches, hessian=True), next(iter(sequential(g, batches, hessian=True, group=lambda n: "all"))).stats):
        assert set(st) == {"q", "k", "v"}
        for s in st.values():
            assert s.rows == 8
            torch.testing.assert_close(s.hessian, x.t() @ x)
        assert st["q"].hessian is not st["k"].hessian  # accumulators are not shared


def test_constants_just_before_a_group_may_change() -> None:
    """AWQ folds 1/s into the norm in front of q/k/v: a node of the previous group's segment.
    The cached boundary values are recomputed, so the next group sees the change."""
    g, batches = _graph()
    select = {"nodes": lambda n: n.op == "linear" and "down" in n.name, "group": lambda n: n.name}
    seen = {}
    for step in sequential(g, batches, hessian=True, **select):  # type: ignore[arg-type]
        seen.update(step.stats)
        if step.key == "layers.1.down":
            _halve(g, "layers.1.up")  # before layers.1.down: in the previous group's segment
    final = collect(g, batches, hessian=True)
    torch.testing.assert_close(seen["layers.2.down"].hessian, final["layers.2.down"].hessian)
    it = sequential(g, batches, **select)  # type: ignore[arg-type]
    next(it), next(it)
    _halve(g, "layers.0.up")  # two groups back: the cached values cannot be recomputed
    with pytest.raises(RuntimeError, match="before the previous group"):
        next(it)
