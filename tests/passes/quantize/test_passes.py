"""The Quantize pass: structure, options, storage bytes, and measured accuracy of the methods."""

from __future__ import annotations

import math

import pytest
import torch

import bitpress as bp
from bitpress.compiler.interpreter import run
from bitpress.compiler.pass_manager import CompileError, sqnr_db
from bitpress.passes.quantize import Quantize

from .conftest import correlated_batches


def _compile(model: torch.nn.Module, x: torch.Tensor, q: Quantize, cal: list[tuple[torch.Tensor, ...]] | None = None) -> bp.CompiledModel:  # type: ignore[name-defined]
    return bp.compile(model, (x,), passes=[q], target="torch", calibration=cal, quiet=True)


def _ops(cm) -> list[str]:  # type: ignore[no-untyped-def]
    return [n.op for n in cm.graph.nodes]


# ----------------------------------------------------------------------------- structure


def test_linear_becomes_packed_qlinear(mlp: torch.nn.Module) -> None:
    x = torch.randn(4, 96)
    cm = _compile(mlp, x, Quantize(bits=4, group_size=32))
    assert "linear" not in _ops(cm) and _ops(cm).count("qlinear") == 2
    n = cm.graph.find("fc1")
    q, s, z = n.inputs[1], n.inputs[2], n.inputs[3]
    assert q.dtype == "uint4" and q.shape == (200, 96) and q.value.dtype == torch.uint8 and q.value.numel() == 200 * 96 // 2
    assert s.dtype == "float16" and s.shape == (200, 3)
    assert z.dtype == "uint4" and z.shape == (200, 3)
    assert n.meta["bits"] == 4 and n.meta["group_size"] == 32 and n.meta["sqnr_db"] > 15
    assert cm.explain().count("quantize-linear-weight fired") == 2


def test_symmetric_has_no_zero_points_and_signed_codes(mlp: torch.nn.Module) -> None:
    cm = _compile(mlp, torch.randn(2, 96), Quantize(bits=3, group_size=None, symmetric=True))
    n = cm.graph.find("fc1")
    assert n.inputs[1].dtype == "int3" and n.inputs[3] is None and n.inputs[2].shape == (200, 1)


def test_per_tensor(mlp: torch.nn.Module) -> None:
    cm = _compile(mlp, torch.randn(2, 96), Quantize(bits=8, group_size=0))
    n = cm.graph.find("fc1")
    assert n.inputs[1].dtype == "int8" and n.inputs[2].shape == (1, 1)
    assert n.meta["sqnr_db"] > 30


@pytest.mark.parametrize(("bits", "gs"), [(4, 128), (3, 128), (2, 64), (8, None)])
def test_report_bytes_are_packed_codes_plus_scales_and_zeros(bits: int, gs: int | None) -> None:
    """576 columns with group 128: 4 full groups and a ragged one of 64 (SmolLM2's hidden size)."""
    model = torch.nn.Sequential(torch.nn.Linear(576, 48)).eval()
    x = torch.randn(2, 576)
    cm = _compile(model, x, Quantize(bits=bits, group_size=gs))
    row = next(r for r in cm.report.layers if r["op"] == "qlinear")
    g = math.ceil(576 / (gs or 576))
    sym = bits == 8
    want = math.ceil(48 * 576 * bits / 8) + 48 * g * 2 + (0 if sym else math.ceil(48 * g * bits / 8)) + 48 * 4  # + fp32 bias
    assert row["bytes"] == want
    assert row["bits"] == bits
    assert cm.report.total_bytes == want
    ref = model(x)
    assert sqnr_db(ref, cm(x)) > {8: 35, 4: 15, 3: 9, 2: 2}[bits]


