"""The sparse storage formats and the reference semantics of nm_linear / sparse_linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from bitpress.compiler.interpreter import run
from bitpress.compiler.ir import Graph, TensorType
from bitpress.formats.sparse import (
    decode_ell,
    decode_nm,
    ell_bytes,
    ell_pays_off,
    encode_ell,
    encode_nm,
    index_bits,
    is_nm_sparse,
)
from bitpress.passes.prune._algorithms import keep_mask


def _nm_matrix(out: int, groups: int, n: int, m: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, groups * m, generator=g)
    return w * keep_mask(w.abs(), None, (n, m), per_row=False)


@given(
    out=st.integers(1, 9),
    groups=st.integers(1, 6),
    nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (4, 8), (2, 8), (2, 16), (5, 16)]),
    seed=st.integers(0, 1000),
)
def test_nm_roundtrip_and_bytes(out: int, groups: int, nm: tuple[int, int], seed: int) -> None:
    n, m = nm
    w = _nm_matrix(out, groups, n, m, seed)
    assert is_nm_sparse(w, n, m)
    values, idx, itype = encode_nm(w, n, m)
    assert values.shape == (out, groups * n)
    assert itype.dtype == f"uint{index_bits(m)}" and idx.numel() == itype.nbytes
    assert torch.equal(decode_nm(values, idx, n, m, groups * m), w)


def test_two_four_indices_are_two_bits() -> None:
    w = _nm_matrix(16, 8, 2, 4, 0)  # 16 x 32
    values, idx, itype = encode_nm(w, 2, 4)
    assert itype == TensorType((16, 16), "uint2")
    assert idx.numel() == 16 * 16 * 2 // 8  # 64 bytes of indices for 256 stored values
    assert values.numel() * 4 + idx.numel() < w.numel() * 4 * 0.57


def test_encode_nm_rejects_dense() -> None:
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        encode_nm(torch.ones(2, 8), 2, 4)
    with pytest.raises(ValueError, match="multiple of 4"):
        encode_nm(torch.zeros(2, 6), 2, 4)


@given(rows=st.integers(1, 8), cols=st.integers(1, 40), density=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_ell_roundtrip(rows: int, cols: int, density: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * (torch.rand(rows, cols, generator=g) < density)
    values, c = encode_ell(w)
    assert c.dtype == torch.int16 and values.shape == c.shape
    assert torch.equal(decode_ell(values, c, cols), w)
    assert ell_bytes(w) == values.numel() * 6


def test_ell_pays_off_threshold() -> None:
    w = torch.randn(4, 60)
    w[:, :30] = 0  # 50% sparse: 30 * 6 bytes < 60 * 4
    assert ell_pays_off(w)
    w2 = torch.randn(4, 60)
    w2[:, :15] = 0  # 25% sparse: 45 * 6 > 240
    assert not ell_pays_off(w2)


def test_ops_match_dense_linear_in_the_interpreter() -> None:
    torch.manual_seed(0)
    w = _nm_matrix(6, 4, 2, 4, 1)
    b = torch.randn(6)
    values, idx, itype = encode_nm(w, 2, 4)
    g = Graph()
    x = g.add_input("x", TensorType((2, 3, 16), "float32"))
    y1 = g.call(
        "nm_linear", [x, g.add_const(values, "v"), g.add_const(idx, "i", itype), g.add_const(b, "b")], {"n": 2, "m": 4, "in_features": 16}
    )
    ev, ec = encode_ell(w)
    y2 = g.call("sparse_linear", [x, g.add_const(ev, "ev"), g.add_const(ec, "ec"), None], {"in_features": 16})
    g.set_outputs([y1, y2])
    g.verify()
    assert y1.shape == (2, 3, 6) and y2.shape == (2, 3, 6)
    xt = torch.randn(2, 3, 16)
    o1, o2 = run(g, (xt,))
    torch.testing.assert_close(o1, F.linear(xt, w, b))
    torch.testing.assert_close(o2, F.linear(xt, w))


def test_index_bits_bounds() -> None:
    assert [index_bits(m) for m in (2, 4, 8, 16)] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="M <= 16"):
        index_bits(32)
