"""GPTQ with sequential calibration: each layer's Hessian comes from inputs that already went
through the quantized earlier layers (the reference GPTQ's true-sequential order)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import bitpress as bp
from bitpress.compiler.pass_manager import sqnr_db
from bitpress.formats.quantized import unpack_codes
from bitpress.passes.quantize import Quantize
from bitpress.passes.quantize import _numerics as nq

BITS, GS = 3, 32


def _codes(cm: bp.CompiledModel, name: str) -> torch.Tensor:  # type: ignore[name-defined]
    n = cm.graph.find(name)
    q = n.inputs[1]
    return unpack_codes(q.value, BITS, q.shape, False)


def _hessian(xs: list[torch.Tensor]) -> torch.Tensor:
    rows = torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]).double()
    return rows.t() @ rows / rows.shape[0]


@pytest.fixture(scope="module")
def mlp_and_data(mlp: torch.nn.Module) -> tuple[torch.nn.Module, list[tuple[torch.Tensor]]]:
    g = torch.Generator().manual_seed(5)
    return mlp, [(torch.randn(16, 96, generator=g),) for _ in range(6)]


def _gptq(mode: str, mlp: torch.nn.Module, cal: list[tuple[torch.Tensor]]) -> bp.CompiledModel:  # type: ignore[name-defined]
    q = Quantize(method="gptq", bits=BITS, group_size=GS, sequential=mode)
    return bp.compile(mlp, cal[0], passes=[q], target="torch", calibration=cal, quiet=True)


@pytest.mark.slow  # two GPTQ compiles
def test_second_layer_is_calibrated_on_quantized_first_layer(mlp_and_data) -> None:  # type: ignore[no-untyped-def]
    mlp, cal = mlp_and_data
    seq, flat = _gptq("layer", mlp, cal), _gptq("none", mlp, cal)
    xs = [c[0] for c in cal]
    w1, b1, w2 = mlp.fc1.weight.detach(), mlp.fc1.bias.detach(), mlp.fc2.weight.detach()
    kw = {"damp": 0.01, "block_size": 128, "observer": "mse"}
    q1 = nq.gptq(w1, _hessian(xs), BITS, GS, False, **kw)
    # fc1 sees the same float inputs either way
    assert torch.equal(_codes(seq, "fc1"), q1.codes) and torch.equal(_codes(flat, "fc1"), q1.codes)
    # fc2: Hessian of relu(x W1q^T + b1) (sequential) vs relu(x W1^T + b1) (float model)
    h_seq = _hessian([torch.relu(F.linear(x, q1.dequantize(), b1)) for x in xs])
    h_flat = _hessian([torch.relu(F.linear(x, w1, b1)) for x in xs])
    want_seq = nq.gptq(w2, h_seq, BITS, GS, False, **kw).codes
    want_flat = nq.gptq(w2, h_flat, BITS, GS, False, **kw).codes
    got_seq, got_flat = _codes(seq, "fc2"), _codes(flat, "fc2")
    # float32 forward vs the interpreter's may differ in the last ulp: allow a few code flips
    assert (got_seq == want_seq).float().mean() > 0.99
    assert (got_flat == want_flat).float().mean() > 0.99
    assert (want_seq != want_flat).float().mean() > 0.05  # the two calibrations really differ
    x = torch.randn(16, 96)
    assert sqnr_db(mlp(x), seq(x)) > 10 and sqnr_db(mlp(x), flat(x)) > 10


def test_sequential_option_is_validated() -> None:
    with pytest.raises(ValueError, match="sequential must be"):
        Quantize(method="gptq", sequential="yes")


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = torch.nn.Linear(96, 200), torch.nn.Linear(200, 40)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))  # type: ignore[no-any-return]


class _TwoInOneBlock(torch.nn.Module):
    """Two linears in one block (`layers.0`): "layer" calibrates the second on the quantized first,
    "block" calibrates both on the float block."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([_Block()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[0](x)  # type: ignore[no-any-return]


@pytest.mark.slow  # three GPTQ compiles
def test_default_order_is_layer_by_layer(mlp_and_data) -> None:  # type: ignore[no-untyped-def]
    _, cal = mlp_and_data
    torch.manual_seed(0)
    m = _TwoInOneBlock().eval()

    def codes(**kw: object) -> torch.Tensor:
        q = Quantize(method="gptq", bits=BITS, group_size=GS, **kw)  # type: ignore[arg-type]
        return _codes(bp.compile(m, cal[0], passes=[q], target="torch", calibration=cal, quiet=True), "layers.0.down")

    default, layer, block = codes(), codes(sequential="layer"), codes(sequential="block")
    assert torch.equal(default, layer)
    assert not torch.equal(layer, block)
