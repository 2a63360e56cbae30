"""Integer-only transformer block on the MCU backend: Quantize(act_scope="all") + the integer ops.

The pass puts calibrated QDQ pairs on every activation; the MCU legalization turns layer norm,
softmax, the attention matmuls and the residual adds into integer ops (integer_ops.py), and the
firmware must match the interpreter on that graph bit for bit, per layer and end to end.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch

import bitpress as bp
from bitpress.backends.mcu.integer_ops import isqrt
from bitpress.backends.mcu.legalize import legalize
from bitpress.compiler.interpreter import run
from bitpress.compiler.ir import Graph, TensorType
from bitpress.compiler.target import LoweringError
from bitpress.formats.integer import SOFTMAX_SCALE, SOFTMAX_ZERO_POINT
from tests.backends.mcu.test_mcu import _Block

needs_toolchain = pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
    reason="arm-none-eabi-gcc / qemu-system-arm not installed (make apt)",
)
ALL = {"bits": 8, "act_bits": 8, "group_size": None, "act_scope": "all"}


def _calibration(n: int = 8) -> list[tuple[torch.Tensor]]:
    torch.manual_seed(10)
    return [(torch.randn(1, 6, 16),) for _ in range(n)]


def _block_graph(scope: str = "all") -> tuple[torch.nn.Module, bp.CompiledModel]:
    torch.manual_seed(0)
    m = _Block().eval()
    cal = _calibration()
    cm = bp.compile(m, cal[0], passes=[bp.passes.Quantize(**{**ALL, "act_scope": scope})], target="torch", calibration=cal)
    return m, cm


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), 0))


# ----------------------------------------------------------------------------- the pass


def test_act_scope_all_quantizes_the_activations_between_layers() -> None:
    m, cm = _block_graph()
    g = cm.graph
    qdq = {n.inputs[0].name: n for n in g.nodes if n.op == "quantize_act" and n.name.endswith(".act_quantize")}  # type: ignore[union-attr]
    # the residual stream (input and both adds) and the attention scores / probabilities; not the
    # layer norms (their users quantize them), not the raw q@k^T (the 1/sqrt(d) scaling is quantized instead)
    residual = {n.output.name for n in g.nodes if n.op == "add" and n.output.name in qdq}
    assert len(residual) == 2  # the two residual adds (their names follow the frontend's numbering)
    assert set(qdq) == {"x", "mul", "softmax"} | residual
    sm = qdq["softmax"].attrs
    assert (sm["scale"], sm["zero_point"]) == (SOFTMAX_SCALE, SOFTMAX_ZERO_POINT)
    # every float value a non-quantize op reads is int8 codes dequantized (through layout ops)
    for n in g.nodes:
        if n.op in ("layer_norm", "softmax", "matmul", "add"):
            for v in n.inputs:
                while v is not None and v.producer is not None and v.producer.op in ("reshape", "transpose"):
                    v = v.producer.inputs[0]
                assert v is not None and (v.is_const or (v.producer is not None and v.producer.op == "dequantize_act")), (n.name, v)
    torch.manual_seed(3)
    x = torch.randn(4, 1, 6, 16)
    with torch.no_grad():
        ref = torch.stack([m(xi) for xi in x])
    got = torch.stack([cm(xi) for xi in x])
    assert _cos(got, ref) > 0.999  # measured 0.9999 (int8 activations everywhere)


def test_act_scope_options_are_checked() -> None:
    with pytest.raises(ValueError, match="act_scope must be one of"):
        bp.passes.Quantize(bits=8, act_bits=8, group_size=None, act_scope="everything")
    with pytest.raises(ValueError, match=r"act_scope='all'.*act_bits=8"):
        bp.passes.Quantize(bits=4, act_scope="all")


# ----------------------------------------------------------------------------- the integer ops (interpreter)


def test_isqrt_is_exact() -> None:
    torch.manual_seed(0)
    v = torch.cat([torch.randint(0, 2**62, (2000,)), torch.tensor([0, 1, 2, 3, 4, 2**62 - 1]), torch.arange(0, 1000) ** 2])
    v = torch.cat([v, (v - 1).clamp(min=0)])
    assert isqrt(v).tolist() == [math.isqrt(int(a)) for a in v.tolist()]


def _qdq_graph(op: str, shape: tuple[int, ...], s_in: float, zp_in: int, s_out: float, zp_out: int) -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType(shape, "int8"))
    v = g.call("dequantize_act", [x], {"scale": s_in, "zero_point": zp_in})
    if op == "layer_norm":
        d = shape[-1]
        torch.manual_seed(1)
        w, b = g.add_const(torch.rand(d) + 0.5, "w"), g.add_const(torch.randn(d) * 0.3, "b")
        y = g.call("layer_norm", [v, w, b], {"normalized_shape": [d], "eps": 1e-5})
    else:
        y = g.call("softmax", [v], {"dim": -1})
    g.outputs = [g.call("quantize_act", [y], {"scale": s_out, "zero_point": zp_out})]
    return g


@pytest.mark.parametrize(
    ("op", "shape", "s_in", "zp_in", "s_out", "zp_out", "new_op"),
    [
        ("layer_norm", (5, 16), 0.03, 7, 0.02, -3, "layer_norm_int8"),
        ("layer_norm", (3, 96), 0.002, -20, 0.03, 0, "layer_norm_int8"),
        ("softmax", (4, 6), 0.05, 3, SOFTMAX_SCALE, SOFTMAX_ZERO_POINT, "softmax_int8"),
        ("softmax", (2, 77), 0.11, -9, SOFTMAX_SCALE, SOFTMAX_ZERO_POINT, "softmax_int8"),
    ],
)
def test_integer_norm_and_softmax_track_the_float_ops(
    op: str, shape: tuple[int, ...], s_in: float, zp_in: int, s_out: float, zp_out: int, new_op: str
) -> None:
    """quantize(op(dequantize(q))) computed once in integers: within one code of float32, nearly always equal."""
    g = _qdq_graph(op, shape, s_in, zp_in, s_out, zp_out)
    lg, glue = legalize(g)
    assert [n.op for n in lg.nodes] == [new_op] and glue == [lg.outputs[0].name]
    torch.manual_seed(2)
    same = total = 0
    for _ in range(20):
        x = torch.randint(-128, 128, shape, dtype=torch.int8)
        a, b = run(g, [x])[0].int(), run(lg, [x])[0].int()
        assert (a - b).abs().max() <= 1
        same, total = same + int((a == b).sum()), total + a.numel()
    assert same / total > 0.97


def test_integer_matmul_folds_the_scalar_scale() -> None:
    g = Graph()
    a = g.add_input("a", TensorType((2, 5, 8), "int8"))
    b = g.add_input("b", TensorType((2, 8, 3), "int8"))
    va = g.call("dequantize_act", [a], {"scale": 0.02, "zero_point": -4})
    vb = g.call("transpose", [g.call("dequantize_act", [b], {"scale": 0.03, "zero_point": 9})], {"dim0": 1, "dim1": 2})
    vb = g.call("transpose", [vb], {"dim0": 1, "dim1": 2})
    mm = g.call("mul", [g.call("matmul", [va, vb], {}), g.add_const(torch.tensor(0.35), "c")], {})
    g.outputs = [g.call("quantize_act", [mm], {"scale": 0.004, "zero_point": 2})]
    lg, _ = legalize(g)
    # the transposes move onto the int8 codes, and the kernel reads b as [N, K]: the outer one is undone
    assert [n.op for n in lg.nodes] == ["transpose", "matmul_int8"] and lg.outputs[0].producer.attrs["transpose_b"]  # type: ignore[union-attr]
    torch.manual_seed(4)
    for _ in range(10):
        ins = [torch.randint(-128, 128, (2, 5, 8), dtype=torch.int8), torch.randint(-128, 128, (2, 8, 3), dtype=torch.int8)]
        assert (run(g, ins)[0].int() - run(lg, ins)[0].int()).abs().max() <= 1


def test_softmax_with_a_calibrated_output_scale_declines() -> None:
    """The integer softmax writes the fixed 1/256 encoding; any other output encoding stays in float."""
    g = _qdq_graph("softmax", (2, 6), 0.05, 0, 0.004, -120)
    lg, _ = legalize(g)
    assert "softmax" in {n.op for n in lg.nodes}


def test_block_legalizes_to_integers_only() -> None:
    m, cm = _block_graph()
    lg, glue = legalize(cm.graph)
    float_in = {n.op for n in lg.nodes if any(v is not None and not v.is_const and v.dtype == "float32" for v in (*n.inputs, *n.outputs))}
    assert float_in == {"quantize_act", "dequantize_act"}  # the input samples in, the output out
    ops = [n.op for n in lg.nodes]
    assert ops.count("layer_norm_int8") == 2 and ops.count("matmul_int8") == 2 and ops.count("softmax_int8") == 1
    assert ops.count("add_requant_int8") == 2 and ops.count("qlinear_w8a8") == 6 and ops.count("lut_int8") == 1
    assert len(glue) == 7
    torch.manual_seed(5)
    x = torch.randn(16, 1, 6, 16)
    got = torch.stack([run(lg, [xi])[0] for xi in x])
    qdq = torch.stack([run(cm.graph, [xi])[0] for xi in x])
    with torch.no_grad():
        ref = torch.stack([m(xi) for xi in x])
    s = float(lg.outputs[0].producer.attrs["scale"])  # type: ignore[union-attr]
    codes = ((got - qdq) / s).round().abs()
    assert float((codes == 0).float().mean()) > 0.9 and float(codes.max()) <= 3
    assert _cos(got, ref) > 0.999


# ----------------------------------------------------------------------------- firmware in QEMU


def _all_values(lg: Graph) -> Graph:
    """The legalized graph with every integer tensor as an output: the firmware writes each layer's result."""
    g = lg.clone()
    g.outputs = [n.output for n in g.nodes if n.output.dtype in ("int8", "int32")]
    return g


