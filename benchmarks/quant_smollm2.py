"""SmolLM2-135M perplexity and stored size under bitpress quantization.

Run: .venv/bin/python benchmarks/quant_smollm2.py [--eval-windows 24] [--configs fp32,w4-gptq,...]

Text: the GPL-3 text shipped by Debian (bitpress.models.text.english_text), SmolLM2 tokenizer,
windows of 64 tokens.  Evaluation: the first `--eval-windows` windows (perplexity() takes them
from the start).  Calibration: 8 windows from the end of the text (windows 100-107), so the
two never share a token.  lm_head is left in float (it is tied to the token embedding, which
stays float anyway; quantizing it would store a second copy).  Each configuration appends
one JSON line to --out as it finishes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import bitpress as bp
from bitpress.models.smollm2 import SmolLMLogits, load_smollm2, perplexity
from bitpress.models.text import english_text, token_windows

Q = bp.passes.Quantize
EXCLUDE = ("*lm_head*",)
CONFIGS = {
    "fp32": None,
    "w8-rtn": Q(method="rtn", bits=8, group_size=None, exclude=EXCLUDE),
    "w8g128-rtn": Q(method="rtn", bits=8, group_size=128, exclude=EXCLUDE),
    "w4g128-rtn": Q(method="rtn", bits=4, group_size=128, exclude=EXCLUDE),
    "w4g128-rtn-minmax": Q(method="rtn", bits=4, group_size=128, weight_clip="minmax", exclude=EXCLUDE),
    "w4g128-awq": Q(method="awq", bits=4, group_size=128, exclude=EXCLUDE),
    "w4g128-gptq": Q(method="gptq", bits=4, group_size=128, exclude=EXCLUDE),
    "w4g128-gptq-minmax": Q(method="gptq", bits=4, group_size=128, weight_clip="minmax", exclude=EXCLUDE),
    "w4g128-gptq-block": Q(method="gptq", bits=4, group_size=128, sequential="block", exclude=EXCLUDE),
    "w4g128-gptq-nonseq": Q(method="gptq", bits=4, group_size=128, sequential="none", exclude=EXCLUDE),
    "w4g128-gptq-actorder": Q(method="gptq", bits=4, group_size=128, act_order=True, exclude=EXCLUDE),
    "w3g128-rtn": Q(method="rtn", bits=3, group_size=128, exclude=EXCLUDE),
    "w3g128-gptq": Q(method="gptq", bits=3, group_size=128, exclude=EXCLUDE),
    "w2g64-rtn": Q(method="rtn", bits=2, group_size=64, exclude=EXCLUDE),
    "w2g64-gptq": Q(method="gptq", bits=2, group_size=64, exclude=EXCLUDE),
    "w4g64-gptq": Q(method="gptq", bits=4, group_size=64, exclude=EXCLUDE),
    # GPTQ with static activation order, llm-compressor's default (actorder="static")
    **{
        f"w{b}g64-gptq-minmax-actorder": Q(method="gptq", bits=b, group_size=64, weight_clip="minmax", act_order=True, exclude=EXCLUDE)
        for b in (4, 3, 2)
    },
    "w3g64-gptq": Q(method="gptq", bits=3, group_size=64, exclude=EXCLUDE),
    # group 64 with min-max ranges: the settings llm-compressor can run on SmolLM2 (its observers
    # need the group to divide the 576 columns), for benchmarks/quant_peer_llmcompressor.py
    **{
        f"w{b}g64-{m}-minmax": Q(method=m, bits=b, group_size=64, weight_clip="minmax", exclude=EXCLUDE)
        for b in (4, 3, 2)
        for m in ("rtn", "awq", "gptq")
    },
    "auto3.5g128-gptq": Q(method="gptq", bits="auto", avg_bits=3.5, candidate_bits=(2, 3, 4, 8), group_size=128, exclude=EXCLUDE),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval-windows", type=int, default=24)
    ap.add_argument("--calib-windows", type=int, default=8)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--out", default="benchmarks/quant_smollm2.jsonl")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_smollm2()
    wrapped = SmolLMLogits(model).eval()
    text = english_text()
    cal = [(w,) for w in token_windows(tok, text, 64, args.calib_windows, offset=100)]
    ex = cal[0]
    t0 = time.perf_counter()
    base = bp.compile(wrapped, ex, target="torch", quiet=True)
    print(f"imported SmolLM2 in {time.perf_counter() - t0:.1f} s; {base.report.total_bytes / 2**20:.1f} MiB of weights", flush=True)
    out = Path(args.out)
    for name in args.configs.split(","):
        q = CONFIGS[name]
        t0 = time.perf_counter()
        if q is None:
            cm, fn = base, base
        else:
            cm = bp.compile(base.graph.clone(), ex, passes=[q], target="torch", calibration=cal, canonicalize=False, quiet=True)
            fn = cm
        tq = time.perf_counter() - t0
        t1 = time.perf_counter()
        ppl = perplexity(fn, tok, text, seq_len=64, max_windows=args.eval_windows)
        rows = [r for r in cm.report.layers if r["op"] in ("linear", "qlinear") and "lm_head" not in r["name"]]
        lin_bytes = sum(r["bytes"] for r in rows)
        params = sum(r["params"] for r in rows)
        bits = [r["bits"] for r in rows]
        rec = {
            "config": name,
            "ppl": round(ppl, 3),
            "total_bytes": cm.report.total_bytes,
            "linear_bytes": lin_bytes,
            "linear_bits_per_weight": round(8 * lin_bytes / params, 3),
            "bits_histogram": {str(b): bits.count(b) for b in sorted(set(bits), key=str)},
            "quantize_seconds": round(tq, 1),
            "eval_seconds": round(time.perf_counter() - t1, 1),
            "eval_windows": args.eval_windows,
        }
        print(json.dumps(rec), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
