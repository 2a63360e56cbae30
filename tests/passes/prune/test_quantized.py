"""Prune then quantize: nm_linear -> nm_qlinear (packed codes + group scales + packed N:M indices)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import bitpress as bp
from bitpress.compiler.interpreter import run
from bitpress.compiler.ir import pack_bits, unpack_bits
from bitpress.compiler.pass_manager import PassContext, Pipeline, sqnr_db
from bitpress.formats.quantized import dequantize_weight
from bitpress.formats.sparse import decode_nm, encode_nm, index_bits, is_nm_sparse, nm_columns, nm_qlinear
from bitpress.passes.prune import Prune
from bitpress.passes.prune._algorithms import keep_mask
from bitpress.passes.quantize import Quantize
from bitpress.passes.quantize import _numerics as nq
from bitpress.passes.quantize.nm import gptq_nm
from tests.passes.prune.conftest import Correlated, correlated_batches, traced


def _ops(g: bp.Graph) -> list[str]:  # type: ignore[name-defined]
    return [n.op for n in g.nodes if n.op.endswith("linear")]


def _dense_weight(n: bp.Node) -> torch.Tensor:  # type: ignore[name-defined]
    """The dense [out, in] weight an nm_qlinear node computes with (reference decode)."""
    a = n.attrs
    vals = dequantize_weight(
        n.inputs[1].value,
        n.inputs[2].value,
        n.inputs[3].value if n.inputs[3] is not None else None,
        shape=a["shape"],
        bits=a["bits"],
        group_size=a["group_size"],
        signed=a["signed"],
    )
    return decode_nm(vals, n.inputs[4].value, a["n"], a["m"], a["in_features"])


@pytest.fixture(scope="module")
def pruned_then_quantized(correlated_model: Correlated) -> tuple[bp.Graph, bp.Graph]:  # type: ignore[name-defined]
    cal = correlated_batches(4)
    g = traced(correlated_model, cal[0])
    ctx = PassContext(example_inputs=cal[0], calibration=cal)
    pruned, _ = Pipeline([Prune(method="sparsegpt", sparsity="2:4")]).run(g, ctx)
    both, recs = Pipeline([Quantize(bits=4, group_size=32)]).run(pruned.clone(), ctx)
    assert recs[-1].modified and recs[-1].stats["nm_layers"] == 2
    return pruned, both


# ----------------------------------------------------------------------------- structure and storage


def test_quantize_turns_nm_linear_into_nm_qlinear(pruned_then_quantized: tuple[bp.Graph, bp.Graph]) -> None:  # type: ignore[name-defined]
    pruned, g = pruned_then_quantized
    assert _ops(pruned) == ["nm_linear", "nm_linear"]
    assert _ops(g) == ["nm_qlinear", "nm_qlinear"]
    fc1 = g.find("fc1")
    q, s, z, idx = fc1.inputs[1:5]
    # fc1: 96 x 128, 2:4 -> 64 kept values per row, groups of 32 kept values
    assert q.dtype == "uint4" and q.shape == (96, 64) and q.value.numel() == 96 * 64 // 2
    assert s.dtype == "float16" and s.shape == (96, 2)
    assert z.dtype == "uint4" and z.shape == (96, 2)
    assert idx.dtype == "uint2" and idx.value.numel() == 96 * 64 // 4
    assert idx is pruned.find("fc1").inputs[2] or torch.equal(idx.value, pruned.find("fc1").inputs[2].value)  # indices reused
    assert fc1.meta["bits"] == 4 and fc1.meta["group_size"] == 32 and fc1.meta["format"] == "2:4"
    assert "prune_sqnr_db" in fc1.meta and fc1.meta["sqnr_on"] == "outputs"
    # no dense or float weight matrix is left anywhere
    assert not any(v.dtype.startswith("float") and v.ndim == 2 and v.numel > 256 for v in g.consts.values())


def test_report_counts_packed_bytes(pruned_then_quantized: tuple[bp.Graph, bp.Graph]) -> None:  # type: ignore[name-defined]
    _, g = pruned_then_quantized
    rows = {r["name"]: r for r in bp.compiler.report.layer_rows_of(g)}
    # fc1: codes 96*64/2 + indices 96*64/4 + fp16 scales 96*2*2 + uint4 zeros 96*2/2 + fp32 bias 96*4
    assert rows["fc1"]["bytes"] == 3072 + 1536 + 384 + 96 + 384
    # fc2: 32 x 96 -> 48 kept; groups of 32 (ragged: 32 + 16)
    assert rows["fc2"]["bytes"] == 32 * 48 // 2 + 32 * 48 // 4 + 32 * 2 * 2 + 32 * 2 // 2 + 32 * 4
    assert rows["fc1"]["bits"] == 4 and rows["fc1"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert g.weight_bytes() == sum(r["bytes"] for r in rows.values())


def test_stays_nm_sparse_and_close_to_the_pruned_layer(pruned_then_quantized: tuple[bp.Graph, bp.Graph]) -> None:  # type: ignore[name-defined]
    pruned, g = pruned_then_quantized
    held_out = correlated_batches(2, seed=1)
    for name in ("fc1", "fc2"):
        n = g.find(name)
        w = _dense_weight(n)
        assert is_nm_sparse(w, 2, 4)
        p = pruned.find(name)
        wp = decode_nm(p.inputs[1].value, p.inputs[2].value, 2, 4, p.attrs["in_features"])
        assert torch.equal(w != 0, (w != 0) & (wp != 0) | (w != 0))  # no weight appears where pruning removed one
        assert not bool(((wp == 0) & (w != 0)).any())
        x = held_out[0][0] if name == "fc1" else torch.relu(held_out[0][0] @ _dense_weight(g.find("fc1")).t())
        # 4-bit codes, 32 kept values per scale: >= 20 dB on the layer's outputs (measured ~28 dB)
        assert sqnr_db(x @ wp.t(), x @ w.t()) > 20.0
    x = held_out[0]
    y_p, y_q = run(pruned, x)[0], run(g, x)[0]
    assert sqnr_db(y_p, y_q) > 18.0


def test_declines_are_explained(correlated_model: Correlated) -> None:
    x = correlated_batches(1)[0]
    passes = [Prune(sparsity="2:4"), Quantize(bits=4, exclude=("fc2",))]
    cm = bp.compile(correlated_model, x, passes=passes, target="torch", quiet=True)
    assert _ops(cm.graph) == ["nm_qlinear", "nm_linear"]
    assert "quantize-nm-linear declined on fc2 (nm_linear): excluded by pattern 'fc2'" in cm.explain()
    cm = bp.compile(correlated_model, x, passes=[Prune(sparsity="2:4"), Quantize(bits=4, first_last="skip")], target="torch", quiet=True)
    assert _ops(cm.graph) == ["nm_linear", "nm_linear"]
    assert "quantize-nm-linear declined on fc1 (nm_linear): first/last layer kept in float" in cm.explain()


# ----------------------------------------------------------------------------- numerics


def test_reference_semantics_match_a_hand_decode() -> None:
    torch.manual_seed(0)
    w = torch.randn(12, 40)
    w = w * keep_mask(w.abs(), None, (2, 4), per_row=False)
    vals, idx, _ = encode_nm(w, 2, 4)
    qw = nq.rtn(vals, 4, 8, False, "minmax")  # unsigned 4-bit codes, zero points, groups of 8 kept values
    assert qw.zeros is not None
    x = torch.randn(3, 40)
    y = nm_qlinear(
        x,
        pack_bits(qw.codes, 4),
        qw.scales,
        pack_bits(qw.zeros, 4),
        idx,
        None,
        n=2,
        m=4,
        in_features=40,
        shape=[12, 20],
        bits=4,
        group_size=8,
        signed=False,
    )
    g = torch.arange(20) // 8
    wv = (qw.codes.float() - qw.zeros.float()[:, g]) * qw.scales.float()[:, g]
    dense = torch.zeros(12, 40).scatter_(1, nm_columns(unpack_bits(idx, 2, (12, 20)), 2, 4), wv)
    torch.testing.assert_close(y, F.linear(x, dense), rtol=0, atol=1e-6)


@given(
    nm=st.sampled_from([(2, 4), (1, 4), (4, 8), (2, 8)]),
    gs=st.sampled_from([0, 4, 6, 16, 1000]),
    bits=st.sampled_from([2, 3, 4, 8]),
    sym=st.booleans(),
    seed=st.integers(0, 100),
)
@settings(max_examples=25, deadline=None)
def test_gptq_nm_with_identity_hessian_is_rtn(nm: tuple[int, int], gs: int, bits: int, sym: bool, seed: int) -> None:
    """With H = I nothing is compensated: masked GPTQ must give RTN's codes and keep the mask."""
    n, m = nm
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 4 * m, generator=g)
    w = w * keep_mask(w.abs(), None, (n, m), per_row=False)
    vals, idx, _ = encode_nm(w, n, m)
    kk = vals.shape[1]
    cols = nm_columns(unpack_bits(idx, index_bits(m), (6, kk)), n, m)
    q = gptq_nm(w, cols, torch.eye(4 * m), bits, gs, sym, n=n, m=m, damp=0.0, block_size=5, observer="minmax")
    r = nq.rtn(vals, bits, gs if gs == 0 else min(gs, kk), sym, "minmax")
    assert torch.equal(q.scales, r.scales)
    assert torch.equal(q.codes, r.codes)
    assert q.zeros is None if sym else torch.equal(q.zeros, r.zeros)


