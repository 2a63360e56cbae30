"""Survey what ``torch.export`` produces for the model zoo: op targets, counts and timings.

For each model (FashionCNN at batch 8 by default; MiniLMEncoder at batch 2,
seq 128; SmolLMLogits at seq 16) this runs ``torch.export.export(model, args)`` (non-strict,
the default in torch 2.13), lists every distinct ``node.target`` of the ``call_function``
nodes with its count, checks the exported program against eager, and times the eager
forward (median of several runs) and the export.  ``--no-grad`` exports inside
``torch.no_grad()`` (removes the ``wrap_with_set_grad_enabled`` node SmolLM2's rotary
embedding otherwise produces).  ``--decompose`` also lists the targets
after ``ep.run_decompositions()`` (core ATen), which is what a frontend sees if it asks
for the core op set.

Run: ``python benchmarks/export_ops_survey.py [--decompose] [--models cnn,minilm,smollm2]
[--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bitpress.models import (
    SENTENCES,
    MiniLMEncoder,
    SmolLMLogits,
    encode_batch,
    english_text,
    load_fashion_cnn,
    load_fashion_mnist,
    load_minilm,
    load_smollm2,
    token_windows,
)


def _median_time(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _targets(gm: torch.fx.GraphModule) -> Counter[str]:
    return Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_function")


def _first_tensor(out: Any) -> torch.Tensor:
    while not isinstance(out, torch.Tensor):
        out = out[0]
    return out


def survey(
    name: str,
    model: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    decompose: bool,
    repeat: int,
    no_grad: bool = False,
) -> dict[str, Any]:
    """Export ``model`` on ``args``; return op counts, timings and the eager-vs-exported max abs diff.

    ``no_grad=True`` exports inside ``torch.no_grad()``: HF Llama's rotary embedding is
    decorated with ``@torch.no_grad()``, which otherwise appears in the graph as a
    ``higher_order.wrap_with_set_grad_enabled`` node wrapping a submodule.
    """
    result: dict[str, Any] = {"model": name, "args": [list(a.shape) for a in args], "no_grad": no_grad}
    with torch.no_grad():
        eager_out = model(*args)
        result["eager_forward_s"] = _median_time(lambda: model(*args), repeat)
    t0 = time.perf_counter()
    try:
        with torch.set_grad_enabled(not no_grad):
            ep = torch.export.export(model, args)
    except Exception as e:  # report, do not hide: the survey is about what fails
        result["export_error"] = f"{type(e).__name__}: {e}".splitlines()[0]
        return result
    result["export_s"] = time.perf_counter() - t0
    ops = _targets(ep.graph_module)
    result["ops"] = dict(sorted(ops.items()))
    result["n_call_function"] = sum(ops.values())
    with torch.no_grad():
        exp_out = _first_tensor(ep.module()(*args))
    result["max_abs_diff_vs_eager"] = float((exp_out - _first_tensor(eager_out)).abs().max())
    if decompose:
        t0 = time.perf_counter()
        dep = ep.run_decompositions()
        result["decompose_s"] = time.perf_counter() - t0
        dops = _targets(dep.graph_module)
        result["core_aten_ops"] = dict(sorted(dops.items()))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="cnn,minilm,smollm2")
    ap.add_argument("--decompose", action="store_true", help="also list ops after run_decompositions()")
    ap.add_argument("--minilm-attn", default=None, help="attn_implementation for MiniLM (sdpa|eager)")
    ap.add_argument("--no-grad", action="store_true", help="export inside torch.no_grad()")
    ap.add_argument("--cnn-batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ns = ap.parse_args()
    torch.set_num_threads(ns.threads)
    results = []
    wanted = ns.models.split(",")
    if "cnn" in wanted:
        x, _ = load_fashion_mnist("test", limit=ns.cnn_batch)
        results.append(survey("FashionCNN", load_fashion_cnn(), (x,), ns.decompose, ns.repeat, ns.no_grad))
    if "minilm" in wanted:
        m, tok = load_minilm(ns.minilm_attn)
        ids, mask = encode_batch(tok, SENTENCES[:2], seq_len=128)
        label = "MiniLMEncoder" + (f"[{ns.minilm_attn}]" if ns.minilm_attn else "")
        results.append(survey(label, MiniLMEncoder(m).eval(), (ids, mask), ns.decompose, ns.repeat, ns.no_grad))
    if "smollm2" in wanted:
        lm, ltok = load_smollm2()
        ids = token_windows(ltok, english_text(), 16, 1)[0]
        results.append(survey("SmolLMLogits", SmolLMLogits(lm).eval(), (ids,), ns.decompose, ns.repeat, ns.no_grad))
    for r in results:
        print(f"\n== {r['model']} args={r['args']}" + (" (exported under no_grad)" if r["no_grad"] else ""))
        print(f"eager forward {r['eager_forward_s'] * 1e3:.1f} ms (median)")
        if "export_error" in r:
            print(f"EXPORT FAILED: {r['export_error']}")
            continue
        print(
            f"export {r['export_s']:.2f} s; {r['n_call_function']} call_function nodes; "
            f"max |exported - eager| = {r['max_abs_diff_vs_eager']:.3g}"
        )
        for op, n in r["ops"].items():
            print(f"  {n:5d}  {op}")
        if "core_aten_ops" in r:
            print(f"  after run_decompositions() ({r['decompose_s']:.2f} s):")
            for op, n in r["core_aten_ops"].items():
                print(f"  {n:5d}  {op}")
    if ns.json is not None:
        ns.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
