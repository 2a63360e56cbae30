"""MCU backend benchmark: int8 MLP and Fashion-MNIST CNN on Cortex-M4 and M55 (float32 on M4 too).

Per configuration: flash (text + rodata + data) and RAM (data + bss, the arena inside bss) from
arm-none-eabi-size, the arena from the memory plan, executed instructions per inference (QEMU
translation-block trace, exact) and per MAC for the conv/linear kernels, and for the CNN the
accuracy of the firmware in QEMU on N test images next to the interpreter's on the same graph.

    .venv/bin/python benchmarks/mcu_bench.py [--images 1000]
"""

from __future__ import annotations

import argparse
import time

import torch

import bitpress as bp
from bitpress.compiler.interpreter import run
from bitpress.models.fashion_mnist import load_fashion_cnn, load_fashion_mnist


class FashionMLP(torch.nn.Module):
    """784-128-64-10 MLP, trained here for one short epoch (the benchmark measures the compiler, not the model)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(784, 128),
            torch.nn.ReLU(),
            torch.nn.Linear(128, 64),
            torch.nn.ReLU(),
            torch.nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


def train_mlp(x: torch.Tensor, y: torch.Tensor) -> torch.nn.Module:
    torch.manual_seed(0)
    m = FashionMLP()
    opt = torch.optim.Adam(m.parameters(), 2e-3)
    for i in range(0, len(x), 128):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x[i : i + 128]), y[i : i + 128]).backward()
        opt.step()
    return m.eval()


def kernel_rows(info: dict) -> list[dict]:
    return [r for r in info["layers"] if r.get("macs")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1000)
    args = ap.parse_args()
    xtr, ytr = load_fashion_mnist("train", limit=10000)
    xte, yte = load_fashion_mnist("test", limit=args.images)
    cal = [(xtr[i : i + 1],) for i in range(64)]
    models = {"mlp": train_mlp(xtr, ytr), "cnn": load_fashion_cnn()}
    configs = [(mn, t, "int8") for mn in models for t in ("cortex-m4", "cortex-m55")] + [(mn, "cortex-m4", "float32") for mn in models]
    rows = []
    for mname, target, mode in configs:
        t0 = time.perf_counter()
        passes = [bp.passes.Quantize(bits=8, act_bits=8, group_size=None)] if mode == "int8" else []
        cm = bp.compile(models[mname], cal[0], passes=passes, target=target, calibration=cal, options={"allow_float": True})
        build_s = time.perf_counter() - t0
        info = cm.report.backend
        t0 = time.perf_counter()
        outs = cm.executable.run_many([[xte[i : i + 1]] for i in range(len(xte))])
        qemu_s = time.perf_counter() - t0
        ref = [run(cm.graph, [xte[i : i + 1]])[0] for i in range(len(xte))]
        exact = all(torch.equal(o[0], r) for o, r in zip(outs, ref, strict=True))
        maxdiff = max(float((o[0] - r).abs().max()) for o, r in zip(outs, ref, strict=True))
        acc_mcu = sum(int(o[0].argmax() == yte[i]) for i, o in enumerate(outs)) / len(xte)
        acc_ref = sum(int(r.argmax() == yte[i]) for i, r in enumerate(ref)) / len(xte)
        kr = kernel_rows(info)
        kin = sum(r["instructions"] for r in kr)
        kmac = sum(r["macs"] for r in kr)
        weights = cm.report.total_bytes
        rows.append(
            {
                "model": mname,
                "target": target,
                "mode": mode,
                "schedule": info["schedule"] if mode == "int8" else "float32",
                "flash": info["flash_bytes"],
                "text": info["text_bytes"],
                "rodata": info["rodata_bytes"],
                "weights": weights,
                "flash_ratio": info["flash_bytes"] / (weights + info["text_bytes"]),
                "ram": info["ram_bytes"],
                "arena": info["arena_bytes"],
                "instr": info["instructions_per_inference"],
                "macs": info["macs_per_inference"],
                "kernel_ipm": kin / kmac,
                "per_layer": ", ".join(f"{r['name']} {r['instructions_per_mac']}" for r in kr),
                "float_nodes": len(info["float_nodes"]),
                "exact": exact,
                "maxdiff": maxdiff,
                "acc_mcu": acc_mcu,
                "acc_ref": acc_ref,
                "build_s": build_s,
                "qemu_s": qemu_s,
            }
        )
        r = rows[-1]
        print(
            f"{mname} {target} {mode}: flash {r['flash']} B (weights {weights}, text {r['text']}, ratio {r['flash_ratio']:.3f}), "
            f"RAM {r['ram']} B (arena {r['arena']}), {r['instr']:,} instr/inference, {r['macs']:,} MACs, kernels {r['kernel_ipm']:.2f} "
            f"instr/MAC [{r['per_layer']}], bit-exact {exact} (max diff {maxdiff:.2e}), acc QEMU {acc_mcu:.3f} vs interpreter "
            f"{acc_ref:.3f} on {len(xte)}, build {build_s:.1f} s, QEMU {qemu_s:.1f} s",
            flush=True,
        )
    print()
    print(
        "| model | target | path | schedule | flash B | packed weights B | text B | flash / (weights + text) | RAM B (arena) "
        "| instr / inference | MACs | conv+linear instr / MAC | per-layer instr / MAC | QEMU vs interpreter | accuracy QEMU / interp |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        agree = "bit-exact" if r["exact"] else "max diff {:.1e}".format(r["maxdiff"])
        print(
            f"| {r['model']} | {r['target']} | {r['mode']} | {r['schedule']} | {r['flash']:,} | {r['weights']:,} | {r['text']:,} | "
            f"{r['flash_ratio']:.3f} | {r['ram']:,} ({r['arena']:,}) | {r['instr']:,} | {r['macs']:,} | {r['kernel_ipm']:.2f} | "
            f"{r['per_layer']} | {agree} | {r['acc_mcu']:.3f} / {r['acc_ref']:.3f} |"
        )


if __name__ == "__main__":
    main()