@needs_toolchain
@pytest.mark.slow
@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m55"])
def test_block_integer_only_bit_exact(target: str) -> None:
    torch.manual_seed(0)
    m = _Block().eval()
    cal = _calibration()
    layers = bp.passes.Quantize(**{**ALL, "act_scope": "layers"})
    with pytest.raises(LoweringError, match=r"no integer lowering for ln1 \(layer_norm\).*act_scope='all'"):
        bp.compile(m, cal[0], passes=[layers], target=target, calibration=cal, options={"profile": False})
    cm = bp.compile(m, cal[0], passes=[bp.passes.Quantize(**ALL)], target=target, calibration=cal)
    info = cm.report.backend
    assert info["integer_only"] and info["float_nodes"] == [] and len(info["integer_glue"]) == 7
    assert {r["op"] for r in info["layers"]} >= {"layer_norm_int8", "softmax_int8", "matmul_int8", "add_requant_int8"}
    lg = cm.executable.graph
    assert lg is not None
    torch.manual_seed(1)
    xs = [torch.randn(1, 6, 16) for _ in range(8)]
    # end to end: bit-exact against the interpreter on the graph the firmware computes
    outs = [o[0] for o in cm.executable.run_many([[x] for x in xs])]
    assert all(torch.equal(o, run(lg, [x])[0]) for x, o in zip(xs, outs, strict=True))
    # close to the float model and to the W8A8 (float glue) graph
    with torch.no_grad():
        ref = torch.cat([m(x) for x in xs])
    w8a8 = bp.compile(m, cal[0], passes=[layers], target="torch", calibration=cal)
    assert _cos(torch.cat(outs), ref) > 0.998 and _cos(torch.cat(outs), torch.cat([w8a8(x) for x in xs])) > 0.998
    # per layer: every integer tensor of the block, written by the firmware, equals the interpreter's
    every = _all_values(lg)
    cl = bp.compile(every, (xs[0],), target=target, canonicalize=False, options={"profile": False})
    for x, got in zip(xs[:3], cl.executable.run_many([[x] for x in xs[:3]]), strict=True):
        ref_vals = run(every, [x])
        bad = [v.name for v, a, b in zip(every.outputs, got, ref_vals, strict=True) if not torch.equal(a, b)]
        assert bad == [], bad


