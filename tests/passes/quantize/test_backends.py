"""Quantized ops on every backend against the interpreter (the oracle).

Integer paths (quantize_act -> qlinear_w8a8 / qconv2d_w8a8 -> int8) are compared
bit-exactly; weight-only paths (float activations times decoded weights) with allclose at
float32 accumulation-order tolerance.  One graph holds many layer configurations so each
backend builds once.
"""

from __future__ import annotations

import math

import pytest
import torch

import bitpress.backends  # noqa: F401  (registers the targets)
from bitpress.backends.onnx import OnnxBackend
from bitpress.backends.onnx.backend import lower_to_onnx
from bitpress.backends.tvm import TvmBackend
from bitpress.compiler.interpreter import run
from bitpress.compiler.ir import Graph, TensorType, pack_bits
from bitpress.compiler.target import BuildOptions
from bitpress.formats.quantized import weight_dtype, zeros_dtype
from bitpress.passes.quantize import _numerics as nq

# (bits, group size, symmetric, N, K): ragged groups (72 = 2 * 32 + 8), per-channel, per-tensor,
# MatMulNBits-eligible (4-bit, power-of-two blocks), SmolLM2's 576 with g128
CONFIGS = [
    (4, 32, False, 40, 72),
    (4, 32, True, 24, 64),
    (4, 128, False, 16, 576),
    (3, 32, False, 20, 72),
    (3, 40, True, 8, 72),
    (2, 16, False, 12, 72),
    (2, 72, True, 12, 72),
    (8, 72, True, 10, 72),
    (8, 0, False, 10, 72),
]


def _add_qlinear(g: Graph, x, bits: int, gs: int, sym: bool, n: int, k: int, i: int, bias: bool):  # type: ignore[no-untyped-def]
    w = torch.randn(n, k)
    qw = nq.rtn(w, bits, gs, sym, observer="minmax")
    if bits == 8:
        q = g.add_const(qw.codes.to(torch.int8 if sym else torch.uint8), f"q{i}")
    else:
        q = g.add_const(pack_bits(qw.codes, bits), f"q{i}", TensorType((n, k), weight_dtype(bits, sym)))
    s = g.add_const(qw.scales, f"s{i}")
    z = None
    if qw.zeros is not None:
        zt = qw.zeros.to(torch.uint8) if bits == 8 else pack_bits(qw.zeros, bits)
        z = g.add_const(zt, f"z{i}", None if bits == 8 else TensorType(tuple(qw.zeros.shape), zeros_dtype(bits)))
    b = g.add_const(torch.randn(n), f"b{i}") if bias else None
    attrs = {"shape": [n, k], "bits": bits, "group_size": qw.group_size, "signed": sym}
    return g.call("qlinear", [x, q, s, z, b], attrs, name=f"layer{i}")


def weight_only_graph(rows: tuple[int, ...]) -> tuple[Graph, list[torch.Tensor]]:
    g = Graph()
    xs = {k: g.add_input(f"x{k}", TensorType((*rows, k), "float32")) for k in sorted({c[4] for c in CONFIGS})}
    outs = [_add_qlinear(g, xs[k], b, gs, sym, n, k, i, i % 2 == 0) for i, (b, gs, sym, n, k) in enumerate(CONFIGS)]
    # a weight-only conv: kernel [8, 3, 3, 3] in groups of 9 (one per input channel)
    xc = g.add_input("img", TensorType((2, 3, 7, 7), "float32"))
    wc = torch.randn(8, 27)
    qc = nq.rtn(wc, 4, 9, False, observer="minmax")
    assert qc.zeros is not None
    conv = g.call(
        "qconv2d",
        [
            xc,
            g.add_const(pack_bits(qc.codes, 4), "qc", TensorType((8, 3, 3, 3), "uint4")),
            g.add_const(qc.scales, "sc"),
            g.add_const(pack_bits(qc.zeros, 4), "zc", TensorType((8, 3), "uint4")),
            g.add_const(torch.randn(8), "bc"),
        ],
        {"shape": [8, 3, 3, 3], "bits": 4, "group_size": 9, "signed": False, "stride": 2, "padding": 1},
        name="conv",
    )
    g.set_outputs([*outs, conv])
    g.verify()
    feeds = [torch.randn(*rows, k) for k in sorted(xs)] + [torch.randn(2, 3, 7, 7)]
    return g, feeds