def test_gptq_beats_rtn_on_held_out_data(correlated_model: Correlated) -> None:
    """Masked GPTQ compensates rounding with the Hessian: lower layer error than RTN on new data."""
    cal, held = correlated_batches(8), correlated_batches(4, seed=1)
    errs = {}
    for method in ("rtn", "gptq"):
        cm = bp.compile(
            correlated_model,
            cal[0],
            passes=[Prune(method="sparsegpt", sparsity="2:4"), Quantize(method=method, bits=3, group_size=32)],
            calibration=cal,
            target="torch",
            quiet=True,
        )
        n = cm.graph.find("fc1")
        w = _dense_weight(n)
        assert is_nm_sparse(w, 2, 4)
        assert n.meta["method"] == ("rtn" if method == "rtn" else "sparsegpt-mask+gptq")
        x = torch.cat([b[0] for b in held])
        ref = correlated_model.fc1(x) - correlated_model.fc1.bias
        errs[method] = float((x @ w.t() - ref).pow(2).mean())
    assert errs["gptq"] < errs["rtn"]


def test_recipe_and_pipeline_form_end_to_end() -> None:
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 64), torch.nn.GELU(), torch.nn.Linear(64, 10)
    ).eval()
    cal = [(torch.randn(16, 64),) for _ in range(4)]
    recipe = {"passes": [{"prune": {"method": "wanda", "sparsity": "2:4"}}, {"quantize": {"method": "gptq", "bits": 4, "group_size": 16}}]}
    cm = bp.compile(mlp, cal[0], passes=recipe, calibration=cal, target="torch", quiet=True)
    assert _ops(cm.graph) == ["nm_qlinear"] * 3
    pruned = bp.compile(mlp, cal[0], passes={"passes": recipe["passes"][:1]}, calibration=cal, target="torch", quiet=True)
    x = cal[1][0]
    # the 4-bit step costs little next to 2:4 pruning of random weights (measured ~25 dB vs ~8 dB)
    assert sqnr_db(pruned(x), cm(x)) > 18.0
    assert sqnr_db(mlp(x), cm(x)) > 6.0
    dense_bytes = sum(p.numel() * 4 for p in mlp.parameters())
    assert cm.report.total_bytes < dense_bytes / 6  # 4-bit codes of half the weights + 2-bit indices + scales
    assert math.isfinite(cm.report.layers[0]["sqnr_db"])