def test_exclude_and_first_last(mlp: torch.nn.Module) -> None:
    x = torch.randn(2, 96)
    cm = _compile(mlp, x, Quantize(bits=4, group_size=32, exclude=("fc2",)))
    assert cm.graph.find("fc2").op == "linear" and cm.graph.find("fc1").op == "qlinear"
    assert "declined on fc2 (linear): excluded by pattern 'fc2'" in cm.explain()
    cm = _compile(mlp, x, Quantize(bits=4, group_size=32, first_last="skip"))
    assert _ops(cm).count("qlinear") == 0
    cm = _compile(mlp, x, Quantize(bits=2, group_size=32, first_last=8))
    assert [cm.graph.find(n).meta["bits"] for n in ("fc1", "fc2")] == [8, 8]


def test_conv_weight_only(cnn: torch.nn.Module) -> None:
    x = torch.randn(2, 3, 6, 6)
    cm = _compile(cnn, x, Quantize(bits=4, group_size=27))
    n = cm.graph.find("conv")
    assert n.op == "qconv2d" and n.inputs[1].shape == (8, 3, 3, 3) and n.inputs[2].shape == (8, 1)
    torch.testing.assert_close(cm(x), run(cm.graph, (x,))[0])
    assert sqnr_db(cnn(x), cm(x)) > 12


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"method": "nope"}, "method"),
        ({"bits": 5}, "bits"),
        ({"bits": "auto"}, "avg_bits"),
        ({"bits": "auto", "avg_bits": 9.0}, "avg_bits"),
        ({"group_size": -3}, "group_size"),
        ({"act_bits": 4}, "act_bits"),
        ({"act_bits": 8, "bits": 4}, "bits=8"),
        ({"act_bits": 8, "bits": 8}, "group_size=None"),
        ({"method": "smoothquant", "bits": 8, "group_size": None}, "act_bits=8"),
        ({"observer": "max"}, "observer"),
        ({"first_last": "drop"}, "first_last"),
        ({"damp": 2.0}, "damp"),
    ],
)
def test_bad_options_are_one_line_value_errors(kwargs: dict, needle: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=needle) as e:
        Quantize(**kwargs)
    assert "\n" not in str(e.value)


def test_data_aware_methods_need_calibration(mlp: torch.nn.Module) -> None:
    with pytest.raises(CompileError, match="calibration"):
        _compile(mlp, torch.randn(2, 96), Quantize(method="gptq"))


def test_recipe_finds_quantize(mlp: torch.nn.Module) -> None:
    x = torch.randn(2, 96)
    cm = bp.compile(mlp, (x,), passes={"passes": [{"quantize": {"bits": 8, "group_size": None}}]}, target="torch", quiet=True)
    assert _ops(cm).count("qlinear") == 2


# ----------------------------------------------------------------------------- accuracy (measured)


@pytest.fixture(scope="module")
def calib() -> tuple[list[tuple[torch.Tensor]], list[tuple[torch.Tensor]]]:
    return correlated_batches(1, 8), correlated_batches(2, 4)


@pytest.fixture(scope="module")
def compiled(norm_linear: torch.nn.Module, calib):  # type: ignore[no-untyped-def]
    """One compile per configuration, shared by the accuracy tests (compiles cost seconds here)."""
    cal, test = calib
    cache: dict[tuple[object, ...], object] = {}

    def get(**kw: object):  # type: ignore[no-untyped-def]
        key = tuple(sorted(kw.items()))
        if key not in cache:
            cache[key] = _compile(norm_linear, test[0][0], Quantize(**kw), cal)  # type: ignore[arg-type]
        return cache[key]

    return get


def _held_out_sqnr(model: torch.nn.Module, cm, test) -> float:  # type: ignore[no-untyped-def]
    ref = torch.cat([model(*t) for t in test])
    return sqnr_db(ref, torch.cat([cm(*t) for t in test]))


@pytest.mark.parametrize("bits", [4, 3])
def test_gptq_and_awq_beat_rtn(norm_linear: torch.nn.Module, calib, compiled, bits: int) -> None:  # type: ignore[no-untyped-def]
    """Held-out data from the calibration distribution; RTN already uses MSE clipping."""
    _, test = calib
    rtn = _held_out_sqnr(norm_linear, compiled(method="rtn", bits=bits, group_size=64), test)
    awq = _held_out_sqnr(norm_linear, compiled(method="awq", bits=bits, group_size=64), test)
    gptq = _held_out_sqnr(norm_linear, compiled(method="gptq", bits=bits, group_size=64), test)
    assert awq > rtn + 0.2, (rtn, awq)
    assert gptq > rtn + 0.5, (rtn, gptq)


