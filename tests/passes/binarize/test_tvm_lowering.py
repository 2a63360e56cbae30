"""The binarize package's kernels on TVM llvm agree with the interpreter (float paths: allclose).

Tolerance: outputs are sums of up to a few hundred float32 terms in a different order than
torch's (group-wise accumulation, then scales), so 1e-5 relative to the output scale.
"""

from __future__ import annotations

import pytest
import torch

import bitpress as bp
from bitpress.compiler.target import LoweringError
from bitpress.passes import Binarize, ShiftAdd

pytest.importorskip("tvm")


def _mlp(d_in: int, d_hidden: int, d_out: int, bias: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(d_in, d_hidden, bias=bias), torch.nn.ReLU(), torch.nn.Linear(d_hidden, d_out, bias=bias)
    ).eval()


CASES = [
    ("sign", Binarize(method="sign"), True),
    ("multi-basis-ragged-groups", Binarize(method="multi-basis", bases=3, group_size=24), True),
    ("ternary-no-bias", Binarize(method="ternary", group_size=16), False),
    ("partial", Binarize(method="partial", salient_ratio=0.1, group_size=32), True),
    ("xnor", Binarize(activations="sign"), True),
    ("xnor-multi-basis-groups", Binarize(method="multi-basis", activations="sign", group_size=32), False),
    ("shift-add", ShiftAdd(bases=2, group_size=24), True),
    ("power-of-two-4bit", ShiftAdd(method="power-of-two", group_size=24), True),
    ("power-of-two-2bit", ShiftAdd(method="power-of-two", bits=2, group_size=0), False),
]


@pytest.mark.parametrize(("label", "p", "bias"), CASES, ids=[c[0] for c in CASES])
def test_llvm_matches_the_interpreter(label: str, p: object, bias: bool) -> None:
    # 70 input features: not a multiple of 8 or 32, so packing crosses byte/word boundaries; 3-D input
    m = _mlp(70, 96, 40, bias)
    x = torch.randn(2, 3, 70)
    cm = bp.compile(m, (x,), passes=[p], target="llvm", calibration=[(x,)])
    ref = bp.compile(m, (x,), passes=[p], target="torch", calibration=[(x,)])
    assert sum(n.op != "linear" and n.op.endswith("linear") for n in cm.graph.nodes) >= 1
    assert cm.report.backend["schedules"].get("hint", 0) >= 1  # our schedules ran
    for seed in (1, 2):
        xt = torch.randn(2, 3, 70, generator=torch.Generator().manual_seed(seed))
        y, r = cm(xt), ref(xt)
        torch.testing.assert_close(y, r, atol=1e-5 * float(r.abs().max()), rtol=1e-5)


def test_llvm_artifact_round_trip(tmp_path: object) -> None:
    m = _mlp(64, 64, 16)
    x = torch.randn(4, 64)
    cm = bp.compile(m, (x,), passes=[Binarize(method="multi-basis")], target="llvm")
    cm.save(tmp_path / "bin")  # type: ignore[operator]
    cm2 = bp.load(tmp_path / "bin")  # type: ignore[operator]
    torch.testing.assert_close(cm2(x), cm(x))


def test_cuda_has_no_binary_kernel_and_says_so() -> None:
    m = _mlp(64, 64, 16)
    x = torch.randn(4, 64)
    with pytest.raises(LoweringError, match=r"op 'binary_linear' at 0, 2; targets with a lowering: .*llvm"):
        bp.compile(m, (x,), passes=[Binarize()], target="cuda")
