"""Fashion-MNIST data and a small CNN with shipped weights.

Data: the Debian package ``dataset-fashion-mnist`` (Expat license) installs the four
original ``*-ubyte.gz`` files under ``/usr/share/datasets/fashion-mnist``; they are read
with a small IDX parser (no torchvision).  Images come back as float32 ``[N, 1, 28, 28]``
scaled to ``[0, 1]`` (``pixel / 255``, exactly what training used) and labels as int64.

Model: :class:`FashionCNN` (33,354 parameters) is deliberately small but exercises the ops a
compression compiler must handle on a CNN: conv2d, batch-norm, relu, max- and average
pooling, a residual add, flatten, linear and dropout.

Shipped weights: ``bitpress/models/data/fashion_cnn.safetensors`` were produced once with
``python -m bitpress.models.fashion_mnist 10``, i.e. ``train_fashion_cnn(epochs=10,
limit=None, seed=0)`` (all 60,000 training images, Adam lr 2e-3 with cosine decay,
batch 128, ``torch.set_num_threads(2)``; 118 s on 2 CPU cores, about 11 s per epoch;
two epochs already give 0.888).  They reach **test accuracy 0.9162** on the full
10,000-image test split (``TEST_ACCURACY``) and 0.933 on its first 1,000 images
(``TEST_ACCURACY_1000``).  The file is 135,888 bytes (float32 safetensors, including
batch-norm running statistics).
"""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "CLASSES",
    "DATA_DIR",
    "TEST_ACCURACY",
    "TEST_ACCURACY_1000",
    "WEIGHTS_PATH",
    "FashionCNN",
    "evaluate_accuracy",
    "load_fashion_cnn",
    "load_fashion_mnist",
    "train_fashion_cnn",
]

DATA_DIR = Path(os.environ.get("BITPRESS_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
"""Where ``dataset-fashion-mnist`` puts the files (override with $BITPRESS_FASHION_MNIST_DIR)."""

CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

WEIGHTS_PATH = Path(__file__).resolve().parent / "data" / "fashion_cnn.safetensors"

TEST_ACCURACY = 0.9162
"""Accuracy of the shipped weights on all 10,000 test images."""

TEST_ACCURACY_1000 = 0.933
"""Accuracy of the shipped weights on the first 1,000 test images (``limit=1000``)."""

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _read_idx(path: Path) -> np.ndarray:
    """Parse one (gzipped) IDX file: magic ``0x00 0x00 <dtype> <ndim>``, big-endian dims, data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic {raw[:4]!r})")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: unsupported IDX element type 0x{raw[2]:02x} (expected uint8 0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims)) if dims else 0
    if len(raw) - header != expected:
        raise ValueError(f"{path}: truncated or corrupt IDX file ({len(raw) - header} bytes of data, expected {expected})")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_fashion_mnist(split: str = "train", limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a Fashion-MNIST split.

    Returns ``(X, y)``: ``X`` float32 ``[N, 1, 28, 28]`` in ``[0, 1]`` (the normalization the
    shipped CNN was trained with) and ``y`` int64 ``[N]`` with labels 0..9 (see ``CLASSES``).
    ``limit`` keeps the first ``limit`` examples (the files are in a fixed order).
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be None or >= 0, got {limit}")
    img_name, lbl_name = _FILES[split]
    img_path, lbl_path = DATA_DIR / img_name, DATA_DIR / lbl_name
    for p in (img_path, lbl_path):
        if not p.is_file():
            raise FileNotFoundError(f"Fashion-MNIST file {p} not found; install the data set with `apt-get install dataset-fashion-mnist`")
    images = _read_idx(img_path)
    labels = _read_idx(lbl_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
        raise ValueError(f"unexpected Fashion-MNIST shapes: images {images.shape}, labels {labels.shape}")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


class FashionCNN(nn.Module):
    """Small CNN for 28x28 grey images: conv-bn-relu-pool x2, residual conv block, avg-pool, MLP head.

    Shapes: [N,1,28,28] -conv/bn/relu/maxpool-> [N,16,14,14] -conv/bn/relu/maxpool-> [N,32,7,7]
    -(conv/bn/relu) + skip-> [N,32,7,7] -avgpool-> [N,32,3,3] -flatten-> [N,288]
    -linear/relu/dropout-> [N,64] -linear-> [N,10] logits.
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.25) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 32, kernel_size=3, padding=1)
        self.bn3 = nn.BatchNorm2d(32)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(2)
        self.avgpool = nn.AvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 3 * 3, 64)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.maxpool(self.relu(self.bn2(self.conv2(x))))
        x = x + self.relu(self.bn3(self.conv3(x)))  # residual add
        x = self.flatten(self.avgpool(x))
        x = self.dropout(self.relu(self.fc1(x)))
        logits: torch.Tensor = self.fc2(x)
        return logits


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on ``(x, y)``."""
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        correct += int((model(x[i : i + batch_size]).argmax(dim=1) == y[i : i + batch_size]).sum())
    return correct / max(1, x.shape[0])


def train_fashion_cnn(
    epochs: int = 2,
    limit: int | None = None,
    seed: int = 0,
    *,
    batch_size: int = 128,
    lr: float = 2e-3,
    threads: int | None = 2,
    verbose: bool = False,
) -> FashionCNN:
    """Train a fresh :class:`FashionCNN` on the first ``limit`` training images (all if None).

    Adam with a cosine-decayed learning rate; deterministic for a given ``seed`` and thread
    count.  Returns the model in eval mode.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    x, y = load_fashion_mnist("train", limit=limit)
    model = FashionCNN()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = (x.shape[0] + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(x.shape[0], generator=gen)
        t0, total = time.perf_counter(), 0.0
        for i in range(0, x.shape[0], batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * idx.numel()
        if verbose:
            print(f"epoch {epoch + 1}/{epochs}: loss {total / x.shape[0]:.4f} ({time.perf_counter() - t0:.1f} s)")
    return model.eval()


def load_fashion_cnn(path: str | os.PathLike[str] | None = None) -> FashionCNN:
    """The shipped, trained :class:`FashionCNN` in eval mode (weights from ``WEIGHTS_PATH``)."""
    from safetensors.torch import load_file

    p = Path(path) if path is not None else WEIGHTS_PATH
    if not p.is_file():
        raise FileNotFoundError(f"FashionCNN weights not found at {p}")
    model = FashionCNN()
    model.load_state_dict(load_file(str(p)))
    return model.eval()


def _main() -> None:  # pragma: no cover - used once to produce the shipped weights
    """Train and save the shipped weights: ``python -m bitpress.models.fashion_mnist [epochs]``."""
    import sys

    from safetensors.torch import save_file

    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    t0 = time.perf_counter()
    model = train_fashion_cnn(epochs=epochs, limit=None, seed=0, verbose=True)
    print(f"trained in {time.perf_counter() - t0:.1f} s; params {sum(p.numel() for p in model.parameters())}")
    xt, yt = load_fashion_mnist("test")
    print(f"test acc (10k): {evaluate_accuracy(model, xt, yt):.4f}; first 1000: {evaluate_accuracy(model, xt[:1000], yt[:1000]):.4f}")
    WEIGHTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(WEIGHTS_PATH))
    print(f"saved {WEIGHTS_PATH} ({WEIGHTS_PATH.stat().st_size} bytes)")


if __name__ == "__main__":  # pragma: no cover
    _main()