def test_awq_folds_scales_into_the_norm(compiled) -> None:  # type: ignore[no-untyped-def]
    cm = compiled(method="awq", bits=4, group_size=64)
    assert "mul" not in _ops(cm)  # 1/s went into the LayerNorm's weight and bias
    assert "awq-scale-input-channels fired on fc" in cm.explain()


def test_smoothquant_lowers_w8a8_error_with_outliers(norm_linear: torch.nn.Module, calib, compiled) -> None:  # type: ignore[no-untyped-def]
    _, test = calib
    plain = _held_out_sqnr(norm_linear, compiled(method="rtn", bits=8, group_size=None, act_bits=8), test)
    smooth = _held_out_sqnr(norm_linear, compiled(method="smoothquant", bits=8, group_size=None, act_bits=8), test)
    assert smooth > plain + 1.0, (plain, smooth)
    assert "smooth-input-channels fired on fc" in compiled(method="smoothquant", bits=8, group_size=None, act_bits=8).explain()


def test_w8a8_structure_and_integer_path(mlp: torch.nn.Module) -> None:
    x = torch.randn(4, 96)
    cal = [(torch.randn(4, 96),) for _ in range(4)]
    cm = _compile(mlp, x, Quantize(bits=8, group_size=None, act_bits=8, observer="percentile"), cal)
    ops = _ops(cm)
    assert ops.count("quantize_act") == 2 and ops.count("qlinear_w8a8") == 2 and ops.count("dequantize_act") == 2
    n = cm.graph.find("fc1")
    assert n.inputs[0].dtype == "int8" and n.output.dtype == "int8" and n.inputs[2].dtype == "int32"
    assert n.inputs[4].dtype == "int32"  # bias in the accumulator's scale
    assert n.meta["act_bits"] == 8 and n.meta["sqnr_db"] > 25
    assert sqnr_db(mlp(x), cm(x)) > 20


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse"])
def test_w8a8_conv_observers(cnn: torch.nn.Module, observer: str) -> None:
    x = torch.randn(2, 3, 6, 6)
    cal = [(torch.randn(2, 3, 6, 6),) for _ in range(3)]
    cm = _compile(cnn, x, Quantize(bits=8, group_size=None, act_bits=8, observer=observer), cal)
    assert "qconv2d_w8a8" in _ops(cm)
    assert sqnr_db(cnn(x), cm(x)) > 18


def test_auto_bits_respects_budget_and_reports_allocation() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32)
    )
    with torch.no_grad():
        model[2].weight.mul_(torch.linspace(0.1, 3, 128))  # a layer with uneven column scales
    cal = [(torch.randn(16, 64),) for _ in range(4)]
    x = torch.randn(16, 64)
    cm = _compile(model.eval(), x, Quantize(bits="auto", avg_bits=3.5, group_size=32), cal)
    rows = [r for r in cm.report.layers if r["op"] == "qlinear"]
    avg = sum(r["bits"] * r["params"] for r in rows) / sum(r["params"] for r in rows)
    assert avg <= 3.5 and len({r["bits"] for r in rows}) > 1
    assert "allocate-bits fired" in cm.explain()
    uniform3 = _compile(model, x, Quantize(bits=3, group_size=32), cal)
    assert sqnr_db(model(x), cm(x)) > sqnr_db(model(x), uniform3(x))


def test_save_load_roundtrip(mlp: torch.nn.Module, tmp_path) -> None:  # type: ignore[no-untyped-def]
    x = torch.randn(2, 96)
    cm = _compile(mlp, x, Quantize(bits=3, group_size=32))
    cm.save(tmp_path / "m")
    back = bp.load(tmp_path / "m")
    assert torch.equal(back(x), cm(x))
    assert back.report.total_bytes == cm.report.total_bytes
    assert [r["bits"] for r in back.report.layers] == [3, 3]
