"""The N:M-aware quantization strategy (prune, then quantize): N:M sparse layers become ``nm_qlinear`` (packed codes + packed indices).

The Quantize pass calls `quantize_nm_layers` first, on the ``nm_linear`` nodes that
``Prune(sparsity="N:M")`` left: the kept values ``[out, in / M * N]`` are quantized with
Quantize's options (bits, group_size counted along the kept values of a row, symmetric,
weight_clip) and stored as packed codes, float16 scales and packed zero points; the packed
in-group indices are reused unchanged.  Pruned positions stay exact zeros (they are not
stored), so the layer stays N:M sparse and no dense weight appears.

Methods:

The method's strategy (_plan.py) says which codes its N:M layers get (``nm_codes``) and
what the explain log notes about them (``nm_note``):

* ``rtn`` (and ``awq``, whose input-channel scaling is not applied to N:M layers: the
  explain log says so): round to nearest with the per-group range of the kept values.
* ``gptq`` (``nm_codes="gptq"``): GPTQ over the dense columns with the sparsity mask held fixed (the joint
  SparseGPT + quantization step of Frantar & Alistarh 2023): column by column, kept
  weights are rounded to their group's grid and pruned positions are set to zero, and
  either error is spread over the later columns with the inverse Hessian's Cholesky row.
  Group ranges are fitted when a group starts on the error-updated weights when every
  row's group covers the same columns (``group_size`` a multiple of N), else once up
  front ("static groups").
* ``smoothquant`` / ``act_bits=8``: declined (no integer N:M kernel); the layer stays
  ``nm_linear`` and the explain log says why.
* ``bits="auto"``: N:M layers are not part of the allocation; they get the widest
  candidate width.  ``exclude`` and ``first_last`` apply as to dense layers (first/last
  among all linear, conv and N:M layers).

Requires: ``nm_linear`` with constant values and indices.  Ensures: stored bytes = packed
codes + float16 scales + packed zeros + packed indices (+ bias).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from bitpress.compiler.builder import B, const
from bitpress.compiler.calibrate import NodeStats, collect
from bitpress.compiler.ir import Graph, Node, TensorType, Value, pack_bits, unpack_bits
from bitpress.compiler.pass_manager import PassContext, rewrite_pass, sqnr_db
from bitpress.compiler.pattern import Pat, Reject, RuleSet, rule
from bitpress.compiler.rewrite import ExplainEvent
from bitpress.formats.quantized import weight_dtype, zeros_dtype
from bitpress.formats.sparse import decode_nm, index_bits, nm_columns
from bitpress.passes._common import hessian_chunks
from bitpress.passes.quantize import _numerics as nq
from bitpress.passes.quantize._plan import METHODS

__all__ = ["NMQuantPlans", "gptq_nm", "nm_quantize_rules", "quantize_nm_layers"]

_HESSIAN_BUDGET = 512 << 20  # bytes of float64 Hessians collected per calibration pass
_MAX_ROWS = 1024


@dataclass
class _NMPlan:
    qw: nq.QWeight
    symmetric: bool
    sqnr_db: float
    sqnr_on: str
    method: str


@dataclass
class NMQuantPlans:
    """Per-node codes planned before rewriting (rules stay pure), and declines with reasons."""

    plans: dict[str, _NMPlan] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- numerics


def _kept_columns(indices: torch.Tensor, n: int, m: int, shape: tuple[int, int]) -> torch.Tensor:
    return nm_columns(unpack_bits(indices, index_bits(m), shape), n, m)


def gptq_nm(
    w: torch.Tensor,
    cols: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    group_size: int,
    symmetric: bool,
    *,
    n: int,
    m: int,
    damp: float = 0.01,
    block_size: int = 128,
    observer: str = "minmax",
) -> nq.QWeight:
    """GPTQ of the kept weights of an N:M matrix with the mask fixed; codes [out, kept].

    `w` is the dense [out, in] matrix, `cols` [out, kept] the columns of the stored slots
    (`nm_columns`).  `group_size` counts kept values (0: per tensor, >= kept: per row).
    """
    W = w.double().clone()
    out, k = W.shape
    kk = cols.shape[1]
    keep = torch.zeros(out, k, dtype=torch.bool)
    keep.scatter_(1, cols, True)
    slot = torch.zeros(out, k, dtype=torch.int64)  # kept index of each (row, column); 0 where pruned
    slot.scatter_(1, cols, torch.arange(kk).expand(out, kk).contiguous())
    H = hessian.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    W[~keep] = 0.0
    per_tensor = group_size == 0
    gs = kk if per_tensor or group_size < 0 or group_size >= kk else group_size
    ng = math.ceil(kk / gs)
    qmin, qmax = nq.qrange(bits, symmetric)
    ss = torch.empty(out, ng, dtype=torch.float64)
    zz = torch.zeros(out, ng, dtype=torch.float64) if not symmetric else None
    # aligned groups: kept group g spans the same input columns in every row
    aligned = not per_tensor and gs % n == 0
    span = gs // n * m
    if not aligned:  # static groups, fitted on the original kept values
        vals = torch.gather(W, 1, cols).float()
        if per_tensor:
            s, z = nq._fit(vals.reshape(1, -1), bits, symmetric, observer, None)
            ss[:] = s.double()
            if zz is not None and z is not None:
                zz[:] = z.double()
        else:
            for g in range(ng):
                s, z = nq._fit(vals[:, g * gs : (g + 1) * gs], bits, symmetric, observer, None)
                ss[:, g] = s.double()
                if zz is not None and z is not None:
                    zz[:, g] = z.double()
    Hinv = nq._inverse_cholesky(H, damp)
    Q = torch.zeros(out, kk, dtype=torch.float64)
    rows = torch.arange(out)
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            c = i1 + i
            if aligned and c % span == 0:
                cur = torch.cat([W1[:, i:], W[:, i2:]], 1)[:, :span]
                kept_cur = cur[keep[:, c : c + span]].reshape(out, -1).float()
                s_, z_ = nq._fit(kept_cur, bits, symmetric, observer, None)
                ss[:, c // span] = s_.double()
                if zz is not None and z_ is not None:
                    zz[:, c // span] = z_.double()
            kc = keep[:, c]
            gi = slot[:, c] // gs
            sc = ss[rows, gi]
            zc: torch.Tensor | float = zz[rows, gi] if zz is not None else 0.0
            wcol = W1[:, i]
            q = (torch.round(wcol / sc) + zc).clamp(qmin, qmax)
            deq = torch.where(kc, (q - zc) * sc, torch.zeros_like(wcol))
            Q[rows[kc], slot[kc, c]] = q[kc]
            err = (wcol - deq) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] @ Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if per_tensor:
        return nq.QWeight(Q.long(), ss[:1, :1].half(), None if zz is None else zz[:1, :1].long(), bits, kk)
    return nq.QWeight(Q.long(), ss.half(), None if zz is None else zz.long(), bits, gs)


# ----------------------------------------------------------------------------- planning


def _weight_layers(g: Graph) -> list[Node]:
    return [
        n
        for n in g.nodes
        if n.op in ("linear", "conv2d", "nm_linear") and len(n.inputs) > 1 and n.inputs[1] is not None and n.inputs[1].is_const
    ]


def _select(q: Any, g: Graph, skipped: dict[str, str]) -> dict[str, int]:
    """nm_linear nodes to quantize -> bits, after Quantize's exclude / first_last / act_bits options."""
    layers = _weight_layers(g)
    ends = {layers[0].name, layers[-1].name} if layers else set()
    out: dict[str, int] = {}
    for n in layers:
        if n.op != "nm_linear" or not all(v is not None and v.is_const for v in n.inputs[1:3]):
            continue
        pat = next((p for p in q.exclude if fnmatch.fnmatchcase(n.name, p)), None)
        if pat is not None:
            skipped[n.name] = f"excluded by pattern {pat!r}"
            continue
        if q.act_bits is not None:
            skipped[n.name] = "act_bits=8 has no N:M integer kernel; the layer stays nm_linear (float values)"
            continue
        bits = int(q.bits) if q.bits != "auto" else max(q.candidate_bits)
        if n.name in ends and q.first_last != "same":
            if q.first_last == "skip":
                skipped[n.name] = "first/last layer kept in float (first_last='skip')"
                continue
            bits = int(q.first_last)
        out[n.name] = bits
    return out


