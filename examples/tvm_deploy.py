"""Compile the Fashion-MNIST CNN with TVM for this CPU and for CUDA; save, reload, compare.

llvm: the model is lowered to Relax, every kernel gets a default CPU schedule (parallel,
vectorized; conv and linear as register-tiled GEMMs), and the library is saved with the
weights; `bp.load` runs it again without recompiling.  cuda: the same graph is built with
DLight GPU schedules; the CUDA C that TVM generated is written next to the artifact (it
runs wherever a GPU is present).

    .venv/bin/python examples/tvm_deploy.py [out_dir]
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

import torch

import bitpress as bp
from bitpress.backends.tvm.backend import generated_source
from bitpress.models.fashion_mnist import load_fashion_cnn, load_fashion_mnist


def main(out: Path) -> None:
    x, y = load_fashion_mnist("test", limit=64)
    x = x.clone()
    model = load_fashion_cnn().eval()

    t = time.perf_counter()
    cm = bp.compile(model, (x,), target="llvm")
    print(f"llvm build: {time.perf_counter() - t:.1f} s; kernels: {cm.report.backend['schedules']}")
    logits = cm(x)
    with torch.no_grad():
        ref = model(x)
    print(
        f"max |tvm - torch| = {(logits - ref).abs().max().item():.2e}; accuracy on 64 images {float((logits.argmax(-1) == y).float().mean()):.3f}"
    )

    cm.save(out / "cnn_llvm")
    again = bp.load(out / "cnn_llvm")
    assert torch.equal(again(x), logits), "the reloaded library must give the same outputs"
    print(f"saved and reloaded {out / 'cnn_llvm'}: identical outputs")

    gpu = bp.compile(model, (x,), target="cuda")
    src = generated_source(gpu.executable, "cuda")
    (out / "cnn.cu").write_text(src)
    kernels = len(set(re.findall(r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)", src)))
    print(f"cuda build: {kernels} kernels, {len(src):,} characters of CUDA C in {out / 'cnn.cu'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="bitpress-tvm-")))
