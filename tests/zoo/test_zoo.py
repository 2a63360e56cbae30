"""The zoo (issue 14): every architecture in tests/zoo/models.py imports, matches eager torch on
the interpreter, llvm and onnx, survives int8 RTN weight quantization, and runs a second batch size from the same artifacts.

The pass-rate table is benchmarks/RESULTS.md ("Model zoo"), made by benchmarks/zoo.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tests.zoo.harness import TARGETS, XFAIL, check
from tests.zoo.models import ZOO

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _two_threads() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


def test_zoo_has_forty_architectures() -> None:
    assert len(ZOO) >= 40
    assert {a.family for a in ZOO.values()} == {"hf", "classic"}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("arch", list(ZOO))
def test_zoo(arch: str, target: str) -> None:
    reason = XFAIL.get((arch, target))
    if reason:
        pytest.xfail(reason)
    check(arch, target)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("arch", ["vit-mha", "vit-sdpa"])
def test_quantized_vit_on_llvm_matches_interpreter(arch: str, bits: int) -> None:
    """A ViT has both quantized-GEMM kinds (34-row blocks, a 2-row class-token head): each gets its own schedule."""
    import bitpress as bp
    from tests.zoo.harness import imported

    imp = imported(arch)
    passes = [bp.passes.Quantize(method="rtn", bits=bits, group_size=32)]
    ref = bp.compile(imp.graph.clone(), imp.inputs, target="torch", passes=passes)
    cm = bp.compile(imp.graph.clone(), imp.inputs, target="llvm", passes=passes)
    torch.testing.assert_close(cm(*imp.inputs), ref(*imp.inputs), rtol=1e-4, atol=1e-4)
