"""Structured pruning of the Fashion-MNIST CNN: 50% of channels removed, bitpress vs Torch-Pruning.

Run: .venv/bin/python benchmarks/prune_fashion.py [--finetune-images 10000] [--threads 2]

Both prune 50% of the channels of every prunable group (the output layer fc2 is kept:
its 10 logits are the model's interface) with L2-magnitude importance over the coupled
group, then (optionally) fine-tune for one pass over `--finetune-images` training images
(Adam, lr 1e-3, batch 128).  bitpress also runs with calibration-activation importance
and least-squares refit of the next layer (no training).  Accuracy on all 10,000 test
images; parameters as stored; latency of the model built by bitpress for llvm (batch 1 and
64, median of repeated calls) and, for reference, eager torch.

bitpress fine-tuning trains the pruned IR directly: the graph is run with the ops'
reference torch functions and its constants as parameters, then the trained values are
written back into the graph (batch-norm is already folded, so it trains conv+bias).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import torch

import bitpress as bp
from bitpress.compiler.ir import Graph
from bitpress.compiler.ops import get_op
from bitpress.models import evaluate_accuracy, load_fashion_cnn, load_fashion_mnist


def graph_forward(g: Graph, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Differentiable run of `g` (the interpreter loop without no_grad)."""
    env: dict[int, Any] = {id(g.inputs[0]): x}
    for v in g.consts.values():
        env[id(v)] = params.get(v.name, g.store[v.name])
    for n in g.nodes:
        args = [None if v is None else env[id(v)] for v in n.inputs]
        out = get_op(n.op).ref(*args, **n.attrs)
        for o, t in zip(n.outputs, out if isinstance(out, (tuple, list)) else [out], strict=True):
            env[id(o)] = t
    return env[id(g.outputs[0])]


