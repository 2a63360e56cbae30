"""MCU backend: firmware built with arm-none-eabi-gcc, run in QEMU, checked against the interpreter.

Integer (W8A8) paths must be bit-exact, per layer and end to end; float paths allclose.
Skipped only when the toolchain is absent (`make apt` installs it; CI has it).
"""

from __future__ import annotations

import re
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bitpress as bp
from bitpress.backends.mcu.legalize import legalize
from bitpress.backends.mcu.plan import plan_memory
from bitpress.compiler.interpreter import run
from bitpress.compiler.ir import Graph, TensorType
from bitpress.compiler.target import LoweringError
from bitpress.schedules.mcu import SCHEDULES, conv_schedule, gemv_schedule

needs_toolchain = pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
    reason="arm-none-eabi-gcc / qemu-system-arm not installed (make apt)",
)
W8A8 = {"bits": 8, "act_bits": 8, "group_size": None}


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(37, 52), torch.nn.ReLU(), torch.nn.Linear(52, 19), torch.nn.GELU(), torch.nn.Linear(19, 7))


def _int8(model: torch.nn.Module, shape: tuple[int, ...], target: str, **options: object) -> bp.CompiledModel:
    cal = [(torch.randn(shape),) for _ in range(12)]
    return bp.compile(model, cal[0], passes=[bp.passes.Quantize(**W8A8)], target=target, calibration=cal, options=dict(options))


def _bit_exact(cm: bp.CompiledModel, samples: list[torch.Tensor]) -> None:
    outs = cm.executable.run_many([[s] for s in samples])
    for s, (o,) in zip(samples, outs, strict=True):
        ref = run(cm.graph, [s])[0]
        assert o.dtype == ref.dtype and o.shape == ref.shape
        assert torch.equal(o, ref), f"max diff {(o - ref).abs().max()}"


# ----------------------------------------------------------------------------- int8 end to end


_SLOW = pytest.mark.slow  # each firmware build (TVM + gcc) takes a few seconds on the 2-core CI machine


@needs_toolchain
@pytest.mark.parametrize(
    "target", ["cortex-m4", *(pytest.param(t, marks=_SLOW) for t in ("cortex-m0", "cortex-m3", "cortex-m7", "cortex-m33", "cortex-m55"))]
)
def test_int8_mlp_bit_exact(target: str) -> None:
    cm = _int8(_mlp(), (2, 37), target)
    info = cm.report.backend
    assert info["integer_only"] and info["float_nodes"] == []
    assert info["schedule"] == {"cortex-m0": "scalar", "cortex-m3": "scalar", "cortex-m55": "mve-4row"}.get(target, "dsp-4row")
    torch.manual_seed(1)
    _bit_exact(cm, [torch.randn(2, 37) * 2 for _ in range(6)])
    # the report: flash and RAM from arm-none-eabi-size and the plan, instructions from the QEMU trace
    assert info["flash_bytes"] == info["text_bytes"] + info["rodata_bytes"] + info["data_bytes"]
    assert info["rodata_bytes"] >= info["weight_array_bytes"] >= cm.graph.weight_bytes() * 0.9
    assert info["bss_bytes"] >= info["arena_bytes"] > 0
    layers = {r["name"]: r for r in info["layers"]}
    assert sum(r["instructions"] for r in info["layers"]) <= info["instructions_per_inference"]
    lin = [r for r in layers.values() if r["op"] == "qlinear_w8a8"]
    assert len(lin) == 3 and all(r["instructions"] > 0 and r["macs"] > 0 for r in lin)
    assert lin[0]["macs"] == 2 * 52 * 37
    _assert_tvm_kernels(cm, 3)