# ----------------------------------------------------------------------------- other backends run the QDQ graph


@pytest.mark.parametrize("target", ["onnx", pytest.param("llvm", marks=pytest.mark.slow)])
def test_other_backends_run_act_scope_all(target: str) -> None:
    """The QDQ pairs are existing ops: onnxruntime (QuantizeLinear/DequantizeLinear) and TVM run them as they are."""
    torch.manual_seed(0)
    m = _Block().eval()
    cal = _calibration()
    cm = bp.compile(m, cal[0], passes=[bp.passes.Quantize(**ALL)], target=target, calibration=cal)
    torch.manual_seed(6)
    for _ in range(3):
        x = torch.randn(1, 6, 16)
        torch.testing.assert_close(cm(x), run(cm.graph, [x])[0], rtol=1e-5, atol=1e-5)


@needs_toolchain
@pytest.mark.parametrize(
    ("za", "zb", "batch_b", "transpose_b", "cols", "target"),
    [
        (0, 5, 2, False, 4, "cortex-m4"),
        (-3, 0, 1, False, 4, "cortex-m4"),
        (0, 0, 2, True, 4, "cortex-m4"),
        (7, -9, 1, True, 6, "cortex-m4"),
        (7, -9, 2, True, 8, "cortex-m55"),
        (7, -9, 2, True, 3, "cortex-m55"),
        (7, -9, 2, True, 4, "cortex-m3"),
    ],
)
def test_matmul_int8_kernel_bit_exact(za: int, zb: int, batch_b: int, transpose_b: bool, cols: int, target: str) -> None:
    """The TVM kernel with and without each zero-point correction and a broadcast operand; with b as [N, K]
    the dot-product micro-kernels of each core (MVE, DSP, scalar; 4 columns per call when N % 4 == 0),
    K = 19 for the 16-lane / 4-byte tails."""
    g = Graph()
    a = g.add_input("a", TensorType((2, 5, 19), "int8"))
    bshape = (batch_b, cols, 19) if transpose_b else (batch_b, 19, cols)
    b = g.add_input("b", TensorType(bshape, "int8"))
    attrs = {
        "a_zero_point": za,
        "b_zero_point": zb,
        "multiplier": 1518500250,
        "shift": 41,
        "out_zero_point": -3,
        "transpose_b": transpose_b,
    }
    g.outputs = [g.call("matmul_int8", [a, b], attrs)]
    cm = bp.compile(g, None, target=target, canonicalize=False, options={"profile": False})
    src = (cm.executable.project / "kernels_tvm.c").read_text()
    assert ("bp_dot4_s8(" in src) == (transpose_b and cols % 4 == 0)
    assert ("bp_dot_s8(" in src) == (transpose_b and cols % 4 != 0)
    torch.manual_seed(za * 31 + zb)
    samples = [
        [torch.randint(-128, 128, (2, 5, 19), dtype=torch.int8), torch.randint(-128, 128, bshape, dtype=torch.int8)] for _ in range(3)
    ]
    for s, (got,) in zip(samples, cm.executable.run_many(samples), strict=True):
        assert torch.equal(got, run(g, s)[0])