def finetune_graph(g: Graph, x: torch.Tensor, y: torch.Tensor, lr: float = 1e-3, batch: int = 128) -> None:
    params = {k: torch.nn.Parameter(v.clone()) for k, v in g.store.items() if v.is_floating_point()}
    opt = torch.optim.Adam(params.values(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(x.shape[0], generator=gen)
    for i in range(0, x.shape[0] - batch + 1, batch):
        idx = perm[i : i + batch]
        gb = _rebatch(g, batch)
        loss = torch.nn.functional.cross_entropy(graph_forward(gb, params, x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, p in params.items():
        g.set_const(g.consts[k], p.detach().clone())


_REBATCHED: dict[tuple[int, int], Graph] = {}


def _rebatch(g: Graph, batch: int) -> Graph:
    """The graph with batch size `batch` (the CNN's graph has no batch-dependent attributes but reshape/flatten shapes)."""
    key = (id(g), batch)
    if key not in _REBATCHED:
        gb = g.clone()
        for n in gb.nodes:
            if n.op == "reshape":
                n.attrs["shape"] = [batch, *list(n.attrs["shape"])[1:]]
        _REBATCHED[key] = gb
    return _REBATCHED[key]


def finetune_torch(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float = 1e-3, batch: int = 128) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(x.shape[0], generator=gen)
    model.train()
    for i in range(0, x.shape[0] - batch + 1, batch):
        idx = perm[i : i + batch]
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def graph_accuracy(g: Graph, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    cm = bp.compile(g, (x[:batch],), target="torch", canonicalize=False, quiet=True)
    correct = sum(int((cm(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, x.shape[0] - batch + 1, batch))
    return correct / (x.shape[0] // batch * batch)


def latency(model: Any, x: torch.Tensor, repeat: int) -> float:
    for _ in range(3):
        model(x)
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        model(x)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def llvm_latency(
    model: torch.nn.Module, batch: int, repeat: int, passes: list[Any] | None = None, images: torch.Tensor | None = None
) -> float:
    """Median latency of `model` (pruned by `passes`, calibrated on `images`) built by bitpress for llvm at `batch`."""
    xb = torch.rand(batch, 1, 28, 28)
    cal = None if images is None else [(images[i : i + batch],) for i in range(0, 256, batch)]
    cm = bp.compile(model, (xb,), passes=passes or [], calibration=cal, target="llvm", quiet=True)
    return latency(cm, xb, repeat)


def count_params(g: Graph) -> int:
    return sum(v.numel for v in g.consts.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--finetune-images", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import torch_pruning as tp

    xt, yt = load_fashion_mnist("test")
    xtr, ytr = load_fashion_mnist("train", limit=args.finetune_images)
    cal = [(xtr[i : i + 100],) for i in range(0, 1000, 100)]
    base = load_fashion_cnn()
    rows: list[tuple[str, float, int, float, float, str]] = []

    def row(label: str, acc: float, params: int, l1: float, l64: float, note: str = "") -> None:
        rows.append((label, acc, params, l1, l64, note))
        print(f"| {label} | {acc:.4f} | {params:,} | {l1:.3f} ms | {l64:.3f} ms | {note} |", flush=True)

    print("| model | test acc (10k) | params | llvm batch 1 | llvm batch 64 | note |")
    print("|---|---|---|---|---|---|")
    dense_g = bp.compile(base, (xt[:100],), quiet=True).graph
    row(
        "dense (BN folded)",
        evaluate_accuracy(base, xt, yt),
        count_params(dense_g),
        llvm_latency(base, 1, args.repeat),
        llvm_latency(base, 64, args.repeat),
    )

    configs = [
        ("bitpress magnitude", bp.passes.Prune(method="magnitude", structure="channel", sparsity=0.5), True),
        ("bitpress activation + LS refit", bp.passes.Prune(method="wanda", structure="channel", sparsity=0.5, reconstruct=True), False),
    ]
    for label, p, ft in configs:
        t = time.perf_counter()
        cm = bp.compile(base, (xt[:100],), passes=[p], calibration=cal, quiet=True)
        secs = time.perf_counter() - t
        g = cm.graph
        l1, l64 = (llvm_latency(base, b, args.repeat, [p], xtr) for b in (1, 64))
        row(label, graph_accuracy(g, xt, yt, 100), count_params(g), l1, l64, f"prune {secs:.1f} s, no training")
        if ft and args.finetune_images:
            t = time.perf_counter()
            finetune_graph(g, xtr, ytr)
            row(
                f"{label} + fine-tune",
                graph_accuracy(g, xt, yt, 100),
                count_params(g),
                l1,
                l64,
                f"1 pass over {args.finetune_images} images, {time.perf_counter() - t:.0f} s",
            )

    model = copy.deepcopy(base)
    ex = torch.randn(1, 1, 28, 28)
    t = time.perf_counter()
    pruner = tp.pruner.MagnitudePruner(
        model, ex, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5, ignored_layers=[model.fc2]
    )
    pruner.step()
    secs = time.perf_counter() - t
    tp_params = sum(p.numel() for p in model.parameters()) + sum(b.numel() for n, b in model.named_buffers() if "running" in n)
    tp_g = bp.compile(model, (xt[:100],), quiet=True).graph
    row(
        "Torch-Pruning magnitude",
        evaluate_accuracy(model, xt, yt),
        count_params(tp_g),
        llvm_latency(model, 1, args.repeat),
        llvm_latency(model, 64, args.repeat),
        f"prune {secs:.1f} s, no training; {tp_params:,} params before BN folding",
    )
    if args.finetune_images:
        t = time.perf_counter()
        finetune_torch(model, xtr, ytr)
        row(
            "Torch-Pruning magnitude + fine-tune",
            evaluate_accuracy(model, xt, yt),
            count_params(tp_g),
            rows[-1][3],
            rows[-1][4],
            f"1 pass over {args.finetune_images} images, {time.perf_counter() - t:.0f} s",
        )
    print("\nlayer shapes (bitpress): " + ", ".join(f"{n.name} {list(n.inputs[1].shape)}" for n in g.nodes if n.op in ("conv2d", "linear")))
    print(
        "layer shapes (Torch-Pruning): "
        + ", ".join(f"{n.name} {list(n.inputs[1].shape)}" for n in tp_g.nodes if n.op in ("conv2d", "linear"))
    )


if __name__ == "__main__":
    main()
