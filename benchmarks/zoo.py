"""The zoo pass-rate table (issue 14): every architecture of tests/zoo/models.py x every check
of tests/zoo/harness.py, as a markdown table for benchmarks/RESULTS.md.

    .venv/bin/python -m benchmarks.zoo [arch ...]

An xfail counts as a failure.  Each cell: pass / FAIL (the first line of the error).
"""

from __future__ import annotations

import sys
import time
import warnings

import torch


def main(names: list[str]) -> None:
    from tests.zoo.harness import TARGETS, XFAIL, check
    from tests.zoo.models import ZOO

    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    names = names or list(ZOO)
    rows, failures, total = [], [], 0
    t0 = time.perf_counter()
    for n in names:
        cells = []
        for t in TARGETS:
            total += 1
            if (n, t) in XFAIL:
                cells.append("xfail")
                failures.append(f"{n} x {t}: xfail: {XFAIL[(n, t)]}")
                continue
            try:
                check(n, t)
                cells.append("pass")
            except Exception as e:
                cells.append("FAIL")
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                failures.append(f"{n} x {t}: {type(e).__name__}: {first[:200]}")
        rows.append(f"| {n} | {ZOO[n].family} | " + " | ".join(cells) + " |")
        print(rows[-1], file=sys.stderr, flush=True)
    passed = total - len(failures)
    print(f"| architecture | family | {' | '.join(TARGETS)} |")
    print("|---|---|" + "---|" * len(TARGETS))
    print("\n".join(rows))
    print(f"\n{len(names)} architectures, {passed}/{total} cells pass ({100 * passed / total:.1f}%), {time.perf_counter() - t0:.0f} s")
    for f in failures:
        print(f"- {f}")


if __name__ == "__main__":
    main(sys.argv[1:])
