"""Latency of the TVM cuda backend vs PyTorch eager on the same GPU, and its error vs the interpreter.

For each model, bitpress target="cuda" (DLight default schedules, or MetaSchedule with
`--tune`) against eager torch on the same GPU, both float32:

- "e2e": one call from host tensors to host tensors (copies in and out included), the way
  `cm(x)` is used; torch gets the same treatment (`m(x.cuda()).cpu()`).
- "device": inputs already on the GPU, timed to a device sync (the kernels alone).

Also the W4A16 g128 (RTN) build of the decoder, whose linears run bitpress's fused
unpack+dequantize+GEMV/GEMM kernels on the GPU, and the max |cuda - interpreter| of every
build (the interpreter runs on the CPU: the oracle).

MiniLM and SmolLM2 use their real architectures (transformers configs) with random weights,
since their checkpoints don't travel to a GPU machine here; latency does not depend on the
values.  The CNN is the shipped Fashion-MNIST model.

Run (on a machine with an NVIDIA GPU):
    python benchmarks/gpu_latency.py [--models mlp,cnn,minilm,smollm2] [--quant] [--tune-models cnn --trials 64]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

import bitpress as bp
from bitpress.compiler.interpreter import run

SMOLLM2 = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    vocab_size=49152,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    rope_theta=100000.0,
)
MINILM = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536, vocab_size=30522)


def timeit(fn: Callable[[], Any], sync: Callable[[], None], min_s: float = 1.0, max_n: int = 500) -> float:
    """Median ms per call after 5 warm-ups, synchronizing the device after each call."""
    for _ in range(5):
        fn()
    sync()
    times = []
    t_end = time.perf_counter() + min_s
    while (len(times) < 10 or time.perf_counter() < t_end) and len(times) < max_n:
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def models(which: list[str]) -> list[tuple[str, str, torch.nn.Module, tuple[torch.Tensor, ...]]]:
    torch.manual_seed(0)
    out: list[tuple[str, str, torch.nn.Module, tuple[torch.Tensor, ...]]] = []
    if "mlp" in which:
        mlp = torch.nn.Sequential(
            torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)
        )
        out.append(("mlp", "MLP 256-512-256-10, batch 32", mlp.eval(), (torch.randn(32, 256),)))
    if "cnn" in which:
        from bitpress.models.fashion_mnist import load_fashion_cnn

        out.append(("cnn", "Fashion-MNIST CNN, batch 32", load_fashion_cnn().eval(), (torch.rand(32, 1, 28, 28),)))
    if "minilm" in which:
        from transformers import BertConfig, BertModel

        from bitpress.models.minilm import MiniLMEncoder

        bert = BertModel(BertConfig(**MINILM), add_pooling_layer=False).eval()  # type: ignore[arg-type]
        ids = torch.randint(0, MINILM["vocab_size"], (1, 128))
        out.append(("minilm", "MiniLM-L6 arch, batch 1, seq 128", MiniLMEncoder(bert).eval(), (ids, torch.ones(1, 128, dtype=torch.int64))))
    if "smollm2" in which:
        from transformers import LlamaConfig, LlamaForCausalLM

        from bitpress.models.smollm2 import SmolLMLogits

        llama = LlamaForCausalLM(LlamaConfig(**SMOLLM2)).eval()  # type: ignore[arg-type]
        for seq in (64, 1):
            ids = torch.randint(0, SMOLLM2["vocab_size"], (1, seq))
            out.append((f"smollm2-{seq}", f"SmolLM2-135M arch, batch 1, seq {seq}", SmolLMLogits(llama).eval(), (ids,)))
    return out


def device_time(cm: bp.CompiledModel, inputs: tuple[torch.Tensor, ...]) -> float:
    """Kernel time: VM call with inputs resident on the GPU, to a device sync."""
    exe: Any = cm.executable
    exe.run(list(inputs))
    args = [exe._to_dev(x) for x in inputs]
    fn = exe._vm["main"]
    return timeit(lambda: fn(*args, *exe._params), exe._dev.sync)


def bench(name: str, m: torch.nn.Module, inputs: tuple[torch.Tensor, ...], passes: list[Any], tune: int) -> dict[str, Any]:
    t = time.perf_counter()
    cm = bp.compile(m, inputs, passes=passes, target="cuda", tune=tune, quiet=True)
    compile_s = time.perf_counter() - t
    ref = run(cm.graph, list(inputs))[0]
    got = cm(*inputs)
    if ref.isnan().any() or got.isnan().any():
        print(f"  NaN in outputs: interpreter {ref.isnan().sum().item()}, cuda {got.isnan().sum().item()}", flush=True)
    err = (got - ref).abs().max().item()
    rel = err / max(ref.abs().max().item(), 1e-12)
    e2e = timeit(lambda: cm(*inputs), lambda: None)
    dev = device_time(cm, inputs)
    row: dict[str, Any] = dict(name=name, compile_s=compile_s, err=err, rel=rel, e2e=e2e, dev=dev, bytes=cm.report.total_bytes)
    if not passes:
        mc = m.cuda()
        xs = [x.cuda() for x in inputs]
        with torch.no_grad():
            row["torch_e2e"] = timeit(lambda: mc(*[x.cuda() for x in inputs]).cpu(), torch.cuda.synchronize)
            row["torch_dev"] = timeit(lambda: mc(*xs), torch.cuda.synchronize)
        m.cpu()
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="mlp,cnn,minilm,smollm2")
    ap.add_argument("--quant", action="store_true", help="also W4A16 g128 (RTN) builds of the decoder and the MLP")
    ap.add_argument("--tune-models", default="", help="models that also get a MetaSchedule-tuned cuda build")
    ap.add_argument("--trials", type=int, default=64)
    args = ap.parse_args()
    print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    rows: list[dict[str, Any]] = []

    def attempt(name: str, m: torch.nn.Module, inputs: tuple[torch.Tensor, ...], passes: list[Any], tune: int) -> None:
        try:
            rows.append(bench(name, m, inputs, passes, tune))
            print(rows[-1], flush=True)
        except Exception as e:  # one failed build must not lose the other rows
            print(f"{name}: FAILED {type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}", flush=True)

    for key, name, m, inputs in models(args.models.split(",")):
        print(f"== {name}", flush=True)
        attempt(name, m, inputs, [], 0)
        if key in args.tune_models.split(","):
            attempt(name + f", tuned {args.trials} trials", m, inputs, [], args.trials)
        if args.quant and key in ("mlp", "smollm2-64", "smollm2-1"):
            q = bp.passes.Quantize(method="rtn", bits=4, group_size=128 if key != "mlp" else 32)
            attempt(name + f", W4A16 g{q.group_size} RTN", m, inputs, [q], 0)
    print()
    print(
        "| model | bitpress cuda e2e | torch eager e2e | bitpress cuda device | torch eager device | max err (rel) | compile s | weight bytes |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        te, td = r.get("torch_e2e"), r.get("torch_dev")
        ratio_e = f" ({r['e2e'] / te:.2f}x)" if te else ""
        ratio_d = f" ({r['dev'] / td:.2f}x)" if td else ""
        print(
            f"| {r['name']} | {r['e2e']:.3f} ms{ratio_e} | {'-' if te is None else f'{te:.3f} ms'} "
            f"| {r['dev']:.3f} ms{ratio_d} | {'-' if td is None else f'{td:.3f} ms'} "
            f"| {r['err']:.1e} ({r['rel']:.1e}) | {r['compile_s']:.1f} | {r['bytes']:,} |"
        )


if __name__ == "__main__":
    main()
