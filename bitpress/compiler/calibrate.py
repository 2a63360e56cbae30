"""Calibration: run data through the interpreter and collect statistics per node.

For each watched node, statistics of its first input (the activation entering a
linear/conv) and its output:

- per-input-channel abs-max, sum of squares and sum of |x| (SmoothQuant, AWQ, Wanda);
- min/max of the input and output (static activation ranges);
- optionally the Hessian proxy H = sum x x^T over input rows (GPTQ, SparseGPT, ASVD);
  convolutions use unfolded patches, so H is over the flattened kernel window;
- optionally a bounded sample of the inputs themselves (layer-wise error checks).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from bitpress.compiler.interpreter import run
from bitpress.compiler.ir import Graph, Node

__all__ = ["NodeStats", "collect", "layer_rows"]


@dataclass
class NodeStats:
    rows: int = 0
    absmax: torch.Tensor | None = None
    sqsum: torch.Tensor | None = None
    abssum: torch.Tensor | None = None
    in_min: float = float("inf")
    in_max: float = float("-inf")
    out_min: float = float("inf")
    out_max: float = float("-inf")
    hessian: torch.Tensor | None = None
    samples: list[torch.Tensor] = field(default_factory=list)
    out_absmax: torch.Tensor | None = None

    @property
    def rms(self) -> torch.Tensor:
        """Per-channel root mean square of the input (Wanda's ||X_j||_2 / sqrt(rows))."""
        assert self.sqsum is not None
        return (self.sqsum / max(self.rows, 1)).sqrt()

    @property
    def mean_abs(self) -> torch.Tensor:
        assert self.abssum is not None
        return self.abssum / max(self.rows, 1)

    def hessian_mean(self) -> torch.Tensor:
        assert self.hessian is not None
        return self.hessian / max(self.rows, 1)


def layer_rows(node: Node, x: torch.Tensor) -> torch.Tensor:
    """The input of a linear/conv as a matrix of rows [N, in_features] in weight-column order."""
    if node.op == "conv2d":
        w = node.inputs[1]
        assert w is not None
        kh, kw = w.shape[2], w.shape[3]
        a = node.attrs
        if a.get("groups", 1) != 1:
            return x.transpose(0, 1).reshape(x.shape[1], -1).t()
        cols = F.unfold(x, (kh, kw), dilation=a.get("dilation", 1), padding=a.get("padding", 0), stride=a.get("stride", 1))
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    if node.op == "conv1d":
        return x.transpose(1, 2).reshape(-1, x.shape[1])
    return x.reshape(-1, x.shape[-1])


def collect(
    g: Graph,
    batches: Iterable[Sequence[torch.Tensor]],
    nodes: Iterable[str] | Callable[[Node], bool] | None = None,
    *,
    hessian: bool = False,
    keep_inputs: int = 0,
    quiet: bool | None = None,
) -> dict[str, NodeStats]:
    """Run `batches` through `g` and gather statistics for the selected nodes (default: linear/conv)."""
    if nodes is None:
        want: Callable[[Node], bool] = lambda n: n.op in ("linear", "conv2d", "conv1d")
    elif callable(nodes):
        want = nodes
    else:
        names = set(nodes)
        want = lambda n: n.name in names
    stats: dict[str, NodeStats] = {}

    def observe(node: Node, args: list[Any], outs: list[torch.Tensor]) -> None:
        if not want(node) or not args or not isinstance(args[0], torch.Tensor) or not args[0].is_floating_point():
            return
        st = stats.setdefault(node.name, NodeStats())
        x = args[0].detach()
        rows = layer_rows(node, x).double() if node.op in ("linear", "conv2d", "conv1d") else x.reshape(-1, x.shape[-1]).double()
        st.rows += rows.shape[0]
        am, sq, ab = rows.abs().amax(0), rows.pow(2).sum(0), rows.abs().sum(0)
        st.absmax = am if st.absmax is None else torch.maximum(st.absmax, am)
        st.sqsum = sq if st.sqsum is None else st.sqsum + sq
        st.abssum = ab if st.abssum is None else st.abssum + ab
        st.in_min, st.in_max = min(st.in_min, x.min().item()), max(st.in_max, x.max().item())
        y = outs[0]
        if isinstance(y, torch.Tensor) and y.is_floating_point():
            st.out_min, st.out_max = min(st.out_min, y.min().item()), max(st.out_max, y.max().item())
            yc = (
                y.abs().reshape(-1, y.shape[-1]).amax(0)
                if node.op not in ("conv2d",)
                else y.abs().transpose(0, 1).reshape(y.shape[1], -1).amax(1)
            )
            st.out_absmax = yc if st.out_absmax is None else torch.maximum(st.out_absmax, yc)
        if hessian:
            h = rows.t() @ rows
            st.hessian = h if st.hessian is None else st.hessian + h
        if keep_inputs and len(st.samples) < keep_inputs:
            st.samples.append(x.clone())

    it: Iterable[Sequence[torch.Tensor]] = batches
    if quiet is None:
        quiet = os.environ.get("BITPRESS_QUIET", "") not in ("", "0") or not sys.stderr.isatty()
    if not quiet:
        from tqdm import tqdm

        it = tqdm(list(batches), desc="calibrate", unit="batch", leave=False)
    for b in it:
        run(g, tuple(b), observer=observe)
    return stats
