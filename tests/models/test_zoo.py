"""Tests for the model zoo: data loaders, shipped CNN weights, MiniLM and SmolLM2 wrappers, text."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from bitpress.models import (
    SENTENCES,
    TEST_ACCURACY_1000,
    FashionCNN,
    MiniLMEncoder,
    encode_batch,
    english_text,
    evaluate_accuracy,
    load_fashion_cnn,
    load_fashion_mnist,
    load_minilm,
    mean_pool,
    perplexity,
    token_windows,
)
from bitpress.models import fashion_mnist as fm
from bitpress.models.fashion_mnist import WEIGHTS_PATH


@pytest.fixture(autouse=True)
def _two_threads() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_shapes_and_labels() -> None:
    x, y = load_fashion_mnist("test")
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (10_000,) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.equal(torch.bincount(y), torch.full((10,), 1000))  # balanced classes
    assert y[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]  # the official file order
    xt, yt = load_fashion_mnist("train", limit=100)
    assert xt.shape == (100, 1, 28, 28) and yt.shape == (100,)
    assert int(yt.min()) >= 0 and int(yt.max()) <= 9


def test_fashion_mnist_bad_args_and_missing_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation")
    monkeypatch.setattr(fm, "DATA_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test")


def test_fashion_cnn_small_and_shipped_weights_small() -> None:
    model = FashionCNN()
    assert sum(p.numel() for p in model.parameters()) < 100_000
    assert WEIGHTS_PATH.stat().st_size < 500_000
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "AvgPool2d", "Flatten", "Linear", "Dropout"} <= kinds


def test_shipped_cnn_reaches_recorded_accuracy() -> None:
    model = load_fashion_cnn()
    assert not model.training
    x, y = load_fashion_mnist("test", limit=1000)
    acc = evaluate_accuracy(model, x, y)
    assert acc >= TEST_ACCURACY_1000 - 0.005, acc
    assert acc >= 0.85


def test_fashion_cnn_exports() -> None:
    model = load_fashion_cnn()
    x, _ = load_fashion_mnist("test", limit=4)
    ep = torch.export.export(model, (x,))
    assert torch.allclose(ep.module()(x), model(x))


def test_train_fashion_cnn_runs_on_a_subset() -> None:
    model = fm.train_fashion_cnn(epochs=1, limit=256, seed=0, batch_size=64)
    assert not model.training
    x, _ = load_fashion_mnist("test", limit=8)
    assert model(x).shape == (8, 10)


def test_import_is_cheap() -> None:
    code = "import sys, bitpress.models; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False"]


# ---------------------------------------------------------------- MiniLM


@pytest.fixture(scope="module")
def minilm() -> tuple[Any, Any]:
    return load_minilm()


def test_minilm_encoder_matches_hf(minilm: tuple[Any, Any]) -> None:
    model, tok = minilm
    ids, mask = encode_batch(tok, SENTENCES[:2], seq_len=128)
    assert ids.shape == mask.shape == (2, 128) and ids.dtype == mask.dtype == torch.int64
    assert int(mask[0].sum()) < 128 and int(mask[0, -1]) == 0  # padded to the fixed length
    with torch.no_grad():
        h = MiniLMEncoder(model)(ids, mask)
        ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert isinstance(h, torch.Tensor) and h.shape == (2, 128, 384)
    assert torch.allclose(h, ref, atol=1e-6)


def test_minilm_embeddings_are_meaningful(minilm: tuple[Any, Any]) -> None:
    model, tok = minilm
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market crashed."]
    with torch.no_grad():
        dyn = tok(sentences, padding=True, return_tensors="pt")
        e_dyn = mean_pool(model(**dyn).last_hidden_state, dyn["attention_mask"])
        ids, mask = encode_batch(tok, sentences, seq_len=64)
        e = mean_pool(MiniLMEncoder(model)(ids, mask), mask)
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(e, e_dyn, atol=1e-5)  # fixed-length padding does not change embeddings
    sim = e @ e.T
    assert float(sim[0, 1]) > 0.6 > float(sim[0, 2])


def test_minilm_sentences() -> None:
    assert len(SENTENCES) == 64 and len(set(SENTENCES)) == 64
    with pytest.raises(TypeError):
        encode_batch(None, "one string", seq_len=16)


# ---------------------------------------------------------------- text


def test_english_text_and_windows(minilm: tuple[Any, Any]) -> None:
    text = english_text()
    assert text.startswith("GNU GENERAL PUBLIC LICENSE") and len(text) > 30_000
    _, tok = minilm
    cal = token_windows(tok, text, 32, 4)
    ev = token_windows(tok, text, 32, 4, offset=4)
    assert all(w.shape == (1, 32) and w.dtype == torch.int64 for w in cal + ev)
    whole = token_windows(tok, text, 256, 1)[0]
    assert torch.equal(torch.cat(cal + ev, dim=1), whole)  # consecutive, disjoint windows
    with pytest.raises(ValueError, match="windows"):
        token_windows(tok, text, 1024, 1000)


def test_perplexity_of_uniform_logits_is_vocab_size(minilm: tuple[Any, Any]) -> None:
    _, tok = minilm
    vocab = len(tok)

    def uniform(ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(ids.shape[0], ids.shape[1], vocab)

    ppl = perplexity(uniform, tok, english_text(), seq_len=16, max_windows=3)
    assert math.isclose(ppl, vocab, rel_tol=1e-4)
    with pytest.raises(ValueError):
        perplexity(uniform, tok, "too short", seq_len=16)


# ---------------------------------------------------------------- SmolLM2


@pytest.mark.slow
def test_smollm2_wrapper_matches_hf_and_exports() -> None:
    from bitpress.models import SmolLMLogits, load_smollm2

    model, tok = load_smollm2()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    ids = token_windows(tok, english_text(), 16, 1)[0]
    wrapper = SmolLMLogits(model).eval()
    with torch.no_grad():
        logits = wrapper(ids)
        ref = model(input_ids=ids).logits
        assert isinstance(logits, torch.Tensor) and logits.shape == (1, 16, 49152)
        assert torch.allclose(logits, ref, atol=1e-5)
        ep = torch.export.export(wrapper, (ids,))
        assert torch.allclose(ep.module()(ids), logits, atol=1e-5)
    ppl = perplexity(wrapper, tok, english_text(), seq_len=64, max_windows=2)
    assert 2.0 < ppl < 200.0
