"""SmolLM2-135M perplexity of prune-then-quantize: 2:4 + W4 g128 (nm_qlinear), one pipeline.

Run: .venv/bin/python benchmarks/prune_quant_smollm2.py [--seq 128] [--cal 16] [--eval 8] [--method wanda] [--quant rtn,gptq]

Same text, windows and evaluation as benchmarks/prune_smollm2.py (its `nll_ppl` is
imported): the first `--eval` windows of `--seq` tokens are evaluated, the next `--cal`
are calibration.  Every linear of the 30 decoder blocks is pruned 2:4 (lm_head, tied to the
embedding, stays dense in both steps), then `Quantize(bits=4, group_size=128)` turns each
`nm_linear` into `nm_qlinear`: int4 codes of the kept values with a float16 scale and a
4-bit zero point per 128 kept values, plus the 2-bit indices.  Rows: dense, 2:4 alone, and
2:4 + W4 with RTN and with GPTQ on the kept weights (mask fixed), each evaluated in the
interpreter (the numerics oracle) on the compressed graph; weights are the stored bytes.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

import bitpress as bp
from bitpress.compiler.interpreter import run
from bitpress.compiler.pass_manager import PassContext, Pipeline

sys.path.insert(0, str(Path(__file__).parent))
from prune_smollm2 import nll_ppl, smollm2_setup  # the pure-prune benchmark's data and evaluation, shared


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--cal", type=int, default=16)
    ap.add_argument("--eval", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--method", default="wanda", choices=("magnitude", "wanda", "sparsegpt"))
    ap.add_argument("--quant", default="rtn,gptq", help="comma list of Quantize methods to run after pruning")
    ap.add_argument("--group-size", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, wrapper, ev, cal, g0 = smollm2_setup(args.seq, args.eval, args.cal)
    ctx = PassContext(example_inputs=(cal[0],), calibration=[(w,) for w in cal])

    def row(label: str, g: bp.Graph | None, secs: float) -> None:  # type: ignore[name-defined]
        t = time.perf_counter()
        if g is None:
            ppl, extra = nll_ppl(lambda w: wrapper(w), ev), "eager torch"
            mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        else:
            ppl = nll_ppl(lambda w: run(g, (w,))[0], ev)
            ops = sorted({n.op for n in g.nodes if n.op.endswith("linear")})
            mib = g.weight_bytes() / 2**20
            sq = sorted(n.meta["sqnr_db"] for n in g.nodes if n.op.startswith("nm_") and math.isfinite(n.meta.get("sqnr_db", math.nan)))
            extra = f"ops {ops}; median layer SQNR {sq[len(sq) // 2]:.1f} dB" if sq else f"ops {ops}"
        print(
            f"| {label} | {ppl:.2f} | {mib:.1f} MiB | {secs:.0f} s | {extra} | eval {time.perf_counter() - t:.0f} s, load {os.getloadavg()[0]:.1f}",
            flush=True,
        )

    print("| config | perplexity | weights stored | compress time | note |\n|---|---|---|---|---|", flush=True)
    row("dense fp32", None, 0.0)
    t = time.perf_counter()
    prune = bp.passes.Prune(method=args.method, sparsity="2:4", exclude=("*lm_head*",))
    pruned, _ = Pipeline([prune], check_every_pass=False).run(g0.clone(), ctx)
    t_prune = time.perf_counter() - t
    row(f"{args.method} 2:4", pruned, t_prune)
    for q in [s.strip() for s in args.quant.split(",") if s.strip()]:
        t = time.perf_counter()
        quant = bp.passes.Quantize(method=q, bits=4, group_size=args.group_size, exclude=("*lm_head*",))
        g, _ = Pipeline([quant], check_every_pass=False).run(pruned.clone(), ctx)
        assert not any(n.op == "nm_linear" for n in g.nodes)
        row(f"{args.method} 2:4 + {q} W4 g{args.group_size}", g, t_prune + time.perf_counter() - t)
        del g
    print(f"\nwindows: {args.eval} evaluation (first) + {args.cal} calibration of {args.seq} tokens; load {os.getloadavg()}")


if __name__ == "__main__":
    main()
