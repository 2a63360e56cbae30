"""GPTQ (Frantar et al. 2022): quantize columns in order, spreading each column's rounding error
over the not-yet-quantized columns with the inverse Hessian (numerics in _numerics.gptq).

Calibration order (`sequential`): "layer" (default; the reference GPTQ's true-sequential mode:
the layers of a block that read one input, q/k/v, then o, then gate/up, then down, each
calibrated on the outputs of every layer already quantized), "block" (one block at a time) or
"none" (every Hessian from the float model).  N:M sparse layers get GPTQ with the mask fixed.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from bitpress.compiler.calibrate import NodeStats, block_key, sequential
from bitpress.compiler.ir import Node
from bitpress.passes.quantize import _numerics as nq
from bitpress.passes.quantize._plan import QuantizeJob, QuantizeMethod, register_method

__all__ = ["Gptq"]


@register_method
class Gptq(QuantizeMethod):
    name: ClassVar[str] = "gptq"
    hessian: ClassVar[bool] = True
    nm_codes: ClassVar[str] = "gptq"

    def plan(self, job: QuantizeJob) -> None:
        if job.q._sequential == "none" or not job.batches:
            job.plan_all(job.collect())
            return
        job.allocate_on_float_model()
        _gptq_sequential(job)

    def codes(
        self, job: QuantizeJob, n: Node, w: torch.Tensor, st: NodeStats | None, bits: int, group_size: int, symmetric: bool
    ) -> tuple[nq.QWeight, str]:
        q = job.q
        if st is None or st.hessian is None:
            return nq.rtn(w, bits, group_size, symmetric, q.weight_clip), "rtn"
        qw = nq.gptq(
            w,
            st.hessian_mean(),
            bits,
            group_size,
            symmetric,
            damp=q.damp,
            block_size=q.block_size,
            act_order=q.act_order,
            observer=q.weight_clip,
        )
        return qw, "gptq"


def _gptq_sequential(job: QuantizeJob) -> None:
    """GPTQ group by group: each group's Hessians come from inputs that already went through
    every earlier layer's quantized weights.  Between groups a layer's weight constant is
    its dequantized codes (what the final qlinear computes); the rewrite rules then store
    the planned codes themselves."""
    g, q = job.g, job.q
    key_of: dict[str, str] = {}
    cur, part = "", 0
    for n in job.nodes:
        x = n.inputs[0]
        k = block_key(n.name) + (f"/{x.name}" if q._sequential == "layer" and x is not None else "")
        if k != cur:  # a new part whenever the key changes keeps every group contiguous
            cur, part = k, part + 1
        key_of[n.name] = f"{k}#{part}"
    names = {n.name for n in job.nodes}
    groups = sequential(g, job.batches, names, group=lambda n: key_of[n.name], hessian=True, keep_inputs=q.calib_samples)
    for step in groups:
        for n in step.nodes:
            plan = job.layer_plan(n, step.stats.get(n.name))
            job.plans.plans[n.name] = plan
            w = n.inputs[1]
            assert w is not None
            n.replace_input(w, g.add_const(plan.qw.dequantize().reshape(w.shape).to(w.value.dtype), w.name))
    g.prune_consts()
