"""SmolLM2-135M perplexity after pruning: bitpress magnitude / Wanda / SparseGPT at 50% and 2:4,
side by side with llm-compressor's SparseGPT and Wanda kernels on the same text and windows.

Run:
    .venv/bin/pip install --no-deps --target /tmp/prune_peer llmcompressor==0.14.0.1 loguru
    .venv/bin/python benchmarks/prune_smollm2.py [--seq 128] [--cal 32] [--eval 8] [--peer-dir /tmp/prune_peer]

Text: bitpress.models.text.english_text() (GPL-3, 7161 tokens).  Evaluation: the first
`--eval` windows of `--seq` tokens; calibration: the next `--cal` windows (disjoint), the
same tensors for bitpress and the peer.  Every linear layer of
the 30 decoder blocks is pruned; lm_head (tied to the embedding) is left dense, as in the
SparseGPT and Wanda papers.  bitpress calibrates sequentially (`calibrate.sequential`;
`--sequential block`: each decoder block on the outputs of the blocks already pruned;
`layer`: also within a block; `auto`, the default: block for SparseGPT, layer otherwise) and runs in its interpreter (the numerics oracle) on the compressed
graph (nm_linear / sparse_linear ops).

The peer: llm-compressor's `oneshot` pipeline needs `datasets`, `auto-round` and
`compressed-tensors` (not installable offline here), so its per-layer kernels
(`modifiers/pruning/{sparsegpt/sgpt_sparsify,wanda/wanda_sparsify}.py`: Hessian / row-norm
accumulation and `sparsify_weight`) are loaded from the installed wheel and driven the way
its sequential pipeline does: decoder block by block, each calibrated on the outputs of
the blocks already pruned.  Defaults as in llm-compressor (block 128, dampening 0.01).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

import bitpress as bp
from bitpress.compiler.frontend import import_module
from bitpress.compiler.interpreter import run
from bitpress.compiler.pass_manager import PassContext, Pipeline
from bitpress.models import SmolLMLogits, english_text, load_smollm2, token_windows
from bitpress.passes import canonicalize_pipeline


def nll_ppl(fn: Any, windows: list[torch.Tensor]) -> float:
    nll, count = 0.0, 0
    with torch.no_grad():
        for w in windows:
            logits = fn(w).reshape(w.shape[1], -1).float()
            nll += float(torch.nn.functional.cross_entropy(logits[:-1], w[0, 1:], reduction="sum"))
            count += w.shape[1] - 1
    return math.exp(nll / count)


def smollm2_setup(seq: int, n_eval: int, n_cal: int) -> tuple[Any, torch.nn.Module, list[torch.Tensor], list[torch.Tensor], Any]:
    """(HF model, logits wrapper, evaluation windows, calibration windows after them, canonical graph)."""
    model, tok = load_smollm2()
    text = english_text()
    ev = token_windows(tok, text, seq, n_eval)
    cal = token_windows(tok, text, seq, n_cal, offset=n_eval)
    wrapper = SmolLMLogits(model).eval()
    g0 = import_module(wrapper, (cal[0],))
    g0, _ = Pipeline(canonicalize_pipeline()).run(g0, PassContext(example_inputs=(cal[0],)))
    return model, wrapper, ev, cal, g0


def load_peer(peer_dir: str) -> tuple[Any, Any]:
    sys.path.insert(0, peer_dir)  # loguru
    root = Path(peer_dir) / "llmcompressor" / "modifiers" / "pruning"
    mods = []
    for name, rel in (("llmc_sgpt", "sparsegpt/sgpt_sparsify.py"), ("llmc_wanda", "wanda/wanda_sparsify.py")):
        spec = importlib.util.spec_from_file_location(name, root / rel)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        mods.append(mod)
    return mods[0], mods[1]


def peer_prune(model: Any, method: str, sparsity: float | str, cal: list[torch.Tensor], sgpt: Any, wanda: Any) -> Any:
    """llm-compressor kernels, sequential over decoder blocks on cached block inputs (as its sequential pipeline)."""
    model = copy.deepcopy(model)
    n, m = (int(sparsity.split(":")[0]), int(sparsity.split(":")[1])) if isinstance(sparsity, str) else (0, 0)
    frac = 0.5 if isinstance(sparsity, str) else float(sparsity)
    layers = model.model.layers
    cached: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    class _Stop(Exception):
        pass

    def catch(mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        cached.append((args, kwargs))
        raise _Stop

    h = layers[0].register_forward_pre_hook(catch, with_kwargs=True)
    with torch.no_grad():
        for w in cal:
            with contextlib.suppress(_Stop):
                model(input_ids=w, use_cache=False)
    h.remove()
    for layer in layers:
        lins = [mod for mod in layer.modules() if isinstance(mod, torch.nn.Linear)]
        stats: dict[Any, torch.Tensor] = {}
        counts: dict[Any, int] = {}
        hooks = []
        for lin in lins:
            stats[lin] = sgpt.make_empty_hessian(lin) if method == "sparsegpt" else wanda.make_empty_row_scalars(lin)
            counts[lin] = 0

            def hook(mod: Any, inp: Any, out: Any, stats: dict[Any, torch.Tensor] = stats, counts: dict[Any, int] = counts) -> None:
                if method == "sparsegpt":
                    stats[mod], counts[mod] = sgpt.accumulate_hessian(inp[0], mod, stats[mod], counts[mod])
                else:
                    stats[mod], counts[mod] = wanda.accumulate_row_scalars(inp[0], mod, stats[mod], counts[mod])

            hooks.append(lin.register_forward_hook(hook))
        with torch.no_grad():
            for args, kwargs in cached:
                layer(*args, **kwargs)
        for hk in hooks:
            hk.remove()
        for lin in lins:
            if method == "sparsegpt":
                new = sgpt.sparsify_weight(lin, stats, frac, n, m, 128, 0.01, False)[1]  # returns (loss, W)
            else:
                new = wanda.sparsify_weight(lin, stats, frac, n, m)
            with torch.no_grad():
                lin.weight.copy_(new.reshape(lin.weight.shape).to(lin.weight.dtype))
        with torch.no_grad():  # the next block sees this block's pruned outputs
            nxt = []
            for args, kwargs in cached:
                out = layer(*args, **kwargs)
                hs = out[0] if isinstance(out, tuple) else out
                nxt.append(((hs, *args[1:]), kwargs) if args else ((), {**kwargs, "hidden_states": hs}))
            cached = nxt
    return model


CONFIGS = [
    f"{tool} {m} {s}"
    for s in ("2:4", "0.5")
    for tool, m in (("bitpress", "magnitude"), ("bitpress", "wanda"), ("bitpress", "sparsegpt"), ("peer", "wanda"), ("peer", "sparsegpt"))
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--cal", type=int, default=32, help="calibration windows (taken after the evaluation windows)")
    ap.add_argument("--eval", type=int, default=8, help="evaluation windows (the first of the text)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peer-dir", default="/tmp/prune_peer")
    ap.add_argument("--only", default="", help="comma list of configs, e.g. 'dense,bitpress sparsegpt 2:4,peer wanda 0.5'")
    ap.add_argument("--hessian-mb", type=int, default=512)
    ap.add_argument("--sequential", default="auto", choices=("auto", "block", "layer", "none"), help="bitpress: Prune(sequential=...)")
    ap.add_argument("--out", default="", help="append one JSON line per finished config to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, wrapper, ev, cal, g0 = smollm2_setup(args.seq, args.eval, args.cal)
    print(f"import + canonicalize: {time.perf_counter() - t0:.1f} s, {len(g0)} nodes", flush=True)
    wanted = [c.strip() for c in args.only.split(",") if c.strip()] or ["dense", *CONFIGS]
    for c in wanted:
        if c != "dense" and c not in CONFIGS:
            raise SystemExit(f"unknown config {c!r}; choose from dense, {', '.join(CONFIGS)}")

    def record(label: str, ppl: float, secs: float, extra: str = "") -> None:
        load = os.getloadavg()[0]
        print(f"| {label} | {ppl:.2f} | {secs:.0f} s | {extra} | load {load:.1f}", flush=True)
        if args.out:
            with open(args.out, "a") as f:
                row = {"config": label, "ppl": ppl, "secs": secs, "extra": extra, "load": load, "seq": args.seq}
                row.update({"cal": args.cal, "eval": args.eval, "sequential": args.sequential})
                f.write(json.dumps(row) + "\n")

    peer = None
    if any(c.startswith("peer") for c in wanted):
        peer = load_peer(args.peer_dir)
    for c in wanted:
        if c == "dense":
            t = time.perf_counter()
            record("dense", nll_ppl(lambda w: wrapper(w), ev), time.perf_counter() - t, "eager torch")
            continue
        tool, method, sp = c.split()
        sparsity: float | str = sp if ":" in sp else float(sp)
        t = time.perf_counter()
        if tool == "bitpress":
            g = g0.clone()
            ctx = PassContext(example_inputs=(cal[0],), calibration=[(w,) for w in cal])
            p = bp.passes.Prune(
                method=method,
                sparsity=sparsity,
                exclude=("*lm_head*",),
                hessian_budget_mb=args.hessian_mb,
                sequential=args.sequential,
            )
            g, _ = Pipeline([p], check_every_pass=False).run(g, ctx)
            secs = time.perf_counter() - t
            ppl = nll_ppl(lambda w, g=g: run(g, (w,))[0], ev)
            ops = sorted({n.op for n in g.nodes if n.op.endswith("linear")})
            sq = sorted(n.meta["sqnr_db"] for n in g.nodes if "sqnr_db" in n.meta and math.isfinite(n.meta["sqnr_db"]))
            extra = f"ops {ops}; weights {g.weight_bytes() / 2**20:.1f} MiB; median layer SQNR {sq[len(sq) // 2]:.1f} dB"
            record(c, ppl, secs, extra)
            del g
        else:
            assert peer is not None
            pm = peer_prune(model, method, sparsity, cal, *peer)
            secs = time.perf_counter() - t
            zeros = [float((lin.weight == 0).float().mean()) for lin in pm.model.layers.modules() if isinstance(lin, torch.nn.Linear)]
            ppl = nll_ppl(lambda w, pm=pm: pm(input_ids=w, use_cache=False).logits, ev)
            record(c, ppl, secs, f"llm-compressor kernels, sequential; mean sparsity {sum(zeros) / len(zeros):.3f}")
            del pm
    print(f"\nwindows: {args.eval} evaluation (first) + {args.cal} calibration of {args.seq} tokens")


if __name__ == "__main__":
    main()
