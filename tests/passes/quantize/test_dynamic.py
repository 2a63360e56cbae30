"""Dynamic int8 activations (qlinear_dyn): reference, the Quantize option, llvm per ISA, onnx."""

from __future__ import annotations

import re

import pytest
import torch

import bitpress as bp
from bitpress.backends.tvm.backend import TvmBackend
from bitpress.compiler.interpreter import run
from bitpress.compiler.ir import Graph, TensorType, pack_bits
from bitpress.compiler.target import BuildOptions
from bitpress.formats import dense_weight
from bitpress.formats.dynamic_int8 import quantize_rows
from bitpress.schedules import isa


def _graph(m: int, n: int, k: int, bits: int, gs: int, bias: bool = True, seed: int = 0) -> Graph:
    gen = torch.Generator().manual_seed(seed)
    g = Graph()
    x = g.add_input("x", TensorType((m, k), "float32"))
    lo, hi = (-8, 8) if bits == 4 else (-128, 128)
    q = torch.randint(lo, hi, (n, k), generator=gen)
    q[0] = lo  # the most negative code: |q| = 128 still fits the unsigned operand
    qw = g.add_const(q.to(torch.int8), "w") if bits == 8 else g.add_const(pack_bits(q, 4), "w", type=TensorType((n, k), "int4"))
    s = g.add_const((torch.rand(n, -(-k // gs), generator=gen) * 0.01 + 1e-3).half(), "s")
    ins = [x, qw, s] + ([g.add_const(torch.randn(n, generator=gen), "b")] if bias else [])
    y = g.call("qlinear_dyn", ins, {"shape": [n, k], "bits": bits, "group_size": gs}, name="fc")
    g.set_outputs([y])
    g.verify()
    return g


def _inputs(m: int, k: int) -> list[torch.Tensor]:
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(5)) * 3
    x[0] = 0.0  # an all-zero row: scale 1
    if m > 1:
        x[1, 0] = 50.0  # an outlier: the row's other values round to few levels
    return [x]


def test_reference_is_the_integer_dot() -> None:
    g = _graph(3, 20, 64, 4, 32)
    x = _inputs(3, 64)[0]
    got = run(g, [x])[0]
    w = dense_weight(next(iter(g.nodes)))  # q * s per group
    assert w is not None
    xq, sa = quantize_rows(x)
    want = (xq.double() @ w.double().t()) * sa.double() + g.store["b"].double()
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[0], g.store["b"])  # zero row: only the bias


@pytest.mark.parametrize(
    ("bits", "m", "n", "k", "gs", "bias"),
    [(4, 1, 20, 96, 32, True), (4, 5, 64, 128, 64, False), (8, 3, 40, 64, 16, True), (4, 2, 24, 100, 32, True), (8, 1, 16, 72, 64, False)],
)
def test_llvm_bit_exact(bits: int, m: int, n: int, k: int, gs: int, bias: bool) -> None:
    g = _graph(m, n, k, bits, gs, bias)
    exe = TvmBackend().build(g, "llvm", BuildOptions())
    feeds = _inputs(m, k)
    want = run(g, feeds)[0]
    assert torch.equal(exe.run(feeds)[0], want)  # block dots exact; float epilogue in the same FMA order


# (mcpu, kernel name, assembly regex)
CPUS = [("haswell", "dyn-avx2", r"vpmaddubsw\s+%ymm"), ("alderlake", "dyn-vnni256", r"vpdpbusd\s+.*%ymm"), ("x86-64", "dyn-generic", None)]


@pytest.mark.slow
@pytest.mark.parametrize(("mcpu", "kernel", "pattern"), CPUS, ids=[c[0] for c in CPUS])
def test_kernel_per_isa(mcpu: str, kernel: str, pattern: str | None) -> None:
    import tvm

    from bitpress.schedules.cpu_int8 import dyn_kernel

    tgt = tvm.target.Target({"kind": "llvm", "mcpu": mcpu})
    assert dyn_kernel(isa.CpuIsa.of(tgt)).name == kernel
    g = _graph(2, 24, 64, 4, 32)
    exe = TvmBackend().build(g, "llvm", BuildOptions(extra={"mcpu": mcpu}))
    asm = "".join(m.inspect_source("asm") for m in [exe.module.mod, *exe.module.mod.imports] if m.kind == "llvm")
    if pattern is not None:
        assert re.search(pattern, asm), f"{mcpu}: no {pattern}"
    need = set(exe.info["cpu_features"].split(",")) - {""}
    have = isa.host_features()
    if have is not None and not need <= have:
        with pytest.raises(isa.IsaError):
            exe.run(_inputs(2, 64))
        return
    feeds = _inputs(2, 64)
    want = run(g, feeds)[0]
    got = exe.run(feeds)[0]
    if "fma" in need:
        assert torch.equal(got, want)
    else:  # no FMA instruction: multiply and add round separately (float epilogue allclose)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [96, 100])  # 100: a short last block
def test_onnx_matches(k: int) -> None:
    g = _graph(3, 20, k, 4, 32)
    feeds = _inputs(3, k)
    cm = bp.compile(g, tuple(feeds), target="onnx", quiet=True, canonicalize=False)
    want = run(g, feeds)[0]
    assert torch.allclose(cm(*feeds), want, rtol=1e-5, atol=1e-5)


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 20)).eval()


