"""A binarized MLP on Fashion-MNIST, fine-tuned with straight-through estimation, compiled by bitpress.

Model: 784-512-512-10 MLP with batch-norm.  Variants:
  fp32           trained normally (ReLU), compiled unchanged;
  PTQ sign / 2-basis   the fp32 model binarized after training (no fine-tuning);
  BWN (STE)      binary weights (alpha_row * sign(W)), float ReLU activations, fine-tuned with STE;
  XNOR (STE)     binary weights and binary activations (mean|x| * sign(x)) into layers 2 and 3,
                 fine-tuned with STE (the first layer sees pixels, so only its weights are binary).
The STE forward is exactly the compiled op's semantics (batch-norm folds into the per-row scale), so
the compiled model reproduces the fine-tuned accuracy.  Accuracy is measured on all 10,000 test images
with the compiled model on llvm (TVM kernels: add/sub over packed signs, XNOR-popcount).

Run: .venv/bin/python benchmarks/lowrank_binary_fashion.py [--epochs 3] [--ste-epochs 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import bitpress as bp
from bitpress.models.fashion_mnist import load_fashion_mnist
from bitpress.passes import Binarize


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """sign(x) (0 -> +1) forward, identity gradient where |x| <= 1 (hardtanh STE)."""
    s = torch.where(x >= 0, 1.0, -1.0)
    clipped = x.clamp(-1, 1)
    return clipped + (s - clipped).detach()


class BinLinear(nn.Linear):
    """Linear whose forward uses alpha_row * sign(W) (BWN) when `binary`; binary_linear's semantics."""

    binary = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.binary:
            return super().forward(x)
        w = self.weight
        wb = w + (w.abs().mean(1, keepdim=True) * torch.where(w >= 0, 1.0, -1.0) - w).detach()
        return nn.functional.linear(x, wb, self.bias)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn1 = BinLinear(784, 512), nn.BatchNorm1d(512)
        self.fc2, self.bn2 = BinLinear(512, 512), nn.BatchNorm1d(512)
        self.fc3 = BinLinear(512, 10)
        self.act = "relu"  # "relu" | "sign": binary activations into fc2 and fc3
        self.export = False  # export the sign-activation model as its linear skeleton (the op adds the sign)

    def _act(self, h: torch.Tensor) -> torch.Tensor:
        if self.act == "relu":
            return torch.relu(h)
        if self.export:
            return h  # binary_linear(act="sign") of the next layer binarizes its input
        return h.abs().mean(-1, keepdim=True) * sign_ste(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._act(self.bn1(self.fc1(x.flatten(1))))
        h = self._act(self.bn2(self.fc2(h)))
        return self.fc3(h)

    def set_binary(self, on: bool) -> None:
        for m in (self.fc1, self.fc2, self.fc3):
            m.binary = on


def train(model: MLP, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * (len(x) // 256))
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - 255, 256):
            idx = perm[i : i + 256]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


@torch.no_grad()
def accuracy(fn, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:  # type: ignore[no-untyped-def]
    correct = sum(int((fn(x[i : i + batch]).argmax(-1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / len(x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--ste-epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target", default="llvm")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    xtr, ytr = load_fashion_mnist("train")
    xte, yte = load_fashion_mnist("test")
    ex = (xte[:1000],)
    rows = []

    def report(name: str, model: MLP, passes: list[object], torch_acc: float, seconds: float) -> None:
        model.set_binary(False)
        model.export = True
        cm = bp.compile(model, ex, passes=passes, target=args.target, calibration=[(xtr[:1000],)], quiet=True)
        model.export = False
        acc = accuracy(cm, xte, yte)
        rows.append((name, torch_acc, acc, cm.report.total_bytes, cm.report.original_bytes, seconds))

    t = time.perf_counter()
    fp = MLP()
    train(fp, xtr, ytr, args.epochs, 2e-3)
    fp_acc = accuracy(fp, xte, yte)
    report("fp32", fp, [], fp_acc, time.perf_counter() - t)
    report("PTQ sign (no fine-tuning)", fp, [Binarize(method="sign")], float("nan"), 0.0)
    report("PTQ 2-basis (no fine-tuning)", fp, [Binarize(method="multi-basis", bases=2)], float("nan"), 0.0)

    for name, act in (("BWN: binary weights, STE", "relu"), ("XNOR: binary weights + activations, STE", "sign")):
        t = time.perf_counter()
        m = MLP()
        m.load_state_dict(fp.state_dict())
        m.act = act
        m.set_binary(True)
        train(m, xtr, ytr, args.ste_epochs, 1e-3)
        ste_acc = accuracy(m, xte, yte)
        if act == "relu":
            passes: list[object] = [Binarize(method="sign", data_aware=False)]
        else:
            passes = [
                Binarize(method="sign", activations="sign", data_aware=False, exclude=("fc1",)),
                Binarize(method="sign", data_aware=False),
            ]
        report(name, m, passes, ste_acc, time.perf_counter() - t)

    print(f"Fashion-MNIST test accuracy (10,000 images), MLP 784-512-512-10, compiled for {args.target}")
    print("| variant | torch accuracy | compiled accuracy | weight bytes stored | fp32 bytes | ratio | train s |")
    print("|---|---|---|---|---|---|---|")
    for name, ta, ca, b, ob, s in rows:
        print(f"| {name} | {ta:.4f} | {ca:.4f} | {b:,} | {ob:,} | {ob / b:.1f}x | {s:.0f} |")


if __name__ == "__main__":
    main()