def _assert_tvm_kernels(cm: bp.CompiledModel, count: int) -> None:
    """The int8 layers that ran are the ones TVM generated: kernels_tvm.c is TVM's "c" target output
    (packed entry points, the micro-kernels as call_extern), model.c calls each of them, the ELF holds them."""
    from bitpress.backends.mcu.toolchain import symbols

    proj = cm.executable.project
    src, model = (proj / "kernels_tvm.c").read_text(), (proj / "model.c").read_text()
    assert src.startswith("// tvm target:") and '"kind":"c"' in src.splitlines()[0]
    names = re.findall(
        r"TVM_DLL int32_t __tvm_ffi_(bp_k\d+\w*)\(void\* self_handle, void\* args, int32_t num_args, void\* result\) \{", src
    )
    assert len(names) == count, names
    elf_syms = {s.name for s in symbols(cm.executable.elf)}
    for name in names:
        assert f"__tvm_ffi_{name}(0, a, " in model and f"__tvm_ffi_{name}" in elf_syms
    sched = cm.report.backend["schedule"]
    if sched != "scalar":  # the reduction is tensorized into the core's micro-kernel
        assert re.search(r"bp_uk_(dsp|mve)_\w+\(\(&\(acc", src)
    assert "bp_gemv" not in model and "bp_gemm" not in model  # no hand-written GEMV left in the model


@needs_toolchain
def test_flattened_input_mlp_is_integer_only() -> None:
    """quantize(flatten(x)) converts the float samples at the boundary: the rest runs in int8."""
    torch.manual_seed(2)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    cm = _int8(m, (1, 3, 4), "cortex-m55", profile=False)
    assert cm.report.backend["integer_only"] and cm.report.backend["boundary_nodes"]
    _bit_exact(cm, [torch.randn(1, 3, 4) for _ in range(3)])


@needs_toolchain
@pytest.mark.slow
@settings(max_examples=6, deadline=None)
@given(
    n=st.integers(1, 13),
    k=st.integers(1, 40),
    rows=st.integers(1, 3),
    target=st.sampled_from(["cortex-m4", "cortex-m55", "cortex-m0"]),
)
def test_int8_linear_layer_bit_exact(n: int, k: int, rows: int, target: str) -> None:
    """One layer at a time over ragged shapes (K % 4, K % 16, N % 4 tails of every schedule)."""
    cm = _int8(torch.nn.Linear(k, n), (rows, k), target, profile=False)
    _bit_exact(cm, [torch.randn(rows, k) * 3 for _ in range(3)])


@needs_toolchain
@pytest.mark.slow
@settings(max_examples=5, deadline=None)
@given(
    c=st.integers(1, 5),
    o=st.integers(1, 9),
    ksize=st.sampled_from([1, 3]),
    stride=st.sampled_from([1, 2]),
    pad=st.sampled_from([0, 1]),
    target=st.sampled_from(["cortex-m4", "cortex-m55", "cortex-m3"]),
)
def test_int8_conv_layer_bit_exact(c: int, o: int, ksize: int, stride: int, pad: int, target: str) -> None:
    m = torch.nn.Sequential(torch.nn.Conv2d(c, o, ksize, stride=stride, padding=pad), torch.nn.ReLU(), torch.nn.MaxPool2d(2))
    cm = _int8(m, (1, c, 9, 8), target, profile=False)
    assert cm.report.backend["integer_only"]
    _bit_exact(cm, [torch.randn(1, c, 9, 8) for _ in range(3)])


@needs_toolchain
@pytest.mark.parametrize("target", ["cortex-m4", pytest.param("cortex-m55", marks=_SLOW)])
def test_int8_conv_schedules_bit_exact(target: str) -> None:
    """Even K (the assembly dsp-2x2 loop), odd K (its C fallback), odd channel and pixel counts, border windows."""
    torch.manual_seed(3)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(4, 5, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(5, 6, 3, stride=2, padding=1), torch.nn.Tanh()
    )
    cm = _int8(m, (1, 4, 7, 7), target)
    convs = [r for r in cm.report.backend["layers"] if r["op"] == "qconv2d_w8a8"]
    assert [r["macs"] for r in convs] == [5 * 49 * 36, 6 * 16 * 45]
    assert {r["schedule"] for r in convs} == {"dsp-2x2" if target == "cortex-m4" else "mve-4x2"}
    _bit_exact(cm, [torch.randn(1, 4, 7, 7) * 2 for _ in range(4)])
    _assert_tvm_kernels(cm, 2)


