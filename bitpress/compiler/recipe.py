"""Recipes: a list of passes written as YAML (or a dict).

    passes:
      - prune: {method: wanda, sparsity: "2:4"}
      - quantize: {method: gptq, bits: 4, group_size: 128}
      - fold-batch-norm

Keys are a pass's `name` or its class name in kebab-case.  Every mistake is a
`RecipeError` naming the offending entry and key.
"""

from __future__ import annotations

import os
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from bitpress.compiler.pass_manager import Pass, pass_registry

__all__ = ["RecipeError", "load_recipe"]


class RecipeError(ValueError):
    """A recipe that cannot be turned into passes."""


def _kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def _index() -> dict[str, type]:
    out: dict[str, type] = {}
    for name, cls in pass_registry().items():
        out[name] = cls
        out.setdefault(_kebab(cls.__name__), cls)
    return out


def load_recipe(recipe: str | os.PathLike[str] | dict[str, Any] | list[Any]) -> list[Pass]:
    """Turn a recipe (YAML path, dict with `passes`, or list) into Pass objects."""
    where = "recipe"
    if isinstance(recipe, (str, os.PathLike)):
        p = Path(recipe)
        where = f"recipe {p}"
        if not p.is_file():
            raise RecipeError(f"{where}: file not found")
        try:
            recipe = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            first = str(e).strip().splitlines()[0]
            raise RecipeError(f"{where}: not valid YAML: {first}") from None
    if isinstance(recipe, dict):
        extra = set(recipe) - {"passes", "name", "description"}
        if extra:
            raise RecipeError(f"{where}: unknown top-level key(s) {sorted(extra)}; expected 'passes'")
        if "passes" not in recipe:
            raise RecipeError(f"{where}: missing the 'passes' list")
        items = recipe["passes"]
    else:
        items = recipe
    if not isinstance(items, list):
        raise RecipeError(f"{where}: 'passes' must be a list, got {type(items).__name__}")
    index = _index()
    out: list[Pass] = []
    for i, item in enumerate(items):
        opts: Any
        if isinstance(item, str):
            key, opts = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            key, opts = next(iter(item.items()))
            opts = opts or {}
        else:
            raise RecipeError(f"{where}: passes[{i}] must be a pass name or a one-key mapping {{name: {{options}}}}, got {item!r}")
        if key not in index:
            raise RecipeError(f"{where}: passes[{i}]: unknown pass {key!r}; known: {', '.join(sorted(index))}")
        cls = index[key]
        if not isinstance(opts, dict):
            raise RecipeError(f"{where}: passes[{i}] ({key}): options must be a mapping, got {opts!r}")
        names = {f.name for f in fields(cls) if f.init}
        for k in opts:
            if k not in names:
                raise RecipeError(f"{where}: passes[{i}] ({key}): unknown option {k!r}; options: {', '.join(sorted(names)) or 'none'}")
        try:
            out.append(cls(**opts))
        except (TypeError, ValueError) as e:
            raise RecipeError(f"{where}: passes[{i}] ({key}): {e}") from None
    return out
