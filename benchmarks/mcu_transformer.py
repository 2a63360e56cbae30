"""Integer-only transformer block on Cortex-M4 / M55 in QEMU: flash, RAM, instructions, bit-exactness, error.

The block is tests/backends/mcu/test_mcu.py::_Block (pre-norm, LayerNorm, q/k/v, explicit q @ k^T,
softmax, att @ v, proj, residual adds, fc1-gelu-fc2), random weights, at two sizes.  Paths:

- int8 (all): `Quantize(bits=8, act_bits=8, group_size=None, act_scope="all")`, integer-only firmware
  (no allow_float): W8A8 linears, integer layer norm / softmax / attention matmuls / residual adds;
- W8A8 + float glue: `act_scope="layers"` with allow_float (layer norm, softmax, matmuls, adds in float32);
- float32: the model uncompressed (allow_float).

Per row: flash (text + rodata + data) and RAM (data + bss; the arena in parentheses) from
arm-none-eabi-size and the memory plan, executed instructions per inference (QEMU trace, exact) and
their split by op, and on N random inputs (calibration: 32 other random inputs): the firmware against the
interpreter on the graph it computes (`cm.executable.graph`) end to end, and per layer (a second build
with every integer tensor as an output), the output error against the float model and against the
W8A8 (float glue) pass graph.

    .venv/bin/python benchmarks/mcu_transformer.py [--samples 64] [--minilm]

`--minilm` adds a real encoder layer: all-MiniLM-L6-v2 layer 0 (hidden 384, 16 tokens of real
sentences, fused attention as exported by transformers) integer-only on the Cortex-M4.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

import bitpress as bp
from bitpress.compiler.interpreter import run

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.backends.mcu.test_mcu import _Block

GROUPS = {
    "linear": ("qlinear_w8a8", "linear"),
    "attn matmul": ("matmul_int8", "matmul"),
    "layer norm": ("layer_norm_int8", "layer_norm"),
    "softmax": ("softmax_int8", "softmax"),
    "residual add": ("add_requant_int8", "rescale_add_int32", "requantize_int32", "add"),
}


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), 0))


def _split(layers: list[dict]) -> str:
    tot: dict[str, int] = {}
    for r in layers:
        g = next((k for k, ops in GROUPS.items() if r["op"] in ops), "other")
        tot[g] = tot.get(g, 0) + r["instructions"]
    return ", ".join(f"{k} {v:,}" for k, v in tot.items())


def _ipm(layers: list[dict], ops: tuple[str, ...]) -> str:
    rows = [r for r in layers if r["op"] in ops and r.get("macs")]
    if not rows:
        return "-"
    return f"{sum(r['instructions'] for r in rows) / sum(r['macs'] for r in rows):.2f}"


def bench(d: int, heads: int, t: int, target: str, path: str, samples: int) -> str:
    torch.manual_seed(0)
    m = _Block(d, heads).eval()
    torch.manual_seed(1)
    cal = [(torch.randn(1, t, d),) for _ in range(32)]
    xs = [torch.randn(1, t, d) for _ in range(samples)]
    with torch.no_grad():
        ref = torch.cat([m(x) for x in xs])
    q = bp.passes.Quantize(bits=8, act_bits=8, group_size=None, act_scope="all" if path == "int8 (all)" else "layers")
    passes = [] if path == "float32" else [q]
    opts = {} if path == "int8 (all)" else {"allow_float": True}
    t0 = time.time()
    cm = bp.compile(m, cal[0], passes=passes, target=target, calibration=cal, options=opts)
    build_s = time.time() - t0
    info = cm.report.backend
    outs = torch.cat([o[0] for o in cm.executable.run_many([[x] for x in xs])])
    lg = cm.executable.graph
    assert lg is not None
    interp = torch.cat([run(lg, [x])[0] for x in xs])
    if path == "float32":
        exact = f"max diff {float((outs - interp).abs().max()):.1e}"
        per_layer = "n/a (float)"
    else:
        exact = "bit-exact" if torch.equal(outs, interp) else f"DIFFERS (max {float((outs - interp).abs().max()):.3g})"
        every = lg.clone()
        every.outputs = [n.output for n in every.nodes if n.output.dtype in ("int8", "int32")]
        cl = bp.compile(every, (xs[0],), target=target, canonicalize=False, options={"profile": False, **opts})
        k = min(samples, 8)
        bad = 0
        for x, got in zip(xs[:k], cl.executable.run_many([[x] for x in xs[:k]]), strict=True):
            bad += sum(not torch.equal(a, b) for a, b in zip(got, run(every, [x]), strict=True))
        per_layer = f"{len(every.outputs)} tensors x {k} inputs: " + ("all equal" if bad == 0 else f"{bad} differ")
    w8a8 = bp.compile(m, cal[0], passes=[bp.passes.Quantize(bits=8, act_bits=8, group_size=None)], target="torch", calibration=cal)
    ref_w8a8 = torch.cat([w8a8(x) for x in xs])
    layers = info["layers"]
    if path == "int8 (all)":  # the pass's QDQ graph (float glue between the QDQ pairs) in the interpreter
        qdq = torch.cat([run(cm.graph, [x])[0] for x in xs])
        s_out = float(lg.outputs[0].producer.attrs["scale"])  # type: ignore[union-attr]
        same = float((((outs - qdq) / s_out).round() == 0).float().mean())
        pass_col = f"{float((qdq - ref).abs().max()):.3f} / {_cos(qdq, ref):.5f}; {same:.1%} of codes = firmware"
    else:
        pass_col = "-"
    return (
        f"| d={d} h={heads} T={t} | {target} | {path} | {info['flash_bytes']:,} | {info['ram_bytes']:,} ({info['arena_bytes']:,}) | "
        f"{info['instructions_per_inference']:,} | {info['macs_per_inference']:,} | {_ipm(layers, GROUPS['linear'])} | "
        f"{_ipm(layers, GROUPS['attn matmul'])} | {_split(layers)} | {exact} | {per_layer} | "
        f"{float((outs - ref).abs().max()):.3f} / {_cos(outs, ref):.5f} | {pass_col} | {_cos(outs, ref_w8a8):.5f} | "
        f"{'yes' if info['integer_only'] else 'no'} | {build_s:.1f} |"
    )


def bench_minilm(observer: str = "percentile") -> str:
    """MiniLM-L6 encoder layer 0 (hidden 384, T=16, real weights and sentences) integer-only on M4."""
    from bitpress.models.minilm import SENTENCES, encode_batch, load_minilm

    model, tok = load_minilm()
    hf = model.model if hasattr(model, "model") else model

    class Layer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = hf.encoder.layer[0]

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return self.layer(h)[0]  # type: ignore[no-any-return]

    m = Layer().eval()
    ids, _ = encode_batch(tok, SENTENCES[:48], 16)
    with torch.no_grad():
        hs = hf.embeddings(input_ids=ids)
    cal, xs = [(hs[i : i + 1],) for i in range(32)], [hs[i : i + 1] for i in range(32, 48)]
    q = bp.passes.Quantize(bits=8, act_bits=8, group_size=None, act_scope="all", observer=observer)
    cm = bp.compile(m, cal[0], passes=[q], target="cortex-m4", calibration=cal)
    info = cm.report.backend
    outs = [o[0] for o in cm.executable.run_many([[x] for x in xs])]
    lg = cm.executable.graph
    assert lg is not None
    exact = all(torch.equal(o, run(lg, [x])[0]) for x, o in zip(xs, outs, strict=True))
    with torch.no_grad():
        ref = torch.cat([m(x) for x in xs])
    layers = cm.report.backend["layers"]
    return (
        f"MiniLM-L6 layer 0 (T=16, {observer} observer) on cortex-m4: integer only {info['integer_only']}, flash {info['flash_bytes']:,} B, "
        f"RAM {info['ram_bytes']:,} B (arena {info['arena_bytes']:,}), {info['instructions_per_inference']:,} instructions for "
        f"{info['macs_per_inference']:,} MACs (linear {_ipm(layers, GROUPS['linear'])}, attention matmuls {_ipm(layers, GROUPS['attn matmul'])} "
        f"instr/MAC; {_split(layers)}), QEMU vs interpreter on 16 sentences: {'bit-exact' if exact else 'DIFFERS'}, "
        f"cosine vs float {_cos(torch.cat(outs), ref):.4f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--minilm", action="store_true", help="also run MiniLM-L6 encoder layer 0 on the M4 (about a minute)")
    args = ap.parse_args()
    os.environ.setdefault("BITPRESS_QUIET", "1")
    print(f"load average at start: {os.getloadavg()}")
    print(
        "| block | target | path | flash B | RAM B (arena) | instr / inference | MACs | linear instr/MAC | attn matmul instr/MAC | "
        "instructions by op | QEMU vs interpreter (end to end) | per layer | max abs err / cosine vs float model | "
        "QDQ pass graph (interpreter) vs float model | "
        "cosine vs W8A8 float-glue graph | integer only | build s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for d, h, t in ((16, 2, 6), (64, 4, 16)):
        for target, path in (
            ("cortex-m4", "int8 (all)"),
            ("cortex-m55", "int8 (all)"),
            ("cortex-m4", "W8A8 + float glue"),
            ("cortex-m4", "float32"),
        ):
            print(bench(d, h, t, target, path, args.samples), flush=True)
    if args.minilm:
        print(bench_minilm(), flush=True)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
