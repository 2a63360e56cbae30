"""aarch64-linux backend benchmark: the W8A8 Fashion-MNIST CNN as a static aarch64 executable, per CPU option.

Per configuration (-march=armv8.2-a+dotprod: SDOT; -march=armv8.6-a+i8mm: SMMLA convolutions; -mcpu=cortex-a72:
no dot product, the same layouts on SMULL + SADALP): executed aarch64 instructions per inference and per MAC for
each conv/linear layer (QEMU translation-block log, exact), the dot-product instructions in the model's
functions (objdump), the executable's size, and accuracy on N test images under qemu-aarch64 next to the
interpreter's on the graph the executable computes (bit-exact).

    .venv/bin/python benchmarks/aarch64_bench.py [--images 200]
"""

from __future__ import annotations

import argparse
import time

import bitpress as bp
from bitpress.compiler.interpreter import run
from bitpress.models.fashion_mnist import load_fashion_cnn, load_fashion_mnist

CONFIGS: list[dict[str, str]] = [{}, {"march": "armv8.6-a+i8mm"}, {"mcpu": "cortex-a72"}]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=200)
    args = ap.parse_args()
    x, y = load_fashion_mnist("test", limit=args.images + 32)
    cal = [(x[i : i + 1],) for i in range(args.images, args.images + 32)]
    q = [bp.passes.Quantize(bits=8, act_bits=8, group_size=None)]
    print(
        "| CPU option | schedules | insns / inference | conv+linear insns / MAC | per layer (insns / MAC) | dot insns | executable | bit-exact | accuracy |"
    )
    print("|---|---|---:|---:|---|---:|---:|---|---:|")
    for opts in CONFIGS:
        t0 = time.perf_counter()
        cm = bp.compile(load_fashion_cnn(), cal[0], passes=q, target="aarch64-linux", calibration=cal, options=opts, quiet=True)
        build = time.perf_counter() - t0
        info = cm.report.backend
        lg = cm.executable.graph
        assert lg is not None
        outs = [o[0] for o in cm.executable.run_many([[x[i : i + 1]] for i in range(args.images)])]
        exact = sum(int((o == run(lg, [x[i : i + 1]])[0]).all()) for i, o in enumerate(outs))
        acc = sum(int(o.argmax() == y[i]) for i, o in enumerate(outs)) / args.images
        mac_layers = [r for r in info["layers"] if r.get("macs")]
        ins = sum(r["instructions"] for r in mac_layers)
        macs = sum(r["macs"] for r in mac_layers)
        per = ", ".join(f"{r['name']} {r['instructions_per_mac']}" for r in mac_layers)
        print(
            f"| {' '.join(info['cflags'])} | {info['schedule']}, {info['conv_schedule']} | {info['instructions_per_inference']:,} | "
            f"{ins / macs:.3f} | {per} | {info['dot_instructions']} | {info['executable_bytes']:,} B | {exact}/{args.images} | "
            f"{acc:.3f} |  (build {build:.1f} s)"
        )


if __name__ == "__main__":
    main()
