"""W8A8 models through `Quantize` on target "onnx": they load in onnxruntime with its full
graph optimizer and agree with the interpreter.

The failure this guards against: a W8A8 layer whose output is reshaped (attention heads)
made onnxruntime 1.32 propagate the DequantizeLinear through the Reshape and then rewrite
int8 to uint8 inconsistently, so the session did not load.  The ONNX lowering now carries
activations between the W8A8 ops as uint8 (q + 128).
"""

from __future__ import annotations

import pytest
import torch

import bitpress as bp
from bitpress.backends.onnx.backend import lower_to_onnx

pytestmark = pytest.mark.slow  # export + SmoothQuant calibration + two onnxruntime sessions


class TinyAttention(torch.nn.Module):
    """LayerNorm -> q/k/v -> heads (view + transpose) -> softmax(q k^T) v -> merge -> out."""

    def __init__(self, d: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.h = heads
        self.norm = torch.nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (torch.nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        y = self.norm(x)

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.view(b, t, self.h, d // self.h).transpose(1, 2)

        q, k, v = split(self.q(y)), split(self.k(y)), split(self.v(y))
        a = torch.softmax(q @ k.transpose(-1, -2) / (d // self.h) ** 0.5, dim=-1) @ v
        return x + self.o(a.transpose(1, 2).reshape(b, t, d))


@pytest.fixture(scope="module")
def w8a8_attention() -> tuple[bp.CompiledModel, list[tuple[torch.Tensor]]]:
    torch.manual_seed(0)
    m = TinyAttention().eval()
    g = torch.Generator().manual_seed(1)
    cal = [(torch.randn(2, 8, 64, generator=g),) for _ in range(4)]
    q = bp.passes.Quantize(method="smoothquant", bits=8, group_size=None, act_bits=8, alpha=0.5)
    cm = bp.compile(m, cal[0], passes=[q], target="torch", calibration=cal, quiet=True)
    return cm, cal


@pytest.mark.parametrize("level", ["all", "none"])
def test_w8a8_attention_loads_and_matches_interpreter(w8a8_attention, level: str) -> None:  # type: ignore[no-untyped-def]
    cm, cal = w8a8_attention
    assert sum(n.op == "qlinear_w8a8" for n in cm.graph.nodes) == 4
    onnx_cm = bp.compile(cm.graph.clone(), cal[0], target="onnx", canonicalize=False, quiet=True, options={"onnx_optimization": level})
    x = torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(7))
    want, got = cm(x), onnx_cm(x)
    # The integer ops are bit-exact (test_backends.py); LayerNorm/softmax in onnxruntime differ
    # from torch by a few ulps, which can move an activation across one rounding boundary of
    # the next QuantizeLinear: at most a few elements, each off by a small multiple of the
    # output scale (~0.02 here); everything else is equal.
    diff = (got - want).abs()
    assert diff.max() < 0.1, diff.max()
    assert (diff > 1e-5).float().mean() < 0.05


def test_w8a8_activations_travel_as_uint8(w8a8_attention) -> None:  # type: ignore[no-untyped-def]
    cm, _ = w8a8_attention
    model = lower_to_onnx(cm.graph)
    init_types = {i.name: i.data_type for i in model.graph.initializer}
    u8 = 2  # onnx.TensorProto.UINT8
    qs = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qs) == 8 and all(init_types[n.input[2]] == u8 for n in qs)
    mm = [n for n in model.graph.node if n.op_type == "MatMulInteger"]
    assert len(mm) == 4 and all(init_types[n.input[2]] == u8 for n in mm)
