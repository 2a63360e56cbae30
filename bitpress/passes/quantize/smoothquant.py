"""SmoothQuant (Xiao et al. 2022): migrate activation outliers into the weights, then static W8A8.

Each group of linear layers reading one input gets a per-input-channel scale
s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha): W' = W * s and x' = x / s, the division folded
into the preceding norm when only this group reads it (an exact rewrite before rounding).
Statistics are collected again afterwards when act_bits=8, so the activation ranges are those
of the smoothed inputs.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from bitpress.compiler.calibrate import NodeStats
from bitpress.compiler.ir import Node
from bitpress.compiler.rewrite import ExplainEvent
from bitpress.passes.quantize import _numerics as nq
from bitpress.passes.quantize._plan import QuantizeJob, QuantizeMethod, register_method

__all__ = ["SmoothQuant"]


@register_method
class SmoothQuant(QuantizeMethod):
    name: ClassVar[str] = "smoothquant"

    def check(self, q: Any) -> None:
        if q.act_bits != 8:
            raise ValueError("Quantize: method='smoothquant' quantizes activations: set act_bits=8 (and bits=8)")

    def plan(self, job: QuantizeJob) -> None:
        stats = job.collect()
        _equalize(job, stats)
        if job.q._static_act is not None:  # activation ranges must be those of the smoothed inputs
            stats = job.collect()
        job.plan_all(stats)

    def codes(
        self, job: QuantizeJob, n: Node, w: torch.Tensor, st: NodeStats | None, bits: int, group_size: int, symmetric: bool
    ) -> tuple[nq.QWeight, str]:
        return nq.rtn(w, bits, group_size, symmetric, job.q.weight_clip), "smoothquant+rtn"


def _equalize(job: QuantizeJob, stats: dict[str, NodeStats]) -> None:
    # imported here so that importing this file registers only SmoothQuant (registration order = listed order)
    from bitpress.passes.quantize.awq import fold_input_scale, rescale_stats

    alpha = job.q.alpha
    groups: dict[int, list[Node]] = {}
    for n in job.nodes:
        if n.op == "linear" and n.inputs[0] is not None and n.name in stats:
            groups.setdefault(id(n.inputs[0]), []).append(n)
    for grp in groups.values():
        x = grp[0].inputs[0]
        assert x is not None
        st = stats[grp[0].name]
        assert st.absmax is not None
        s = nq.smooth_scales(st.absmax, [n.inputs[1].value.float() for n in grp], alpha)  # type: ignore[union-attr]
        where = fold_input_scale(job.g, x, grp, s)
        for n in grp:
            why = f"W' = W * s, x' = x / s ({where}); s = max|x|^{alpha} / max|W|^{1 - alpha}"
            job.ctx.explain.add(ExplainEvent(job.q.name, "smooth-input-channels", n.name, n.op, "fired", why))
            rescale_stats(stats[n.name], s)
