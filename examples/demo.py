"""bitpress demo: compress a real model end to end and print what each pass did.

The Fashion-MNIST CNN shipped in bitpress.models (trained offline, 0.916 test accuracy)
is traced with torch.export, its batch-norms folded, its weights quantized with GPTQ
to 4 bits in groups of 32 (two codes per byte, one fp16 scale per group, calibrated on
250 training images), then lowered with TVM to native code for this CPU, with fused
unpack-dequantize-matmul kernels.  The report gives per-layer bits, bytes as stored and
SQNR; the accuracy of the compiled model is measured against the fp32 model on 1,000
test images.  (Adding `bp.passes.Prune(method="wanda", sparsity="2:4")` in front
prunes the linear layers to 2:4 too, at a visible accuracy cost on a model this small.)

    make demo        (or .venv/bin/python examples/demo.py)
"""

from __future__ import annotations

import time

import torch

import bitpress as bp
from bitpress.models.fashion_mnist import load_fashion_cnn, load_fashion_mnist


def accuracy(fn, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:  # type: ignore[no-untyped-def]
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((fn(x[i : i + batch]).argmax(-1) == y[i : i + batch]).sum())
    return correct / len(x)


def main() -> None:
    torch.manual_seed(0)
    model = load_fashion_cnn()
    x_train, _ = load_fashion_mnist("train", limit=512)
    x_test, y_test = load_fashion_mnist("test", limit=1000)
    batch = 50
    calibration = [(x_train[i : i + batch],) for i in range(0, 256, batch)][:5]

    t0 = time.perf_counter()
    cm = bp.compile(
        model,
        (x_test[:batch],),
        passes=[bp.passes.Quantize(method="gptq", bits=4, group_size=32)],
        target="llvm",
        calibration=calibration,
        tolerance={"sqnr_db": 15},
    )
    dt = time.perf_counter() - t0
    print(cm.report)
    acc_fp32 = accuracy(model, x_test, y_test, batch)
    acc_bp = accuracy(cm, x_test, y_test, batch)
    print(f"\ncompiled in {dt:.1f} s for {cm.target}")
    print(f"accuracy on 1,000 test images: fp32 {acc_fp32:.3f}, bitpress (GPTQ int4, llvm) {acc_bp:.3f}")
    print(f"weights: {cm.report.original_bytes:,} B -> {cm.report.total_bytes:,} B ({cm.report.compression_ratio:.1f}x smaller)")


if __name__ == "__main__":
    main()
