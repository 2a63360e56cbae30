"""ONNX backend, op by op: every core op lowered to ONNX and run by onnxruntime matches the interpreter.

Float paths: allclose at 1e-5; integer and bool paths: bit-exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hypothesis.strategies as st
import onnx
import pytest
import torch
from hypothesis import given, settings

import bitpress.backends  # noqa: F401  (registers the targets)
from bitpress.backends.onnx import OnnxBackend, OnnxLowerContext, lower_to_onnx, register_onnx_lowering
from bitpress.backends.onnx.backend import initializer_bytes
from bitpress.compiler import ops as core_ops
from bitpress.compiler.frontend.onnx_import import import_onnx
from bitpress.compiler.interpreter import run
from bitpress.compiler.ir import Graph, TensorType, pack_bits
from bitpress.compiler.ops import get_op, op_names
from bitpress.compiler.target import BuildOptions, LoweringError
from tests.backends._op_cases_nn import NN_CASES
from tests.backends._op_graphs import C, assert_matches, bools, build, ints, nonzero_ints, pos, r


def check(op: str, operands: list[Any], attrs: dict[str, Any] | None = None, *, tol: float = 1e-5) -> onnx.ModelProto:
    g, feeds = build(op, operands, attrs or {})
    want = run(g, feeds)
    exe = OnnxBackend().build(g, "onnx", BuildOptions())
    got = exe.run(feeds)
    assert_matches(op, got, want, tol)
    return exe.model


CASES: list[tuple[str, str, Callable[[], list[Any]], dict[str, Any]]] = [
    # elementwise binary (float, broadcast, scalar constants, integers, type promotion)
    *[(op, "f32", lambda: [r(2, 3, 4), r(3, 4)], {}) for op in ("add", "sub", "mul", "maximum", "minimum")],
    *[(op, "i64", lambda: [ints(2, 3), ints(2, 3)], {}) for op in ("add", "sub", "mul", "maximum", "minimum")],
    ("add", "int+float-scalar", lambda: [ints(2, 3), C(torch.tensor(0.5))], {}),
    ("mul", "f32*i64-scalar", lambda: [r(2, 3), C(torch.tensor(3))], {}),
    ("add", "bool", lambda: [bools(4), bools(4)], {}),
    ("div", "f32", lambda: [r(2, 3), pos(2, 3)], {}),
    ("div", "int->float", lambda: [ints(5), nonzero_ints(5)], {}),
    ("pow", "f32", lambda: [pos(2, 3), r(2, 3)], {}),
    ("pow", "f32^scalar", lambda: [r(2, 3), C(torch.tensor(2.0))], {}),
    ("pow", "i64", lambda: [ints(6, lo=-4, hi=4), ints(6, lo=0, hi=4)], {}),
    *[(op, "f32", lambda: [r(3, 4), r(4)], {}) for op in ("eq", "ne", "lt", "le", "gt", "ge")],
    *[(op, "i64-vs-float", lambda: [ints(3, 4, lo=-2, hi=2), C(torch.tensor(0.5))], {}) for op in ("eq", "ne", "lt", "ge")],
    ("eq", "i64", lambda: [ints(8, lo=0, hi=3), ints(8, lo=0, hi=3)], {}),
    ("logical_and", "bool", lambda: [bools(5), bools(5)], {}),
    ("logical_or", "float", lambda: [r(5).round(), bools(5)], {}),
    ("bitwise_and", "i32", lambda: [ints(6, dtype=torch.int32), ints(6, dtype=torch.int32)], {}),
    ("bitwise_or", "bool", lambda: [bools(6), bools(6)], {}),
    ("bitwise_or", "u8", lambda: [ints(6, lo=0, hi=255, dtype=torch.uint8), ints(6, lo=0, hi=255, dtype=torch.uint8)], {}),
    ("floor_divide", "f32", lambda: [r(8) * 5, pos(8) * torch.tensor([1, -1] * 4)], {}),
    ("floor_divide", "i64", lambda: [ints(12), nonzero_ints(12)], {}),
    ("remainder", "f32", lambda: [r(8) * 5, pos(8) * torch.tensor([1, -1] * 4)], {}),
    ("remainder", "i64", lambda: [ints(12), nonzero_ints(12)], {}),
    # elementwise unary
    *[
        (op, "f32", lambda: [r(2, 3, 4)], {})
        for op in (
            "neg",
            "exp",
            "abs",
            "sin",
            "cos",
            "tanh",
            "sigmoid",
            "relu",
            "silu",
            "erf",
            "hardswish",
            "hardsigmoid",
            "sign",
            "floor",
            "ceil",
            "round",
            "identity",
        )
    ],
    *[(op, "pos", lambda: [pos(2, 3)], {}) for op in ("log", "sqrt", "rsqrt", "reciprocal")],
    ("exp", "int->float", lambda: [ints(4, lo=-3, hi=3)], {}),
    *[(op, "i64", lambda: [ints(7)], {}) for op in ("neg", "abs", "relu", "sign", "floor", "round", "identity")],
    ("logical_not", "bool", lambda: [bools(5)], {}),
    ("logical_not", "f32", lambda: [r(5).round()], {}),
    ("gelu", "erf", lambda: [r(3, 5)], {}),
    ("gelu", "tanh", lambda: [r(3, 5)], {"approximate": "tanh"}),
    ("leaky_relu", "f32", lambda: [r(3, 5)], {"negative_slope": 0.2}),
    ("elu", "f32", lambda: [r(3, 5)], {"alpha": 0.7}),
    ("softplus", "f32", lambda: [r(3, 5) * 10], {}),
    ("softplus", "beta", lambda: [r(3, 5) * 10], {"beta": 2.0, "threshold": 5.0}),
    ("clamp", "f32", lambda: [r(3, 5)], {"min": -0.5, "max": 0.5}),
    ("clamp", "min-only", lambda: [r(3, 5)], {"min": 0.1}),
    ("clamp", "i64", lambda: [ints(9)], {"min": -3, "max": 4}),
    ("clamp", "min>max", lambda: [r(4)], {"min": 1.0, "max": 0.0}),
    ("where", "f32", lambda: [bools(3, 4), r(3, 4), r(4)], {}),
    ("where", "promote", lambda: [bools(3, 4), r(3, 4), C(torch.tensor(0))], {}),
    ("cast", "f32->i32", lambda: [r(3, 4) * 10], {"dtype": "int32"}),
    ("cast", "f32->f16", lambda: [r(3, 4)], {"dtype": "float16"}),
    ("cast", "i64->bool", lambda: [ints(6, lo=-1, hi=2)], {"dtype": "bool"}),
    ("cast", "bool->f32", lambda: [bools(6)], {"dtype": "float32"}),
    ("dropout", "f32", lambda: [r(3, 4)], {"p": 0.3}),
    # linear algebra
    ("linear", "2d", lambda: [r(3, 8), C(r(5, 8)), C(r(5))], {}),
    ("linear", "3d-nobias", lambda: [r(2, 3, 8), C(r(5, 8)), None], {}),
    ("linear", "1d", lambda: [r(8), C(r(5, 8)), C(r(5))], {}),
    ("linear", "weight-input", lambda: [r(2, 3, 8), r(5, 8), r(5)], {}),
    ("matmul", "2d", lambda: [r(3, 8), r(8, 4)], {}),
    ("matmul", "batched-bcast", lambda: [r(2, 3, 4, 8), r(3, 8, 5)], {}),
    ("matmul", "vec", lambda: [r(8), r(2, 8, 4)], {}),
    ("conv1d", "pad", lambda: [r(2, 3, 10), C(r(4, 3, 3)), C(r(4))], {"stride": [2], "padding": [1]}),
    ("conv2d", "basic", lambda: [r(2, 3, 9, 9), C(r(4, 3, 3, 3)), C(r(4))], {"stride": [1, 1], "padding": [1, 1]}),
    (
        "conv2d",
        "groups-dil",
        lambda: [r(1, 4, 11, 9), C(r(6, 2, 3, 2)), None],
        {"stride": [2, 1], "padding": [2, 1], "dilation": [2, 1], "groups": 2},
    ),
    ("conv2d", "same", lambda: [r(1, 2, 8, 7), C(r(3, 2, 4, 3)), None], {"padding": "same"}),
    ("conv2d", "valid", lambda: [r(1, 2, 8, 7), C(r(3, 2, 4, 3)), C(r(3))], {"padding": "valid"}),
    ("embedding", "2d-idx", lambda: [C(r(10, 4)), ints(2, 3, lo=0, hi=10)], {}),
    # normalization, softmax, attention
    ("batch_norm", "4d", lambda: [r(2, 3, 4, 4), C(r(3)), C(r(3)), C(r(3)), C(pos(3))], {"eps": 1e-3}),
    ("batch_norm", "2d-noaffine", lambda: [r(4, 3), None, None, C(r(3)), C(pos(3))], {}),
    ("layer_norm", "affine", lambda: [r(2, 3, 8), C(r(8)), C(r(8))], {"normalized_shape": [8], "eps": 1e-5}),
    ("layer_norm", "2dims-noaffine", lambda: [r(2, 3, 8), None, None], {"normalized_shape": [3, 8]}),
    ("rms_norm", "affine", lambda: [r(2, 3, 8), C(r(8))], {"normalized_shape": [8], "eps": 1e-6}),
    ("rms_norm", "default-eps", lambda: [r(2, 3, 8), None], {"normalized_shape": [3, 8]}),
    ("softmax", "dim1", lambda: [r(2, 5, 3)], {"dim": 1}),
    ("log_softmax", "last", lambda: [r(2, 5, 3)], {"dim": -1}),
    ("sdpa", "plain", lambda: [r(2, 4, 5, 8), r(2, 4, 6, 8), r(2, 4, 6, 8), None], {}),
    ("sdpa", "causal-scale", lambda: [r(1, 2, 5, 8), r(1, 2, 5, 8), r(1, 2, 5, 8), None], {"is_causal": True, "scale": 0.3}),
    ("sdpa", "bool-mask", lambda: [r(1, 2, 5, 8), r(1, 2, 6, 8), r(1, 2, 6, 8), C(torch.rand(5, 6) > 0.3)], {}),
    ("sdpa", "float-mask", lambda: [r(1, 2, 5, 8), r(1, 2, 6, 8), r(1, 2, 6, 8), r(1, 1, 5, 6)], {}),
    ("sdpa", "gqa", lambda: [r(1, 4, 5, 8), r(1, 2, 5, 8), r(1, 2, 5, 8), None], {"enable_gqa": True, "is_causal": True}),
    # pooling
    ("max_pool2d", "basic", lambda: [r(2, 3, 8, 8)], {"kernel_size": [2, 2], "stride": [2, 2]}),
    ("max_pool2d", "pad-ceil", lambda: [r(1, 2, 9, 7)], {"kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1], "ceil_mode": True}),
    ("avg_pool2d", "basic", lambda: [r(2, 3, 8, 8)], {"kernel_size": [2, 2], "stride": [2, 2]}),
    (
        "avg_pool2d",
        "pad-exclude",
        lambda: [r(1, 2, 7, 7)],
        {"kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1], "count_include_pad": False},
    ),
    ("avg_pool2d", "divisor", lambda: [r(1, 2, 8, 8)], {"kernel_size": [2, 2], "stride": [2, 2], "divisor_override": 3}),
    ("adaptive_avg_pool2d", "global", lambda: [r(2, 3, 5, 7)], {"output_size": [1, 1]}),
    ("adaptive_avg_pool2d", "even", lambda: [r(2, 3, 8, 6)], {"output_size": [4, 3]}),
    ("adaptive_avg_pool2d", "uneven", lambda: [r(2, 3, 7, 5)], {"output_size": [3, 2]}),
    # reductions
    ("mean", "dims-keep", lambda: [r(2, 3, 4)], {"dim": [1, 2], "keepdim": True}),
    ("mean", "all", lambda: [r(2, 3, 4)], {}),
    ("sum", "neg-dim", lambda: [r(2, 3, 4)], {"dim": [-1]}),
    ("sum", "bool->i64", lambda: [bools(3, 4)], {"dim": [1]}),
    ("sum", "i32-all", lambda: [ints(3, 4, dtype=torch.int32)], {}),
    ("amax", "dim", lambda: [r(2, 3, 4)], {"dim": [1], "keepdim": True}),
    ("amax", "all", lambda: [r(2, 3, 4)], {}),
    ("argmax", "dim", lambda: [r(2, 3, 4)], {"dim": 1}),
    ("argmax", "flat", lambda: [r(2, 3, 4)], {}),
    ("argmax", "keep", lambda: [r(2, 3, 4)], {"dim": -1, "keepdim": True}),
    # shape
    ("reshape", "f32", lambda: [r(2, 3, 4)], {"shape": [6, -1]}),
    ("permute", "f32", lambda: [r(2, 3, 4)], {"dims": [2, 0, 1]}),
    ("transpose", "neg", lambda: [r(2, 3, 4)], {"dim0": -1, "dim1": 0}),
    ("flatten", "f32", lambda: [r(2, 3, 4, 5)], {"start_dim": 1}),
    ("unsqueeze", "f32", lambda: [r(2, 3)], {"dim": -1}),
    ("squeeze", "dim", lambda: [r(2, 1, 3)], {"dim": 1}),
    ("squeeze", "all", lambda: [r(1, 2, 1, 3)], {}),
    ("expand", "f32", lambda: [r(3, 1)], {"shape": [2, 3, 4]}),
    ("expand", "minus-one", lambda: [r(3, 1)], {"shape": [-1, 5]}),
    ("repeat", "more-dims", lambda: [r(2, 3)], {"repeats": [2, 1, 3]}),
    ("slice", "step", lambda: [r(4, 10)], {"dim": 1, "start": 1, "end": 9, "step": 3}),
    ("slice", "neg-clamp", lambda: [r(4, 10)], {"dim": -1, "start": -4, "end": 100}),
    ("slice", "none", lambda: [r(4, 10)], {"dim": 0, "start": None, "end": 2}),
    ("select", "neg", lambda: [r(4, 5, 6)], {"dim": 1, "index": -2}),
    ("cat", "f32", lambda: [r(2, 3), r(2, 5), C(r(2, 1))], {"dim": 1}),
    ("cat", "i64", lambda: [ints(2, 3), ints(1, 3)], {"dim": 0}),
    ("stack", "f32", lambda: [r(2, 3), r(2, 3)], {"dim": -1}),
    ("split", "f32", lambda: [r(6, 4)], {"sizes": [1, 2, 3], "dim": 0}),
    ("index_select", "f32", lambda: [r(5, 4), ints(3, lo=0, hi=4)], {"dim": 1}),
    ("index_select", "scalar-idx", lambda: [r(5, 4), C(torch.tensor(2))], {"dim": 0}),
    ("gather", "f32", lambda: [r(3, 4), ints(3, 6, lo=0, hi=4)], {"dim": 1}),
    ("gather", "smaller-index", lambda: [r(4, 5), ints(2, 3, lo=0, hi=4)], {"dim": 0}),
    ("index", "one-axis", lambda: [r(5, 4), ints(2, 3, lo=-5, hi=5)], {"dims": [0]}),
    ("index", "adjacent", lambda: [r(2, 5, 4, 3), ints(6, lo=0, hi=5), ints(6, lo=0, hi=4)], {"dims": [1, 2]}),
    ("index", "split-axes", lambda: [r(5, 2, 4, 3), ints(2, 1, lo=0, hi=5), ints(3, lo=0, hi=4, dtype=torch.int32)], {"dims": [0, 2]}),
    ("index", "middle", lambda: [r(2, 5, 3), C(torch.tensor([4, 0, 2]))], {"dims": [1]}),
    ("tril", "f32", lambda: [r(2, 5, 5)], {"diagonal": 1}),
    ("triu", "f32", lambda: [r(5, 4)], {"diagonal": -1}),
    ("tril", "bool", lambda: [bools(4, 4)], {}),
    ("masked_fill", "f32", lambda: [r(3, 4), bools(4)], {"value": -1e9}),
    ("masked_fill", "i64", lambda: [ints(3, 4), bools(3, 4)], {"value": 7}),
    ("pad", "constant", lambda: [r(1, 2, 3, 4)], {"pad": [1, 2, 0, 1], "value": 0.5}),
    ("pad", "reflect", lambda: [r(1, 2, 5, 4)], {"pad": [1, 2, 2, 1], "mode": "reflect"}),
    ("pad", "replicate", lambda: [r(1, 2, 5, 4)], {"pad": [1, 2, 0, 3], "mode": "replicate"}),
    ("pad", "circular", lambda: [r(1, 2, 5, 4)], {"pad": [1, 2, 2, 1], "mode": "circular"}),
    ("pad", "negative", lambda: [r(2, 6)], {"pad": [-1, 2]}),
]


@pytest.mark.parametrize(("op", "label", "make", "attrs"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_op_matches_interpreter(op: str, label: str, make: Callable[[], list[Any]], attrs: dict[str, Any]) -> None:
    torch.manual_seed(hash(label) % 1000)
    check(op, make(), attrs)


def test_every_core_op_has_a_lowering_and_a_case() -> None:
    core = {n for n in op_names() if getattr(get_op(n).ref, "__module__", "") == core_ops.__name__}
    assert len(core) > 80
    lowered = OnnxBackend().supported_ops("onnx")
    assert core <= lowered, f"core ops without an ONNX lowering: {sorted(core - lowered)}"
    cased = {c[0] for c in CASES} | {c[0] for c in NN_CASES.values()}
    assert core <= cased, f"core ops without a test case: {sorted(core - cased)}"


def test_emitted_model_is_valid_and_initializers_are_counted_as_stored() -> None:
    g, _ = build("linear", [r(2, 8), C(r(16, 8)), C(r(16))], {})
    model = lower_to_onnx(g)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 21
    # the weight is stored once, untransposed (Gemm transB), 4 bytes per float
    assert initializer_bytes(model) == (16 * 8 + 16) * 4
    assert initializer_bytes(model) == g.weight_bytes()


def test_unused_constants_do_not_reach_the_model() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((3,), "float32"))
    g.add_const(torch.zeros(1000), "unused")
    g.set_outputs([g.call("relu", [x])])
    model = lower_to_onnx(g)
    assert [t.name for t in model.graph.initializer] == []


def test_output_that_is_an_input_or_repeated() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((3,), "float32"))
    y = g.call("exp", [x])
    g.set_outputs([y, x, y])
    exe = OnnxBackend().build(g, "onnx", BuildOptions())
    a = torch.randn(3)
    outs = exe.run([a])
    assert torch.equal(outs[1], a)
    torch.testing.assert_close(outs[0], a.exp())
    torch.testing.assert_close(outs[2], a.exp())


def test_packed_constant_and_int4_initializer() -> None:
    """Packed constants travel as their stored bytes; add_initializer makes real ONNX INT4 tensors from them."""
    codes = torch.randint(-8, 8, (4, 6), dtype=torch.int8)
    packed = pack_bits(codes, 4)
    ctx = OnnxLowerContext()
    name = ctx.add_initializer(packed, "w", dtype="int4", shape=(4, 6))
    t = ctx.initializers[name]
    assert t.data_type == onnx.TensorProto.INT4
    assert list(t.dims) == [4, 6]
    assert len(t.raw_data) == 12  # 24 codes, two per byte
    assert torch.equal(torch.from_numpy(onnx.numpy_helper.to_array(t).astype("int8")), codes)
    with pytest.raises(ValueError, match="needs 12 uint8 bytes"):
        ctx.add_initializer(packed[:5], "w", dtype="int4", shape=(4, 6))


def test_missing_lowering_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from bitpress.compiler.ops import register_op

    monkeypatch.setattr(core_ops, "_REGISTRY", dict(core_ops._REGISTRY))  # the op below lives only in this test
    register_op("test_onnx_only_in_interpreter", ("x",))(lambda x: x * 2)
    g = Graph()
    x = g.add_input("x", TensorType((3,), "float32"))
    g.set_outputs([g.call("test_onnx_only_in_interpreter", [x], name="blk.0.odd")])
    with pytest.raises(LoweringError, match=r"target onnx cannot lower: op 'test_onnx_only_in_interpreter' at blk\.0\.odd"):
        lower_to_onnx(g)


def test_register_twice_is_refused() -> None:
    def fake(ctx: OnnxLowerContext, node: Any, inputs: list[str | None]) -> list[str]:
        return []

    with pytest.raises(ValueError, match="already has an ONNX lowering"):
        register_onnx_lowering("relu")(fake)


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(1, 4),
    cin=st.integers(1, 6),
    cout=st.integers(1, 6),
    k=st.integers(1, 3),
    stride=st.integers(1, 2),
    pad=st.integers(0, 1),
    bias=st.booleans(),
)
def test_conv2d_property(n: int, cin: int, cout: int, k: int, stride: int, pad: int, bias: bool) -> None:
    check(
        "conv2d",
        [r(n, cin, 7, 6), C(r(cout, cin, k, k)), C(r(cout)) if bias else None],
        {"stride": [stride, stride], "padding": [pad, pad]},
    )


@settings(max_examples=12, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    dtype=st.sampled_from([torch.int8, torch.int32, torch.int64, torch.uint8]),
    op=st.sampled_from(["add", "sub", "mul", "maximum", "minimum", "eq", "lt", "bitwise_and"]),
)
def test_integer_binary_ops_are_bit_exact(shape: list[int], dtype: torch.dtype, op: str) -> None:
    lo, hi = (0, 16) if dtype == torch.uint8 else (-8, 8)
    check(op, [ints(*shape, lo=lo, hi=hi, dtype=dtype), ints(*shape[-1:], lo=lo, hi=hi, dtype=dtype)])


@pytest.mark.parametrize(("op", "label", "make", "attrs"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_lowered_op_imports_back(op: str, label: str, make: Callable[[], list[Any]], attrs: dict[str, Any]) -> None:
    """IR -> ONNX -> IR: the ONNX frontend reads every lowering back into a graph that computes the same."""
    torch.manual_seed(hash(label) % 1000)
    g, feeds = build(op, make(), attrs)
    want = run(g, feeds)
    back = import_onnx(lower_to_onnx(g), feeds)
    got = run(back, feeds, check_types=True)
    for o, w in zip(got, want, strict=True):
        assert o.shape == w.shape and o.dtype == w.dtype
        if w.is_floating_point():
            torch.testing.assert_close(o, w, rtol=1e-5, atol=1e-5, equal_nan=True)
        else:
            assert torch.equal(o, w)


def test_tied_weights_stay_shared_through_onnx_and_back() -> None:
    """embedding(W) ... linear(h, W): one initializer in the ONNX file, one constant after importing it back."""
    g = Graph()
    ids = g.add_input("ids", TensorType((2, 5), "int64"))
    w = g.add_const(torch.randn(50, 8), "embed.weight")
    h = g.call("embedding", [w, ids], name="embed")
    g.set_outputs([g.call("linear", [g.call("tanh", [h]), w, None], name="lm_head")])
    feeds = [torch.randint(0, 50, (2, 5))]
    model = lower_to_onnx(g)
    assert [t.name for t in model.graph.initializer if len(t.dims) == 2] == ["embed.weight"]
    back = import_onnx(model, feeds)
    big = [v for v in back.consts.values() if v.numel == 400]
    assert len(big) == 1 and back.weight_bytes() == g.weight_bytes()
    lin = next(n for n in back.nodes if n.op == "linear")
    emb = next(n for n in back.nodes if n.op == "embedding")
    assert lin.inputs[1] is emb.inputs[0] is big[0]
    torch.testing.assert_close(run(back, feeds)[0], run(g, feeds)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", sorted(NN_CASES))
def test_nn_ops(case: str) -> None:
    op, operands, attrs, tol = NN_CASES[case]
    check(op, operands, attrs, tol=max(tol, 1e-6))
