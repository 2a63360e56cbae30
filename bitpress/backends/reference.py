"""The interpreter as a target ("torch"): runs the IR with the reference semantics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bitpress.compiler.interpreter import run
from bitpress.compiler.ir import Graph
from bitpress.compiler.ops import op_names
from bitpress.compiler.target import BuildOptions, parse_options


@dataclass(frozen=True)
class ReferenceOptions:
    """The interpreter takes no options: any key in `compile(options=...)` is an error."""


@dataclass
class ReferenceExecutable:
    graph: Graph
    info: dict[str, Any] = field(default_factory=lambda: {"runtime": "bitpress interpreter (torch)"})

    def run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return run(self.graph, inputs)

    def save(self, directory: Path) -> list[str]:
        return []  # graph.json + weights.safetensors are the whole artifact


class ReferenceBackend:
    name = "torch"
    symbolic_shapes = True  # the interpreter binds symbolic sizes from the inputs

    def supported_ops(self, target: str) -> set[str]:
        return set(op_names())

    def build(self, g: Graph, target: str, options: BuildOptions) -> ReferenceExecutable:
        parse_options(ReferenceOptions, options.extra, "torch (reference)")
        return ReferenceExecutable(g)

    def load(self, directory: Path, g: Graph, target: str) -> ReferenceExecutable:
        return ReferenceExecutable(g)
