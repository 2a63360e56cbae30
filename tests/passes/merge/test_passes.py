"""Merge, FoldLoRA and MergeLinearChain on traced graphs: structure, numerics against eager torch, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import bitpress as bp
from bitpress.compiler.frontend import import_module
from bitpress.compiler.interpreter import run
from bitpress.compiler.ir import Graph
from bitpress.compiler.pass_manager import PassContext
from bitpress.passes.canonicalize import canonicalize_pipeline
from bitpress.passes.merge import FoldLoRA, Merge, MergeLinearChain, merge_state_dicts


class ConvNet(nn.Module):
    """conv-bn-relu (the bn is folded by canonicalization, renaming the conv's constants), then an MLP head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(4 * 6 * 6, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def _perturbed(m: nn.Module, seed: int, amount: float = 0.1) -> nn.Module:
    out = copy.deepcopy(m)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*out.named_parameters(), *out.named_buffers()]:
            if t.is_floating_point():
                t.add_(amount * torch.randn(t.shape, generator=g))
                if name.endswith("running_var"):
                    t.abs_()
    return out.eval()


@pytest.fixture(scope="module")
def family() -> tuple[nn.Module, nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    base = ConvNet().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so folding matters
        base.bn.running_mean.uniform_(-0.5, 0.5)
        base.bn.running_var.uniform_(0.5, 2.0)
    return base, _perturbed(base, 1), _perturbed(base, 2), torch.randn(3, 2, 6, 6)


@pytest.fixture(scope="module")
def imported(family: tuple[nn.Module, nn.Module, nn.Module, torch.Tensor]) -> Graph:
    base, _, _, x = family
    return import_module(base, (x,))


def _canonical(source: Graph) -> tuple[Graph, PassContext]:
    g = source.clone()
    ctx = PassContext(quiet=True, source_graph=source)
    for p in canonicalize_pipeline():
        g = p.apply(g, ctx).graph
    return g, ctx


def _eager(model: nn.Module, sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    m = copy.deepcopy(model)
    m.load_state_dict(sd)
    with torch.no_grad():
        return m.eval()(x)


@pytest.mark.parametrize(
    ("method", "kw"),
    [
        ("average", {"weights": [0.3, 0.7]}),
        ("task-arithmetic", {"scale": 0.8}),
        ("ties", {"density": 0.3}),
        ("dare", {"density": 0.7, "seed": 3}),
        ("dare-ties", {"density": 0.7}),
        ("breadcrumbs", {"density": 0.8, "outliers": 0.05}),
        ("slerp", {"t": 0.3}),
    ],
)
def test_merge_equals_eager_model_with_merged_state_dict(family, imported, method: str, kw: dict) -> None:  # type: ignore[no-untyped-def]
    """The merged graph computes the torch model loaded with the merged state dict, though bn was folded first."""
    base, a, b, x = family
    needs_base = method not in ("average", "slerp")
    p = Merge(models=[a, b], base=base if needs_base else None, method=method, **kw)
    g, ctx = _canonical(imported)
    res = p.apply(g, ctx)
    g.verify()
    assert res.modified and res.stats["constants_changed"] > 0
    assert not any(n.op == "batch_norm" for n in g.nodes)
    sd, _ = merge_state_dicts(
        [a.state_dict(), b.state_dict()],
        base.state_dict() if needs_base else None,
        method=method,
        density=p.density or 1.0,
        weights=p.weights,
        scale=p.scale,
        seed=p.seed,
        outliers=p.outliers,
        t=p.t,
    )
    torch.testing.assert_close(run(g, (x,))[0], _eager(base, sd, x), rtol=1e-5, atol=1e-5)
    layers = [n for n in g.nodes if "merge" in n.meta]
    assert {n.op for n in layers} == {"conv2d", "linear"}
    assert all(isinstance(n.meta["sqnr_db"], float) for n in layers)


def test_merge_without_base_uses_the_compiled_weights(family) -> None:  # type: ignore[no-untyped-def]
    base, a, b, x = family
    cm = bp.compile(base, (x,), passes=[Merge(models=[a, b], method="task-arithmetic", scale=0.5)])
    sd, _ = merge_state_dicts([a.state_dict(), b.state_dict()], base.state_dict(), method="task-arithmetic", scale=0.5)
    torch.testing.assert_close(cm(x), _eager(base, sd, x), rtol=1e-5, atol=1e-5)
    rows = {r["name"]: r for r in cm.report.layers}
    assert all(r["sqnr_db"] is not None for r in rows.values())


def test_merge_then_compression_pass_in_one_compile(family, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Merged weights flow on through the next pass (an exact one here) and through save/load."""
    from safetensors.torch import save_file

    base, a, b, x = family
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(a.state_dict(), str(pa))
    save_file(b.state_dict(), str(pb))
    cm = bp.compile(base, (x,), passes=[Merge(models=[str(pa), pb], method="average"), MergeLinearChain(allow_growth=True)])
    assert sum(n.op == "linear" for n in cm.graph.nodes) == 2  # relu between fc1 and fc2: no chain
    sd, _ = merge_state_dicts([a.state_dict(), b.state_dict()], method="average")
    torch.testing.assert_close(cm(x), _eager(base, sd, x), rtol=1e-5, atol=1e-5)
    loaded = bp.load(cm.save(tmp_path / "art"))
    torch.testing.assert_close(loaded(x), cm(x))


def test_merge_recipe_entry(family, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import save_file

    base, a, b, x = family
    paths = []
    for name, m in (("a", a), ("b", b), ("base", base)):
        paths.append(str(tmp_path / f"{name}.safetensors"))
        save_file(m.state_dict(), paths[-1])
    recipe = {"passes": [{"merge": {"models": paths[:2], "base": paths[2], "method": "ties", "density": 0.5}}]}
    cm = bp.compile(base, (x,), passes=recipe)
    sd, _ = merge_state_dicts([a.state_dict(), b.state_dict()], base.state_dict(), method="ties", density=0.5)
    torch.testing.assert_close(cm(x), _eager(base, sd, x), rtol=1e-5, atol=1e-5)


def test_mismatch_lists_every_difference(family, imported) -> None:  # type: ignore[no-untyped-def]
    base, a, b, _ = family
    bad = {k: v for k, v in b.state_dict().items() if k != "fc2.bias"}
    bad["extra.weight"] = torch.zeros(2)
    bad["fc1.weight"] = torch.zeros(16, 7)
    g, ctx = _canonical(imported)
    with pytest.raises(ValueError) as e:
        Merge(models=[a, bad], base=base, method="ties").apply(g, ctx)
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("models[1] lacks fc2.bias", "unexpected extra.weight", "fc1.weight [16,7] vs [16,144]"):
        assert part in msg


def test_different_architecture_is_named(family, imported) -> None:  # type: ignore[no-untyped-def]
    other = nn.Sequential(nn.Linear(3, 3))
    g, ctx = _canonical(imported)
    with pytest.raises(ValueError, match="none of the models' 2 parameters name a constant"):
        Merge(models=[other, other]).apply(g, ctx)
    wider = {k: (torch.zeros(16, 145) if k == "fc1.weight" else v) for k, v in family[1].state_dict().items()}
    with pytest.raises(ValueError, match=r"shape difference.*fc1.weight \[16, 145\] vs graph \[16, 144\]"):
        Merge(models=[wider, wider]).apply(g, ctx)
    extra = dict(family[1].state_dict(), **{"head.weight": torch.randn(3, 3)})
    with pytest.raises(ValueError, match=r"not constants of the compiled graph: head\.weight"):
        Merge(models=[extra, extra]).apply(g, ctx)
    res = Merge(models=[extra, extra], strict=False).apply(g, ctx)
    assert res.stats["parameters_not_in_graph"] == ["head.weight"]


class PosModel(nn.Module):
    """Position embeddings gathered at constant indices: the frontend folds them into a new constant at import."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Embedding(4, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x + self.pos(torch.arange(4)))


def test_parameters_folded_at_import_are_merged_by_retracing_modules() -> None:
    torch.manual_seed(3)
    base, x = PosModel().eval(), torch.randn(2, 4, 6)
    a, b = _perturbed(base, 1, 0.5), _perturbed(base, 2, 0.5)
    source = import_module(base, (x,))
    assert "pos.weight" not in source.consts  # folded: only a state-dict replay would miss it
    g, ctx = _canonical(source)
    with pytest.raises(ValueError, match=r"not constants of the compiled graph: pos\.weight .*pass the models as torch modules"):
        Merge(models=[a.state_dict(), b.state_dict()], base=base.state_dict(), method="ties", density=0.5).apply(g, ctx)
    cm = bp.compile(base, (x,), passes=[Merge(models=[a, b], base=base, method="ties", density=0.5)])
    assert cm.report.passes[-1].stats["retraced"] is True
    sd, _ = merge_state_dicts([a.state_dict(), b.state_dict()], base.state_dict(), method="ties", density=0.5)
    torch.testing.assert_close(cm(x), _eager(base, sd, x), rtol=1e-5, atol=1e-5)


def test_merge_refuses_to_overwrite_an_earlier_weight_change(family) -> None:  # type: ignore[no-untyped-def]
    base, a, b, x = family
    adapter = {"fc1.lora_A.weight": torch.randn(2, 144), "fc1.lora_B.weight": torch.randn(16, 2)}
    with pytest.raises(ValueError, match=r"pass merge: weights fc1\.weight_\d+ were changed by an earlier pass"):
        bp.compile(base, (x,), passes=[FoldLoRA(adapter), Merge(models=[a, b])])


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"models": [], "method": "average"}, "models: give at least one model"),
        ({"models": ["/nonexistent.safetensors"]}, "models\\[0\\]: no such checkpoint file"),
        ({"models": [{}], "method": "magic"}, "method: unknown merge method 'magic'"),
        ({"models": [{}], "method": "slerp"}, "slerp merges exactly two models"),
        ({"models": [{}], "method": "ties", "density": 0.0}, "density: must be in"),
        ({"models": [{}], "base": {}, "method": "average"}, "base: method 'average' does not use a base"),
        ({"models": [{}, {}], "weights": [1.0]}, "weights: need 2 finite numbers"),
        ({"models": [{}], "method": "greedy-soup"}, "evaluate: greedy-soup needs"),
        ({"models": [{}], "method": "breadcrumbs", "density": 0.9, "outliers": 0.2}, "outliers"),
    ],
)
def test_bad_options_are_one_line_value_errors(kw: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg) as e:
        Merge(**kw)
    assert "\n" not in str(e.value)


