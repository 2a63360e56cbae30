"""Symbolic shapes: IR types with named dims, the frontend's dynamic batch, input checks, calibration
across shapes, and one artifact run at several batches on every CPU target."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.export import Dim

import bitpress as bp
from bitpress.compiler.interpreter import InputError, run
from bitpress.compiler.ir import Graph, IRError, SymDim, TensorType, input_dims, specialize
from bitpress.compiler.serialize import graph_from_json, graph_to_json


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32)).eval()


class Tokens(torch.nn.Module):
    """Reshapes through the batch, a class token expanded to the batch, a zeros(batch, ...) constant."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.proj = torch.nn.Linear(16, 32)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, 8))
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        t = self.proj(x).reshape(b, 4, 8)
        t = torch.cat([self.cls.expand(b, -1, -1), t], 1) + torch.zeros(b, 5, 8)
        return self.head(t.relu()).flatten(1)


class StaticBatch(torch.nn.Module):
    """Needs batch 4: the reshape hard-codes it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).reshape(4, 2, 4).sum(1)


def symbolic_graph() -> Graph:
    g = Graph()
    b = SymDim("batch", 1, 64)
    x = g.add_input("x", TensorType((b, 16), "float32"))
    w = g.add_const(torch.randn(8, 16), "w")
    y = g.call("linear", [x, w, None])
    z = g.call("reshape", [y], {"shape": [b * 2, 2, 2]})
    g.set_outputs([g.call("relu", [z])])
    return g


def test_ir_types_carry_symbolic_dims_and_round_trip() -> None:
    g = symbolic_graph()
    g.verify()
    out = g.outputs[0]
    assert out.shape == (SymDim("2*batch"), 2, 2)
    assert str(out.type) == "float32[2*batch,2,2]"
    text = str(g)
    assert "graph(%x: float32[batch,16]) where batch in 1..64 {" in text and "shape=[2*batch,2,2]" in text
    d = json.loads(json.dumps(graph_to_json(g)))
    assert d["inputs"][0]["shape"] == [{"sym": "batch", "min": 1, "max": 64}, 16]
    g2 = graph_from_json(d, g.store)
    assert [v.type for v in g2.values()] == [v.type for v in g.values()]
    assert input_dims(g2)["batch"].max == 64
    assert str(g2) == text
    x = torch.randn(3, 16)
    torch.testing.assert_close(run(g2, [x], check_types=True)[0], torch.relu(x @ g.store["w"].t()).reshape(6, 2, 2))


def test_specialize_makes_types_and_attrs_static() -> None:
    s = specialize(symbolic_graph(), {"batch": 5})
    assert s.inputs[0].shape == (5, 16) and s.outputs[0].shape == (10, 2, 2)
    assert next(n for n in s.nodes if n.op == "reshape").attrs["shape"] == [10, 2, 2]
    with pytest.raises(IRError, match=r"no size given for symbolic dim\(s\) \['batch'\]"):
        specialize(symbolic_graph(), {})


def test_out_of_range_rank_and_dtype_are_one_line_input_errors() -> None:
    g = symbolic_graph()
    cases = {
        "input x: dim 0 (batch) is 65, outside the allowed range 1..64": torch.randn(65, 16),
        "input x: dim 1 is 15, expected 16 (input type float32[batch,16])": torch.randn(2, 15),
        "input x: expected rank 2 (float32[batch,16]), got shape [2, 16, 1]": torch.randn(2, 16, 1),
        "input x: expected dtype float32, got float64": torch.randn(2, 16, dtype=torch.float64),
    }
    for msg, x in cases.items():
        with pytest.raises(InputError) as e:
            run(g, [x])
        assert str(e.value) == msg


def test_two_inputs_sharing_a_dim_must_agree() -> None:
    class Two(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a + b

    n = Dim("n", min=1, max=8)
    cm = bp.compile(Two(), (torch.randn(3, 4), torch.randn(3, 4)), dynamic_shapes=({0: n}, {0: n}))
    assert cm(torch.ones(7, 4), torch.ones(7, 4)).shape == (7, 4)
    with pytest.raises(InputError, match=r"^input b: dim 0 \(n\) is 2, but input a dim 0 has n=7$"):
        cm(torch.ones(7, 4), torch.ones(2, 4))
    with pytest.raises(InputError, match=r"^input a: dim 0 \(n\) is 9, outside the allowed range 1\.\.8$"):
        cm(torch.ones(9, 4), torch.ones(9, 4))


def test_default_batch_is_symbolic_and_static_on_request() -> None:
    m, x = Tokens(), torch.randn(4, 16)
    cm = bp.compile(m, (x,))
    assert str(cm.graph.inputs[0].type) == "float32[batch,16]"
    assert "inputs: x: float32[batch,16]; batch in 1..inf" in str(cm.report)
    for b in (1, 4, 9):
        xb = torch.randn(b, 16)
        torch.testing.assert_close(cm(xb), m(xb))
    static = bp.compile(m, (x,), dynamic=None)
    assert static.graph.inputs[0].shape == (4, 16)
    with pytest.raises(InputError, match=r"expected shape \[4, 16\], got \[2, 16\]"):
        static(torch.randn(2, 16))


def test_model_that_needs_a_static_batch_is_specialized_and_reported() -> None:
    cm = bp.compile(StaticBatch(), (torch.randn(4, 16),))
    assert cm.graph.inputs[0].shape == (4, 16)
    notes = cm.report.to_dict()["shapes"]["notes"]
    assert any("dim 0 specialized to 4" in n for n in notes), notes
    assert "specialized to 4" in str(cm.report)


def test_calibration_batches_differ_from_the_example() -> None:
    m = mlp()
    torch.manual_seed(2)
    cal = [(torch.randn(64, 16),), (torch.randn(5, 16),), (torch.randn(17, 16),)]
    cm = bp.compile(m, (torch.randn(1, 16),), passes=[bp.passes.Quantize(method="gptq", bits=4, group_size=16)], calibration=cal)
    assert cm.report.output_sqnr_db is not None and cm.report.output_sqnr_db > 15
    x = torch.randn(8, 16)
    assert cm(x).shape == (8, 32)
    # statistics come from every batch: 64 + 5 + 17 rows
    from bitpress.compiler.calibrate import collect

    g = bp.compile(m, (torch.randn(1, 16),)).graph
    stats = collect(g, cal)
    assert {s.rows for s in stats.values()} == {86}


@pytest.mark.slow
@pytest.mark.parametrize("bits", [None, 8, 4])
@pytest.mark.parametrize("target", ["onnx", "llvm"])
def test_one_artifact_runs_two_batches(target: str, bits: int | None, tmp_path: Path) -> None:
    m = mlp()
    passes = [] if bits is None else [bp.passes.Quantize(method="rtn", bits=bits, group_size=16)]
    cm = bp.compile(m, (torch.randn(4, 16),), passes=passes, target=target)
    assert not cm.report.shapes["notes"], cm.report.shapes  # built symbolic, not specialized
    if target == "llvm":
        sched = cm.report.backend["kernel_schedules"]
        assert all(s != "cpu-fallback" for s in sched.values()), sched
    loaded = bp.load(cm.save(tmp_path / "art"))
    for b in (1, 7):
        x = torch.randn(b, 16)
        want = run(cm.graph, [x])[0]
        torch.testing.assert_close(cm(x), want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(loaded(x), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match="input input: dim 1 is 8, expected 16"):
        loaded(torch.randn(2, 8))


@pytest.mark.slow
def test_onnx_model_has_dynamic_axes() -> None:
    from bitpress.backends.onnx.backend import lower_to_onnx

    cm = bp.compile(Tokens(), (torch.randn(4, 16),), target="onnx")
    model = lower_to_onnx(cm.graph)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 16
    for b in (2, 6):
        x = torch.randn(b, 16)
        torch.testing.assert_close(cm(x), Tokens()(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_cuda_code_is_generated_for_a_symbolic_batch() -> None:
    from bitpress.backends.tvm.backend import generated_source

    cm = bp.compile(mlp(), (torch.randn(4, 16),), passes=[bp.passes.Quantize(method="rtn", bits=4, group_size=16)], target="cuda")
    assert not cm.report.shapes["notes"], cm.report.shapes
    assert str(cm.graph.inputs[0].type) == "float32[batch,16]"
    assert "__global__" in generated_source(cm.executable, "cuda")


@pytest.mark.gpu
def test_cuda_runs_two_batches() -> None:
    cm = bp.compile(mlp(), (torch.randn(4, 16),), passes=[bp.passes.Quantize(method="rtn", bits=4, group_size=16)], target="cuda")
    for b in (1, 33):
        x = torch.randn(b, 16)
        torch.testing.assert_close(cm(x), run(cm.graph, [x])[0], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None, reason="no ARM toolchain")
def test_mcu_specializes_at_build_time_and_says_so() -> None:
    torch.manual_seed(0)
    cal = [(torch.randn(8, 16),) for _ in range(4)]  # calibration at batch 8, firmware for batch 1
    q = [bp.passes.Quantize(bits=8, act_bits=8, group_size=None)]
    cm = bp.compile(mlp(), (torch.randn(4, 16),), passes=q, target="cortex-m4", calibration=cal, options={"static_shapes": {"batch": 1}})
    assert cm.graph.inputs[0].shape == (1, 16)
    assert "target cortex-m4 builds static shapes: specialized to batch=1" in cm.report.shapes["notes"]
    x = torch.randn(1, 16)
    assert torch.equal(cm(x), run(cm.graph, [x])[0])
    with pytest.raises(InputError, match=r"expected shape \[1, 16\], got \[2, 16\]"):
        cm(torch.randn(2, 16))
