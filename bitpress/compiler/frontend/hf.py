"""A local Hugging Face model directory (`save_pretrained` output) as a model.

Nothing is downloaded: the directory must hold `config.json` and the weights.  The class is
the one the config names (`architectures[0]`, e.g. `LlamaForCausalLM`), else `AutoModel`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bitpress.compiler.frontend.torch_fx import FrontendError, import_module
from bitpress.compiler.ir import Graph

__all__ = ["import_pretrained_dir", "is_pretrained_dir", "load_pretrained_dir"]


def is_pretrained_dir(path: str | os.PathLike[str]) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def load_pretrained_dir(path: str | os.PathLike[str]) -> torch.nn.Module:
    """The model saved in `path` by `save_pretrained`, in eval mode."""
    p = Path(path)
    if not is_pretrained_dir(p):
        raise FrontendError(f"{p} is not a Hugging Face model directory (no config.json)")
    try:
        import transformers
    except ImportError:
        raise FrontendError(f"{p} is a Hugging Face model directory, but transformers is not installed") from None
    try:
        config = transformers.AutoConfig.from_pretrained(p, local_files_only=True)
    except Exception as e:
        raise FrontendError(f"{p}/config.json could not be read: {_first_line(e)}") from None
    names = list(getattr(config, "architectures", None) or [])
    cls: Any = next((getattr(transformers, n) for n in names if hasattr(transformers, n)), None) or transformers.AutoModel
    try:
        model = cls.from_pretrained(p, local_files_only=True)
    except Exception as e:
        raise FrontendError(f"{p}: {cls.__name__}.from_pretrained failed: {_first_line(e)}") from None
    return model.eval()


def import_pretrained_dir(path: str | os.PathLike[str], example_inputs: Sequence[Any], **options: Any) -> Graph:
    """Load the model in `path` and import it like any torch module (`options` go to `import_module`)."""
    return import_module(load_pretrained_dir(path), example_inputs, **options)


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__