# ----------------------------------------------------------------------------- backends


def _mlp_graph(rows: int, passes: list[object], shape3: bool = False) -> tuple[bp.Graph, torch.Tensor]:  # type: ignore[name-defined]
    torch.manual_seed(rows)
    m = Correlated(d_in=64, hidden=48, d_out=24).eval()
    x = correlated_batches(1, d_in=64, rows=rows, seed=rows)[0][0]
    if shape3:
        x = x.reshape(rows, 1, 64)
    return bp.compile(m, (x,), passes=passes, calibration=[(x,)], target="torch", quiet=True).graph, x


BACKEND_CASES = [
    (1, [Prune(sparsity="2:4"), Quantize(bits=4, group_size=16)], False),  # asymmetric int4, lanes over outputs
    (3, [Prune(sparsity="2:4"), Quantize(bits=4, group_size=10, symmetric=True)], True),  # ragged groups, 3-D input
    (16, [Prune(sparsity="2:4"), Quantize(bits=4, group_size=16)], False),  # lanes over rows
    (9, [Prune(sparsity="4:8"), Quantize(bits=3, group_size=7)], False),  # 3-bit codes straddle bytes, padded rows
    (2, [Prune(sparsity="1:4"), Quantize(bits=8, group_size=None)], False),
    (8, [Prune(sparsity="2:16"), Quantize(bits=2, group_size=0)], False),  # per-tensor scale, 4-bit indices
]


