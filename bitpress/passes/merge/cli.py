"""`bitpress merge`: merge checkpoints (or fold a LoRA adapter) into one .safetensors file.

    bitpress merge --base b.safetensors --models a.safetensors c.safetensors --method ties --density 0.2 -o merged.safetensors
    bitpress merge --models a.safetensors c.safetensors --method average -o soup.safetensors
    bitpress merge --base b.safetensors --lora adapter_model.safetensors --lora-alpha 16 -o folded.safetensors

Works on state dicts only (no model code needed); the output is written to a temp file
and renamed into place, so a failed merge never leaves a half-written file.
"""

from __future__ import annotations

import argparse
import json

from bitpress.compiler.commands import register_command
from bitpress.passes.merge._io import check_compatible, load_state_dict, save_state_dict_atomic
from bitpress.passes.merge._lora import fold_lora_state_dict, parse_lora
from bitpress.passes.merge._methods import METHODS, NEEDS_BASE, merge_state_dicts
from bitpress.passes.merge.passes import Merge

__all__ = ["configure_parser", "run"]


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = "merge fine-tuned checkpoints, or fold a LoRA adapter into a base checkpoint"
    p.add_argument("--base", help="base (pre-trained) checkpoint: needed by task-arithmetic, ties, dare, dare-ties, breadcrumbs, --lora")
    p.add_argument("--models", nargs="+", default=[], help="fine-tuned checkpoints (.safetensors or torch .pt/.bin)")
    p.add_argument("--method", default="average", choices=[m for m in METHODS if m != "greedy-soup"])
    p.add_argument("--density", type=float, default=None, help="fraction of each task vector kept (default per method)")
    p.add_argument("--scale", type=float, default=1.0, help="lambda multiplying the merged task vector")
    p.add_argument("--weights", type=float, nargs="+", default=None, help="one weight per model")
    p.add_argument("--seed", type=int, default=0, help="DARE's random masks")
    p.add_argument("--outliers", type=float, default=0.01, help="breadcrumbs: fraction of largest entries dropped")
    p.add_argument("--t", type=float, default=0.5, help="slerp: 0 gives models[0], 1 gives models[1]")
    p.add_argument("--lora", help="fold this LoRA adapter (lora_A/lora_B keys) into --base instead of merging models")
    p.add_argument("--lora-scale", type=float, default=None, help="LoRA multiplier s in W + s B A (default 1)")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha: s = alpha / r")
    p.add_argument("-o", "--output", required=True, help="merged .safetensors file to write")


def run(a: argparse.Namespace) -> int:
    if not a.output.endswith(".safetensors"):
        raise ValueError(f"--output: write a .safetensors file, got {a.output!r}")
    if a.lora:
        if a.models or not a.base:
            raise ValueError("--lora folds one adapter into --base; do not pass --models")
        out = fold_lora_state_dict(
            load_state_dict(a.base, a.base), parse_lora(load_state_dict(a.lora, a.lora), scale=a.lora_scale, alpha=a.lora_alpha)
        )
        meta = {"bitpress": json.dumps({"lora": a.lora, "base": a.base})}
        dest = save_state_dict_atomic(out, a.output, meta)
        print(f"folded {a.lora} into {a.base} -> {dest}")
        return 0
    if not a.models:
        raise ValueError("--models: give the checkpoints to merge")
    # The pass validates the options exactly as compile() would (one-line errors naming the key).
    cfg = Merge(
        models=a.models,
        base=a.base,
        method=a.method,
        density=a.density,
        scale=a.scale,
        weights=a.weights,
        seed=a.seed,
        outliers=a.outliers,
        t=a.t,
    )
    models = [load_state_dict(m, m) for m in a.models]
    base = load_state_dict(a.base, a.base) if a.base else None
    if base is None and a.method in NEEDS_BASE:
        raise ValueError(f"--base: method {a.method!r} needs the base checkpoint")
    if base is not None:
        check_compatible(base, a.base, list(zip(a.models, models, strict=True)))
    else:
        check_compatible(models[0], a.models[0], list(zip(a.models[1:], models[1:], strict=True)))
    merged, _ = merge_state_dicts(
        models,
        base,
        method=a.method,
        weights=cfg.weights,
        density=float(cfg.density),  # type: ignore[arg-type]
        scale=a.scale,
        seed=a.seed,
        outliers=a.outliers,
        t=a.t,
        keys=list(base if base is not None else models[0]),
    )
    meta = {"bitpress": json.dumps({"method": a.method, "density": cfg.density, "scale": a.scale, "models": a.models, "base": a.base})}
    dest = save_state_dict_atomic(merged, a.output, meta)
    print(f"merged {len(models)} model(s) with {a.method} -> {dest} ({len(merged)} tensors)")
    return 0


register_command("merge", configure_parser, run)