@needs_toolchain
@pytest.mark.slow
def test_int8_small_k_conv_row_kernel_bit_exact() -> None:
    """K <= 16 convolutions on M55 take mve-4xrow (gathered patches, fused requantization): a 3x3 conv over one
    channel, then a (2, 1) conv with stride 2 and height dilation 2 over 8 channels (K = 16); plus a fallback."""
    torch.manual_seed(5)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 4, (2, 1), stride=2, dilation=(2, 1)),
        torch.nn.Tanh(),
        torch.nn.Conv2d(4, 4, (1, 3)),  # K = 12, OW = 6 - 2
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 4, (1, 2)),  # OW = 3 (odd): mve-4x2
    )
    cm = _int8(m, (1, 1, 9, 12), "cortex-m55", profile=False)
    meta = [n.meta.get("_mcu_schedule") for n in cm.executable.graph.nodes if n.op == "qconv2d_w8a8"]
    assert meta == ["mve-4xrow", "mve-4xrow", "mve-4xrow", "mve-4x2"]
    _bit_exact(cm, [torch.randn(1, 1, 9, 12) * 2 for _ in range(4)])


@needs_toolchain
def test_int8_first_layer_conv_dsp_row_kernel_bit_exact() -> None:
    """A 3x3 conv over one input channel on M4 takes dsp-1xrow (one call per output channel, fused "hi"
    requantization): odd channel count, height stride and dilation 2, odd pixels (unaligned x pairs)."""
    torch.manual_seed(6)
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 5, 3, stride=(2, 1), padding=1, dilation=(2, 1)), torch.nn.Tanh())
    cm = _int8(m, (1, 1, 9, 12), "cortex-m4", profile=False)
    meta = [n.meta.get("_mcu_schedule") for n in cm.executable.graph.nodes if n.op == "qconv2d_w8a8"]
    assert meta == ["dsp-1xrow"]
    _bit_exact(cm, [torch.randn(1, 1, 9, 12) * 2 for _ in range(4)])


@needs_toolchain
@pytest.mark.slow
def test_fashion_cnn_int8_matches_interpreter() -> None:
    """The whole CNN integer-only: TVM conv/linear kernels, fixed-point residual add + average pool."""
    from bitpress.models.fashion_mnist import load_fashion_cnn, load_fashion_mnist

    x, y = load_fashion_mnist("test", limit=160)
    cal = [(x[i : i + 1],) for i in range(128, 160)]
    q = [bp.passes.Quantize(**W8A8)]
    with pytest.raises(LoweringError, match=r"add \(add\).*allow_float"):
        bp.compile(load_fashion_cnn(), cal[0], passes=q, target="cortex-m55", calibration=cal, options={"integer_glue": False})
    cm = bp.compile(load_fashion_cnn(), cal[0], passes=q, target="cortex-m55", calibration=cal)
    info = cm.report.backend
    assert info["integer_only"] and info["float_nodes"] == [] and info["integer_glue"] == ["fc1.quantize_in"]
    _assert_tvm_kernels(cm, 8)  # 3 conv + 2 linear + the fixed-point add, sum pool and requantize
    # conv1 (K = 9) is one fused call per 4 channels (mve-4xrow); conv2 is whole 4 x 2 tiles: vector epilogue
    src = (cm.executable.project / "kernels_tvm.c").read_text()
    assert src.count("bp_uk_mve_conv_row((") == 1 and src.count("bp_uk_mve_req_4x2((") == 1
    convs = [r for r in info["layers"] if r["op"] == "qconv2d_w8a8"]
    assert [r["schedule"] for r in convs] == ["mve-4xrow", "mve-4x2", "mve-4x2"]
    assert [r["macs"] for r in convs] == [16 * 28 * 28 * 9, 32 * 14 * 14 * 144, 32 * 7 * 7 * 288]
    n = 32
    outs = [o[0] for o in cm.executable.run_many([[x[i : i + 1]] for i in range(n)])]
    lg = cm.executable.graph
    assert lg is not None
    # bit-exact against the interpreter on the graph the firmware computes (fixed-point glue) ...
    assert all(torch.equal(o, run(lg, [x[i : i + 1]])[0]) for i, o in enumerate(outs))
    # ... and the fixed-point glue agrees with the float glue of the pass's graph (it differs only at
    # rounding boundaries, within ~1e-6 relative): same logits here, same accuracy
    ref = [run(cm.graph, [x[i : i + 1]])[0] for i in range(n)]
    assert sum(torch.equal(o, r) for o, r in zip(outs, ref, strict=True)) >= n - 1
    acc_mcu = sum(int(o.argmax() == y[i]) for i, o in enumerate(outs)) / n
    acc_ref = sum(int(r.argmax() == y[i]) for i, r in enumerate(ref)) / n
    assert acc_mcu == acc_ref > 0.8


