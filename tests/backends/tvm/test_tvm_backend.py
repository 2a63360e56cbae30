"""TVM backend end to end: real models vs the interpreter, save/load in a fresh process,
tuning records reused from the database, CUDA code generation, lazy import."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import bitpress as bp
from bitpress.backends.tvm.backend import generated_source
from bitpress.compiler.interpreter import run

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _two_threads() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.LayerNorm(64), torch.nn.Linear(64, 10), torch.nn.Softmax(-1)
    ).eval()


def assert_matches_interpreter(cm: bp.CompiledModel, inputs: tuple[torch.Tensor, ...], tol: float) -> torch.Tensor:
    got = cm(*inputs)
    want = run(cm.graph, list(inputs))[0]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    return got


def test_import_does_not_load_tvm() -> None:
    code = "import sys, bitpress, bitpress.backends.tvm, bitpress.backends.tvm.lowering, bitpress.schedules; print('tvm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_mlp_llvm_schedules_every_kernel() -> None:
    m = mlp()
    x = torch.randn(8, 32)
    cm = bp.compile(m, (x,), target="cpu")
    got = assert_matches_interpreter(cm, (x,), 1e-5)
    torch.testing.assert_close(got, m(x).detach(), rtol=1e-5, atol=1e-5)
    sched = cm.report.backend["schedules"]
    assert sched.get("cpu-gemm", 0) == 2, sched  # both linear layers got the GEMM schedule
    assert "unscheduled" not in sched


def test_fashion_cnn_matches_interpreter() -> None:
    from bitpress.models import load_fashion_cnn, load_fashion_mnist

    x, _ = load_fashion_mnist("test", limit=16)
    m = load_fashion_cnn().eval()
    cm = bp.compile(m, (x,), target="llvm")
    got = assert_matches_interpreter(cm, (x,), 1e-4)
    assert torch.equal(got.argmax(-1), m(x).argmax(-1))


def test_minilm_seq128_matches_interpreter() -> None:
    from bitpress.models import SENTENCES, MiniLMEncoder, encode_batch, load_minilm

    model, tok = load_minilm()
    m = MiniLMEncoder(model).eval()
    ex = encode_batch(tok, SENTENCES[:2], 128)
    cm = bp.compile(m, ex, target="llvm")
    assert_matches_interpreter(cm, ex, 2e-4)
    other = encode_batch(tok, SENTENCES[2:4], 128)  # new inputs, same shapes
    assert_matches_interpreter(cm, other, 2e-4)


@pytest.mark.slow
def test_smollm2_seq64_matches_interpreter() -> None:
    from bitpress.models import SmolLMLogits, load_smollm2

    model, _ = load_smollm2()
    m = SmolLMLogits(model).eval()
    ids = torch.randint(0, 49152, (1, 64), generator=torch.Generator().manual_seed(0))
    cm = bp.compile(m, (ids,), target="llvm")
    got = assert_matches_interpreter(cm, (ids,), 1e-3)
    assert torch.equal(got.argmax(-1), run(cm.graph, [ids])[0].argmax(-1))


def test_save_load_fresh_process_identical(tmp_path: Path) -> None:
    m = mlp()
    x = torch.randn(8, 32)
    cm = bp.compile(m, (x,), target="llvm")
    y = cm(x)
    out = cm.save(tmp_path / "art")
    manifest = json.loads((out / "manifest.json").read_text())
    assert "tvm_model.so" in manifest["files"]
    torch.save({"x": x, "y": y}, tmp_path / "io.pt")
    code = textwrap.dedent(
        f"""
        import sys, time, torch, bitpress as bp
        import bitpress.backends.tvm.backend as B
        B.build_module = None  # loading must not recompile
        io = torch.load({str(tmp_path / "io.pt")!r})
        cm = bp.load({str(out)!r})
        y = cm(io["x"])
        print("IDENTICAL" if torch.equal(y, io["y"]) else f"DIFFERENT {{(y - io['y']).abs().max()}}")
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert "IDENTICAL" in res.stdout, res.stdout + res.stderr


def test_load_detects_missing_library(tmp_path: Path) -> None:
    cm = bp.compile(mlp(), (torch.randn(2, 32),), target="llvm")
    out = cm.save(tmp_path / "art")
    (out / "tvm_model.so").unlink()
    with pytest.raises(ValueError, match=r"tvm_model\.so"):
        bp.load(out)


@pytest.mark.slow
def test_tuning_records_persist_and_are_reused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(32, 32)).eval()
    x = torch.randn(4, 32)
    # records are per workload: a symbolic batch has none to measure (its kernels keep the default schedule)
    dyn = bp.compile(m, (x,), target="llvm", tune=2, cache_dir=tmp_path)
    assert dyn.report.backend["tune_tasks"] == 0 and dyn.report.backend["tune_tasks_symbolic"] == 1, dyn.report.backend
    cm = bp.compile(m, (x,), target="llvm", tune=2, cache_dir=tmp_path, dynamic=None)
    info = cm.report.backend
    assert info["tune_tasks"] == 1 and info["tune_tasks_tuned"] == 1, info
    assert info["tune_records_used"] == 1 and "tune_default_kept" in info, info
    assert info["schedules"].get("tuned") == 1, info
    assert_matches_interpreter(cm, (x,), 1e-5)
    records = list(tmp_path.glob("llvm-*/records.json"))
    assert records and records[0].stat().st_size > 0
    # same shapes again: every task is in the database, nothing is tuned
    cm2 = bp.compile(m, (x,), target="llvm", tune=2, cache_dir=tmp_path, dynamic=None)
    assert cm2.report.backend["tune_tasks_tuned"] == 0, cm2.report.backend
    assert cm2.report.backend["schedules"].get("tuned") == 1
    torch.testing.assert_close(cm2(x), cm(x))


def test_cuda_source_is_generated_and_compiled(tmp_path: Path) -> None:
    m = mlp()
    x = torch.randn(4, 32)
    cm = bp.compile(m, (x,), target="cuda")
    src = generated_source(cm.executable, "cuda")
    assert "__global__ void" in src and "threadIdx.x" in src
    assert not any(k.startswith("cpu-") for k in cm.report.backend["schedules"])  # GPU rules only
    out = cm.save(tmp_path / "art")  # the library holds the compiled device code
    assert (out / "tvm_model.so").stat().st_size > 0


def test_cuda_without_device_is_a_clear_error() -> None:
    import tvm

    if tvm.cuda(0).exist:
        pytest.skip("a GPU is present")
    cm = bp.compile(mlp(), (torch.randn(4, 32),), target="cuda")
    with pytest.raises(RuntimeError, match="no cuda device"):
        cm(torch.randn(4, 32))


@pytest.mark.gpu
def test_cuda_runs_and_matches_interpreter() -> None:
    m = mlp()
    x = torch.randn(16, 32)
    cm = bp.compile(m, (x,), target="cuda")
    assert_matches_interpreter(cm, (x,), 1e-4)


def test_bad_target_option_is_a_value_error() -> None:
    from bitpress.backends.tvm.backend import make_target

    with pytest.raises(ValueError, match="unknown target 'vulkan'"):
        make_target("vulkan")
