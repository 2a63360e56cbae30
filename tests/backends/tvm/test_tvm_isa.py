"""The llvm backend on every x86 ISA, from any host.

Each int8 micro-kernel is built for a CPU that has it (explicit -mcpu), its assembly checked
for the instruction, and run bit-exact against the interpreter where this host can execute
it; where it cannot, running is refused with one line naming the missing features.
"""

from __future__ import annotations

import re

import pytest
import torch

import bitpress as bp
from bitpress.backends.tvm.backend import TvmBackend, make_target
from bitpress.compiler.interpreter import run
from bitpress.compiler.ir import Graph, TensorType
from bitpress.compiler.target import BuildOptions
from bitpress.passes.quantize import _numerics as nq
from bitpress.schedules import isa

# (mcpu, int8 kernel, a regex the assembly must match)
CPUS = [
    ("x86-64", "generic", None),
    ("haswell", "pmaddwd-256", r"vpmaddwd\s+%ymm"),
    ("x86-64-v3", "pmaddwd-256", r"vpmaddwd\s+%ymm"),
    ("skylake-avx512", "pmaddwd-512", r"vpmaddwd\s+%zmm"),
    ("icelake-server", "vnni-512", r"vpdpbusd\s+.*%zmm"),
    ("alderlake", "vnni-256", r"vpdpbusd\s+.*%ymm"),
]


def _w8a8_graph() -> tuple[Graph, list[torch.Tensor]]:
    """A linear and a strided conv off every tile size (K, N, channels odd), extreme weights."""
    gen = torch.Generator().manual_seed(3)
    g = Graph()
    x = g.add_input("x", TensorType((5, 37), "float32"))
    img = g.add_input("img", TensorType((2, 3, 9, 7), "float32"))
    m, r = nq.quant_multiplier(torch.rand(21, dtype=torch.float64, generator=gen) * 1e-3 + 1e-4)
    w = torch.randint(-128, 128, (21, 37), dtype=torch.int8, generator=gen)
    w[0] = 127  # every product at its largest: an int16 pair sum would saturate
    w[1] = -128
    lin = g.call(
        "qlinear_w8a8",
        [
            g.call("quantize_act", [x], {"scale": 0.02, "zero_point": -128}, name="qx"),
            g.add_const(w, "w"),
            g.add_const(m, "m"),
            g.add_const(r, "r"),
            g.add_const(torch.randint(-300, 300, (21,), dtype=torch.int32, generator=gen), "b"),
        ],
        {"x_zero_point": -128, "out_zero_point": -4},
        name="fc",
    )
    mc, rc = nq.quant_multiplier(torch.rand(19, dtype=torch.float64, generator=gen) * 1e-2 + 1e-3)
    conv = g.call(
        "qconv2d_w8a8",
        [
            g.call("quantize_act", [img], {"scale": 0.03, "zero_point": -11}, name="qi"),
            g.add_const(torch.randint(-128, 128, (19, 3, 3, 2), dtype=torch.int8, generator=gen), "wc"),
            g.add_const(mc, "mc"),
            g.add_const(rc, "rc"),
        ],
        {"x_zero_point": -11, "out_zero_point": 6, "stride": 2, "padding": 1},
        name="conv",
    )
    g.set_outputs([lin, conv])
    g.verify()
    feeds = [torch.rand(5, 37, generator=gen) * 5.1, torch.randn(2, 3, 9, 7, generator=gen) * 3]
    feeds[0][0] = 5.1  # activations at the top of the range (u = 255)
    return g, feeds


def _asm(exe) -> str:  # type: ignore[no-untyped-def]
    mods = [exe.module.mod, *exe.module.mod.imports]
    return "".join(m.inspect_source("asm") for m in mods if m.kind == "llvm")


