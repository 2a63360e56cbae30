"""Backend registry: target name -> backend, imported lazily (TVM costs seconds to import).

A backend is a per-op lowering registry plus a build step.  Before building, every
node's op is checked against the target's lowerings; a missing one is a compile error
naming the op, the node and the targets that do support it.  No silent fallbacks.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

from bitpress.compiler.ir import Graph
from bitpress.compiler.registry import Registry

__all__ = [
    "Backend",
    "BuildOptions",
    "Executable",
    "LoweringError",
    "get_backend",
    "known_targets",
    "legalize_check",
    "parse_options",
    "register_backend",
    "registered_targets",
    "resolve_target",
]


class LoweringError(RuntimeError):
    """An op has no lowering on the chosen target."""


@dataclass
class BuildOptions:
    tune: int = 0
    cache_dir: Path | None = None
    quiet: bool = True
    example_inputs: tuple[torch.Tensor, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


OptionsT = TypeVar("OptionsT")


def parse_options(cls: type[OptionsT], extra: Mapping[str, Any], backend: str) -> OptionsT:
    """A backend's typed options (a dataclass) from `compile(options=...)`; unknown keys fail listing the valid ones."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(extra) - set(names))
    if unknown:
        raise ValueError(f"unknown {backend} option(s) {', '.join(unknown)}; known: {', '.join(sorted(names)) or 'none'}")
    return cls(**extra)


class Executable(Protocol):
    info: dict[str, Any]

    def run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]: ...

    def save(self, directory: Path) -> list[str]: ...


class Backend(Protocol):
    name: str

    def supported_ops(self, target: str) -> set[str]: ...

    def build(self, g: Graph, target: str, options: BuildOptions) -> Executable: ...

    def load(self, directory: Path, g: Graph, target: str) -> Executable: ...


_BACKENDS: Registry[str] = Registry("target")
ALIASES = {"cpu": "llvm", "reference": "torch", "interpreter": "torch", "gpu": "cuda"}


def register_backend(targets: Iterable[str], loader: str) -> None:
    """Register `loader` ("module:Class") as the backend for `targets`."""
    for t in targets:
        _BACKENDS.register(t, loader)


def resolve_target(target: str) -> str:
    t = ALIASES.get(target, target)
    if t not in _BACKENDS:
        raise ValueError(f"unknown target {target!r}; known targets: {', '.join(known_targets())}")
    return t


def known_targets() -> list[str]:
    return sorted(_BACKENDS) + sorted(ALIASES)


def registered_targets() -> list[str]:
    """Every real target (no aliases), in registration order."""
    return list(_BACKENDS)


_INSTANCES: dict[str, Backend] = {}


def get_backend(target: str) -> Backend:
    t = resolve_target(target)
    loader = _BACKENDS[t]
    if loader not in _INSTANCES:
        mod, _, cls = loader.partition(":")
        _INSTANCES[loader] = getattr(importlib.import_module(mod), cls)()
    return _INSTANCES[loader]


def legalize_check(g: Graph, target: str) -> None:
    """Raise LoweringError listing every (op, node) the target cannot lower."""
    t = resolve_target(target)
    supported = get_backend(t).supported_ops(t)
    missing: dict[str, list[str]] = {}
    for n in g.nodes:
        if n.op not in supported:
            missing.setdefault(n.op, []).append(n.name)
    if not missing:
        return
    parts = []
    for op, nodes in sorted(missing.items()):
        others = []
        for other in sorted(set(_BACKENDS)):
            if other == t:
                continue
            try:
                if op in get_backend(other).supported_ops(other):
                    others.append(other)
            except Exception:
                continue
        where = f"; targets with a lowering: {', '.join(others)}" if others else "; no target has a lowering"
        shown = ", ".join(nodes[:3]) + (f" (+{len(nodes) - 3} more)" if len(nodes) > 3 else "")
        parts.append(f"op '{op}' at {shown}{where}")
    raise LoweringError(f"target {t} cannot lower: " + "; ".join(parts))
