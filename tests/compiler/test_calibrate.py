from __future__ import annotations

import torch
from torch import nn

from bitpress.compiler.calibrate import collect
from bitpress.compiler.frontend import import_module


def test_linear_statistics_and_hessian() -> None:
    m = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    batches = [(torch.randn(6, 6),), (torch.randn(6, 6),)]  # shapes are static: one batch size
    g = import_module(m, batches[0])
    st = collect(g, batches, hessian=True)
    assert set(st) == {"0", "2"}
    x = torch.cat([b[0] for b in batches]).double()
    s0 = st["0"]
    assert s0.rows == 12
    torch.testing.assert_close(s0.hessian, x.t() @ x)
    torch.testing.assert_close(s0.absmax, x.abs().amax(0))
    torch.testing.assert_close(s0.rms, (x.pow(2).mean(0)).sqrt())
    assert s0.in_min == x.min().item() and s0.in_max == x.max().item()
    with torch.no_grad():
        h = torch.relu(m[0](x.float()))
    assert abs(st["2"].in_max - h.max().item()) < 1e-6


def test_conv_rows_are_unfolded_patches() -> None:
    m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1)).eval()
    x = torch.randn(2, 2, 5, 5)
    g = import_module(m, (x,))
    st = collect(g, [(x,)], hessian=True, keep_inputs=1)["0"]
    cols = nn.functional.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 18).double()
    assert st.rows == 2 * 25
    torch.testing.assert_close(st.hessian, cols.t() @ cols)
    assert torch.equal(st.samples[0], x)