@pytest.mark.slow
@pytest.mark.parametrize(("mcpu", "kernel", "pattern"), CPUS, ids=[c[0] for c in CPUS])
def test_w8a8_kernel_per_isa_bit_exact(mcpu: str, kernel: str, pattern: str | None) -> None:
    g, feeds = _w8a8_graph()
    exe = TvmBackend().build(g, "llvm", BuildOptions(extra={"mcpu": mcpu}))
    assert exe.info["cpu"].endswith(f"int8 dot {kernel})"), exe.info["cpu"]
    assert exe.info["mcpu"] == mcpu
    if pattern is not None:
        assert re.search(pattern, _asm(exe)), f"{mcpu}: no {pattern} in the kernels"
    assert "vpmaddubsw" not in _asm(exe)  # saturating: never the reference's arithmetic
    need = set(exe.info["cpu_features"].split(",")) - {""}
    have = isa.host_features()
    if have is not None and not need <= have:
        with pytest.raises(isa.IsaError, match="needs CPU features this host lacks"):
            exe.run(feeds)
        return
    want = run(g, feeds)
    for o, w in zip(exe.run(feeds), want, strict=True):
        assert torch.equal(o, w)
    assert want[0].unique().numel() > 10


def test_isa_of_targets() -> None:
    import tvm

    def of(cpu: str) -> isa.CpuIsa:
        return isa.CpuIsa.of(tvm.target.Target({"kind": "llvm", "mcpu": cpu, "mtriple": "x86_64-linux-gnu"}))

    assert (of("haswell").vector_bits, of("haswell").vector_registers) == (256, 16)
    assert (of("skylake-avx512").vector_bits, of("skylake-avx512").vector_registers) == (512, 32)
    assert [of(c).int8.name for c, _, _ in CPUS] == [k for _, k, _ in CPUS]
    arm = isa.CpuIsa.of(tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "neoverse-n1"}))
    assert arm.arch == "aarch64" and arm.has("neon", "dotprod")


def test_host_target_turns_off_hidden_features(monkeypatch: pytest.MonkeyPatch) -> None:
    """A hypervisor that hides AVX-512 from a CPU model that has it: the build must not use it."""
    from tvm.target import codegen

    monkeypatch.setattr(codegen, "llvm_get_system_cpu", lambda: "icelake-server")
    monkeypatch.setattr(isa, "host_features", lambda: frozenset({"sse4.2", "avx", "avx2", "fma", "f16c"}))
    spec = isa.host_target_spec()
    assert spec["mcpu"] == "icelake-server"
    assert {"-avx512f", "-avx512vnni", "-avx512bw"} <= set(spec["mattr"])
    tgt = make_target("llvm")
    feats = isa.CpuIsa.of(tgt)
    assert not feats.has("avx512f") and feats.int8.name == "pmaddwd-256"


def test_artifact_names_its_isa_and_refuses_older_cpu(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    m = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU())
    x = torch.randn(2, 16)
    cm = bp.compile(m, (x,), target="llvm", quiet=True, options={"mcpu": "x86-64-v2"})
    cm.save(tmp_path / "a")
    meta = (tmp_path / "a" / "tvm_meta.json").read_text()
    assert '"mcpu": "x86-64-v2"' in meta and "cpu_features" in meta and "target_triple" in meta
    assert torch.allclose(bp.load(tmp_path / "a")(x), m(x), atol=1e-5)
    haswell = bp.compile(m, (x,), target="llvm", quiet=True, options={"mcpu": "haswell"})
    haswell.save(tmp_path / "b")
    monkeypatch.setattr(isa, "host_features", lambda: frozenset({"sse4.2"}))
    with pytest.raises(isa.IsaError) as e:
        bp.load(tmp_path / "b")
    msg = str(e.value)
    assert "\n" not in msg and "avx2" in msg and "fma" in msg and "-mcpu=haswell" in msg and "x86-64-v3" in msg


def test_bad_mcpu_is_one_line() -> None:
    with pytest.raises(ValueError, match="bad llvm target"):
        make_target("llvm", {"mcpu": 7, "mattr": "+avx2"})
