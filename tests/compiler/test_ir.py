from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bitpress.compiler.ir import Graph, IRError, TensorType, pack_bits, unpack_bits
from bitpress.compiler.serialize import graph_from_json, graph_to_json


def small_graph() -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType((2, 3), "float32"))
    w = g.add_const(torch.randn(4, 3), "w")
    y = g.call("linear", [x, w, None], name="fc")
    z = g.call("relu", [y])
    g.set_outputs([z])
    return g


def test_build_verify_and_print() -> None:
    g = small_graph()
    g.verify()
    text = str(g)
    assert "%fc: float32[2,4] = linear(%x, %w, _)" in text
    assert "return %relu" in text
    assert len(g) == 2


def test_type_inference_uses_reference_semantics() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((2, 3, 8, 8), "float32"))
    w = g.add_const(torch.randn(5, 3, 3, 3), "w")
    y = g.call("conv2d", [x, w, None], {"stride": 2, "padding": 1})
    assert y.type == TensorType((2, 5, 4, 4), "float32")


def test_verifier_names_the_bad_node() -> None:
    g = small_graph()
    fc = g.find("fc")
    fc.outputs[0].type = TensorType((2, 5), "float32")
    with pytest.raises(IRError, match=r"node fc \(linear\): outputs typed"):
        g.verify()


def test_verifier_catches_use_before_definition() -> None:
    g = small_graph()
    fc = g.find("fc")
    with g.inserting_before(fc):
        g.call("neg", [fc.output], name="early")
    with pytest.raises(IRError, match=r"node early \(neg\) input 0 %fc is used before it is defined"):
        g.verify()


def test_erase_refuses_used_node() -> None:
    g = small_graph()
    with pytest.raises(IRError, match="still used"):
        g.erase_node(g.find("fc"))


def test_shape_mismatch_is_a_clear_error() -> None:
    g = Graph()
    x = g.add_input("x", TensorType((2, 3), "float32"))
    w = g.add_const(torch.randn(4, 5), "w")
    with pytest.raises(RuntimeError):
        g.call("linear", [x, w, None])


@given(
    bits=st.sampled_from([1, 2, 3, 4, 8]),
    n=st.integers(1, 70),
    signed=st.booleans(),
)
def test_pack_unpack_roundtrip(bits: int, n: int, signed: bool) -> None:
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed and bits > 1 else (0, (1 << bits) - 1)
    codes = torch.randint(lo, hi + 1, (n,))
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == -(-n * bits // 8)
    back = unpack_bits(packed, bits, (n,), signed=signed and bits > 1)
    assert torch.equal(back.to(torch.int64), codes)


def test_packed_constant_counts_packed_bytes() -> None:
    g = Graph()
    codes = torch.randint(-8, 8, (64, 32))
    v = g.add_const(pack_bits(codes, 4), "w4", TensorType((64, 32), "int4"))
    assert v.type.nbytes == 64 * 32 // 2
    assert g.weight_bytes() == 1024
    with pytest.raises(IRError, match="needs 1024 uint8 bytes"):
        g.add_const(torch.zeros(10, dtype=torch.uint8), "bad", TensorType((64, 32), "int4"))


def test_serialization_roundtrip() -> None:
    g = small_graph()
    g.find("fc").meta["bits"] = 4
    d = graph_to_json(g)
    g2 = graph_from_json(d, dict(g.store))
    assert str(g2) == str(g)
    assert g2.find("fc").meta["bits"] == 4


def test_clone_is_independent() -> None:
    g = small_graph()
    c = g.clone()
    relu = c.find("relu")
    c.replace_all_uses(relu.output, c.find("fc").output)
    c.erase_node(relu)
    assert len(c) == 1 and len(g) == 2
    g.verify()
    c.verify()