def _plan(q: Any, n: Node, bits: int, st: NodeStats | None) -> _NMPlan:
    nn, mm, k_in = int(n.attrs["n"]), int(n.attrs["m"]), int(n.attrs["in_features"])
    vv, iv = n.inputs[1], n.inputs[2]
    assert vv is not None and iv is not None
    vals = vv.value.float()
    out, kk = vals.shape
    sym = q._sym(bits)
    gs = q._gs(kk)
    dense = decode_nm(vals, iv.value, nn, mm, k_in)
    if METHODS[q.method].nm_codes == "gptq" and st is not None and st.hessian is not None:
        cols = _kept_columns(iv.value, nn, mm, (out, kk))
        qw = gptq_nm(
            dense,
            cols,
            st.hessian_mean(),
            bits,
            gs,
            sym,
            n=nn,
            m=mm,
            damp=q.damp,
            block_size=q.block_size,
            observer=q.weight_clip,
        )
        method = "sparsegpt-mask+gptq"
    else:
        qw = nq.rtn(vals, bits, gs, sym, q.weight_clip)
        method = "rtn"
    deq = decode_nm(qw.dequantize(), iv.value, nn, mm, k_in)
    rows = [t.reshape(-1, k_in).float() for t in (st.samples if st is not None else [])]
    if rows:
        xr = torch.cat(rows)
        if xr.shape[0] > _MAX_ROWS:
            xr = xr[torch.linspace(0, xr.shape[0] - 1, _MAX_ROWS).long()]
        return _NMPlan(qw, sym, sqnr_db(xr @ dense.t(), xr @ deq.t()), "outputs", method)
    return _NMPlan(qw, sym, sqnr_db(dense, deq), "weights", method)