@pytest.fixture(scope="module")
def backend_graphs() -> list[tuple[bp.Graph, torch.Tensor]]:  # type: ignore[name-defined]
    return [_mlp_graph(r, p, s) for r, p, s in BACKEND_CASES]


@pytest.mark.parametrize("target", ["llvm", "onnx"])
@pytest.mark.parametrize("case", range(len(BACKEND_CASES)))
def test_backends_match_interpreter(backend_graphs: list[tuple[bp.Graph, torch.Tensor]], target: str, case: int) -> None:  # type: ignore[name-defined]
    g, x = backend_graphs[case]
    assert _ops(g) == ["nm_qlinear", "nm_qlinear"]
    ref = bp.compile(g, (x,), target="torch", canonicalize=False)
    cm = bp.compile(g, (x,), target=target, canonicalize=False)
    for inp in (x, torch.randn_like(x) * 3):
        torch.testing.assert_close(cm(inp), ref(inp), rtol=1e-5, atol=1e-5)


def test_tvm_kernel_reads_packed_codes_and_indices(backend_graphs: list[tuple[bp.Graph, torch.Tensor]]) -> None:  # type: ignore[name-defined]
    g, x = backend_graphs[0]  # one row: lanes over outputs
    cm = bp.compile(g, (x,), target="llvm", canonicalize=False)
    assert any("spmm_nm2x4_w4_ovec16x" in k and v == "hint" for k, v in cm.executable.info["kernel_schedules"].items())
    shapes = {(tuple(t.shape), t.dtype) for t in cm.executable.params_torch}
    # fc1 48 x 64 -> 32 kept, 2 groups of 16, tiles of 16 outputs: code bytes [3, G=2, 8, 16],
    # index bytes [3, 8, 16]; no float matrix
    assert ((3, 2, 8, 16), torch.uint8) in shapes and ((3, 8, 16), torch.uint8) in shapes
    assert not any(dt == torch.float32 and math.prod(s) >= 48 * 32 for s, dt in shapes)


def test_cuda_is_a_clear_error(backend_graphs: list[tuple[bp.Graph, torch.Tensor]]) -> None:  # type: ignore[name-defined]
    """The N:M kernels crashed on an H100 (session 2): cuda refuses them, naming the op."""
    from bitpress.compiler.target import LoweringError

    g, x = backend_graphs[2]
    with pytest.raises(LoweringError, match="nm_qlinear"):
        bp.compile(g, (x,), target="cuda", canonicalize=False)


def test_save_load_round_trip(backend_graphs: list[tuple[bp.Graph, torch.Tensor]], tmp_path: object) -> None:  # type: ignore[name-defined]
    g, x = backend_graphs[0]
    cm = bp.compile(g, (x,), target="onnx", canonicalize=False)
    cm.save(str(tmp_path) + "/art")  # type: ignore[operator]
    back = bp.load(str(tmp_path) + "/art")  # type: ignore[operator]
    assert _ops(back.graph) == ["nm_qlinear", "nm_qlinear"]
    torch.testing.assert_close(back(x), cm(x))