def test_greedy_soup_in_compile(family) -> None:  # type: ignore[no-untyped-def]
    base, a, b, x = family
    target = _eager(base, a.state_dict(), x)

    def evaluate(sd: dict[str, torch.Tensor]) -> float:
        return -float((_eager(base, sd, x) - target).pow(2).mean())

    cm = bp.compile(base, (x,), passes=[Merge(models=[b, a], method="greedy-soup", evaluate=evaluate)])
    assert cm.report.passes[-1].stats["soup"] == [1]  # only a: adding b moves away from a's outputs
    torch.testing.assert_close(cm(x), target, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- LoRA


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 20)
        self.fc2 = nn.Linear(20, 6, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


def test_fold_lora_peft_keys_with_alpha() -> None:
    torch.manual_seed(1)
    m, x = MLP().eval(), torch.randn(4, 12)
    a1, b1 = torch.randn(4, 12), torch.randn(20, 4)
    a2, b2 = torch.randn(2, 20), torch.randn(6, 2)
    adapter = {
        "base_model.model.fc1.lora_A.weight": a1,
        "base_model.model.fc1.lora_B.weight": b1,
        "base_model.model.fc2.lora_A.default.weight": a2,
        "base_model.model.fc2.lora_B.default.weight": b2,
    }
    cm = bp.compile(m, (x,), passes=[FoldLoRA(adapter, alpha=8)])
    sd = m.state_dict()
    sd["fc1.weight"] = sd["fc1.weight"] + (8 / 4) * b1 @ a1
    sd["fc2.weight"] = sd["fc2.weight"] + (8 / 2) * b2 @ a2
    torch.testing.assert_close(cm(x), _eager(m, sd, x), rtol=1e-5, atol=1e-4)
    linears = [n for n in cm.graph.nodes if n.op == "linear"]
    assert [n.meta["lora_rank"] for n in linears] == [4, 2]
    assert len(cm.graph.consts) == 3  # the old weights are gone: W' replaces W, no extra matrices at run time
    assert len(cm.explain().splitlines()) >= 2 and "fold-lora-linear fired" in cm.explain()


def test_fold_lora_unmatched_adapter_is_an_error() -> None:
    m, x = MLP().eval(), torch.randn(4, 12)
    adapter = {"fc9.lora_A.weight": torch.randn(2, 12), "fc9.lora_B.weight": torch.randn(20, 2)}
    with pytest.raises(ValueError, match=r"1 adapter\(s\) matched no linear weight of the graph: fc9\.weight"):
        bp.compile(m, (x,), passes=[FoldLoRA(adapter)])
    with pytest.raises(ValueError, match=r"fc1\.weight: lora_A without lora_B"):
        bp.compile(m, (x,), passes=[FoldLoRA({"fc1.lora_A.weight": torch.randn(2, 12)})])
    with pytest.raises(ValueError, match="scale: give either"):
        FoldLoRA({}, scale=1.0, alpha=2.0)


def test_fold_lora_declines_a_batch_norm_folded_weight() -> None:
    m = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8)).eval()
    with torch.no_grad():
        m[1].running_var.uniform_(0.5, 2.0)
    adapter = {"0.lora_A.weight": torch.randn(2, 6), "0.lora_B.weight": torch.randn(8, 2)}
    with pytest.raises(ValueError, match=r"derived from 0\.weight by an earlier rewrite"):
        bp.compile(m, (torch.randn(3, 6),), passes=[FoldLoRA(adapter)])


