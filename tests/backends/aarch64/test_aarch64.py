"""aarch64 Linux backend: a static executable built with aarch64-linux-gnu-gcc, run under qemu-aarch64.

Integer (W8A8) paths must be bit-exact with the interpreter; the int8 layers must run the dot-product
instructions (SDOT) the NEON micro-kernels are written with.  Skipped only when the cross toolchain or
QEMU is absent (`make apt` installs gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bitpress as bp
from bitpress.backends.aarch64.toolchain import native
from bitpress.compiler.interpreter import run
from bitpress.compiler.target import LoweringError

needs_toolchain = pytest.mark.skipif(
    shutil.which("aarch64-linux-gnu-gcc") is None or (shutil.which("qemu-aarch64") is None and not native()),
    reason="aarch64-linux-gnu-gcc / qemu-aarch64 not installed (make apt: gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user)",
)
W8A8 = {"bits": 8, "act_bits": 8, "group_size": None}
TARGET = "aarch64-linux"
# SDOT by element: 4 rows x 4 int8 MACs into an int32x4 accumulator, x's 4-byte group broadcast from a lane
SDOT_LANE = re.compile(r"\bsdot\tv\d+\.4s, v\d+\.16b, v\d+\.4b\[[0-3]\]")


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(37, 52), torch.nn.ReLU(), torch.nn.Linear(52, 19), torch.nn.GELU(), torch.nn.Linear(19, 7))


def _int8(model: torch.nn.Module, shape: tuple[int, ...], **options: object) -> bp.CompiledModel:
    cal = [(torch.randn(shape),) for _ in range(12)]
    return bp.compile(model, cal[0], passes=[bp.passes.Quantize(**W8A8)], target=TARGET, calibration=cal, options=dict(options))


def _bit_exact(cm: bp.CompiledModel, samples: list[torch.Tensor]) -> None:
    outs = cm.executable.run_many([[s] for s in samples])
    for s, (o,) in zip(samples, outs, strict=True):
        ref = run(cm.graph, [s])[0]
        assert o.dtype == ref.dtype and o.shape == ref.shape
        assert torch.equal(o, ref), f"max diff {(o - ref).abs().max()}"


def _disassembly(exe: Path, function: str) -> str:
    r = subprocess.run(["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", str(exe)], capture_output=True, text=True, check=True)
    m = re.search(rf"^[0-9a-f]+ <{re.escape(function)}>:\n(.*?)(?:\n\n|\Z)", r.stdout, re.M | re.S)
    assert m is not None, function
    return m.group(1)


@pytest.fixture(scope="module")
def mlp() -> bp.CompiledModel:
    return _int8(_mlp(), (2, 37))


# ----------------------------------------------------------------------------- int8 end to end


@needs_toolchain
@pytest.mark.slow
def test_int8_mlp_bit_exact_with_sdot(mlp: bp.CompiledModel) -> None:
    info = mlp.report.backend
    assert info["integer_only"] and info["float_nodes"] == []
    assert info["cflags"] == ["-march=armv8.2-a+dotprod"] and info["features"]["dotprod"] and info["schedule"] == "neon-16x1"
    torch.manual_seed(1)
    _bit_exact(mlp, [torch.randn(2, 37) * 2 for _ in range(6)])
    x = torch.randn(2, 37)
    assert torch.equal(mlp(x), run(mlp.graph, [x])[0])  # cm(x): one process per call
    # every int8 layer is a TVM kernel whose reduction runs on SDOT (aarch64-linux-gnu-objdump -d of the executable)
    proj = mlp.executable.project
    src = (proj / "kernels_tvm.c").read_text()
    names = re.findall(
        r"TVM_DLL int32_t __tvm_ffi_(bp_k\d+\w*)\(void\* self_handle, void\* args, int32_t num_args, void\* result\) \{", src
    )
    assert len(names) == 3 and src.count("bp_uk_neon_16x1((") == 3
    for name in names:
        assert SDOT_LANE.search(_disassembly(mlp.executable.exe, f"__tvm_ffi_{name}")), name
    assert info["dot_functions"] == sorted(f"__tvm_ffi_{n}" for n in names) and info["dot_instructions"] >= 3 * 4
    # a static Linux executable with the weights as stored (int8 codes, reordered and padded to whole tiles)
    assert info["executable_bytes"] == mlp.executable.exe.stat().st_size
    assert info["rodata_bytes"] >= info["weight_array_bytes"] >= mlp.graph.weight_bytes() * 0.9
    assert info["bss_bytes"] >= info["arena_bytes"] > 0
    # executed instructions (QEMU's translation-block log) per layer: the SDOT GEMVs run under one per MAC
    lin = [r for r in info["layers"] if r["op"] == "qlinear_w8a8"]
    assert len(lin) == 3 and lin[0]["macs"] == 2 * 52 * 37 and all(r["instructions"] > 0 for r in lin)
    assert sum(r["instructions"] for r in info["layers"]) <= info["instructions_per_inference"]
    assert lin[0]["instructions_per_mac"] < 1.0  # measured 0.56 (K = 37: a tail)
    head = subprocess.run(["aarch64-linux-gnu-objdump", "-f", str(mlp.executable.exe)], capture_output=True, text=True, check=True).stdout
    assert "elf64-littleaarch64" in head
    assert b"libc.so" not in mlp.executable.exe.read_bytes()[:4096]  # no dynamic loader / shared libc


@needs_toolchain
@pytest.mark.slow
@pytest.mark.parametrize(("march", "conv", "insn"), [(None, "neon-8x4", "sdot"), ("armv8.6-a+i8mm", "neon-mm-8x4", "smmla")])
def test_int8_cnn_bit_exact(march: str | None, conv: str, insn: str) -> None:
    """Convolutions on 8 x 4 tiles (SDOT, or SMMLA on +i8mm CPUs): K = 36 and 45 (K tails), 5 and 6 channels
    (ragged channel tiles), 49 and 16 pixels (ragged pixel tiles), stride 2, padding; max pooling, a linear head."""
    torch.manual_seed(3)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(4, 5, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(5, 6, 3, stride=2, padding=1),
        torch.nn.Tanh(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(24, 10),
    )
    cm = _int8(m, (1, 4, 7, 7), **({"march": march} if march else {}))
    info = cm.report.backend
    assert info["integer_only"] and info["conv_schedule"] == conv
    _bit_exact(cm, [torch.randn(1, 4, 7, 7) * 2 for _ in range(6)])
    src = (cm.executable.project / "kernels_tvm.c").read_text()
    uk = "bp_uk_neon_mm_8x4" if march else "bp_uk_neon_8x4"
    assert src.count(f"{uk}((") == 2 and src.count("bp_uk_neon_16x1((") == 1
    convs = re.findall(
        r"TVM_DLL int32_t __tvm_ffi_(bp_k\d+_\d+)\(void\* self_handle, void\* args, int32_t num_args, void\* result\) \{", src
    )
    conv_kernels = [n for n in convs if uk in _function(src, n)]
    assert len(conv_kernels) == 2
    for name in conv_kernels:
        assert re.search(rf"\b{insn}\tv\d+\.4s, v\d+\.16b, v\d+\.", _disassembly(cm.executable.exe, f"__tvm_ffi_{name}")), name
    assert len(info["dot_functions"]) == 3


def _function(src: str, name: str) -> str:
    i = src.index(f"__tvm_ffi_{name}(void* self_handle, void* args, int32_t num_args, void* result) {{")
    return src[i : src.index("\n}\n", i)]


@needs_toolchain
def test_conv_with_one_pixel_tile_and_long_k() -> None:
    """8 -> 8 channels, 5x5, stride 2 on 6x6: one pixel tile per image and K = 200, where TVM's buffer reuse
    (StorageRewrite) folded the patch and accumulator buffers together and rejected the micro-kernel's pointer;
    the kernels are built again without that reuse (bitpress/backends/mcu/tvm_kernels.py)."""
    torch.manual_seed(6)
    m = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 5, stride=2, padding=1), torch.nn.ReLU())
    cm = _int8(m, (1, 8, 6, 6), profile=False)
    _bit_exact(cm, [torch.randn(1, 8, 6, 6) for _ in range(3)])


_CPUS = [{}, {"march": "armv8.6-a+i8mm"}, {"mcpu": "cortex-a72"}]


@needs_toolchain
@pytest.mark.slow
@settings(max_examples=6, deadline=None)
@given(n=st.integers(1, 35), k=st.integers(1, 70), rows=st.integers(1, 3), cpu=st.integers(0, 2))
def test_int8_linear_layer_bit_exact(n: int, k: int, rows: int, cpu: int) -> None:
    """One layer over ragged shapes: K % 4 and K % 16 tails, N % 16 row tiles; SDOT, SMMLA-CPU and plain C tiles."""
    cm = _int8(torch.nn.Linear(k, n), (rows, k), profile=False, **_CPUS[cpu])
    _bit_exact(cm, [torch.randn(rows, k) * 3 for _ in range(3)])


@needs_toolchain
@pytest.mark.slow
@settings(max_examples=6, deadline=None)
@given(
    c=st.integers(1, 6),
    o=st.integers(1, 11),
    ksize=st.sampled_from([1, 2, 3]),
    stride=st.sampled_from([1, 2]),
    pad=st.sampled_from([0, 1]),
    cpu=st.integers(0, 2),
)
def test_int8_conv_layer_bit_exact(c: int, o: int, ksize: int, stride: int, pad: int, cpu: int) -> None:
    """One convolution over ragged shapes: K % 8 tails (SMMLA), channel tiles of 8, pixel tiles of 4, 2 images."""
    m = torch.nn.Sequential(torch.nn.Conv2d(c, o, ksize, stride=stride, padding=pad), torch.nn.ReLU())
    cm = _int8(m, (2, c, 7, 6), profile=False, **_CPUS[cpu])
    _bit_exact(cm, [torch.randn(2, c, 7, 6) * 2 for _ in range(3)])


@needs_toolchain
@pytest.mark.slow
def test_fashion_cnn_int8_bit_exact() -> None:
    """bitpress.models' Fashion-MNIST CNN integer-only (TVM conv/linear kernels on SDOT, fixed-point residual add and
    average pool): bit-exact with the interpreter on the graph the executable computes, same accuracy."""
    from bitpress.models.fashion_mnist import load_fashion_cnn, load_fashion_mnist

    x, y = load_fashion_mnist("test", limit=160)
    cal = [(x[i : i + 1],) for i in range(128, 160)]
    cm = bp.compile(load_fashion_cnn(), cal[0], passes=[bp.passes.Quantize(**W8A8)], target=TARGET, calibration=cal)
    info = cm.report.backend
    assert info["integer_only"] and info["float_nodes"] == []
    n = 32
    outs = [o[0] for o in cm.executable.run_many([[x[i : i + 1]] for i in range(n)])]
    lg = cm.executable.graph
    assert lg is not None
    assert all(torch.equal(o, run(lg, [x[i : i + 1]])[0]) for i, o in enumerate(outs))
    ref = [run(cm.graph, [x[i : i + 1]])[0] for i in range(n)]
    acc = sum(int(o.argmax() == y[i]) for i, o in enumerate(outs)) / n
    assert acc == sum(int(r.argmax() == y[i]) for i, r in enumerate(ref)) / n > 0.8
    assert len(info["dot_functions"]) == 5  # 3 convolutions + 2 linear layers


@needs_toolchain
@pytest.mark.slow
def test_mcpu_without_dotprod_runs_the_c_tile() -> None:
    """-mcpu=cortex-a72 (Armv8.0, no dot product): the same layout on SMULL + SADALP, still bit-exact."""
    torch.manual_seed(4)
    cm = _int8(torch.nn.Sequential(torch.nn.Linear(21, 9), torch.nn.ReLU()), (3, 21), mcpu="cortex-a72")
    info = cm.report.backend
    assert info["cflags"] == ["-mcpu=cortex-a72"] and info["features"]["neon"] and not info["features"]["dotprod"]
    assert info["dot_instructions"] == 0
    _bit_exact(cm, [torch.randn(3, 21) for _ in range(4)])
    src = (cm.executable.project / "kernels_tvm.c").read_text()
    (name,) = re.findall(r"TVM_DLL int32_t __tvm_ffi_(bp_k\w+)\(void\* self_handle, void\* args, int32_t num_args, void\* result\) \{", src)
    asm = _disassembly(cm.executable.exe, f"__tvm_ffi_{name}")
    assert re.search(r"\bsmull2?\tv\d+\.8h, v\d+\.(8b|16b)", asm) and re.search(r"\bsadalp\tv\d+\.4s, v\d+\.8h", asm)


# ----------------------------------------------------------------------------- artifact, errors


@needs_toolchain
@pytest.mark.slow
def test_save_load_round_trip(mlp: bp.CompiledModel, tmp_path: Path) -> None:
    out = mlp.save(tmp_path / "art")
    files = ("model", "model.c", "model.h", "kernels_tvm.c", "main.c", "bp_ukernels_neon.h", "bp_tvm_shim.c", "Makefile", "README.md")
    for f in files:
        assert (out / "aarch64" / f).is_file(), f
    assert "-march=armv8.2-a+dotprod" in (out / "aarch64" / "Makefile").read_text()
    loaded = bp.load(out)
    x = torch.randn(2, 37)
    assert torch.equal(loaded(x), mlp(x))
    assert loaded.report.backend["schedule"] == "neon-16x1"
    # on an aarch64 host without the dot product (/proc/cpuinfo), loading names what is missing
    from bitpress.backends.aarch64 import toolchain

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(toolchain, "native", lambda: True)
        mp.setattr(toolchain, "host_cpu_flags", lambda: {"fp", "asimd", "crc32"})
        with pytest.raises(ValueError, match=r"built with -march=armv8.2-a\+dotprod and needs dotprod, which this CPU lacks"):
            bp.load(out)
    assert toolchain.host_missing_features({"neon": True, "dotprod": True, "i8mm": True}, {"asimd", "asimddp"}) == ["i8mm"]
    (out / "aarch64" / "model").write_bytes(b"\x7fELF garbage")
    with pytest.raises(bp.ArtifactError, match="corrupt"):
        bp.load(out)


@needs_toolchain
def test_errors_name_the_problem() -> None:
    m = torch.nn.Sequential(torch.nn.Linear(8, 8))
    x = torch.randn(1, 8)
    with pytest.raises(LoweringError, match=r"aarch64-linux: no integer lowering for 0 \(linear\).*allow_float"):
        bp.compile(m, (x,), target=TARGET)
    with pytest.raises(ValueError, match=r"unknown aarch64-linux option.*alow_float"):
        bp.compile(m, (x,), target=TARGET, options={"alow_float": True})
    with pytest.raises(ValueError, match=r"rejects -mcpu=cortex-z99"):
        bp.compile(m, (x,), target=TARGET, options={"mcpu": "cortex-z99"})
    with pytest.raises(ValueError, match=r"neon-mm-8x4.*\+i8mm"):
        bp.compile(m, (x,), target=TARGET, options={"schedule": "neon-mm-8x4", "mcpu": "cortex-a76"})
    emb = torch.nn.Embedding(10, 4)
    with pytest.raises(LoweringError, match=r"target aarch64-linux cannot lower: op 'embedding'"):
        bp.compile(emb, (torch.tensor([[1, 2]]),), target=TARGET, options={"allow_float": True})


@needs_toolchain
def test_float_layers_with_allow_float() -> None:
    """allow_float runs float32 layers with the C kernels (no TVM kernels): allclose with the interpreter."""
    torch.manual_seed(5)
    m = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.GELU(), torch.nn.Linear(6, 3))
    x = torch.randn(2, 8)
    cm = bp.compile(m, (x,), target=TARGET, options={"allow_float": True, "mcpu": "neoverse-n1"})
    assert not cm.report.backend["integer_only"] and cm.report.backend["features"]["dotprod"]
    torch.testing.assert_close(cm(x), run(cm.graph, [x])[0], rtol=1e-5, atol=1e-5)


@needs_toolchain
@pytest.mark.slow
def test_transformer_block_integer_only_bit_exact() -> None:
    """Quantize(act_scope="all") on a transformer block: integer layer norm, softmax, attention matmuls and
    residual adds (the MCU backend's integer ops, 64-bit pointers here) bit-exact end to end and per tensor."""
    from tests.backends.mcu.test_mcu import _Block
    from tests.backends.mcu.test_mcu_transformer import _all_values, _calibration

    torch.manual_seed(0)
    m = _Block().eval()
    cal = _calibration()
    q = bp.passes.Quantize(**W8A8, act_scope="all")
    cm = bp.compile(m, cal[0], passes=[q], target=TARGET, calibration=cal)
    info = cm.report.backend
    assert info["integer_only"] and info["float_nodes"] == []
    lg = cm.executable.graph
    assert lg is not None and {n.op for n in lg.nodes} >= {"layer_norm_int8", "softmax_int8", "matmul_int8", "add_requant_int8"}
    torch.manual_seed(1)
    xs = [torch.randn(1, 6, 16) for _ in range(6)]
    outs = [o[0] for o in cm.executable.run_many([[x] for x in xs])]
    assert all(torch.equal(o, run(lg, [x])[0]) for x, o in zip(xs, outs, strict=True))
    every = _all_values(lg)
    cl = bp.compile(every, (xs[0],), target=TARGET, canonicalize=False)
    for x, got in zip(xs[:3], cl.executable.run_many([[x] for x in xs[:3]]), strict=True):
        bad = [v.name for v, a, b in zip(every.outputs, got, run(every, [x]), strict=True) if not torch.equal(a, b)]
        assert bad == [], bad
