"""TVM backend (llvm), op by op: every core op built with TVM matches the interpreter.

`BITPRESS_TEST_TVM_TARGET=cuda` runs the same checks on the cuda target (a GPU machine).

Float paths: allclose at 1e-5 (transcendentals 1e-4: LLVM's fast exp/erf differ from
libm by a few ulp); integer and bool paths: bit-exact.
"""

from __future__ import annotations

import os
from typing import Any

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

import bitpress.backends  # noqa: F401  (registers the targets)
from bitpress.backends.tvm import TvmBackend
from bitpress.backends.tvm.lowering import lowered_ops
from bitpress.compiler import ops as core_ops
from bitpress.compiler.interpreter import run
from bitpress.compiler.ops import get_op, op_names
from bitpress.compiler.target import BuildOptions, LoweringError, legalize_check
from tests.backends._op_cases_nn import NN_CASES
from tests.backends._op_graphs import C, assert_matches, bools, build, ints, nonzero_ints, pos, r


def check(op: str, operands: list[Any], attrs: dict[str, Any] | None = None, *, tol: float = 1e-5) -> None:
    g, feeds = build(op, operands, attrs or {})
    want = run(g, feeds)
    exe = TvmBackend().build(g, TARGET, BuildOptions())
    got = exe.run(feeds)
    assert_matches(op, got, want, tol)


TARGET = os.environ.get("BITPRESS_TEST_TVM_TARGET", "llvm")
BINARY_FLOAT = ["add", "sub", "mul", "div", "maximum", "minimum"]
COMPARE = ["eq", "ne", "lt", "le", "gt", "ge"]


@pytest.mark.parametrize("op", BINARY_FLOAT)
def test_binary_float_broadcast(op: str) -> None:
    check(op, [r(2, 3, 4), r(3, 1)])


@pytest.mark.parametrize("op", ["add", "sub", "mul", "maximum", "minimum", "bitwise_and", "bitwise_or"])
def test_binary_int_bit_exact(op: str) -> None:
    check(op, [ints(3, 4), ints(3, 4)])


@pytest.mark.parametrize("op", COMPARE)
def test_compare(op: str) -> None:
    a = ints(4, 5).float()
    check(op, [a, torch.where(torch.rand(4, 5) > 0.5, a, a + 1)])


def test_mixed_dtypes_promote() -> None:
    check("add", [ints(3, 4), r(3, 4)])
    check("div", [ints(3, 4), nonzero_ints(3, 4)])
    check("lt", [ints(3, 4), r(3, 4)])


def test_floor_divide_remainder() -> None:
    check("floor_divide", [ints(5, 6), nonzero_ints(5, 6)])
    check("remainder", [ints(5, 6), nonzero_ints(5, 6)])
    check("floor_divide", [r(5, 6) * 10, pos(5, 6)])
    check("remainder", [r(5, 6) * 10, pos(5, 6)], tol=1e-4)


def test_pow_and_logical() -> None:
    check("pow", [pos(3, 4), r(3, 4)])
    for e in (2.0, 3.0, -1.0, 0.5, -0.5, 1.7):  # constant exponents: negative bases stay defined
        base = pos(3, 4) if e % 1 else r(3, 4)
        check("pow", [base, C(torch.tensor(e))])
    check("logical_and", [bools(3, 4), bools(3, 4)])
    check("logical_or", [bools(3, 4), bools(3, 4)])
    check("logical_not", [bools(3, 4)])


UNARY = ["neg", "abs", "relu", "sign", "floor", "ceil", "round", "identity", "hardswish", "hardsigmoid"]
UNARY_TRANSC = ["exp", "sin", "cos", "tanh", "sigmoid", "silu", "erf"]


@pytest.mark.parametrize("op", UNARY)
def test_unary(op: str) -> None:
    x = r(4, 33) * 4
    if op == "round":
        x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 0.49, 2.51, -2.5]).repeat(4, 1)
    check(op, [x])


@pytest.mark.parametrize("op", UNARY_TRANSC)
def test_unary_transcendental(op: str) -> None:
    check(op, [r(4, 33) * 3], tol=1e-4)


