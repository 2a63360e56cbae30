"""The compile report: per-layer table (op, params, bits, sparsity, rank, stored bytes,
error) and totals (size before/after, time and output SQNR per pass).

Bytes are counted as stored: a packed int4 constant counts ceil(n / 2) bytes, scales
and indices count too.  `total_bytes` is the sum over every constant in the graph,
the same figure the table's total line prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from bitpress.compiler.ir import Graph, Node, dtype_bits
from bitpress.compiler.pass_manager import PassRecord, _json_float

__all__ = ["Report", "layer_rows_of"]


def _is_weight_node(n: Node) -> bool:
    return any(v is not None and v.is_const and (v.ndim >= 2 or (v.dtype in ("uint8",) and v.type.static_numel > 64)) for v in n.inputs)


def layer_rows_of(g: Graph) -> list[dict[str, Any]]:
    rows = []
    seen: set[str] = set()
    for n in g.nodes:
        if not _is_weight_node(n):
            continue
        consts = [v for v in n.inputs if v is not None and v.is_const]
        main = max(consts, key=lambda v: v.type.static_numel)
        params = n.meta.get("params", sum(v.type.static_numel for v in consts if (v.ndim >= 1 and v.type.static_numel > 1) or v.ndim >= 2))
        nbytes = sum(v.type.nbytes for v in consts if v.name not in seen)
        seen.update(v.name for v in consts)
        bits = n.meta.get("bits", dtype_bits(main.dtype))
        sparsity = n.meta.get("sparsity")
        if sparsity is None and main.dtype.startswith("float"):
            w = main.value
            sparsity = float((w == 0).float().mean().item()) if w.numel() else 0.0
        rows.append(
            {
                "name": n.name,
                "op": n.op,
                "params": int(params),
                "bits": bits,
                "sparsity": round(float(sparsity or 0.0), 4),
                "rank": n.meta.get("rank"),
                "bytes": int(nbytes),
                "sqnr_db": n.meta.get("sqnr_db"),
            }
        )
    return rows


@dataclass
class Report:
    """What compile() did: per-layer table, totals and per-pass records."""

    layers: list[dict[str, Any]]
    total_bytes: int
    original_bytes: int
    passes: list[PassRecord]
    target: str
    output_sqnr_db: float | None = None
    build_seconds: float = 0.0
    backend: dict[str, Any] = field(default_factory=dict)
    shapes: dict[str, Any] = field(default_factory=dict)  # inputs' types, symbolic dims' ranges, specializations

    @staticmethod
    def build(g: Graph, original_bytes: int, passes: list[PassRecord], target: str) -> Report:
        sq = passes[-1].sqnr_db if passes else None
        return Report(layer_rows_of(g), g.weight_bytes(), original_bytes, passes, target, sq)

    @property
    def compression_ratio(self) -> float:
        return self.original_bytes / max(self.total_bytes, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "total_bytes": self.total_bytes,
            "original_bytes": self.original_bytes,
            "compression_ratio": round(self.compression_ratio, 3),
            "output_sqnr_db": _json_float(self.output_sqnr_db),
            "build_seconds": round(self.build_seconds, 3),
            "layers": [{k: (_json_float(v) if isinstance(v, float) and k == "sqnr_db" else v) for k, v in r.items()} for r in self.layers],
            "passes": [p.to_dict() for p in self.passes],
            "backend": self.backend,
            "shapes": self.shapes,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Report:
        def f(x: Any) -> float | None:
            if x == "inf":
                return math.inf
            if x == "-inf":
                return -math.inf
            return float(x) if x is not None else None

        recs = [
            PassRecord(p["name"], p["seconds"], p["modified"], f(p["sqnr_db"]), p["weight_bytes"], p.get("stats", {})) for p in d["passes"]
        ]
        layers = [dict(r, sqnr_db=f(r.get("sqnr_db"))) for r in d["layers"]]
        return Report(
            layers,
            d["total_bytes"],
            d["original_bytes"],
            recs,
            d["target"],
            f(d.get("output_sqnr_db")),
            d.get("build_seconds", 0.0),
            d.get("backend", {}),
            d.get("shapes", {}),
        )

    def __str__(self) -> str:
        def fmt_db(x: Any, unit: str = "") -> str:
            if x is None:
                return "-"
            if isinstance(x, str) or math.isinf(x):
                return "exact" if (x == "inf" or (isinstance(x, float) and x > 0)) else "-inf"
            return f"{x:.1f}{unit}"

        head = f"{'layer':<40} {'op':<14} {'params':>10} {'bits':>5} {'sparse':>7} {'rank':>5} {'bytes':>11} {'SQNR dB':>8}"
        lines = [head, "-" * len(head)]
        for r in self.layers:
            lines.append(
                f"{r['name'][-40:]:<40} {r['op']:<14} {r['params']:>10,} {r['bits']!s:>5} {r['sparsity']:>7.1%} "
                f"{(r['rank'] if r['rank'] is not None else '-')!s:>5} {r['bytes']:>11,} {fmt_db(r['sqnr_db']):>8}"
            )
        other = self.total_bytes - sum(r["bytes"] for r in self.layers)
        lines.append(f"{'(other constants)':<40} {'':<14} {'':>10} {'':>5} {'':>7} {'':>5} {other:>11,}")
        lines.append("-" * len(head))
        lines.append(
            f"total: {self.total_bytes:,} bytes stored (was {self.original_bytes:,}; {self.compression_ratio:.2f}x smaller); "
            f"target {self.target}; output SQNR {fmt_db(self.output_sqnr_db, ' dB')}"
        )
        for p in self.passes:
            lines.append(
                f"  pass {p.name:<24} {p.seconds * 1000:9.1f} ms  modified={p.modified!s:<5}  SQNR {fmt_db(p.sqnr_db, ' dB'):>9}  {p.weight_bytes:,} B"
            )
        if self.build_seconds:
            lines.append(f"  build ({self.target}) {self.build_seconds * 1000:9.1f} ms")
        if self.shapes.get("inputs"):
            dims = self.shapes.get("dims", {})
            rng = "".join(f"; {n} in {lo}..{'inf' if hi is None else hi}" for n, (lo, hi) in dims.items())
            lines.append("  inputs: " + ", ".join(f"{k}: {t}" for k, t in self.shapes["inputs"].items()) + rng)
        for note in self.shapes.get("notes", []):
            lines.append(f"  shapes: {note}")
        return "\n".join(lines)