def test_integer_glue_keeps_the_float_result() -> None:
    """quantize(avg_pool(relu(dq a) + dq b)) in fixed point: the same codes as float32 on random inputs."""
    g = Graph()
    a = g.add_input("a", TensorType((2, 3, 6, 6), "int8"))
    b = g.add_input("b", TensorType((2, 3, 6, 6), "int8"))
    va = g.call("relu", [g.call("dequantize_act", [a], {"scale": 0.0431, "zero_point": -7})], {})
    vb = g.call("dequantize_act", [b], {"scale": 0.0177, "zero_point": 12})
    s = g.call("add", [va, vb], {})
    pool = {
        "kernel_size": [2, 2],
        "stride": [2, 2],
        "padding": [0, 0],
        "ceil_mode": False,
        "count_include_pad": True,
        "divisor_override": None,
    }
    p = g.call("avg_pool2d", [s], pool)
    g.outputs = [g.call("quantize_act", [g.call("flatten", [p], {"start_dim": 1, "end_dim": -1})], {"scale": 0.05, "zero_point": 3})]
    lg, glue = legalize(g)
    assert glue and not any(n.op.startswith(("dequantize", "avg_pool", "add", "table")) for n in lg.nodes)
    torch.manual_seed(0)
    same = total = 0
    for _ in range(20):
        ins = [torch.randint(-128, 128, (2, 3, 6, 6), dtype=torch.int8) for _ in range(2)]
        ref, got = run(g, ins)[0], run(lg, ins)[0]
        assert (ref.to(torch.int32) - got.to(torch.int32)).abs().max() <= 1
        same += int((ref == got).sum())
        total += ref.numel()
    assert same / total > 0.995


# ----------------------------------------------------------------------------- float, int4, binary


