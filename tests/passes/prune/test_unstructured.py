"""Prune(structure=None): magnitude / Wanda / SparseGPT, N:M masks, allocation, packing rules."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bitpress as bp
from bitpress.compiler.pass_manager import CompileError, PassContext, sqnr_db
from bitpress.formats.sparse import decode_ell, decode_nm
from bitpress.passes._common import layer_sqnr_db
from bitpress.passes.prune import Prune
from bitpress.passes.prune._algorithms import keep_mask, sparsegpt
from tests.passes.prune.conftest import Correlated, correlated_batches, traced


def _dense_weight(node: bp.compiler.ir.Node) -> torch.Tensor:  # type: ignore[name-defined]
    if node.op == "nm_linear":
        a = node.attrs
        return decode_nm(node.inputs[1].value, node.inputs[2].value, a["n"], a["m"], a["in_features"])
    if node.op == "sparse_linear":
        return decode_ell(node.inputs[1].value, node.inputs[2].value, node.attrs["in_features"])
    return node.inputs[1].value.reshape(node.inputs[1].shape[0], -1)


def _compile(model: torch.nn.Module, cal: list[tuple[torch.Tensor]], **kw: object) -> bp.CompiledModel:  # type: ignore[name-defined]
    return bp.compile(model, cal[0], passes=[Prune(**kw)], calibration=cal)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- structure


def test_two_four_packs_every_linear_and_masks_are_valid(correlated_model: Correlated) -> None:
    cal = correlated_batches(2)
    cm = _compile(correlated_model, cal, method="wanda", sparsity="2:4")
    ops = [n.op for n in cm.graph.nodes]
    assert ops == ["nm_linear", "relu", "nm_linear"]
    for n in cm.graph.nodes:
        if n.op == "nm_linear":
            w = _dense_weight(n)
            assert ((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all()
            assert n.meta["sparsity"] == pytest.approx(0.5, abs=0.01) and n.meta["format"] == "2:4"
            assert n.inputs[2].dtype == "uint2"
    # stored bytes: values (half the floats) + 2-bit indices, i.e. 9/16 of the dense weights
    row = {r["name"]: r for r in cm.report.layers}["fc1"]
    assert row["bytes"] == 96 * 64 * 4 + 96 * 64 // 4 + 96 * 4
    assert row["sqnr_db"] is not None and row["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_unstructured_packs_csr_only_where_it_pays(correlated_model: Correlated) -> None:
    cal = correlated_batches(2)
    cm = _compile(correlated_model, cal, method="magnitude", sparsity=0.6)
    assert [n.op for n in cm.graph.nodes] == ["sparse_linear", "relu", "sparse_linear"]
    low = _compile(correlated_model, cal, method="magnitude", sparsity=0.2)
    assert [n.op for n in low.graph.nodes] == ["linear", "relu", "linear"]
    reasons = [e.reason for e in low._explain.declined("pack-sparse-linear")]
    assert reasons and all("kept dense" in r for r in reasons)
    assert all(n.meta.get("format") == "dense" for n in low.graph.nodes if n.op == "linear")
    assert [r["sparsity"] for r in low.report.layers] == [pytest.approx(0.2, abs=0.01)] * 2


def test_format_dense_leaves_plain_linears(correlated_model: Correlated) -> None:
    cm = _compile(correlated_model, correlated_batches(1), method="wanda", sparsity="2:4", format="dense")
    assert [n.op for n in cm.graph.nodes] == ["linear", "relu", "linear"]


def test_exclude_and_n_m_decline_reason() -> None:
    m = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8), torch.nn.Linear(8, 4))
    x = torch.randn(8, 10)
    cm = bp.compile(m, (x,), passes=[Prune(sparsity="2:4", exclude=("3",))])
    assert [n.op for n in cm.graph.nodes] == ["linear", "relu", "nm_linear", "linear"]
    assert any("not a multiple of M=4" in e.reason for e in cm._explain.declined("prune-layer"))


def test_conv_layers_are_pruned_dense_with_report() -> None:
    m = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3))
    x = torch.randn(2, 4, 10, 10)
    cm = bp.compile(m, (x,), passes=[Prune(method="sparsegpt", sparsity="2:4")], calibration=[(x,)])
    for n in cm.graph.nodes:
        if n.op == "conv2d":
            w = n.inputs[1].value.reshape(8, -1)
            assert ((w.reshape(8, -1, 4) != 0).sum(-1) <= 2).all()
            assert n.meta["format"] == "dense" and math.isfinite(n.meta["sqnr_db"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "obs"}, "method must be one of"),
        ({"sparsity": 1.0}, "sparsity must be a fraction"),
        ({"sparsity": "4:2"}, "0 < N < M"),
        ({"sparsity": "2-4"}, "'N:M'"),
        ({"structure": "channel", "method": "sparsegpt"}, "unstructured"),
        ({"structure": "filter"}, "structure must be"),
        ({"allocation": "owl"}, "allocation must be"),
        ({"sparsity": "2:4", "structure": "head"}, "cannot be combined"),
        ({"reconstruct": True}, "structured pruning only"),
        ({"sequential": "yes"}, "sequential must be"),
    ],
)
def test_bad_options_are_one_line_value_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match) as e:
        Prune(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(e.value) and "Prune" in str(e.value)


def test_data_aware_methods_need_calibration(correlated_model: Correlated) -> None:
    g = traced(correlated_model, correlated_batches(1)[0])
    with pytest.raises(CompileError, match="needs calibration"):
        Prune(method="wanda").apply(g, PassContext())


def test_recipe_finds_prune() -> None:
    m = torch.nn.Sequential(torch.nn.Linear(16, 16))
    x = torch.randn(4, 16)
    cm = bp.compile(m, (x,), passes={"passes": [{"prune": {"method": "magnitude", "sparsity": "2:4"}}]})
    assert [n.op for n in cm.graph.nodes] == ["nm_linear"]


# ----------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("sparsity", [0.5, "2:4"])
def test_sparsegpt_beats_wanda_and_magnitude(correlated_model: Correlated, sparsity: float | str) -> None:
    """Layer error on calibration-distribution data: SparseGPT strictly lower in every layer."""
    cal = correlated_batches(8)
    held = correlated_batches(4, seed=1)
    ref = [correlated_model(x) for (x,) in held]
    sq: dict[str, dict[str, float]] = {}
    out: dict[str, float] = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        cm = _compile(correlated_model, cal, method=method, sparsity=sparsity)
        sq[method] = {n.name: n.meta["sqnr_db"] for n in cm.graph.nodes if "sqnr_db" in n.meta}
        out[method] = min(sqnr_db(r, cm(x)) for r, (x,) in zip(ref, held))
    for layer in ("fc1", "fc2"):
        assert sq["sparsegpt"][layer] > sq["wanda"][layer] > sq["magnitude"][layer], sq
    assert out["sparsegpt"] > out["wanda"] > out["magnitude"], out
    # at 50% the output keeps most of its energy with SparseGPT
    assert out["sparsegpt"] > 10.0


def test_pruned_model_matches_its_dense_weights(correlated_model: Correlated) -> None:
    """The packed ops compute exactly x @ W'^T + b with W' the pruned weight."""
    cal = correlated_batches(2)
    cm = _compile(correlated_model, cal, method="sparsegpt", sparsity=0.5)
    x = cal[0][0]
    ws = {n.name: _dense_weight(n) for n in cm.graph.nodes if n.op.endswith("linear")}
    h = torch.relu(torch.nn.functional.linear(x, ws["fc1"], correlated_model.fc1.bias))
    torch.testing.assert_close(cm(x), torch.nn.functional.linear(h, ws["fc2"], correlated_model.fc2.bias))


def test_layer_sqnr_uses_the_hessian() -> None:
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    x = torch.randn(100, 16)
    w2 = w * keep_mask(w.abs(), 0.5, None, per_row=False)
    want = sqnr_db(x @ w.t(), x @ w2.t())
    assert layer_sqnr_db(w, w2, x.t() @ x) == pytest.approx(want, abs=1e-6)
    assert layer_sqnr_db(w, w, None) == math.inf


@settings(max_examples=15, deadline=None)
@given(
    out=st.integers(1, 12),
    groups=st.integers(1, 8),
    nm=st.sampled_from([(2, 4), (1, 4), (4, 8), (1, 2)]),
    seed=st.integers(0, 10_000),
    method=st.sampled_from(["magnitude", "sparsegpt"]),
)
def test_masks_hold_at_most_n_per_group(out: int, groups: int, nm: tuple[int, int], seed: int, method: str) -> None:
    n, m = nm
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, groups * m, generator=g)
    if method == "magnitude":
        w2 = w * keep_mask(w.abs(), None, nm, per_row=False)
    else:
        x = torch.randn(4 * groups * m, groups * m, generator=g)
        w2 = sparsegpt(w, x.t() @ x, None, nm, blocksize=m * 2)
    assert ((w2.reshape(out, groups, m) != 0).sum(-1) <= n).all()


@settings(max_examples=15, deadline=None)
@given(rows=st.integers(1, 10), cols=st.integers(2, 40), s=st.floats(0.0, 0.95), per_row=st.booleans())
def test_unstructured_masks_hit_the_sparsity(rows: int, cols: int, s: float, per_row: bool) -> None:
    w = torch.randn(rows, cols)
    mask = keep_mask(w.abs(), s, None, per_row=per_row)
    dropped = int(cols * s) * rows if per_row else int(rows * cols * s)
    assert int((~mask).sum()) == dropped


# ----------------------------------------------------------------------------- allocation


@pytest.mark.parametrize("allocation", ["global", "sensitivity"])
def test_allocation_meets_the_budget_with_uneven_layers(allocation: str) -> None:
    torch.manual_seed(0)
    m = Correlated(64, 128, 64).eval()
    with torch.no_grad():
        m.fc2.weight.mul_(0.05)  # fc2 matters little in magnitude terms
    cal = correlated_batches(4, d_in=64)
    cm = _compile(m, cal, method="magnitude", sparsity=0.5, allocation=allocation, format="dense")
    sp = {n.name: n.meta["sparsity"] for n in cm.graph.nodes if n.op == "linear"}
    total = (sp["fc1"] * 64 * 128 + sp["fc2"] * 128 * 64) / (2 * 64 * 128)
    assert total == pytest.approx(0.5, abs=0.03)
    assert sp["fc1"] != pytest.approx(sp["fc2"], abs=0.02)  # not uniform


def test_sensitivity_allocation_lowers_summed_error() -> None:
    torch.manual_seed(0)
    m = Correlated(64, 128, 64).eval()
    cal = correlated_batches(4, d_in=64)
    errs = {}
    for alloc in ("uniform", "sensitivity"):
        cm = _compile(m, cal, method="magnitude", sparsity=0.5, allocation=alloc, format="dense")
        errs[alloc] = sum(10 ** (-n.meta["sqnr_db"] / 10) for n in cm.graph.nodes if n.op == "linear")
    assert errs["sensitivity"] < errs["uniform"]


# ----------------------------------------------------------------------------- sequential calibration


@pytest.mark.parametrize("sequential", [True, False])
def test_later_layers_are_calibrated_on_the_pruned_earlier_layers(correlated_model: Correlated, sequential: bool) -> None:
    """sequential=True: fc2's statistics come from fc1 already pruned (SparseGPT/Wanda papers); False: the dense model."""
    cal = correlated_batches(4)
    cm = _compile(correlated_model, cal, method="wanda", sparsity="2:4", sequential=sequential, format="dense")
    x = torch.cat([b[0] for b in cal])
    w2 = correlated_model.fc2.weight.detach()

    def fc2_inputs_and_mask(fc1_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(torch.nn.functional.linear(x, fc1_w, correlated_model.fc1.bias)).double()
        # Wanda keeps the top 2 of every 4 by |W| * ||X_j||
        return h, w2 * keep_mask(w2.abs() * h.pow(2).sum(0).sqrt().float(), None, (2, 4), per_row=True)

    h_pruned, want_pruned = fc2_inputs_and_mask(_dense_weight(cm.graph.find("fc1")))
    h_dense, want_dense = fc2_inputs_and_mask(correlated_model.fc1.weight.detach())
    assert not torch.equal(want_pruned, want_dense)  # the two calibrations lead to different masks here
    h, want = (h_pruned, want_pruned) if sequential else (h_dense, want_dense)
    torch.testing.assert_close(_dense_weight(cm.graph.find("fc2")), want)
    assert cm.graph.find("fc2").meta["sqnr_db"] == pytest.approx(layer_sqnr_db(w2, want, h.t() @ h), abs=0.01)


def test_layer_mode_calibrates_within_a_block() -> None:
    """sequential="layer": o-like layers of one block see their block's earlier layers pruned; "block" does not."""

    class TwoInOne(torch.nn.Module):  # one block ("0") holding two chained linears
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList([Correlated()])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.blocks[0](x)

    torch.manual_seed(0)
    m = TwoInOne().eval()
    cal = correlated_batches(4)
    sq = {}
    for method, mode in [("wanda", m) for m in ("block", "layer", "none", "auto")] + [("sparsegpt", "block"), ("sparsegpt", "auto")]:
        cm = _compile(m, cal, method=method, sparsity="2:4", sequential=mode, format="dense")
        sq[method, mode] = cm.graph.find("blocks.0.fc2").meta["sqnr_db"]
    assert Prune(sequential=True).sequential == "block" and Prune(sequential=False).sequential == "none"
    assert sq["wanda", "block"] == sq["wanda", "none"]  # one block: fc2 calibrated on the dense fc1 either way
    assert sq["wanda", "layer"] != sq["wanda", "block"]
    # "auto": layer-wise for Wanda, block-wise for SparseGPT
    assert sq["wanda", "auto"] == sq["wanda", "layer"] and sq["sparsegpt", "auto"] == sq["sparsegpt", "block"]
