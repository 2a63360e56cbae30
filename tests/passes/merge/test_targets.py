"""A merged model compiles for the TVM llvm target and matches the interpreter."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import bitpress as bp
from bitpress.compiler.interpreter import run
from bitpress.passes.merge import FoldLoRA, Merge, MergeLinearChain

pytest.importorskip("tvm")


def _family() -> tuple[nn.Module, list[nn.Module]]:
    torch.manual_seed(0)
    base = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 8), nn.Linear(8, 3)
    ).eval()
    with torch.no_grad():
        base[1].running_var.uniform_(0.5, 2.0)
    fts = []
    for s in (1, 2):
        m = copy.deepcopy(base)
        g = torch.Generator().manual_seed(s)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        fts.append(m.eval())
    return base, fts


@pytest.mark.slow
def test_merged_graph_on_llvm_matches_interpreter() -> None:
    base, fts = _family()
    x = torch.randn(2, 1, 4, 4)
    adapter = {"4.lora_A.weight": torch.randn(2, 64), "4.lora_B.weight": torch.randn(8, 2)}
    passes = [Merge(models=fts, base=base, method="ties", density=0.5), MergeLinearChain(allow_growth=True)]
    cm = bp.compile(base, (x,), passes=passes, target="llvm")
    assert sum(n.op == "linear" for n in cm.graph.nodes) == 1
    torch.testing.assert_close(cm(x), run(cm.graph, (x,))[0], rtol=1e-5, atol=1e-5)
    cm = bp.compile(base, (x,), passes=[FoldLoRA(adapter, scale=0.5)], target="llvm")
    torch.testing.assert_close(cm(x), run(cm.graph, (x,))[0], rtol=1e-5, atol=1e-5)
