"""Compression passes.  Each subpackage (canonicalize, quantize, prune, lowrank,
binarize, merge, ...) registers its passes and ops on import and lists its public
passes in `__all__`; they are re-exported here, e.g. `bp.passes.Quantize`."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from bitpress.passes.canonicalize import canonicalize_pipeline

__all__ = ["canonicalize_pipeline"]


def _load_subpackages() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        for name in getattr(mod, "__all__", []):
            globals()[name] = getattr(mod, name)
            if name not in __all__:
                __all__.append(name)


_load_subpackages()


def __getattr__(name: str) -> Any:
    raise AttributeError(f"bitpress.passes has no pass {name!r}; available: {', '.join(sorted(__all__))}")
