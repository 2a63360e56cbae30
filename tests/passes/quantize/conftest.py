"""Small models and calibration data shared by the quantization tests."""

from __future__ import annotations

import pytest
import torch

K, N = 256, 192


class NormLinear(torch.nn.Module):
    """LayerNorm -> Linear; a few LayerNorm channels are 8x larger (activation outliers)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(K)
        self.fc = torch.nn.Linear(K, N)
        with torch.no_grad():
            self.norm.weight.mul_(torch.where(torch.rand(K, generator=torch.Generator().manual_seed(3)) < 0.03, 8.0, 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(96, 200)
        self.fc2 = torch.nn.Linear(200, 40, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def correlated_batches(seed: int, n: int, rows: int = 32) -> list[tuple[torch.Tensor]]:
    """Inputs with correlated features (x = z A): the distribution calibration and tests share."""
    a = torch.randn(K, K, generator=torch.Generator().manual_seed(0)) / K**0.5 + torch.eye(K)
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, rows, K, generator=g) @ a,) for _ in range(n)]


@pytest.fixture(scope="module")
def norm_linear() -> NormLinear:
    torch.manual_seed(0)
    return NormLinear().eval()


@pytest.fixture(scope="module")
def mlp() -> MLP:
    torch.manual_seed(0)
    return MLP().eval()


@pytest.fixture(scope="module")
def cnn() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN().eval()
