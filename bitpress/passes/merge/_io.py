"""Loading checkpoints (modules, state dicts, safetensors/torch files) and checking they agree."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["ModelSource", "check_compatible", "describe", "load_state_dict", "save_state_dict_atomic"]

ModelSource = torch.nn.Module | Mapping[str, torch.Tensor] | str | os.PathLike[str]
_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def describe(src: Any, i: int | None = None) -> str:
    """A short name for a model source in error messages: its path, or `models[i]`."""
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    return f"models[{i}]" if i is not None else type(src).__name__


def check_source(src: Any, key: str) -> None:
    """Fail early (in a pass's __post_init__) on a source that cannot be a checkpoint."""
    if isinstance(src, (str, os.PathLike)):
        p = Path(src)
        if not p.is_file():
            raise ValueError(f"{key}: no such checkpoint file {str(p)!r}")
        if p.suffix not in (".safetensors", *_TORCH_SUFFIXES):
            raise ValueError(f"{key}: {str(p)!r} is not a .safetensors or torch (.pt/.pth/.bin) checkpoint")
    elif not isinstance(src, (torch.nn.Module, Mapping)):
        raise ValueError(f"{key}: expected a torch.nn.Module, a state dict or a checkpoint path, got {type(src).__name__}")


def load_state_dict(src: Any, key: str = "model") -> dict[str, torch.Tensor]:
    """The tensors of a module, a state dict or a .safetensors / torch checkpoint file."""
    check_source(src, key)
    if isinstance(src, torch.nn.Module):
        sd = src.state_dict()
    elif isinstance(src, Mapping):
        sd = dict(src)
    else:
        p = Path(src)
        if p.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                sd = load_file(str(p))
            except (SafetensorError, OSError) as e:
                raise ValueError(f"{key}: cannot read {str(p)!r}: {e}") from None
        else:
            try:
                sd = torch.load(str(p), map_location="cpu", weights_only=True)
            except Exception as e:
                raise ValueError(f"{key}: cannot read {str(p)!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
            if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
                sd = dict(sd["state_dict"])
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{key}: entries are not tensors: {', '.join(map(str, bad[:5]))}")
    return {str(k): v.detach() for k, v in sd.items()}


def _shape(t: torch.Tensor) -> str:
    return "[" + ",".join(map(str, t.shape)) + "]"


def check_compatible(
    reference: Mapping[str, torch.Tensor], ref_name: str, others: Sequence[tuple[str, Mapping[str, torch.Tensor]]]
) -> None:
    """Raise one ValueError listing every key missing, unexpected or of another shape in `others`."""
    diffs: list[str] = []
    for name, sd in others:
        missing = [k for k in reference if k not in sd]
        extra = [k for k in sd if k not in reference]
        shapes = [f"{k} {_shape(sd[k])} vs {_shape(reference[k])}" for k in reference if k in sd and sd[k].shape != reference[k].shape]
        kinds = [
            f"{k} {sd[k].dtype} vs {reference[k].dtype}"
            for k in reference
            if k in sd and sd[k].is_floating_point() != reference[k].is_floating_point()
        ]
        if missing:
            diffs.append(f"{name} lacks {', '.join(missing)}")
        if extra:
            diffs.append(f"{name} has unexpected {', '.join(extra)}")
        if shapes:
            diffs.append(f"{name} differs in shape: {', '.join(shapes)}")
        if kinds:
            diffs.append(f"{name} differs in dtype kind: {', '.join(kinds)}")
    if diffs:
        raise ValueError(f"models do not match {ref_name} ({len(diffs)} difference(s)): " + "; ".join(diffs))


def save_state_dict_atomic(sd: Mapping[str, torch.Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> Path:
    """Write a .safetensors file via a temp file in the same folder and an atomic rename."""
    import tempfile

    from safetensors.torch import save_file

    dest = Path(path).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in sd.items()}, tmp, metadata=metadata)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest
