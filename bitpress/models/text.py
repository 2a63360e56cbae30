"""A fixed, offline English text for language-model perplexity and calibration.

Source: ``/usr/share/common-licenses/GPL-3``, the GNU General Public License v3 as shipped
by Debian's essential ``base-files`` package, so it exists on every Debian/Ubuntu machine
with nothing to download.  Its sha256 is
``3972dc9744f6499f0f9b2dbf76696f2ae7ad8af9b23dde66d6af86c9dfb36986`` (35,149 bytes, 674
lines); :func:`english_text` checks it and fails loudly if the file differs.

Why this one: it is ~5,600 words of ordinary (if legal) English prose, stable for decades,
and identical across machines.  Alternatives considered: the Debian ``fortunes`` packages
(not installed by default, many short quotes rather than prose), the other license texts
in ``/usr/share/common-licenses`` (shorter), NLTK corpora (none ship inside a package) and
model READMEs inside wheels (change with package versions).

Normalization: each paragraph's lines are stripped and joined with single spaces and
paragraphs are separated by a blank line, so the hard line wraps and indentation of the
license file do not dominate the token stream.  The normalized text is 34,404 characters:
7,161 tokens with the SmolLM2 tokenizer (111 windows of 64) and 6,840 with the MiniLM
(BERT uncased) tokenizer: enough for disjoint calibration and evaluation windows (see
:func:`token_windows`).  Measured SmolLM2 (fp32, dequantised Q4_1) perplexity on it:
51.4 with all 111 windows of 64 tokens, 28.0 with 8 windows of 256 (legal English is
hard for a 135M model; compare compressed against this fp32 baseline, not an absolute).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

__all__ = ["TEXT_PATH", "TEXT_SHA256", "english_text", "token_windows"]

TEXT_PATH = Path("/usr/share/common-licenses/GPL-3")
TEXT_SHA256 = "3972dc9744f6499f0f9b2dbf76696f2ae7ad8af9b23dde66d6af86c9dfb36986"


@lru_cache(maxsize=1)
def english_text() -> str:
    """The normalized GPL-3 text (paragraphs joined by ``"\\n\\n"``, single spaces within)."""
    if not TEXT_PATH.is_file():
        raise FileNotFoundError(f"{TEXT_PATH} not found; it ships with Debian's base-files package (`apt-get install base-files`)")
    raw = TEXT_PATH.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != TEXT_SHA256:
        raise RuntimeError(f"{TEXT_PATH} has sha256 {digest}, expected {TEXT_SHA256}; perplexities would not be comparable")
    paragraphs: list[str] = []
    current: list[str] = []
    for line in raw.decode("utf-8").splitlines():
        stripped = " ".join(line.split())
        if stripped:
            current.append(stripped)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


def token_windows(tokenizer: Any, text: str, seq_len: int, n: int, offset: int = 0) -> list[torch.Tensor]:
    """``n`` disjoint windows of ``seq_len`` tokens of ``text``, each an int64 ``[1, seq_len]`` tensor.

    The text is tokenized once without special tokens and cut into consecutive windows;
    ``offset`` counts *windows* to skip, so ``token_windows(t, s, 64, 8)`` (calibration)
    and ``token_windows(t, s, 64, 8, offset=8)`` (evaluation) never share a token.
    """
    if seq_len < 1 or n < 0 or offset < 0:
        raise ValueError(f"need seq_len >= 1, n >= 0, offset >= 0; got seq_len={seq_len}, n={n}, offset={offset}")
    ids = _tokenize(tokenizer, text)
    available = ids.numel() // seq_len
    if offset + n > available:
        raise ValueError(
            f"text has {ids.numel()} tokens = {available} windows of {seq_len}; cannot take {n} windows after skipping {offset}"
        )
    return [ids[(offset + i) * seq_len : (offset + i + 1) * seq_len].reshape(1, seq_len).clone() for i in range(n)]


def _tokenize(tokenizer: Any, text: str) -> torch.Tensor:
    """All token ids of ``text`` (no special tokens) as a 1-D int64 tensor."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.int64)