@needs_toolchain
@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m55"])
def test_layer_norm_and_softmax_kernels_bit_exact(target: str) -> None:
    """Ragged sizes (D = 19, rows of 77) and extreme codes: the C kernels equal the interpreter's integers."""
    g = Graph()
    x = g.add_input("x", TensorType((3, 19), "int8"))
    s = g.add_input("s", TensorType((2, 77), "int8"))
    torch.manual_seed(7)
    w, b = g.add_const(torch.randn(19), "w"), g.add_const(torch.randn(19) * 0.2, "b")
    ln = g.call(
        "layer_norm", [g.call("dequantize_act", [x], {"scale": 0.004, "zero_point": -3}), w, b], {"normalized_shape": [19], "eps": 1e-5}
    )
    sm = g.call("softmax", [g.call("dequantize_act", [s], {"scale": 0.09, "zero_point": 11})], {"dim": -1})
    g.outputs = [
        g.call("quantize_act", [ln], {"scale": 0.03, "zero_point": 5}),
        g.call("quantize_act", [sm], {"scale": SOFTMAX_SCALE, "zero_point": SOFTMAX_ZERO_POINT}),
    ]
    lg, _ = legalize(g)
    assert [n.op for n in lg.nodes] == ["layer_norm_int8", "softmax_int8"]
    cm = bp.compile(lg, None, target=target, canonicalize=False, options={"profile": False})
    samples = [[torch.randint(-128, 128, (3, 19), dtype=torch.int8), torch.randint(-128, 128, (2, 77), dtype=torch.int8)] for _ in range(3)]
    samples.append([torch.full((3, 19), 7, dtype=torch.int8), torch.full((2, 77), -128, dtype=torch.int8)])  # constant rows: V = E
    samples.append([torch.tensor([[-128, 127] * 9 + [0]] * 3, dtype=torch.int8), torch.tensor([[127] + [-128] * 76] * 2, dtype=torch.int8)])
    for smp, got in zip(samples, cm.executable.run_many(samples), strict=True):
        for a, r in zip(got, run(lg, smp), strict=True):
            assert torch.equal(a, r)


