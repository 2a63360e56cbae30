"""What several pass packages share, so that sibling packages need not import each other.

- layer selection: `excluded(name, patterns)`, `shared_weight(w, node)`;
- error measurement: `layer_sqnr_db(w, w_hat, h)` (one function for every lossy pass);
- calibration budgeting: `hessian_chunks(nodes, budget)`;
- `lapack_single_thread()` for small dense factorizations;
- the option types several passes share, with one meaning each: `group_size` (`group_columns`,
  `per_channel_group_size`), `exclude` (`as_patterns`), `sequential` (`SEQUENTIAL_MODES`).

Group granularity, the same in Quantize, Binarize and ShiftAdd: `None` (or -1 where a pass
accepted it before) is one group per output channel, `0` one group for the whole tensor (only
Quantize supports it), `k > 0` groups of k input columns (the last one may be ragged).
Binarize/ShiftAdd used to spell per-channel `0`; that spelling is still accepted there, with a
DeprecationWarning.

Import-linter keeps this module (with `canonicalize`) under the pass packages: it imports
only the compiler and the formats.
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch

from bitpress.compiler.ir import Node, Value

__all__ = [
    "SEQUENTIAL_MODES",
    "as_patterns",
    "excluded",
    "group_columns",
    "hessian_chunks",
    "lapack_single_thread",
    "layer_sqnr_db",
    "per_channel_group_size",
    "shared_weight",
]

SEQUENTIAL_MODES = ("layer", "block", "none")  # calibration order of data-aware passes (calibrate.sequential)


def as_patterns(exclude: str | Iterable[str]) -> tuple[str, ...]:
    """A pass's `exclude` option as a tuple of fnmatch patterns (one string is one pattern)."""
    return (exclude,) if isinstance(exclude, str) else tuple(exclude)


def group_columns(group_size: int | None, k: int) -> int:
    """Input columns per group for `k` columns: None / -1 per output channel (k), 0 per tensor (0), else group_size."""
    if group_size is None or group_size == -1:
        return k
    return group_size


def per_channel_group_size(pass_name: str, group_size: int | None) -> int | None:
    """Binarize/ShiftAdd: validate `group_size` (None or k > 0; the old 0 for per channel warns) -> None or k."""
    if group_size is None:
        return None
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 0:
        raise ValueError(f"{pass_name}: group_size must be an int >= 0 or None (None: one group per output channel), got {group_size!r}")
    if group_size == 0:
        warnings.warn(
            f"{pass_name}: group_size=0 for one group per output channel is deprecated (0 means per tensor in Quantize); write group_size=None",
            DeprecationWarning,
            stacklevel=5,
        )
        return None
    return group_size


def excluded(name: str, patterns: Iterable[str]) -> bool:
    """True when the node `name` matches one of the fnmatch `patterns` (a pass's `exclude` option)."""
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def shared_weight(w: Value, node: Node) -> bool:
    """True when a node other than `node` also reads the weight `w` (rewriting it would change both)."""
    return any(u is not node for u in w.users)


def layer_sqnr_db(w: torch.Tensor, w_hat: torch.Tensor, h: torch.Tensor | None, ndigits: int | None = None) -> float:
    """10 log10(||W X||^2 / ||(W - W') X||^2) = tr(W H W^T) / tr(E H E^T) in dB from H = X^T X;
    weight-space SQNR when H is None; inf when W' = W."""
    w64, e = w.double(), (w.double() - w_hat.double())
    if h is None:
        sig, err = float(w64.pow(2).sum()), float(e.pow(2).sum())
    else:
        h64 = h.double()
        sig, err = float(((w64 @ h64) * w64).sum()), float(((e @ h64) * e).sum())
    if err <= 0.0:
        return math.inf
    db = 10.0 * math.log10(max(sig, 1e-30) / err)
    return db if ndigits is None else round(db, ndigits)


def _in_features(n: Node) -> int:
    w = n.inputs[1]
    assert w is not None
    return w.numel // w.shape[0]


def hessian_chunks(nodes: list[Node], budget_bytes: int, cost: Callable[[Node], int] | None = None) -> list[list[Node]]:
    """`nodes` in runs whose Hessians (float64 [in, in] each, or `cost(node)` bytes) fit `budget_bytes`."""
    chunks: list[list[Node]] = [[]]
    used = 0
    for n in nodes:
        c = cost(n) if cost is not None else _in_features(n) ** 2 * 8
        if chunks[-1] and used + c > budget_bytes:
            chunks.append([])
            used = 0
        chunks[-1].append(n)
        used += c
    return [c for c in chunks if c]


@contextmanager
def lapack_single_thread() -> Iterator[None]:
    """Run small dense factorizations on one thread.

    Measured on the 2-core CI machine under load: eigh of a 384 x 384 matrix took 5-10 s with
    torch's default threads (OpenMP spinning against other processes) and 0.17 s with one.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
