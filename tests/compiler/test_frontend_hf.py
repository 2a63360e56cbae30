"""Hugging Face models passed as they are: ModelOutput results, cache objects, use_cache, and a
local `save_pretrained` directory as the model (tiny random configs; nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import bitpress as bp
from bitpress.compiler.frontend import FrontendError
from bitpress.compiler.frontend.torch_fx import model_outputs

transformers = pytest.importorskip("transformers")


def _llama() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def test_causal_lm_as_is_gives_logits() -> None:
    """`Found DynamicCache in output` before: use_cache=False is passed, the ModelOutput gives its logits."""
    m = _llama()
    ids = torch.randint(0, 64, (2, 7))
    cm = bp.compile(m, (ids,), target="torch")
    assert [v.shape for v in cm.graph.outputs] == [(2, 7, 64)]
    with torch.no_grad():
        want = m(ids).logits
    torch.testing.assert_close(cm(ids), want, rtol=1e-5, atol=1e-5)


def test_encoder_model_output_fields_in_order() -> None:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    m = transformers.BertModel(cfg).eval()
    ids, mask = torch.randint(0, 50, (2, 5)), torch.ones(2, 5, dtype=torch.int64)
    cm = bp.compile(m, (ids, mask), target="torch")
    with torch.no_grad():
        out = m(ids, mask)
    want = model_outputs(out)
    assert [w.shape for w in want] == [out.last_hidden_state.shape, out.pooler_output.shape]
    for got, w in zip(cm(ids, mask), want, strict=True):
        torch.testing.assert_close(got, w, rtol=1e-5, atol=1e-5)


def test_local_pretrained_directory_is_a_model(tmp_path: Path) -> None:
    m = _llama()
    m.save_pretrained(tmp_path / "tiny-llama")
    ids = torch.randint(0, 64, (1, 6))
    cm = bp.compile(tmp_path / "tiny-llama", (ids,), target="torch")
    with torch.no_grad():
        want = m(ids).logits
    torch.testing.assert_close(cm(ids), want, rtol=1e-5, atol=1e-5)
    assert "model.layers.0.mlp.up_proj.weight" in cm.graph.consts  # state-dict names kept


def test_directory_without_config_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FrontendError, match=r"is not a Hugging Face model directory \(no config.json\)"):
        bp.compile(tmp_path / "empty", (torch.zeros(1, 4, dtype=torch.int64),), target="torch")
