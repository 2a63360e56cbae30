"""LoRA adapters: parse lora_A/lora_B keys into per-weight (A, B, scale) and fold them into state dicts."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

__all__ = ["LoRAAdapter", "fold_lora_state_dict", "parse_lora"]

# PEFT ("x.lora_A.weight", "x.lora_A.default.weight") and kohya ("x.lora_down.weight") spellings.
_KEY = re.compile(r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_down|lora_up)(?:\.(?P<adapter>[A-Za-z0-9_\-]+))?\.weight$")
_PREFIXES = ("base_model.model.", "base_model.")
_IGNORED = re.compile(r"(\.alpha|lora_magnitude_vector.*|\.lora_embedding_[AB].*)$")


@dataclass(frozen=True)
class LoRAAdapter:
    """One adapter for the 2-D weight `target`: delta = scale * B @ A, A [r, in], B [out, r]."""

    target: str
    a: torch.Tensor
    b: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])

    def delta(self) -> torch.Tensor:
        """scale * B @ A in float64."""
        return self.scale * (self.b.double() @ self.a.double())


def _strip(key: str) -> str:
    for p in _PREFIXES:
        if key.startswith(p):
            return key[len(p) :]
    return key


def parse_lora(sd: Mapping[str, torch.Tensor], *, scale: float | None = None, alpha: float | None = None) -> dict[str, LoRAAdapter]:
    """Group lora_A/lora_B tensors by the weight they adapt (`<module>.weight`).

    scale = alpha / r when `alpha` is given (PEFT's convention), else `scale` (default 1).
    Raises one ValueError listing every unpaired, unknown or mis-shaped key.
    """
    if scale is not None and alpha is not None:
        raise ValueError("give either scale= or alpha= (scale = alpha / r), not both")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    problems: list[str] = []
    for key, t in sd.items():
        m = _KEY.match(_strip(key))
        if m is None:
            if not _IGNORED.search(key):
                problems.append(f"{key}: not a lora_A/lora_B weight")
            continue
        kind = {"lora_down": "lora_A", "lora_up": "lora_B"}.get(m["kind"], m["kind"])
        target = m["module"] + ".weight"
        if m["adapter"]:
            target = f"{target}@{m['adapter']}"
        if kind in parts.setdefault(target, {}):
            problems.append(f"{key}: a second {kind} for {target}")
        parts[target][kind] = t.detach()
    out: dict[str, LoRAAdapter] = {}
    names: dict[str, str] = {}
    for target, p in parts.items():
        weight = target.split("@")[0]
        if "lora_A" not in p or "lora_B" not in p:
            problems.append(f"{target}: lora_B without lora_A" if "lora_B" in p else f"{target}: lora_A without lora_B")
            continue
        a, b = p["lora_A"], p["lora_B"]
        if a.ndim == 4 and a.shape[2:] == (1, 1) and b.ndim == 4 and b.shape[2:] == (1, 1):
            a, b = a[:, :, 0, 0], b[:, :, 0, 0]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            problems.append(f"{target}: lora_A {list(a.shape)} and lora_B {list(b.shape)} are not [r, in] and [out, r]")
            continue
        if weight in names:
            problems.append(f"{target}: {weight} already has adapter {names[weight]} (fold one adapter at a time)")
            continue
        names[weight] = target
        r = int(a.shape[0])
        s = alpha / r if alpha is not None else (1.0 if scale is None else scale)
        if not math.isfinite(s):
            problems.append(f"{target}: scale {s} is not finite")
            continue
        out[weight] = LoRAAdapter(weight, a, b, float(s))
    if problems:
        raise ValueError(f"bad LoRA adapter ({len(problems)} problem(s)): " + "; ".join(problems))
    if not out:
        raise ValueError("the adapter holds no lora_A/lora_B weights")
    return out


def fold_lora_state_dict(sd: Mapping[str, torch.Tensor], adapters: Mapping[str, LoRAAdapter]) -> dict[str, torch.Tensor]:
    """W + scale * B @ A for every adapted weight of a state dict (a copy; others shared).

    Raises one ValueError listing every adapter whose weight is missing or of another shape.
    """
    problems = []
    for name, ad in adapters.items():
        if name not in sd:
            problems.append(f"{name}: not in the model")
        elif tuple(sd[name].shape) != (ad.b.shape[0], ad.a.shape[1]):
            problems.append(f"{name}: weight {list(sd[name].shape)} but B @ A is {[ad.b.shape[0], ad.a.shape[1]]}")
    if problems:
        raise ValueError(f"LoRA adapter does not fit the model ({len(problems)} problem(s)): " + "; ".join(problems))
    out = dict(sd)
    for name, ad in adapters.items():
        w = sd[name]
        out[name] = (w.double() + ad.delta()).to(w.dtype)
    return out
