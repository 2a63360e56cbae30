"""Each merging method against its formula, computed independently here with plain loops."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bitpress.passes.merge import merge_state_dicts
from bitpress.passes.merge._methods import breadcrumbs_mask, slerp, trim_top


def _sds(n_models: int, shape: tuple[int, ...] = (3, 4), seed: int = 0) -> tuple[dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    base = {"w": torch.randn(shape, generator=g, dtype=torch.float64), "b": torch.randn(shape[0], generator=g, dtype=torch.float64)}
    models = [{k: v + 0.3 * torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in base.items()} for _ in range(n_models)]
    return base, models


def _ranked(values: list[float]) -> list[int]:
    """Indices by decreasing magnitude (plain sort, ties by index)."""
    return sorted(range(len(values)), key=lambda i: (-abs(values[i]), i))


def _trim(tau: list[float], density: float) -> list[float]:
    keep = set(_ranked(tau)[: round(density * len(tau))])
    return [x if i in keep else 0.0 for i, x in enumerate(tau)]


def _crumbs(tau: list[float], density: float, outliers: float) -> list[float]:
    order = _ranked(tau)
    top = round(outliers * len(tau))
    keep = set(order[top : top + round(density * len(tau))])
    return [x if i in keep else 0.0 for i, x in enumerate(tau)]


def _sign(x: float) -> float:
    return (x > 0) - (x < 0)


def _ties_entry(taus: list[float], weights: list[float]) -> float:
    """TIES step 2-3 for one entry: elect the sign of the total mass, average agreeing nonzeros."""
    s = _sign(sum(taus))
    num = sum(t for t in taus if t != 0 and _sign(t) == s)
    den = sum(w for t, w in zip(taus, weights) if t != 0 and _sign(t) == s)
    return num / den if den else 0.0


def _flat(t: torch.Tensor) -> list[float]:
    return [float(x) for x in t.reshape(-1)]


def test_average_uniform_and_weighted() -> None:
    _, models = _sds(3)
    out, _ = merge_state_dicts(models, method="average")
    for k in ("w", "b"):
        want = [sum(vals) / 3 for vals in zip(*(_flat(m[k]) for m in models))]
        assert _flat(out[k]) == pytest.approx(want, abs=1e-12)
    out, _ = merge_state_dicts(models, method="average", weights=[1.0, 2.0, 5.0])
    want = [(a + 2 * b + 5 * c) / 8 for a, b, c in zip(*(_flat(m["w"]) for m in models))]
    assert _flat(out["w"]) == pytest.approx(want, abs=1e-12)


def test_task_arithmetic() -> None:
    base, models = _sds(2)
    out, _ = merge_state_dicts(models, base, method="task-arithmetic", scale=0.7, weights=[1.0, 0.5])
    for k in ("w", "b"):
        b, m0, m1 = _flat(base[k]), _flat(models[0][k]), _flat(models[1][k])
        want = [bb + 0.7 * ((x - bb) + 0.5 * (y - bb)) for bb, x, y in zip(b, m0, m1)]
        assert _flat(out[k]) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("density", [0.2, 0.5, 1.0])
def test_ties(density: float) -> None:
    base, models = _sds(3, shape=(5, 6), seed=1)
    out, _ = merge_state_dicts(models, base, method="ties", density=density, scale=1.3)
    for k in ("w", "b"):
        b = _flat(base[k])
        trimmed = [_trim([x - bb for x, bb in zip(_flat(m[k]), b)], density) for m in models]
        want = [bb + 1.3 * _ties_entry([t[i] for t in trimmed], [1.0] * 3) for i, bb in enumerate(b)]
        assert _flat(out[k]) == pytest.approx(want, abs=1e-12)


def test_ties_sign_election_by_mass() -> None:
    """Two small positive updates lose to one large negative one: the sign follows total mass, not the vote."""
    base = {"w": torch.zeros(1, dtype=torch.float64)}
    models = [
        {"w": torch.tensor([0.1], dtype=torch.float64)},
        {"w": torch.tensor([0.1], dtype=torch.float64)},
        {"w": torch.tensor([-1.0], dtype=torch.float64)},
    ]
    out, _ = merge_state_dicts(models, base, method="ties", density=1.0)
    assert float(out["w"]) == pytest.approx(-1.0)


def test_dare_values_and_rate() -> None:
    base = {"w": torch.zeros(200, 100, dtype=torch.float64)}
    tau = torch.randn(200, 100, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out, _ = merge_state_dicts([{"w": tau}], base, method="dare", density=0.3, seed=5)
    w = out["w"]
    kept = w != 0
    # every entry is dropped (0) or rescaled by 1 / density
    torch.testing.assert_close(w[kept], tau[kept] / 0.3, rtol=1e-12, atol=0)
    # keep rate within 5 standard deviations of Bernoulli(0.3) over 20,000 draws
    n = tau.numel()
    assert abs(kept.sum().item() - 0.3 * n) < 5 * math.sqrt(n * 0.3 * 0.7)
    # unbiased: E[m tau / d] = tau, so the merged sum tracks the task vector's sum
    assert abs(w.sum().item() - tau.sum().item()) < 5 * math.sqrt((tau**2).sum().item() * 0.7 / 0.3)


def test_dare_deterministic_under_seed() -> None:
    base, models = _sds(2, shape=(16, 16))
    a, _ = merge_state_dicts(models, base, method="dare", density=0.5, seed=7)
    b, _ = merge_state_dicts(models, base, method="dare", density=0.5, seed=7)
    c, _ = merge_state_dicts(models, base, method="dare", density=0.5, seed=8)
    assert torch.equal(a["w"], b["w"]) and torch.equal(a["b"], b["b"])
    assert not torch.equal(a["w"], c["w"])
    # a parameter's mask does not depend on which other parameters are merged
    only_w, _ = merge_state_dicts(models, base, method="dare", density=0.5, seed=7, keys=["w"])
    assert torch.equal(only_w["w"], a["w"])


def test_dare_ties_matches_ties_on_dropped_vectors() -> None:
    """dare-ties = TIES sign election + disjoint mean over the DARE-dropped task vectors."""
    base, models = _sds(3, shape=(8, 8), seed=2)
    out, _ = merge_state_dicts(models, base, method="dare-ties", density=0.6, seed=1, scale=0.9)
    # DARE's mask for model i is seeded by its index: a 3-model linear dare with weights e_i gives dare(tau_i)
    dropped = []
    for i in range(3):
        w = [0.0, 0.0, 0.0]
        w[i] = 1.0
        d, _ = merge_state_dicts(models, base, method="dare", density=0.6, seed=1, weights=w)
        dropped.append([x - bb for x, bb in zip(_flat(d["w"]), _flat(base["w"]))])
    want = [bb + 0.9 * _ties_entry([t[i] for t in dropped], [1.0] * 3) for i, bb in enumerate(_flat(base["w"]))]
    assert _flat(out["w"]) == pytest.approx(want, abs=1e-12)


def test_breadcrumbs() -> None:
    base, models = _sds(2, shape=(10, 10), seed=4)
    out, _ = merge_state_dicts(models, base, method="breadcrumbs", density=0.6, outliers=0.1, scale=0.5)
    b = _flat(base["w"])
    crumbs = [_crumbs([x - bb for x, bb in zip(_flat(m["w"]), b)], 0.6, 0.1) for m in models]
    want = [bb + 0.5 * (c0 + c1) for bb, c0, c1 in zip(b, *crumbs)]
    assert _flat(out["w"]) == pytest.approx(want, abs=1e-12)


def test_slerp_formula_and_endpoints() -> None:
    _, (a, b) = _sds(2, shape=(4, 5), seed=6)
    for t in (0.0, 0.25, 1.0):
        out, _ = merge_state_dicts([a, b], method="slerp", t=t)
        x, y = _flat(a["w"]), _flat(b["w"])
        nx, ny = math.sqrt(sum(v * v for v in x)), math.sqrt(sum(v * v for v in y))
        omega = math.acos(sum(p * q for p, q in zip(x, y)) / (nx * ny))
        want = [math.sin((1 - t) * omega) / math.sin(omega) * p + math.sin(t * omega) / math.sin(omega) * q for p, q in zip(x, y)]
        assert _flat(out["w"]) == pytest.approx(want, abs=1e-12)
    # colinear inputs fall back to linear interpolation
    v = torch.arange(1.0, 5.0, dtype=torch.float64)
    torch.testing.assert_close(slerp(v, 3 * v, 0.5), 2 * v)


def test_greedy_soup_adds_only_improving_models() -> None:
    target = torch.tensor([1.0, 1.0], dtype=torch.float64)
    models = [{"w": torch.tensor(v, dtype=torch.float64)} for v in ([1.2, 0.8], [0.8, 1.2], [5.0, -3.0], [1.1, 1.1])]

    def score(sd: dict[str, torch.Tensor]) -> float:
        return -float((sd["w"] - target).norm())

    out, stats = merge_state_dicts(models, method="greedy-soup", evaluate=score)
    # by hand: order by score: m3 (0.141), m0 = m1 (0.283), m2; soup {3} -> +0 (avg [1.15,0.95]: 0.158 worse) -> no;
    # +1 (avg [0.95,1.15]: 0.158 worse) -> no; +2 -> no.  So the soup is m3 alone.
    assert stats["soup"] == [3]
    torch.testing.assert_close(out["w"], models[3]["w"])
    models.append({"w": torch.tensor([0.9, 0.9], dtype=torch.float64)})
    out, stats = merge_state_dicts(models, method="greedy-soup", evaluate=score)
    assert stats["soup"] == [3, 4]  # averaging [1.1,1.1] and [0.9,0.9] hits the target exactly
    torch.testing.assert_close(out["w"], target)


def test_integer_buffers_come_from_the_base() -> None:
    base, models = _sds(2)
    base["n"] = torch.tensor(7)
    for i, m in enumerate(models):
        m["n"] = torch.tensor(100 + i)
    out, _ = merge_state_dicts(models, base, method="ties", density=0.5)
    assert int(out["n"]) == 7
    out, _ = merge_state_dicts(models, method="average")
    assert int(out["n"]) == 100


def test_dtype_is_kept() -> None:
    base = {"w": torch.randn(4, 4).to(torch.bfloat16)}
    models = [{"w": base["w"] + 1}, {"w": base["w"] - 0.5}]
    out, _ = merge_state_dicts(models, base, method="task-arithmetic")
    assert out["w"].dtype == torch.bfloat16


@given(
    n=st.integers(1, 40),
    density=st.floats(0.05, 1.0),
    outliers=st.floats(0.0, 0.5),
    seed=st.integers(0, 2**16),
)
def test_sparsifiers_properties(n: int, density: float, outliers: float, seed: int) -> None:
    tau = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    t = trim_top(tau, density)
    k = round(density * n)
    assert int((t != 0).sum()) == k
    # kept entries are unchanged and dominate the dropped ones in magnitude
    kept = t != 0
    assert torch.equal(t[kept], tau[kept])
    if 0 < k < n:
        assert tau[kept].abs().min() >= tau[~kept].abs().max()
    c = breadcrumbs_mask(tau, min(density, 1 - outliers), outliers)
    ck = c != 0
    assert torch.equal(c[ck], tau[ck])
    assert int(ck.sum()) == min(round(min(density, 1 - outliers) * n), n - round(outliers * n))


@pytest.mark.parametrize("method", ["task-arithmetic", "ties", "dare", "breadcrumbs"])
def test_batch_norm_statistics_are_averaged(method: str) -> None:
    """A sparsified or extrapolated variance could go negative: statistics are averaged whatever the method."""
    base = {"bn.running_var": torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)}
    models = [{"bn.running_var": torch.tensor(v, dtype=torch.float64)} for v in ([0.1, 2.0, 0.5], [0.3, 4.0, 0.5])]
    out, _ = merge_state_dicts(models, base, method=method, density=0.5, scale=3.0)
    torch.testing.assert_close(out["bn.running_var"], torch.tensor([0.2, 3.0, 0.5], dtype=torch.float64))