def w8a8_graph() -> tuple[Graph, list[torch.Tensor]]:
    """x -> q -> qlinear_w8a8 -> (int8) -> qlinear_w8a8 -> dq ; img -> q -> qconv2d_w8a8 -> dq."""
    g = Graph()
    x = g.add_input("x", TensorType((3, 5, 48), "float32"))
    img = g.add_input("img", TensorType((2, 4, 6, 6), "float32"))
    xq = g.call("quantize_act", [x], {"scale": 0.031, "zero_point": -7}, name="q_in")

    def lin(v, n: int, k: int, i: int, bias: bool):  # type: ignore[no-untyped-def]
        w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        m, r = nq.quant_multiplier(torch.rand(n, dtype=torch.float64) * 1e-3 + 1e-4)
        b = g.add_const(torch.randint(-5000, 5000, (n,), dtype=torch.int32), f"b{i}") if bias else None
        ins = [v, g.add_const(w, f"w{i}"), g.add_const(m, f"m{i}"), g.add_const(r, f"r{i}"), b]
        return g.call("qlinear_w8a8", ins, {"x_zero_point": -7 if i == 0 else 3, "out_zero_point": 3}, name=f"fc{i}")

    h = lin(xq, 40, 48, 0, True)
    y = g.call("dequantize_act", [lin(h, 24, 40, 1, False)], {"scale": 0.02, "zero_point": 3}, name="dq")
    iq = g.call("quantize_act", [img], {"scale": 0.02, "zero_point": 5}, name="q_img")
    m, r = nq.quant_multiplier(torch.rand(6, dtype=torch.float64) * 1e-2 + 1e-3)
    conv = g.call(
        "qconv2d_w8a8",
        [
            iq,
            g.add_const(torch.randint(-127, 128, (6, 4, 3, 3), dtype=torch.int8), "wc"),
            g.add_const(m, "mc"),
            g.add_const(r, "rc"),
            g.add_const(torch.randint(-900, 900, (6,), dtype=torch.int32), "bc"),
        ],
        {"x_zero_point": 5, "out_zero_point": -2, "stride": 1, "padding": 1},
        name="conv",
    )
    g.set_outputs([h, y, conv, g.call("dequantize_act", [conv], {"scale": 0.05, "zero_point": -2}, name="dqc")])
    g.verify()
    return g, [torch.randn(3, 5, 48) * 2, torch.randn(2, 4, 6, 6)]


BACKENDS = {"llvm": TvmBackend, "onnx": OnnxBackend}


def _build(target: str, g: Graph):  # type: ignore[no-untyped-def]
    return BACKENDS[target]().build(g, target, BuildOptions())


@pytest.mark.parametrize("target", ["llvm", "onnx"])
@pytest.mark.parametrize("rows", [(1,), (2, 9)], ids=["gemv", "gemm"])
def test_weight_only_matches_interpreter(target: str, rows: tuple[int, ...]) -> None:
    g, feeds = weight_only_graph(rows)
    want = run(g, feeds)
    got = _build(target, g).run(feeds)
    for o, w in zip(got, want, strict=True):
        assert o.shape == w.shape and o.dtype == w.dtype
        # decoded weights are exact; only float32 summation order differs
        torch.testing.assert_close(o, w, rtol=1e-5, atol=1e-4 * math.sqrt(w.abs().max().item() + 1))


@pytest.mark.parametrize("target", ["llvm", "onnx"])
def test_w8a8_bit_exact(target: str) -> None:
    g, feeds = w8a8_graph()
    want = run(g, feeds)
    got = _build(target, g).run(feeds)
    for o, w in zip(got, want, strict=True):
        assert o.dtype == w.dtype and torch.equal(o, w), (target, (o.to(torch.float32) - w.to(torch.float32)).abs().max())
    # the int8 outputs are not saturated garbage: they spread over the range
    assert want[0].unique().numel() > 20 and want[2].unique().numel() > 20