class _Block(torch.nn.Module):
    """A pre-norm transformer block with explicit attention (matmul + softmax)."""

    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.h, self.d = heads, d
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.q, self.k, self.v = torch.nn.Linear(d, d), torch.nn.Linear(d, d), torch.nn.Linear(d, d)
        self.proj = torch.nn.Linear(d, d)
        self.fc1, self.fc2 = torch.nn.Linear(d, 2 * d), torch.nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, d, h = x.shape[1], self.d, self.h
        a = self.ln1(x)
        q, k, v = (f(a).reshape(1, t, h, d // h).transpose(1, 2) for f in (self.q, self.k, self.v))
        att = torch.softmax(q @ k.transpose(-1, -2) * (d // h) ** -0.5, dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(1, t, d))
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))


@needs_toolchain
@pytest.mark.slow
def test_transformer_block_float_and_int8() -> None:
    torch.manual_seed(0)
    m = _Block().eval()
    x = torch.randn(1, 6, 16)
    with pytest.raises(LoweringError, match="allow_float"):
        bp.compile(m, (x,), target="cortex-m4")
    cm = bp.compile(m, (x,), target="cortex-m4", options={"allow_float": True})
    assert cm.report.backend["float"] == "hardware FPU" and not cm.report.backend["integer_only"]
    torch.testing.assert_close(cm(x), m(x), rtol=1e-4, atol=1e-5)
    # W8A8 linears, the rest (layer norm, softmax, attention matmuls) in float32
    cal = [(torch.randn(1, 6, 16),) for _ in range(8)]
    cq = bp.compile(m, cal[0], passes=[bp.passes.Quantize(**W8A8)], target="cortex-m55", calibration=cal, options={"allow_float": True})
    assert any(r["op"] == "qlinear_w8a8" for r in cq.report.backend["layers"])
    torch.testing.assert_close(cq(x), run(cq.graph, [x])[0], rtol=1e-4, atol=1e-4)


@needs_toolchain
def test_int4_and_binary_weights_run() -> None:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    x = torch.randn(2, 64)
    for p in (bp.passes.Quantize(bits=4, group_size=32), bp.passes.Binarize(method="sign")):
        cm = bp.compile(m, (x,), passes=[p], target="cortex-m4", options={"allow_float": True, "profile": False})
        packed = [v for v in cm.graph.consts.values() if v.dtype in ("int4", "uint4", "uint1")]
        assert packed, "the pass should leave packed weights"
        # packed bytes go to flash as they are: the const arrays hold no expanded weights
        assert cm.report.backend["weight_array_bytes"] <= cm.graph.weight_bytes() + 64
        torch.testing.assert_close(cm(x), run(cm.graph, [x])[0], rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- errors, save/load


@needs_toolchain
def test_errors_name_the_problem(tmp_path: object) -> None:
    m = torch.nn.Sequential(torch.nn.Linear(8, 8))
    x = torch.randn(1, 8)
    with pytest.raises(LoweringError, match=r"0 \(linear\).*allow_float"):
        bp.compile(m, (x,), target="cortex-m4")
    with pytest.raises(ValueError, match=r"unknown MCU option.*alow_float"):
        bp.compile(m, (x,), target="cortex-m4", options={"alow_float": True})
    with pytest.raises(ValueError, match=r"dsp-4row.*DSP"):
        bp.compile(m, (x,), target="cortex-m3", options={"allow_float": True, "schedule": "dsp-4row"})
    big = torch.nn.Sequential(torch.nn.Linear(8, 8192))
    with pytest.raises(ValueError, match=r"arena.*microbit"):
        bp.compile(big, (x,), target="cortex-m0", options={"allow_float": True})
    emb = torch.nn.Embedding(10, 4)
    with pytest.raises(LoweringError, match="embedding"):
        bp.compile(emb, (torch.tensor([[1, 2]]),), target="cortex-m4", options={"allow_float": True})


@needs_toolchain
def test_save_load_round_trip(tmp_path: object) -> None:
    from pathlib import Path

    cm = _int8(_mlp(), (1, 37), "cortex-m4", profile=False)
    out = cm.save(Path(str(tmp_path)) / "art")
    for f in (
        "model.c",
        "model.h",
        "kernels_tvm.c",
        "bp_ukernels.h",
        "bp_tvm_shim.c",
        "bp_kernels.h",
        "startup.c",
        "link.ld",
        "Makefile",
        "README.md",
        "model.elf",
    ):
        assert (out / "mcu" / f).is_file(), f
    assert "bp_model_run" in (out / "mcu" / "README.md").read_text()
    loaded = bp.load(out)
    x = torch.randn(1, 37)
    assert torch.equal(loaded(x), cm(x))
    assert loaded.report.backend["schedule"] == "dsp-4row"


# ----------------------------------------------------------------------------- pure-Python parts


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 11), k=st.integers(1, 23), name=st.sampled_from(["dsp-4row", "dsp-2x2", "mve-4row", "scalar"]))
def test_weight_layout_is_a_padded_permutation(n: int, k: int, name: str) -> None:
    """The flash array holds the pass's int8 bytes, reordered, plus zero padding to whole tiles only."""
    sched = SCHEDULES[name]
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    lay = sched.layout(w)
    np_, kp = sched.padded(n, k)
    assert tuple(lay.shape) == sched.weight_shape(n, k) and lay.numel() == np_ * kp
    assert np_ - n < sched.rows and kp - k < sched.k_align
    flat = lay.reshape(-1)
    assert torch.equal(flat[flat != 0].sort().values, w.reshape(-1)[w.reshape(-1) != 0].sort().values)
    # the TE access the kernel is built from reads back every logical weight
    idx = torch.tensor([[int(sched.weight_index(lay, i, j)) for j in range(k)] for i in range(n)], dtype=torch.int8)
    assert torch.equal(idx, w)


def test_profile_counts_mve_instructions_once() -> None:
    """QEMU 7.2 lists an MVE instruction as `.byte` + a bogus 16-bit one: the profiler counts it once."""
    from bitpress.backends.mcu.toolchain import _INSN, _is_split_wide

    lines = [
        "0x000007d4:  ecb1 1e10  ldc      p14, c1, [r1], #0x40",  # VLDRB, decoded as one 32-bit line
        "0x000007e0:  eef0       .byte    0xf0, 0xee",  # VMLADAVA, first halfword ...
        "0x000007e2:  0f22       lsrs     r2, r4, #0x1c",  # ... and its second halfword
        "0x000007f4:  3340       adds     r3, #0x40",
    ]
    assert [bool(_INSN.match(x)) for x in lines] == [True, True, True, True]
    assert [_is_split_wide(x) for x in lines] == [False, True, False, False]


def test_schedule_choice() -> None:
    assert gemv_schedule(dsp=False, mve=False).name == "scalar"
    assert gemv_schedule(dsp=True, mve=False).name == "dsp-4row"
    assert gemv_schedule(dsp=True, mve=True).name == "mve-4row"
    assert [conv_schedule(gemv_schedule(dsp=d, mve=m)).name for d, m in ((False, False), (True, False), (True, True))] == [
        "scalar",
        "dsp-2x2",
        "mve-4x2",
    ]
    with pytest.raises(ValueError, match="unknown MCU schedule"):
        gemv_schedule(dsp=True, mve=False, override="avx")


@settings(max_examples=15, deadline=None)
@given(
    chain=st.lists(st.sampled_from(["relu", "gelu", "sigmoid", "tanh", "maxpool", "flatten"]), min_size=1, max_size=4),
    scale=st.floats(0.01, 0.5),
    zp=st.integers(-20, 20),
    seed=st.integers(0, 100),
)
def test_legalize_keeps_every_bit(chain: list[str], scale: float, zp: int, seed: int) -> None:
    """dequantize -> unary/pool/layout chain -> quantize becomes int8 tables and pools, bit for bit."""
    g = Graph()
    x = g.add_input("x", TensorType((1, 2, 8, 8), "int8"))
    v = g.call("dequantize_act", [x], {"scale": scale, "zero_point": zp})
    for op in chain:
        if op == "maxpool" and v.ndim == 4 and v.shape[-1] >= 2:  # 8x8 allows three 2x2 pools
            v = g.call(
                "max_pool2d", [v], {"kernel_size": [2, 2], "stride": [2, 2], "padding": [0, 0], "dilation": [1, 1], "ceil_mode": False}
            )
        elif op == "flatten":
            v = g.call("flatten", [v], {"start_dim": 1, "end_dim": -1})
        elif op != "maxpool":
            v = g.call(op, [v], {})
    q = g.call("quantize_act", [v], {"scale": 0.03, "zero_point": -5})
    g.outputs = [q, v]
    lg, glue = legalize(g)
    assert glue == []  # no add / average pool in these chains
    if "gelu" not in chain or "maxpool" not in chain[chain.index("gelu") :]:
        # max pooling only moves past monotone tables; gelu is not monotone, so a pool after it may stay in float
        assert "quantize_act" not in {n.op for n in lg.nodes}
    torch.manual_seed(seed)
    inp = torch.randint(-128, 128, (1, 2, 8, 8), dtype=torch.int8)
    for a, b in zip(run(g, [inp]), run(lg, [inp]), strict=True):
        assert torch.equal(a, b)


def test_memory_plan_reuses_and_never_overlaps_live_buffers() -> None:
    cal = [(torch.randn(1, 37),) for _ in range(8)]
    cm = bp.compile(
        _mlp(), cal[0], passes=[bp.passes.Quantize(**W8A8)], target="torch", calibration=cal, dynamic=None
    )  # the planner takes static graphs
    g, _ = legalize(cm.graph)
    plan = plan_memory(g, {n.name: [64] for n in g.nodes if n.op == "qlinear_w8a8"})
    bufs = plan.buffers
    for i, a in enumerate(bufs):
        for b in bufs[i + 1 :]:
            if a.start <= b.end and b.start <= a.end:  # live at the same time -> disjoint bytes
                assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset, (a, b)
    assert plan.peak < sum(b.size for b in bufs)  # something was reused
    assert any(len(b.values) > 1 for b in bufs)  # in place / aliased