# ----------------------------------------------------------------------------- linear chains


def test_merge_linear_chain_structure_and_numerics() -> None:
    m = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.1), nn.Linear(16, 4)).eval()
    x = torch.randn(5, 8)
    cm = bp.compile(m, (x,), passes=[MergeLinearChain()])
    linears = [n for n in cm.graph.nodes if n.op == "linear"]
    assert len(linears) == 1 and linears[0].inputs[1].shape == (4, 8)
    assert linears[0].meta["merged_from"] == ["0", "2"]
    with torch.no_grad():
        torch.testing.assert_close(cm(x), m(x), rtol=1e-5, atol=1e-6)
    assert cm.report.total_bytes < cm.report.original_bytes


def test_merge_linear_chain_declines_growth_and_shared_outputs() -> None:
    m = nn.Sequential(nn.Linear(32, 4), nn.Linear(4, 32)).eval()
    x = torch.randn(2, 32)
    cm = bp.compile(m, (x,), passes=[MergeLinearChain()])
    assert sum(n.op == "linear" for n in cm.graph.nodes) == 2
    assert "cheaper factorization" in cm.explain()
    cm = bp.compile(m, (x,), passes=[MergeLinearChain(allow_growth=True)])
    assert sum(n.op == "linear" for n in cm.graph.nodes) == 1
    with torch.no_grad():
        torch.testing.assert_close(cm(x), m(x), rtol=1e-5, atol=1e-5)

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x)
            return self.b(h) + h

    cm = bp.compile(Shared().eval(), (torch.randn(2, 8),), passes=[MergeLinearChain()])
    assert sum(n.op == "linear" for n in cm.graph.nodes) == 2
    assert "other users" in cm.explain()