class _SdpaAttention(torch.nn.Module):
    """Attention through F.scaled_dot_product_attention (exported as one `sdpa` node, as HF models are)."""

    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.h, self.d = heads, d
        self.qkv, self.out = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        q, k, v = (y.reshape(1, t, self.h, self.d // self.h).transpose(1, 2) for y in self.qkv(x).chunk(3, dim=-1))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return x + self.out(a.transpose(1, 2).reshape(1, t, self.d))


def test_fused_attention_is_written_out_for_integer_encodings() -> None:
    torch.manual_seed(0)
    m = _SdpaAttention().eval()
    cal = _calibration()
    cm = bp.compile(m, cal[0], passes=[bp.passes.Quantize(**ALL)], target="torch", calibration=cal)
    ops = [n.op for n in cm.graph.nodes]
    assert "sdpa" not in ops and ops.count("softmax") == 1 and ops.count("matmul") == 2
    assert "decompose-attention fired" in cm.explain()
    lg, _ = legalize(cm.graph)
    assert {n.op for n in lg.nodes} >= {"matmul_int8", "softmax_int8"} and "softmax" not in {n.op for n in lg.nodes}
    torch.manual_seed(8)
    x = torch.randn(4, 1, 6, 16)
    with torch.no_grad():
        ref = torch.stack([m(xi) for xi in x])
    assert _cos(torch.stack([run(lg, [xi])[0] for xi in x]), ref) > 0.999


@needs_toolchain
def test_fused_attention_with_chunked_qkv_runs_integer_only() -> None:
    """qkv.chunk(3) (split -> int8 slices) and F.scaled_dot_product_attention, on M4 without allow_float, bit-exact."""
    torch.manual_seed(0)
    m = _SdpaAttention().eval()
    cal = _calibration()
    cm = bp.compile(m, cal[0], passes=[bp.passes.Quantize(**ALL)], target="cortex-m4", calibration=cal, options={"profile": False})
    assert cm.report.backend["integer_only"]
    lg = cm.executable.graph
    assert lg is not None and "slice" in {n.op for n in lg.nodes}
    torch.manual_seed(9)
    xs = [torch.randn(1, 6, 16) for _ in range(4)]
    for x, (got,) in zip(xs, cm.executable.run_many([[x] for x in xs]), strict=True):
        assert torch.equal(got, run(lg, [x])[0])


def test_a_value_that_reaches_the_output_through_layout_ops_is_quantized() -> None:
    """layer_norm(x)[0].T: the norm's output is the graph output (through select and transpose), so it gets a QDQ pair."""

    class M(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln, self.fc = torch.nn.LayerNorm(8), torch.nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.ln(self.fc(x))[0].transpose(0, 1)

    torch.manual_seed(0)
    cal = [(torch.randn(1, 4, 8),) for _ in range(4)]
    cm = bp.compile(M().eval(), cal[0], passes=[bp.passes.Quantize(**ALL)], target="torch", calibration=cal)
    ln = next(n for n in cm.graph.nodes if n.op == "layer_norm")
    assert [u.op for u in ln.output.users] == ["quantize_act"]
    lg, _ = legalize(cm.graph)
    assert "layer_norm_int8" in {n.op for n in lg.nodes} and "layer_norm" not in {n.op for n in lg.nodes}