@pytest.mark.parametrize("op", ["log", "sqrt", "rsqrt", "reciprocal"])
def test_unary_positive(op: str) -> None:
    check(op, [pos(4, 17)], tol=1e-4)


@pytest.mark.parametrize(
    ("op", "attrs"),
    [
        ("gelu", {}),
        ("gelu", {"approximate": "tanh"}),
        ("leaky_relu", {"negative_slope": 0.2}),
        ("elu", {"alpha": 0.7}),
        ("softplus", {"beta": 2.0, "threshold": 5.0}),
        ("clamp", {"min": -0.5, "max": 0.7}),
        ("clamp", {"min": 0.1}),
    ],
)
def test_activations(op: str, attrs: dict[str, Any]) -> None:
    check(op, [r(4, 40) * 3], attrs, tol=1e-4)


def test_where_cast_dropout_masked_fill() -> None:
    check("where", [bools(3, 4), r(3, 4), r(1, 4)])
    check("cast", [r(3, 4) * 10], {"dtype": "int32"})
    check("cast", [ints(3, 4)], {"dtype": "float32"})
    check("cast", [r(3, 4).round()], {"dtype": "bool"})
    check("dropout", [r(3, 4)], {"p": 0.1})
    check("masked_fill", [r(3, 4), bools(3, 4)], {"value": -1e9})


@pytest.mark.parametrize("shape", [(5, 16), (2, 7, 16), (1, 16)])
def test_linear_const_weight(shape: tuple[int, ...]) -> None:
    check("linear", [r(*shape), C(r(24, 16)), C(r(24))], tol=1e-4)


def test_linear_variants() -> None:
    check("linear", [r(3, 16), C(r(10, 16)), None], tol=1e-4)
    check("linear", [r(3, 16), r(10, 16), r(10)], tol=1e-4)  # weight as an input


@pytest.mark.parametrize(("a", "b"), [((4, 8), (8, 5)), ((2, 3, 4, 8), (2, 3, 8, 6)), ((2, 4, 8), (8, 3)), ((8,), (8, 3))])
def test_matmul(a: tuple[int, ...], b: tuple[int, ...]) -> None:
    check("matmul", [r(*a), r(*b)], tol=1e-4)


