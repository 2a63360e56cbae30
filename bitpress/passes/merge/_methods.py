"""Merging methods as pure functions on tensors and state dicts.

Notation (one line per method, the same as the docstrings below):

    tau_i = theta_i - theta_base                                  (task vector of model i)
    average:          theta = sum_i w_i theta_i / sum_i w_i
    task-arithmetic:  theta = theta_base + scale * sum_i w_i tau_i
    ties:             theta = theta_base + scale * disjoint_mean_i(w_i trim(tau_i, density))
    dare:             theta = theta_base + scale * sum_i w_i (m_i * tau_i) / density,  m_i ~ Bernoulli(density)
    dare-ties:        theta = theta_base + scale * disjoint_mean_i(w_i (m_i * tau_i) / density)
    breadcrumbs:      theta = theta_base + scale * sum_i w_i crumbs(tau_i, density, outliers)
    slerp:            theta = sin((1-t) O) / sin O * theta_a + sin(t O) / sin O * theta_b,  cos O = <a, b> / |a| |b|

Sparsification works per tensor (as mergekit does): `trim` keeps the round(density * n)
largest magnitudes of each tensor; `crumbs` drops the round(outliers * n) largest and keeps
the next round(density * n).  `disjoint_mean` elects a sign per entry from the total mass
sign(sum_i tau_i) and averages only the nonzero entries that agree with it (TIES step 3).
Batch-norm statistics (`running_mean`, `running_var`) are not learned weights: sparsifying
or extrapolating their task vectors can make a variance negative.  Every method merges them
as the (weighted, when the weights are non-negative) average of the models' statistics.
DARE masks come from a generator seeded by (seed, parameter name, model index), so a
parameter's mask does not depend on which other parameters are merged.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable, Mapping, Sequence

import torch

__all__ = [
    "METHODS",
    "average",
    "breadcrumbs_mask",
    "dare_drop",
    "disjoint_mean",
    "merge_state_dicts",
    "merge_tensor",
    "slerp",
    "trim_top",
]

METHODS: tuple[str, ...] = ("average", "greedy-soup", "task-arithmetic", "ties", "dare", "dare-ties", "breadcrumbs", "slerp")
NEEDS_BASE: frozenset[str] = frozenset({"task-arithmetic", "ties", "dare", "dare-ties", "breadcrumbs"})
StateDict = dict[str, torch.Tensor]
_STATISTICS = re.compile(r"(^|\.)running_(mean|var)$")


def is_statistic(name: str) -> bool:
    """Batch-norm running statistics, merged by averaging whatever the method."""
    return bool(_STATISTICS.search(name))


def _k(density: float, n: int) -> int:
    return max(0, min(n, round(density * n)))


def trim_top(tau: torch.Tensor, density: float) -> torch.Tensor:
    """trim(tau, d) = tau * [|tau| among the round(d n) largest]"""
    n = tau.numel()
    k = _k(density, n)
    if k >= n:
        return tau.clone()
    out = torch.zeros_like(tau).reshape(-1)
    if k:
        idx = tau.reshape(-1).abs().topk(k).indices
        out[idx] = tau.reshape(-1)[idx]
    return out.reshape(tau.shape)


def breadcrumbs_mask(tau: torch.Tensor, density: float, outliers: float) -> torch.Tensor:
    """crumbs(tau, d, o) = tau * [rank of |tau| from the top in (round(o n), round(o n) + round(d n)]]"""
    n = tau.numel()
    top = _k(outliers, n)
    keep = min(_k(density, n), n - top)
    flat = tau.reshape(-1)
    order = flat.abs().argsort(descending=True, stable=True)
    out = torch.zeros_like(flat)
    sel = order[top : top + keep]
    out[sel] = flat[sel]
    return out.reshape(tau.shape)


def _generator(seed: int, name: str, index: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode()) * 131 + index) % (2**63))


def dare_drop(tau: torch.Tensor, density: float, gen: torch.Generator) -> torch.Tensor:
    """dare(tau, d) = m * tau / d   with m ~ Bernoulli(d) elementwise (drop rate p = 1 - d)"""
    if density >= 1.0:
        return tau.clone()
    keep = torch.rand(tau.shape, generator=gen, dtype=torch.float64) < density
    return torch.where(keep, tau / density, torch.zeros_like(tau))


def disjoint_mean(taus: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """tau_m = sum_i [sign(tau_i) = s] tau_i / sum_i [sign(tau_i) = s] w_i   with s = sign(sum_i tau_i)

    `taus` are already weighted (w_i tau_i); entries that no model agrees on stay 0.
    """
    stacked = torch.stack(list(taus))
    elected = torch.sign(stacked.sum(0))
    agree = (torch.sign(stacked) == elected) & (stacked != 0)
    w = torch.tensor(list(weights), dtype=stacked.dtype).reshape(-1, *([1] * (stacked.ndim - 1)))
    num = (stacked * agree).sum(0)
    den = (w * agree).sum(0)
    return torch.where(den != 0, num / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(num))


def average(thetas: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """theta = sum_i w_i theta_i / sum_i w_i"""
    total = float(sum(weights))
    return sum((w / total) * t for w, t in zip(weights, thetas, strict=True))  # type: ignore[return-value]


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 1e-7) -> torch.Tensor:
    """slerp(a, b, t) = sin((1-t) O)/sin O a + sin(t O)/sin O b,  cos O = <a,b>/(|a||b|); lerp when a ~ b in direction"""
    na, nb = a.norm(), b.norm()
    if na <= eps or nb <= eps:
        return (1 - t) * a + t * b
    cos = float(((a.reshape(-1) / na) @ (b.reshape(-1) / nb)).clamp(-1.0, 1.0))
    if abs(cos) > 1 - 1e-6:
        return (1 - t) * a + t * b
    omega = math.acos(cos)
    so = math.sin(omega)
    return (math.sin((1 - t) * omega) / so) * a + (math.sin(t * omega) / so) * b


def merge_tensor(
    name: str,
    thetas: Sequence[torch.Tensor],
    base: torch.Tensor | None,
    *,
    method: str,
    weights: Sequence[float],
    density: float,
    scale: float,
    seed: int,
    outliers: float,
    t: float,
) -> torch.Tensor:
    """Merge one parameter; computes in float64 and returns the dtype of `thetas[0]`."""
    dtype = thetas[0].dtype
    th = [x.detach().to(torch.float64) for x in thetas]
    if method in ("average", "greedy-soup"):
        out = average(th, weights)
    elif is_statistic(name):
        out = average(th, weights if min(weights) >= 0 and sum(weights) > 0 else [1.0] * len(th))
    elif method == "slerp":
        out = slerp(th[0], th[1], t)
    else:
        if base is None:
            raise ValueError(f"method {method!r} needs a base model")
        b = base.detach().to(torch.float64)
        taus = [x - b for x in th]
        if method == "task-arithmetic":
            delta = sum(w * tau for w, tau in zip(weights, taus, strict=True))
        elif method == "ties":
            delta = disjoint_mean([w * trim_top(tau, density) for w, tau in zip(weights, taus, strict=True)], weights)
        elif method == "dare":
            delta = sum(
                w * dare_drop(tau, density, _generator(seed, name, i)) for i, (w, tau) in enumerate(zip(weights, taus, strict=True))
            )
        elif method == "dare-ties":
            dropped = [w * dare_drop(tau, density, _generator(seed, name, i)) for i, (w, tau) in enumerate(zip(weights, taus, strict=True))]
            delta = disjoint_mean(dropped, weights)
        elif method == "breadcrumbs":
            delta = sum(w * breadcrumbs_mask(tau, density, outliers) for w, tau in zip(weights, taus, strict=True))
        else:
            raise ValueError(f"unknown merge method {method!r}; known: {', '.join(METHODS)}")
        out = b + scale * delta
    return out.to(dtype)


def merge_state_dicts(
    models: Sequence[Mapping[str, torch.Tensor]],
    base: Mapping[str, torch.Tensor] | None = None,
    *,
    method: str = "average",
    weights: Sequence[float] | None = None,
    density: float = 1.0,
    scale: float = 1.0,
    seed: int = 0,
    outliers: float = 0.01,
    t: float = 0.5,
    evaluate: Callable[[StateDict], float] | None = None,
    keys: Sequence[str] | None = None,
) -> tuple[StateDict, dict[str, object]]:
    """Merge state dicts that were already checked to agree (see `check_compatible`).

    Floating-point entries are merged; integer entries (e.g. `num_batches_tracked`) are
    copied from the base, or from the first model.  Returns the merged dict and stats
    (for greedy-soup: the chosen models and their scores).

    Example:
        >>> a, b = {"w": torch.ones(2)}, {"w": torch.zeros(2)}
        >>> merge_state_dicts([a, b], method="average")[0]["w"]
        tensor([0.5000, 0.5000])
    """
    names = list(keys) if keys is not None else list(models[0])
    w = list(weights) if weights is not None else [1.0] * len(models)
    stats: dict[str, object] = {}
    if method == "greedy-soup":
        if evaluate is None:
            raise ValueError("method 'greedy-soup' needs evaluate=<callable(state_dict) -> score, higher is better>")
        scores = [float(evaluate(dict(m))) for m in models]
        order = sorted(range(len(models)), key=lambda i: -scores[i])
        chosen = [order[0]]
        best = scores[order[0]]
        for i in order[1:]:
            trial, _ = merge_state_dicts([models[j] for j in [*chosen, i]], method="average", keys=names)
            s = float(evaluate(trial))
            if s >= best:
                chosen.append(i)
                best = s
        models = [models[j] for j in chosen]
        w = [1.0] * len(models)
        stats.update({"soup": sorted(chosen), "scores": scores, "soup_score": best})
        method = "average"
    out: StateDict = {}
    for k in names:
        thetas = [m[k] for m in models]
        if not thetas[0].is_floating_point():
            out[k] = (base[k] if base is not None else thetas[0]).clone()
            continue
        out[k] = merge_tensor(
            k,
            thetas,
            None if base is None else base[k],
            method=method,
            weights=w,
            density=density,
            scale=scale,
            seed=seed,
            outliers=outliers,
            t=t,
        )
    return out, stats