def test_onnx_uses_matmulnbits_and_qdq() -> None:
    g, _ = weight_only_graph((1,))
    ops = [n.op_type for n in lower_to_onnx(g).graph.node]
    # 4-bit layers with power-of-two groups (the first three configs)
    assert ops.count("MatMulNBits") == 3
    g, _ = w8a8_graph()
    ops = [n.op_type for n in lower_to_onnx(g).graph.node]
    assert ops.count("QuantizeLinear") == 2 and ops.count("DequantizeLinear") == 2
    assert ops.count("MatMulInteger") == 2 and ops.count("ConvInteger") == 1


def test_compiled_model_end_to_end_llvm(mlp: torch.nn.Module) -> None:
    """The pass output builds and runs on llvm: weight-only int4 and W8A8."""
    import bitpress as bp

    x = torch.randn(3, 96)
    cal = [(torch.randn(3, 96),) for _ in range(3)]
    cm = bp.compile(mlp, (x,), passes=[bp.passes.Quantize(bits=4, group_size=32)], target="llvm", quiet=True)
    torch.testing.assert_close(cm(x), run(cm.graph, (x,))[0], rtol=1e-5, atol=1e-5)
    cm = bp.compile(mlp, (x,), passes=[bp.passes.Quantize(bits=8, group_size=None, act_bits=8)], target="llvm", calibration=cal, quiet=True)
    assert torch.equal(cm(x), run(cm.graph, (x,))[0])


def test_cuda_codegen() -> None:
    """CUDA kernels for the quantized ops generate and compile (running them needs a GPU)."""
    from bitpress.backends.tvm.backend import build_module

    g, _ = weight_only_graph((2,))
    ex, _, info = build_module(g, "cuda", BuildOptions())
    assert "unscheduled" not in info["schedules"]
    src = "".join(m.inspect_source() for m in ex.mod.imports)
    for kernel in ("qmatmul_int4_gemm", "qmatmul_int3_gemm", "qmatmul_int2_gemm", "qmatmul_int8_gemm"):
        assert kernel in src
    assert info["schedules"].get("hint", 0) >= 4


def test_w8a8_llvm_odd_shapes_use_vnni() -> None:
    """K and N off the 4 x 16 VNNI tile (zero-padded), a strided conv with odd sizes: still bit-exact;
    on a host with AVX512-VNNI the int8 kernels are vpdpbusd."""
    from tvm.target import codegen

    from bitpress.backends.tvm.backend import make_target

    g = Graph()
    x = g.add_input("x", TensorType((3, 7), "float32"))
    img = g.add_input("img", TensorType((2, 3, 9, 7), "float32"))
    m, r = nq.quant_multiplier(torch.rand(5, dtype=torch.float64) * 1e-2 + 1e-3)
    lin = g.call(
        "qlinear_w8a8",
        [
            g.call("quantize_act", [x], {"scale": 0.02, "zero_point": 9}, name="qx"),
            g.add_const(torch.randint(-127, 128, (5, 7), dtype=torch.int8), "w"),
            g.add_const(m, "m"),
            g.add_const(r, "r"),
            g.add_const(torch.randint(-300, 300, (5,), dtype=torch.int32), "b"),
        ],
        {"x_zero_point": 9, "out_zero_point": -4},
        name="fc",
    )
    mc, rc = nq.quant_multiplier(torch.rand(20, dtype=torch.float64) * 1e-2 + 1e-3)
    conv = g.call(
        "qconv2d_w8a8",
        [
            g.call("quantize_act", [img], {"scale": 0.03, "zero_point": -11}, name="qi"),
            g.add_const(torch.randint(-127, 128, (20, 3, 3, 2), dtype=torch.int8), "wc"),
            g.add_const(mc, "mc"),
            g.add_const(rc, "rc"),
        ],
        {"x_zero_point": -11, "out_zero_point": 6, "stride": 2, "padding": 1},
        name="conv",
    )
    g.set_outputs([lin, conv])
    g.verify()
    feeds = [torch.randn(3, 7) * 2, torch.randn(2, 3, 9, 7) * 3]
    exe = _build("llvm", g)
    for o, w in zip(exe.run(feeds), run(g, feeds), strict=True):
        assert torch.equal(o, w)
        assert w.unique().numel() > 10
    if codegen.target_has_features("avx512vnni", make_target("llvm")):
        asm = "".join(m.inspect_source("asm") for m in [exe.module.mod, *exe.module.mod.imports] if m.kind == "llvm")
        assert "vpdpbusd" in asm