@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"stride": [2, 2], "padding": [1, 1]},
        {"padding": [1, 2], "dilation": [2, 1]},
        {"groups": 2, "padding": "same"},
    ],
)
def test_conv2d(attrs: dict[str, Any]) -> None:
    g = int(attrs.get("groups", 1))
    check("conv2d", [r(2, 4, 9, 10), C(r(6, 4 // g, 3, 3)), C(r(6))], attrs, tol=1e-4)


def test_conv1d() -> None:
    check("conv1d", [r(2, 4, 20), C(r(6, 4, 3)), C(r(6))], {"stride": 2, "padding": 1}, tol=1e-4)
    check("conv1d", [r(2, 4, 20), C(r(4, 1, 5)), None], {"groups": 4, "padding": 2}, tol=1e-4)


def test_embedding_gather_index_select() -> None:
    check("embedding", [C(r(50, 8)), ints(2, 5, lo=0, hi=50)])
    check("index_select", [r(6, 5), ints(4, lo=0, hi=5)], {"dim": 1})
    check("gather", [r(4, 5), ints(4, 3, lo=0, hi=5)], {"dim": 1})


def test_norms() -> None:
    c = 12
    check("batch_norm", [r(2, c, 5, 5), C(r(c)), C(r(c)), C(r(c)), C(pos(c))], {"eps": 1e-5}, tol=1e-4)
    check("batch_norm", [r(2, c, 5), None, None, r(c), pos(c)], {"eps": 1e-3}, tol=1e-4)
    check("layer_norm", [r(2, 5, c), C(r(c)), C(r(c))], {"normalized_shape": [c], "eps": 1e-5}, tol=1e-4)
    check("layer_norm", [r(2, 5, c), None, None], {"normalized_shape": [5, c]}, tol=1e-4)
    check("rms_norm", [r(2, 5, c), C(r(c))], {"normalized_shape": [c], "eps": 1e-6}, tol=1e-4)
    check("rms_norm", [r(2, 5, c), None], {}, tol=1e-4)


@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dim", [-1, 1])
def test_softmax(op: str, dim: int) -> None:
    check(op, [r(3, 7, 9) * 3], {"dim": dim}, tol=1e-5)


@pytest.mark.parametrize(
    "case",
    ["plain", "causal", "scale", "bool-mask", "const-bool-mask", "float-mask", "gqa", "cross"],
)
def test_sdpa(case: str) -> None:
    b, h, L, S, e = 2, 4, 6, 6, 8
    attrs: dict[str, Any] = {}
    mask = None
    kv_heads = h
    if case == "causal":
        attrs["is_causal"] = True
    if case == "scale":
        attrs["scale"] = 0.3
    if case == "bool-mask":
        mask = bools(L, S) | torch.eye(L, S, dtype=torch.bool)
    if case == "const-bool-mask":  # folded into an additive bias at build time
        mask = C(bools(1, 1, L, S) | torch.eye(L, S, dtype=torch.bool))
    if case == "float-mask":
        mask = r(b, 1, L, S)
    if case == "gqa":
        kv_heads, attrs["enable_gqa"], attrs["is_causal"] = 2, True, True
    if case == "cross":
        S = 9
    check("sdpa", [r(b, h, L, e), r(b, kv_heads, S, e), r(b, kv_heads, S, e), mask], attrs, tol=1e-4)


def test_pooling() -> None:
    x = r(2, 3, 9, 8)
    check("max_pool2d", [x], {"kernel_size": [2, 2]})
    check("max_pool2d", [x], {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True})
    check("avg_pool2d", [x], {"kernel_size": [2, 2], "stride": [2, 2]})
    check("avg_pool2d", [x], {"kernel_size": 3, "stride": 1, "padding": 1, "count_include_pad": False}, tol=1e-5)
    check("adaptive_avg_pool2d", [x], {"output_size": [1, 1]})
    check("adaptive_avg_pool2d", [r(2, 3, 8, 8)], {"output_size": [2, 4]})


def test_reductions() -> None:
    x = r(3, 4, 5)
    check("mean", [x], {"dim": [-1], "keepdim": True})
    check("mean", [x], {})
    check("sum", [x], {"dim": [0, 2]})
    check("sum", [ints(3, 4)], {"dim": [1]})
    check("amax", [x], {"dim": [1]})
    check("argmax", [x], {"dim": -1})
    check("argmax", [x], {})


def test_shape_ops() -> None:
    x = r(2, 3, 4)
    check("reshape", [x], {"shape": [6, -1]})
    check("permute", [x], {"dims": [2, 0, 1]})
    check("transpose", [x], {"dim0": -1, "dim1": 0})
    check("flatten", [x], {"start_dim": 1})
    check("unsqueeze", [x], {"dim": 1})
    check("squeeze", [r(2, 1, 4)], {"dim": 1})
    check("expand", [r(2, 1, 4)], {"shape": [2, 5, 4]})
    check("repeat", [x], {"repeats": [2, 1, 1, 3]})
    check("tril", [r(5, 5)], {"diagonal": 1})
    check("triu", [r(5, 5)], {"diagonal": -1})
    check("pad", [x], {"pad": [1, 2, 0, 1], "value": 0.5})
    check("pad", [r(1, 2, 5)], {"pad": [2, 1], "mode": "reflect"})
    check("pad", [r(1, 2, 5)], {"pad": [2, 1], "mode": "replicate"})


def test_slicing() -> None:
    x = r(4, 10, 3)
    check("slice", [x], {"dim": 1, "start": 2, "end": 9, "step": 3})
    check("slice", [x], {"dim": 1, "start": -4, "end": 9223372036854775807})
    check("slice", [x], {"dim": 0, "start": None, "end": 2})
    check("select", [x], {"dim": 1, "index": -1})
    check("cat", [x, r(4, 2, 3)], {"dim": 1})
    check("stack", [x, x], {"dim": -1})
    check("split", [x], {"sizes": [3, 3, 4], "dim": 1})


def test_every_core_op_has_a_lowering() -> None:
    core = {n for n in op_names() if get_op(n).ref.__module__ == core_ops.__name__}
    missing = core - lowered_ops("llvm")
    assert not missing, f"core ops without an llvm lowering: {sorted(missing)}"
    assert core <= lowered_ops("cuda")


def test_missing_lowering_is_a_clear_error() -> None:
    from bitpress.compiler.ops import register_op

    if "test_tvm_only_torch" not in op_names():
        register_op("test_tvm_only_torch", ("x",))(lambda x: x * 2)
    g, _ = build("test_tvm_only_torch", [r(2, 3)], {})
    with pytest.raises(LoweringError, match=r"test_tvm_only_torch.*test\.test_tvm_only_torch.*torch"):
        legalize_check(g, "llvm")


def test_bad_attr_is_a_one_line_error() -> None:
    g, _ = build("interpolate", [r(1, 2, 3, 3, 3)], {"size": [4, 4, 4], "mode": "linear"})
    with pytest.raises(LoweringError, match=r"test\.interpolate \(interpolate\): interpolate over 3 spatial dims"):
        TvmBackend().build(g, "llvm", BuildOptions())


@settings(max_examples=6, deadline=None)
@given(
    m=st.integers(1, 9),
    k=st.sampled_from([3, 16, 33]),
    n=st.sampled_from([1, 5, 16, 40]),
    bias=st.booleans(),
)
def test_linear_property(m: int, k: int, n: int, bias: bool) -> None:
    """The GEMM schedule's tiling is exact for any (ragged) M, N, K."""
    check("linear", [r(m, k), C(r(n, k)), C(r(n)) if bias else None], tol=1e-4)


def test_advanced_index() -> None:
    x = r(4, 5, 6)
    check("index", [x, ints(3, lo=-4, hi=4)], {"dims": [0]})
    check("index", [x, ints(2, 3, lo=0, hi=5), ints(3, lo=-6, hi=6)], {"dims": [1, 2]})
    check("index", [x, ints(3, lo=0, hi=4), ints(3, lo=0, hi=6)], {"dims": [0, 2]})


@pytest.mark.parametrize(("a", "k", "n"), [((4, 16), 16, 64), ((2, 5, 16), 16, 48), ((3, 16), 16, 7)])
def test_matmul_const_rhs_packed(a: tuple[int, ...], k: int, n: int) -> None:
    """x @ B with a constant B takes the packed-weight GEMM (or the generic one when N has no strip width)."""
    check("matmul", [r(*a), C(r(k, n))], tol=1e-4)


@pytest.mark.parametrize("case", sorted(NN_CASES))
def test_nn_ops(case: str) -> None:
    op, operands, attrs, tol = NN_CASES[case]
    check(op, operands, attrs, tol=max(tol, 1e-6))


@pytest.mark.slow
def test_nn_ops_compile_for_cuda_without_running() -> None:
    """The wider ops are generic Relax/TOPI: cuda codegen takes them like llvm (no GPU needed to build)."""
    from bitpress.backends.tvm.backend import generated_source

    for case in ("conv-transpose2d", "interp-bilinear", "group-norm", "cumsum", "sort", "adaptive-max-pool2d"):
        op, operands, attrs, _ = NN_CASES[case]
        g, _feeds = build(op, operands, attrs)
        exe = TvmBackend().build(g, "cuda", BuildOptions())
        assert "__global__" in generated_source(exe, "cuda"), case


@pytest.mark.parametrize("index", [0, 3, -1])
def test_gemm_with_slicing_epilogue(index: int) -> None:
    """x[:, i] of a GEMM's output (a ViT's class token): the slice is not inlined as a 1:1 epilogue."""
    from bitpress.compiler.ir import Graph, TensorType

    g = Graph()
    x = g.add_input("x", TensorType((2, 17, 64), "float32"))
    y = g.add_input("y", TensorType((2, 17, 32), "float32"))
    lin = g.call("linear", [x, g.add_const(r(32, 64), "w"), g.add_const(r(32), "b")], {}, name="fc")
    s = g.call("select", [g.call("add", [y, lin], {}, name="res")], {"dim": 1, "index": index}, name="cls")
    g.set_outputs([s])
    feeds = [r(2, 17, 64), r(2, 17, 32)]
    assert_matches("select", TvmBackend().build(g, TARGET, BuildOptions()).run(feeds), run(g, feeds), 1e-4)
