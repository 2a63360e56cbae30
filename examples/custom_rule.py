"""A user-written rule and pass, compiled end to end.

The rule folds a constant output scale into the linear layer before it:

    linear(x, W, b) * s  ->  linear(x, s W, s b)          (exact up to rounding)

and declines (with a reason the explain log shows) when the scale is not a scalar
or the linear output is used elsewhere.  The pass wraps the rule; `bp.compile` runs it
after canonicalization, verifies the graph and measures the output error.

    .venv/bin/python examples/custom_rule.py
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

import bitpress as bp


@bp.rule(
    bp.Pat.op("mul", a=bp.Pat.op("linear", bind="y", x=bp.Pat.var(), w=bp.Pat.const(), b=bp.Pat.any()), b=bp.Pat.const("s")),
    name="fold-output-scale",
)
def fold_output_scale(y: bp.Value, x: bp.Value, w: bp.Value, b: bp.Value | None, s: bp.Value) -> bp.Value | bp.Reject:
    """linear(x, W, b) * s -> linear(x, s W, s b)"""
    if s.numel != 1:
        return bp.Reject(f"scale has {s.numel} elements, not one")
    if len(y.users) != 1:
        return bp.Reject("the linear output has other users")
    k = s.value.reshape(()).to(w.value.dtype)
    bias = None if b is None else bp.const(b.value * k, f"{y.name}.bias")
    return bp.B.linear(x, bp.const(w.value * k, w.name), bias, name=y.name)


@dataclass(frozen=True)
class FoldOutputScales:
    """Fold constant scalar multipliers into the preceding linear layer.

    Requires: constant weights.  Ensures: one fewer node per folded scale, same outputs.
    """

    name: ClassVar[str] = "fold-output-scales"

    def apply(self, g: bp.Graph, ctx: bp.PassContext) -> bp.PassResult:
        return bp.rewrite_pass(g, bp.RuleSet([fold_output_scale]), ctx=ctx, name=self.name)


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x) * 0.5)  # folds
        h2 = self.b(h)
        h = torch.relu(h2 * 2.0) + h2  # declines: h2 has another user
        return self.c(h) * torch.tensor([1.0, 2.0, 3.0, 4.0])  # declines: not a scalar


def main() -> bp.CompiledModel:
    torch.manual_seed(0)
    model, x = Model().eval(), torch.randn(8, 16)
    cm = bp.compile(model, (x,), passes=[FoldOutputScales()], target="torch", tolerance={"sqnr_db": 100})
    with torch.no_grad():
        err = (cm(x) - model(x)).abs().max().item()
    print(cm.report)
    print(cm.explain())
    print(f"max |compiled - eager| = {err:.2e}")
    return cm


if __name__ == "__main__":
    main()
