"""Quantization numerics: ops' reference semantics, packing, fixed-point requantization,
RTN / MSE clipping, GPTQ and AWQ on single matrices."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from bitpress.compiler.ir import pack_bits
from bitpress.formats.quantized import dequantize_weight, qlinear, quantize_act, requantize
from bitpress.passes.quantize import _numerics as nq


@settings(max_examples=25, deadline=None)
@given(
    bits=st.sampled_from([2, 3, 4, 8]),
    n=st.integers(1, 9),
    k=st.integers(1, 70),
    gs=st.sampled_from([0, 8, 16, 32, -1]),
    sym=st.booleans(),
)
def test_packed_weight_roundtrip(bits: int, n: int, k: int, gs: int, sym: bool) -> None:
    """pack -> qlinear's dequantization gives exactly (q - z) * s, ragged last groups included."""
    w = torch.randn(n, k)
    group = k if gs == -1 else gs
    qw = nq.rtn(w, bits, group, sym, observer="minmax")
    lo, hi = nq.qrange(bits, sym)
    assert int(qw.codes.min()) >= lo and int(qw.codes.max()) <= hi
    data = qw.codes.to(torch.int8 if sym else torch.uint8) if bits == 8 else pack_bits(qw.codes, bits)
    if bits < 8:
        assert data.numel() == math.ceil(n * k * bits / 8)
    zeros = None
    if qw.zeros is not None:
        zeros = qw.zeros.to(torch.uint8) if bits == 8 else pack_bits(qw.zeros, bits)
    deq = dequantize_weight(data, qw.scales, zeros, shape=(n, k), bits=bits, group_size=qw.group_size, signed=sym)
    torch.testing.assert_close(deq, qw.dequantize(), rtol=0, atol=0)
    x = torch.randn(3, k)
    y = qlinear(x, data, qw.scales, zeros, None, shape=(n, k), bits=bits, group_size=qw.group_size, signed=sym)
    torch.testing.assert_close(y, x @ qw.dequantize().t(), rtol=1e-5, atol=1e-5)
    # minmax ranges clip nothing: the error is half a step, plus half a step where a rounded
    # zero point shifts the grid (asymmetric)
    step = qw.scales.float()[:, torch.arange(k) // qw.group_size]
    assert bool(((deq - w).abs() <= step * (0.5 if sym else 1.0) * (1 + 1e-3) + 1e-6).all())


@settings(max_examples=50, deadline=None)
@given(real=st.floats(1e-9, 1e4), acc=st.integers(-(2**31), 2**31 - 1))
def test_fixed_point_multiplier(real: float, acc: int) -> None:
    """y = round(acc * real) within one unit, computed with integers only."""
    m, r = nq.quant_multiplier(torch.tensor([real], dtype=torch.float64))
    assert 1 <= int(r) <= 62
    approx = int(m) * 2.0 ** -int(r)
    assert abs(approx - real) <= real * 2**-29 + 2**-62
    y = requantize(torch.tensor([acc], dtype=torch.int64), m, r, 0)
    want = max(-128, min(127, round(acc * real)))
    assert abs(int(y) - want) <= 1


def test_quantize_act_matches_onnx_rounding() -> None:
    """round half to even, then add the zero point and saturate (QuantizeLinear)."""
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0])
    q = quantize_act(x, scale=1.0, zero_point=3)
    assert q.tolist() == [3, 5, 5, 3, 1, 127, -128]


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_mse_clipping_beats_minmax(bits: int) -> None:
    w = torch.randn(64, 256)
    e_minmax = (nq.rtn(w, bits, 64, False, "minmax").dequantize() - w).pow(2).sum()
    e_mse = (nq.rtn(w, bits, 64, False, "mse").dequantize() - w).pow(2).sum()
    assert e_mse < e_minmax


def _layer_err(w: torch.Tensor, wq: torch.Tensor, x: torch.Tensor) -> float:
    return float((x @ (w - wq).t()).pow(2).sum())


@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_beats_rtn_on_a_matrix(bits: int) -> None:
    torch.manual_seed(1)
    a = torch.randn(128, 128) / 128**0.5 + torch.eye(128)
    x = torch.randn(2048, 128) @ a
    w = torch.randn(96, 128)
    h = x.t().double() @ x.double() / x.shape[0]
    e_rtn = _layer_err(w, nq.rtn(w, bits, 32, False, "minmax").dequantize(), x)
    e_gptq = _layer_err(w, nq.gptq(w, h, bits, 32, False).dequantize(), x)
    e_gptq_ao = _layer_err(w, nq.gptq(w, h, bits, 32, False, act_order=True).dequantize(), x)
    assert e_gptq < 0.9 * e_rtn
    assert e_gptq_ao < e_rtn


def test_gptq_ragged_groups_and_per_tensor() -> None:
    w = torch.randn(16, 72)
    x = torch.randn(512, 72)
    h = x.t().double() @ x.double() / 512
    q = nq.gptq(w, h, 4, 32, True)
    assert q.scales.shape == (16, 3) and q.group_size == 32
    q0 = nq.gptq(w, h, 8, 0, True)
    assert q0.scales.shape == (1, 1)
    assert _layer_err(w, q0.dequantize(), x) < _layer_err(w, torch.zeros_like(w), x) * 1e-3


def test_smooth_scales_balance_ranges() -> None:
    """After smoothing, max|x/s| and max|W*s| per channel are balanced (alpha=0.5: equal)."""
    act = torch.tensor([1.0, 100.0, 4.0])
    w = torch.tensor([[1.0, 0.5, 2.0], [0.5, 0.25, 1.0]])
    s = nq.smooth_scales(act, [w], 0.5)
    torch.testing.assert_close(act / s, w.abs().amax(0) * s)


def test_gptq_singular_hessian_is_damped() -> None:
    """Fewer calibration rows than columns (and a dead column): H is singular, GPTQ still runs."""
    x = torch.randn(8, 32)
    x[:, 5] = 0
    h = x.t().double() @ x.double()
    w = torch.randn(6, 32)
    q = nq.gptq(w, h, 4, 16, False, damp=0.0)
    assert torch.isfinite(q.dequantize()).all()
    assert _layer_err(w, q.dequantize(), x) <= _layer_err(w, nq.rtn(w, 4, 16, False, "minmax").dequantize(), x) * 1.01