@pytest.mark.parametrize("bits", [4, 8])
def test_quantize_act_dynamic(bits: int, tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = _mlp()
    x = torch.randn(3, 2, 64)
    q = bp.passes.Quantize(method="rtn", bits=bits, group_size=32, act_bits=8, act_dynamic=True)
    cm = bp.compile(m, (x,), passes=[q], target="llvm", quiet=True)  # no calibration needed
    assert [n.op for n in cm.graph.nodes if n.op.startswith("q")] == ["qlinear_dyn", "qlinear_dyn"]
    weight_only = bp.compile(
        m, (x,), passes=[bp.passes.Quantize(method="rtn", bits=bits, group_size=32, symmetric=True)], target="torch", quiet=True
    )
    assert cm.report.total_bytes == weight_only.report.total_bytes  # same codes and scales
    y = cm(x)
    assert torch.equal(y, run(cm.graph, [x])[0])
    assert (y - m(x)).pow(2).mean() / m(x).pow(2).mean() < (0.02 if bits == 4 else 1e-3)
    cm.save(tmp_path / "a")
    assert torch.equal(bp.load(tmp_path / "a")(x), y)


def test_gptq_act_dynamic_and_declines() -> None:
    m = _mlp()
    x = torch.randn(8, 64)
    q = bp.passes.Quantize(method="gptq", bits=4, group_size=32, act_bits=8, act_dynamic=True)
    cm = bp.compile(m, (x,), passes=[q], calibration=[(torch.randn(8, 64),) for _ in range(4)], target="torch", quiet=True)
    assert sum(n.op == "qlinear_dyn" for n in cm.graph.nodes) == 2
    # K = 66 is not a multiple of 4: that layer stays weight-only, and the log says why
    m2 = torch.nn.Sequential(torch.nn.Linear(66, 96), torch.nn.ReLU(), torch.nn.Linear(96, 20)).eval()
    q2 = bp.passes.Quantize(method="rtn", bits=4, group_size=24, act_bits=8, act_dynamic=True)
    cm2 = bp.compile(m2, (torch.randn(8, 66),), passes=[q2], target="torch", quiet=True)
    assert [n.op for n in cm2.graph.nodes if n.op.startswith("q")] == ["qlinear", "qlinear_dyn"]
    assert "group size 24 or K=66 is not a multiple of 4" in cm2.explain()


@pytest.mark.parametrize(
    "kw",
    [
        {"bits": 3, "act_bits": 8, "act_dynamic": True},
        {"bits": 4, "act_dynamic": True},
        {"bits": 4, "act_bits": 8, "act_dynamic": True, "symmetric": False},
        {"bits": 4, "act_bits": 8, "act_dynamic": True, "group_size": 0},
    ],
)
def test_bad_options(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="act_dynamic"):
        bp.passes.Quantize(**kw)  # type: ignore[arg-type]


def test_symbolic_batch_one_artifact() -> None:
    """qlinear_dyn and the W8A8 int8 GEMMs build over a symbolic batch (rows padded to the row
    tile inside the kernel), bit-exact at batch sizes the example did not have."""
    torch.manual_seed(0)
    m = _mlp()
    q = bp.passes.Quantize(method="rtn", bits=4, group_size=32, act_bits=8, act_dynamic=True)
    cm = bp.compile(m, (torch.randn(3, 64),), passes=[q], target="llvm", quiet=True)
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 20)
    ).eval()
    cal = [(torch.randn(4, 3, 6, 6),) for _ in range(3)]
    w8 = bp.passes.Quantize(method="rtn", bits=8, group_size=None, act_bits=8)
    cm8 = bp.compile(cnn, (torch.randn(3, 3, 6, 6),), passes=[w8], calibration=cal, target="llvm", quiet=True)
    for c in (cm, cm8):
        assert not c.graph.inputs[0].type.is_static
        assert "specialized" not in str(c.report)  # no fallback to the example's shapes
    for b in (1, 5, 8):
        x = torch.randn(b, 64)
        assert torch.equal(cm(x), run(cm.graph, [x])[0])
        img = torch.randn(b, 3, 6, 6)
        assert torch.equal(cm8(img), run(cm8.graph, [img])[0])