def quantize_nm_layers(q: Any, g: Graph, ctx: PassContext) -> int:
    """Rewrite the N:M layers of `g` to nm_qlinear with the options of Quantize pass `q`; returns the count."""
    cfg = NMQuantPlans()
    chosen = _select(q, g, cfg.skipped)
    nodes = [n for n in g.nodes if n.name in chosen]
    if nodes:
        method = METHODS[q.method]
        if method.nm_note is not None:
            for n in nodes:
                ctx.explain.add(ExplainEvent(q.name, f"{q.method}-scale-input-channels", n.name, n.op, "declined", method.nm_note))
        gptq = method.nm_codes == "gptq"
        # RTN needs calibration rows only for the reported output SQNR: calib_samples batches suffice
        batches = ctx.require_calibration(f"{q.name} (method={q.method})") if gptq else ctx.calibration[: q.calib_samples]
        for chunk in hessian_chunks(nodes, _HESSIAN_BUDGET if gptq else 1 << 62, lambda n: int(n.attrs["in_features"]) ** 2 * 8):
            stats = collect(g, batches, {n.name for n in chunk}, hessian=gptq, keep_inputs=q.calib_samples) if batches else {}
            for n in chunk:
                cfg.plans[n.name] = _plan(q, n, chosen[n.name], stats.get(n.name))
    return int(rewrite_pass(g, nm_quantize_rules, ctx=ctx, cfg=cfg, name=q.name).stats["rewrites"])


# ----------------------------------------------------------------------------- the rule


def _packed(codes: torch.Tensor, bits: int, dtype: str, name: str) -> Value:
    if bits == 8:
        return const(codes.to(torch.int8 if dtype == "int8" else torch.uint8), name)
    return const(pack_bits(codes, bits), name, TensorType(tuple(codes.shape), dtype))


@rule(Pat.op("nm_linear", x=Pat.var(), values=Pat.const(ndim=2), indices=Pat.const(), b=Pat.any()), name="quantize-nm-linear")
def quantize_nm_linear(x: Value, values: Value, indices: Value, b: Value | None, *, node: Node, cfg: NMQuantPlans) -> Value | Reject | None:
    """nm_linear(x, V, idx, b) -> nm_qlinear(x, pack(q), s, z, idx, b)   with V ~= (q - z) * s per group of kept values"""
    plan = cfg.plans.get(node.name)
    if plan is None:
        why = cfg.skipped.get(node.name)
        return Reject(why) if why else None
    qw = plan.qw
    if tuple(qw.codes.shape) != values.shape:
        return Reject(f"planned codes {tuple(qw.codes.shape)} do not fit values {values.shape}")
    qv = _packed(qw.codes, qw.bits, weight_dtype(qw.bits, plan.symmetric), f"{values.name}.q")
    s = const(qw.scales.to(torch.float16), f"{values.name}.scales")
    z = None if qw.zeros is None else _packed(qw.zeros, qw.bits, zeros_dtype(qw.bits), f"{values.name}.zeros")
    y: Value = B.nm_qlinear(
        x,
        qv,
        s,
        z,
        indices,
        b,
        name=node.name,
        n=int(node.attrs["n"]),
        m=int(node.attrs["m"]),
        in_features=int(node.attrs["in_features"]),
        shape=list(values.shape),
        bits=qw.bits,
        group_size=qw.group_size,
        signed=plan.symmetric,
    )
    assert y.producer is not None
    meta = dict(node.meta)
    if "sqnr_db" in meta:
        meta["prune_sqnr_db"] = meta.pop("sqnr_db")
    sq = plan.sqnr_db
    meta.update(
        bits=qw.bits,
        group_size=qw.group_size,
        method=plan.method,
        sqnr_db=round(sq, 3) if math.isfinite(sq) else sq,
        sqnr_on=plan.sqnr_on,
        params=values.numel,
    )
    y.producer.meta = meta
    return y


nm_quantize_rules = RuleSet([quantize_nm_linear])
