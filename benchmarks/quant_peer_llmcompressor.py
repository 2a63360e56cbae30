"""Peer: llm-compressor (vLLM's quantization tool) on the same SmolLM2-135M, text and windows.

Runs in its own virtual environment, since llm-compressor pins transformers 5.15-5.17:

    python3 -m venv /tmp/awqpeer
    /tmp/awqpeer/bin/pip install torch==2.13.0 llmcompressor==0.14.0.1 transformers==5.17.0
    PYTHONPATH=. /tmp/awqpeer/bin/python benchmarks/quant_peer_llmcompressor.py --algos w4g64-rtn,w4g64-awq,w4g64-gptq,w3g64-awq,w3g64-gptq

It uses exactly what benchmarks/quant_smollm2.py gives bitpress: the fp32 model from bitpress's
SmolLM2 cache (the same safetensors), the Debian GPL-3 text, calibration on the 8 windows of 64
tokens at window offset 100, perplexity over the first `--eval-windows` windows with
bitpress.models.smollm2.perplexity, lm_head excluded.  Each algorithm is llm-compressor's own
`oneshot` with its default (sequential) pipeline; the quantized model is evaluated in torch with
compressed-tensors' quantized forward.  One JSON line per algorithm goes to --out.

Schemes (compressed-tensors quantization args): asymmetric integer weights, group size as
named, min-max observer (llm-compressor's default); `awq` is AWQModifier (duo scaling, 20-point
grid, block-output objective) followed by the same QuantizationModifier as `rtn`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from bitpress.models.smollm2 import cache_dir, perplexity
from bitpress.models.text import english_text, token_windows

# name -> (method, bits, group size)
# (group 64, not 128: llm-compressor's observers need the group size to divide the 576 input
# columns of SmolLM2's projections; bitpress and ONNX Runtime handle a ragged last group)
ALGOS = {f"w{b}g64-{m}": (m, b, 64) for b in (4, 3, 2) for m in ("rtn", "awq", "gptq")}


def scheme(bits: int, group: int) -> dict[str, Any]:
    return {
        "group_0": {
            "targets": ["Linear"],
            "weights": {"num_bits": bits, "type": "int", "symmetric": False, "strategy": "group", "group_size": group},
        }
    }


def recipe(method: str, bits: int, group: int) -> list[Any]:
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    cfg = scheme(bits, group)
    if method == "gptq":
        return [GPTQModifier(config_groups=cfg, ignore=["lm_head"], bypass_divisibility_checks=True)]
    quant = QuantizationModifier(config_groups=cfg, ignore=["lm_head"], bypass_divisibility_checks=True)
    return [AWQModifier(), quant] if method == "awq" else [quant]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--algos", default="w4g64-rtn,w4g64-awq,w4g64-gptq")
    ap.add_argument("--eval-windows", type=int, default=12)
    ap.add_argument("--calib-windows", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/quant_peer_llmcompressor.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import llmcompressor
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.pipelines.cache import IntermediatesCache
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # AWQ pins its cached activations for faster host-to-device copies; on a machine without an
    # accelerator torch refuses to pin, so skip it (it moves no data and changes no number)
    IntermediatesCache.pin_memory = lambda self, batch_index: None  # type: ignore[method-assign]

    d = cache_dir()
    tok = AutoTokenizer.from_pretrained(str(d))
    text = english_text()
    cal = token_windows(tok, text, 64, args.calib_windows, offset=100)
    ds = Dataset.from_dict({"input_ids": [w[0].tolist() for w in cal], "attention_mask": [[1] * w.shape[1] for w in cal]})
    for name in args.algos.split(","):
        method, bits, group = ALGOS[name]
        model = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32).eval()
        t0 = time.perf_counter()
        if method != "fp32":
            oneshot(model=model, dataset=ds, recipe=recipe(method, bits, group), num_calibration_samples=len(cal), max_seq_length=64)
        tq = time.perf_counter() - t0
        model.eval()
        t1 = time.perf_counter()
        with torch.no_grad():
            ppl = perplexity(lambda ids, m=model: m(ids).logits, tok, text, seq_len=64, max_windows=args.eval_windows)
        rec = {
            "peer": f"llmcompressor {llmcompressor.__version__}",
            "algo": name,
            "bits": bits,
            "group_size": group,
            "ppl": round(ppl, 3),
            "quantize_seconds": round(tq, 1),
            "eval_seconds": round(time.perf_counter() - t1, 1),
            "eval_windows": args.eval_windows,
        }
        print(json.dumps(rec), flush=True)
        with Path(args.out).open("a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
