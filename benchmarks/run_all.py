"""Run the benchmark suite (`make bench`): each benchmark in its own process, in order.

The default set is the one that needs no GPU, no peer tool installed by hand and no
multi-hour run; `--all` adds the long perplexity runs, `--only a,b` picks by name.  Each
benchmark prints its own markdown table; the tables in benchmarks/RESULTS.md were made
with the commands given there (the same scripts, sometimes with more trials).

    .venv/bin/python benchmarks/run_all.py [--list] [--only quant_gemv,mcu_bench] [--all]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (name, arguments, in the default set)
BENCHMARKS: list[tuple[str, list[str], bool]] = [
    ("rewrite_scaling", [], True),
    ("backends_latency", ["--models", "mlp,cnn,minilm", "--trials", "0"], True),
    ("onnx_backend", [], True),
    ("quant_gemv", [], True),
    ("quant_minilm", [], True),
    ("prune_kernels", [], True),
    ("prune_fashion", [], True),
    ("lowrank_binary_kernels", [], True),
    ("lowrank_binary_fashion", [], True),
    ("merge_fashion", ["--quick"], True),
    ("mcu_bench", ["--images", "100"], True),
    ("aarch64_bench", ["--images", "100"], True),
    ("quant_smollm2_speed", [], False),
    ("quant_smollm2", [], False),
    ("prune_smollm2", [], False),
    ("lowrank_binary_llm", [], False),
    ("gpu_latency", [], False),  # needs an NVIDIA GPU
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="print the benchmarks and exit")
    ap.add_argument("--only", default="", help="comma-separated names")
    ap.add_argument("--all", action="store_true", help="include the long runs")
    args = ap.parse_args()
    names = {b[0] for b in BENCHMARKS}
    only = [n for n in args.only.split(",") if n]
    unknown = sorted(set(only) - names)
    if unknown:
        print(f"run_all: unknown benchmark(s) {unknown}; known: {sorted(names)}", file=sys.stderr)
        return 2
    chosen = [b for b in BENCHMARKS if (b[0] in only if only else (b[2] or args.all))]
    if args.list:
        for name, argv, default in BENCHMARKS:
            print(f"{name:24s} {'default' if default else 'long   '} {' '.join(argv)}")
        return 0
    failed = []
    for name, argv, _ in chosen:
        cmd = [sys.executable, str(HERE / f"{name}.py"), *argv]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        t = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"=== {name}: exit {rc} in {time.perf_counter() - t:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"run_all: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
