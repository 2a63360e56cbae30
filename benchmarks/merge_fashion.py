"""Model merging on Fashion-MNIST: two fine-tunes on disjoint class subsets, merged per method.

    .venv/bin/python benchmarks/merge_fashion.py [--quick]

1. base: the shipped FashionCNN (`load_fashion_cnn()`, trained on all ten classes, 0.916).
2. task A = classes 0-4, task B = classes 5-9: two copies of the base fine-tuned (Adam lr 5e-4,
   1 epoch) on the training images of their own classes only (first 48,000 training images).
3. each method merges the two fine-tunes through `bp.compile(base, passes=[Merge(...)])`; the
   task-vector methods' scale is picked from {0.5, 1.0, 1.5} on a validation set (training
   images 50,000-52,000, not used for fine-tuning); greedy-soup uses the same validation accuracy.
4. accuracy: 10-way argmax on the test images of each task (all 10,000 test images; 5,000 per
   task), so forgetting the other task's classes shows.

Prints a markdown table (the RESULTS.md section).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch
from torch import nn

import bitpress as bp
from bitpress.models.fashion_mnist import FashionCNN, load_fashion_cnn, load_fashion_mnist
from bitpress.passes.merge import Merge, merge_state_dicts

TASKS = {"A (0-4)": (0, 1, 2, 3, 4), "B (5-9)": (5, 6, 7, 8, 9)}


def fine_tune(base: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    m = copy.deepcopy(base)
    opt = torch.optim.Adam(m.parameters(), lr=5e-4)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        m.train()
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], 128):
            idx = perm[i : i + 128]
            opt.zero_grad(set_to_none=True)
            loss_fn(m(x[idx]), y[idx]).backward()
            opt.step()
    return m.eval()


def subset(x: torch.Tensor, y: torch.Tensor, classes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    keep = torch.isin(y, torch.tensor(classes))
    return x[keep], y[keep]


@torch.no_grad()
def accuracy(fn, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:  # type: ignore[no-untyped-def]
    correct = 0
    n = (x.shape[0] // batch) * batch
    for i in range(0, n, batch):
        correct += int((fn(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return correct / n


def eager_acc(sd: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    m = FashionCNN()
    m.load_state_dict(sd)
    return accuracy(m.eval(), x, y, 500)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller data (a smoke run, not the reported numbers)")
    ap.add_argument("--target", default="torch")
    a = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    limit = 12000 if a.quick else 48000
    torch.manual_seed(0)
    base = load_fashion_cnn()
    xtr, ytr = load_fashion_mnist("train")
    xval, yval = xtr[50000:52000], ytr[50000:52000]
    xtr, ytr = xtr[:limit], ytr[:limit]
    xte, yte = load_fashion_mnist("test", limit=2000 if a.quick else None)
    tests = {name: subset(xte, yte, cls) for name, cls in TASKS.items()}
    vals = {name: subset(xval, yval, cls) for name, cls in TASKS.items()}
    fts = [fine_tune(base, *subset(xtr, ytr, cls), epochs=1, seed=i) for i, cls in enumerate(TASKS.values())]
    t_train = time.perf_counter() - t0
    sds = [m.state_dict() for m in fts]
    bsd = base.state_dict()

    def val_score(sd: dict[str, torch.Tensor]) -> float:
        return sum(eager_acc(sd, *v) for v in vals.values()) / len(vals)

    batch = 1000
    example = (xte[:batch],)
    rows: list[tuple[str, str, list[float], float]] = []

    def report(name: str, setting: str, model_or_passes) -> None:  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        if isinstance(model_or_passes, nn.Module):
            cm = bp.compile(model_or_passes, example, target=a.target)
        else:
            cm = bp.compile(base, example, passes=model_or_passes, target=a.target)
        accs = [accuracy(cm, *tests[n], batch) for n in TASKS]
        rows.append((name, setting, accs, time.perf_counter() - t))
        print(f"{name:<18} {setting:<28} " + "  ".join(f"{x:.4f}" for x in accs), file=sys.stderr)

    report("base", "shipped, all 10 classes", base)
    report("fine-tuned A", "1 epoch on classes 0-4", fts[0])
    report("fine-tuned B", "1 epoch on classes 5-9", fts[1])
    report("average", "uniform", [Merge(models=fts, method="average")])
    report("slerp", "t=0.5", [Merge(models=fts, method="slerp", t=0.5)])
    report("greedy-soup", "val accuracy", [Merge(models=fts, method="greedy-soup", evaluate=val_score)])
    for method, kw in [
        ("task-arithmetic", {}),
        ("ties", {"density": 0.2}),
        ("dare", {"density": 0.5, "seed": 0}),
        ("dare-ties", {"density": 0.5, "seed": 0}),
        ("breadcrumbs", {"density": 0.9, "outliers": 0.01}),
    ]:
        best = max(
            (0.5, 1.0, 1.5),
            key=lambda s, method=method, kw=kw: val_score(merge_state_dicts(sds, bsd, method=method, scale=s, **kw)[0]),  # type: ignore[arg-type]
        )
        setting = ", ".join(f"{k}={v}" for k, v in kw.items() if k != "seed") + ("" if not kw else ", ") + f"scale={best} (val)"
        report(method, setting, [Merge(models=fts, base=base, method=method, scale=best, **kw)])  # type: ignore[arg-type]
    total = time.perf_counter() - t0
    print(f"\nFashion-MNIST test accuracy (10-way argmax) on each task's test images; target {a.target}; ", end="")
    print(f"{sum(len(t[1]) for t in tests.values())} test images; training {t_train:.0f} s, total {total:.0f} s on 2 CPU threads.\n")
    print("| model | setting | task A (classes 0-4) | task B (classes 5-9) | mean | compile+eval s |")
    print("|---|---|---|---|---|---|")
    for name, setting, accs, secs in rows:
        print(f"| {name} | {setting} | {accs[0]:.4f} | {accs[1]:.4f} | {sum(accs) / 2:.4f} | {secs:.1f} |")


if __name__ == "__main__":
    main()