def test_merge_linear_chain_keeps_nonlinear_pairs() -> None:
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)).eval()
    cm = bp.compile(m, (torch.randn(2, 8),), passes=[MergeLinearChain()])
    assert sum(n.op == "linear" for n in cm.graph.nodes) == 2
    assert not cm.report.passes[-1].modified


@settings(max_examples=15, deadline=None)
@given(
    i=st.integers(1, 12),
    mid=st.integers(1, 12),
    o=st.integers(1, 12),
    bias1=st.booleans(),
    bias2=st.booleans(),
    lead=st.sampled_from([(3,), (2, 3)]),
)
def test_merge_linear_chain_property(i: int, mid: int, o: int, bias1: bool, bias2: bool, lead: tuple[int, ...]) -> None:
    """Any chain with any biases and leading dims merges to the same function (rule applied on a hand-built graph)."""
    from bitpress.compiler.ir import TensorType
    from bitpress.compiler.rewrite import rewrite
    from bitpress.passes.merge import linear_chain_rules
    from bitpress.passes.merge.passes import LinearChainConfig

    gen = torch.Generator().manual_seed(i * 1000 + mid * 100 + o)
    g = Graph()
    x = g.add_input("x", TensorType((*lead, i), "float32"))
    w1, w2 = g.add_const(torch.randn(mid, i, generator=gen), "w1"), g.add_const(torch.randn(o, mid, generator=gen), "w2")
    b1 = g.add_const(torch.randn(mid, generator=gen), "b1") if bias1 else None
    b2 = g.add_const(torch.randn(o, generator=gen), "b2") if bias2 else None
    g.set_outputs([g.call("linear", [g.call("linear", [x, w1, b1], name="l1"), w2, b2], name="l2")])
    xin = torch.randn(*lead, i, generator=gen)
    want = run(g, (xin,))[0]
    n = rewrite(g, linear_chain_rules, cfg=LinearChainConfig(allow_growth=True))
    g.verify()
    assert n == 1 and sum(1 for _ in g.nodes) == 1
    torch.testing.assert_close(run(g, (xin,))[0], want, rtol=1e-5, atol=1e-5)
