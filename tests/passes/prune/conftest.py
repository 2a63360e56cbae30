"""Shared fixtures for the pruning tests: small models and calibration data."""

from __future__ import annotations

import pytest
import torch

from bitpress.compiler.frontend import import_module
from bitpress.compiler.ir import Graph
from bitpress.compiler.pass_manager import PassContext, Pipeline
from bitpress.passes import canonicalize_pipeline


def traced(model: torch.nn.Module, example: tuple[torch.Tensor, ...]) -> Graph:
    """`model` imported and canonicalized (batch-norm folded), as compile() would."""
    g = import_module(model.eval(), example)
    g, _ = Pipeline(canonicalize_pipeline()).run(g, PassContext(example_inputs=example))
    return g


class Correlated(torch.nn.Module):
    """Two linears fed by correlated, unevenly scaled features (what makes Wanda/SparseGPT matter)."""

    def __init__(self, d_in: int = 128, hidden: int = 96, d_out: int = 32) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(d_in, hidden)
        self.act = torch.nn.ReLU()
        self.fc2 = torch.nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def correlated_batches(n: int, d_in: int = 128, rows: int = 64, seed: int = 0) -> list[tuple[torch.Tensor]]:
    """Inputs with a low-rank correlated part and per-channel scales spanning 30x.

    The distribution is fixed; `seed` only picks the samples (seed=1: held-out data).
    """
    dist = torch.Generator().manual_seed(1234)
    mix = torch.randn(16, d_in, generator=dist)
    scale = torch.logspace(-1, 0.5, d_in)[torch.randperm(d_in, generator=dist)]
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        z = torch.randn(rows, 16, generator=g) @ mix + 0.3 * torch.randn(rows, d_in, generator=g)
        out.append(((z * scale).float(),))
    return out


@pytest.fixture(scope="module")
def correlated_model() -> Correlated:
    torch.manual_seed(0)
    return Correlated().eval()
