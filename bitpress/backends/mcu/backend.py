"""The Cortex-M backend: C project + firmware ELF per compiled model, run and measured in QEMU.

build(): legalize the W8A8 glue into int8 (legalize.py), pick the core's GEMV schedule
(bitpress.schedules.mcu), generate model.c/model.h (codegen.py, lowerings.py), write the
project (kernels, startup, linker script, Makefile, README), build it with arm-none-eabi-gcc,
read flash/RAM from arm-none-eabi-size and the memory plan, and count executed instructions
per inference and per layer in QEMU on the example input.  run() feeds samples to the ELF
through semihosting files; save() copies the project and ELF into the artifact.

Options (compile(..., options={...})): allow_float (bool, default False), schedule
("scalar" | "dsp-4row" | "mve-4row"), profile (bool, default True), opt ("-O2").
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bitpress.backends.mcu.boards import Board, board_for
from bitpress.backends.mcu.codegen import GeneratedModel, generate, lowered_ops
from bitpress.backends.mcu.legalize import legalize
from bitpress.backends.mcu.toolchain import check_tools, elf_sizes, make, profile, qemu_run
from bitpress.compiler.ir import Graph, to_torch_dtype
from bitpress.compiler.target import BuildOptions
from bitpress.schedules.mcu import gemv_schedule

__all__ = ["McuBackend", "McuExecutable"]

_C_DIR = Path(__file__).resolve().parent / "c"
_OPTIONS = {"allow_float", "schedule", "profile", "opt"}

MAKEFILE = """# Builds model.elf for {core} ({machine} in QEMU).  `make run` runs it on input.bin -> output.bin.
CC = arm-none-eabi-gcc
CFLAGS = {cflags} -mthumb {opt} -std=c11 -ffunction-sections -fdata-sections -ffp-contract=off -mfp16-format=ieee -Wall -Wno-unused-variable
LDFLAGS = --specs=nano.specs --specs=rdimon.specs -nostartfiles -T link.ld {defsyms},--gc-sections -lm
SRC = startup.c main.c model.c

model.elf: $(SRC) model.h bp_kernels.h link.ld
\t$(CC) $(CFLAGS) $(SRC) $(LDFLAGS) -o $@

run: model.elf
\tqemu-system-arm -M {machine} -nographic -monitor none -serial none -semihosting-config enable=on,target=native -kernel model.elf

clean:
\trm -f model.elf
"""

README = """# {name}: bitpress firmware for {core}

Files: `model.c` (layers as functions over one static arena of {arena} bytes; weights as const
arrays in flash), `model.h` (API: write inputs at `bp_input(i)`, call `bp_model_run()`, read
`bp_output(i)`), `bp_kernels.h` (int8 kernels, schedule `{schedule}`, and float kernels),
`main.c` (harness: reads `input.bin`, writes `output.bin` through semihosting), `startup.c`,
`link.ld`, `Makefile`.  No heap, no RTOS, no TVM runtime.

Build and run in QEMU: `make && cp <samples> input.bin && make run` (inputs: {inputs}; outputs: {outputs}).

On a real board: keep `model.c`, `model.h` and `bp_kernels.h`, replace `main.c` with your
application (fill `bp_input(0)`, call `bp_model_run()`), and use the vendor's startup file and
linker script (or adapt `link.ld`: CODE = flash, RAM = SRAM).  Compile with the same CFLAGS
(`{cflags} -mthumb {opt} -ffp-contract=off -mfp16-format=ieee`) and drop `--specs=rdimon.specs`
(semihosting needs a debugger attached) for `--specs=nosys.specs`.  Flash with the board's tool,
e.g. `openocd -f board/<board>.cfg -c "program model.elf verify reset exit"` or pyOCD.
"""


def _bytes_of(inputs: Sequence[torch.Tensor]) -> bytes:
    return b"".join(t.detach().contiguous().cpu().numpy().tobytes() for t in inputs)


@dataclass
class McuExecutable:
    project: Path
    board: Board
    out_types: list[tuple[tuple[int, ...], str]]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def elf(self) -> Path:
        return self.project / "model.elf"

    def run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self.run_many([list(inputs)])[0]

    def run_many(self, samples: Sequence[Sequence[torch.Tensor]]) -> list[list[torch.Tensor]]:
        """Run several samples in one QEMU session (one firmware boot)."""
        raw = qemu_run(self.board, self.elf, b"".join(_bytes_of(s) for s in samples))
        sizes = [math.prod(s) * torch.empty((), dtype=to_torch_dtype(d)).element_size() for s, d in self.out_types]
        per = sum(sizes)
        if len(raw) != per * len(samples):
            raise RuntimeError(f"firmware wrote {len(raw)} bytes, expected {per * len(samples)}")
        res, pos = [], 0
        for _ in samples:
            outs = []
            for (shape, dt), nb in zip(self.out_types, sizes, strict=True):
                outs.append(torch.frombuffer(bytearray(raw[pos : pos + nb]), dtype=to_torch_dtype(dt)).reshape(shape).clone())
                pos += nb
            res.append(outs)
        return res

    def save(self, directory: Path) -> list[str]:
        dest = directory / "mcu"
        shutil.copytree(self.project, dest, dirs_exist_ok=True)
        (dest / "info.json").write_text(json.dumps(self.info, indent=1))
        return [f"mcu/{p.name}" for p in sorted(dest.iterdir()) if p.is_file()]


class McuBackend:
    name = "mcu"

    def supported_ops(self, target: str) -> set[str]:
        # the W8A8 ops plus what legalization turns into int8 (every unary op after a dequantize)
        from bitpress.backends.mcu import lowerings  # noqa: F401
        from bitpress.backends.mcu.legalize import UNARY_OPS

        return lowered_ops() | set(UNARY_OPS)

    def build(self, g: Graph, target: str, options: BuildOptions) -> McuExecutable:
        board = board_for(target)
        opts = dict(options.extra)
        unknown = set(opts) - _OPTIONS
        if unknown:
            raise ValueError(f"unknown MCU option(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_OPTIONS))}")
        check_tools()
        sched = gemv_schedule(dsp=board.dsp, mve=board.mve, override=opts.get("schedule"))
        lg = legalize(g)
        gen = generate(lg, board, sched, allow_float=bool(opts.get("allow_float", False)))
        if gen.plan.peak > board.ram_length:
            raise ValueError(
                f"model needs a {gen.plan.peak}-byte arena; {board.machine} ({board.core}) has {board.ram_length} bytes of RAM"
            )
        project = Path(tempfile.mkdtemp(prefix=f"bitpress-{board.core}-"))
        try:
            write_project(project, gen, board, sched.name, str(opts.get("opt", "-O2")), g)
            elf = make(project)
        except BaseException:
            shutil.rmtree(project, ignore_errors=True)
            raise
        exe = McuExecutable(project, board, [(o.shape, o.dtype) for o in g.outputs])
        weakref.finalize(exe, shutil.rmtree, str(project), True)  # the build directory lives as long as the executable
        exe.info = build_info(gen, board, sched.name, elf)
        if opts.get("profile", True):
            ex = options.example_inputs or tuple(torch.zeros(v.shape, dtype=to_torch_dtype(v.dtype)) for v in g.inputs)
            exe.info.update(profile_info(exe, gen, list(ex)))
        return exe

    def load(self, directory: Path, g: Graph, target: str) -> McuExecutable:
        board = board_for(target)
        project = directory / "mcu"
        if not (project / "model.elf").is_file():
            raise ValueError(f"{directory}: MCU artifact has no mcu/model.elf")
        info = json.loads((project / "info.json").read_text()) if (project / "info.json").is_file() else {}
        return McuExecutable(project, board, [(o.shape, o.dtype) for o in g.outputs], info)


def write_project(project: Path, gen: GeneratedModel, board: Board, schedule: str, opt: str, g: Graph) -> None:
    for f in ("bp_kernels.h", "startup.c", "main.c", "link.ld"):
        shutil.copy(_C_DIR / f, project / f)
    (project / "model.c").write_text(gen.model_c)
    (project / "model.h").write_text(gen.model_h)
    (project / "Makefile").write_text(
        MAKEFILE.format(core=board.core, machine=board.machine, cflags=" ".join(board.cflags), opt=opt, defsyms=board.defsyms)
    )
    sig = lambda vs: ", ".join(f"{v.name}: {v.dtype}{list(v.shape)}" for v in vs)
    (project / "README.md").write_text(
        README.format(
            name=g.name if hasattr(g, "name") else "model",
            core=board.core,
            arena=gen.plan.peak,
            schedule=schedule,
            inputs=sig(g.inputs),
            outputs=sig(g.outputs),
            cflags=" ".join(board.cflags),
            opt=opt,
        )
    )


def build_info(gen: GeneratedModel, board: Board, schedule: str, elf: Path) -> dict[str, Any]:
    sz = elf_sizes(elf)
    text = sz.get(".text", 0) + sz.get(".isr_vector", 0) + sz.get(".ARM.exidx", 0)
    rodata = sz.get(".rodata", 0)
    data, bss = sz.get(".data", 0), sz.get(".bss", 0)
    from bitpress.backends.mcu.toolchain import symbols

    syms = {s.name: s.size for s in symbols(elf)}
    model_code = sum(syms.get(lay.fn, 0) for lay in gen.layers) + syms.get("bp_model_run", 0)
    return {
        "runtime": f"bitpress C firmware on {board.core} (QEMU {board.machine}), no TVM runtime, no heap",
        "target": board.core,
        "board": board.machine,
        "schedule": schedule,
        "float": "hardware FPU" if board.fpu else "soft-float (no FPU)",
        "float_nodes": gen.float_nodes,  # float arithmetic inside the model (needs allow_float)
        "boundary_nodes": gen.boundary_nodes,  # float input -> int8 and int8 -> float output conversions
        "integer_only": not gen.float_nodes,
        "flash_bytes": text + rodata + data,
        "text_bytes": text,
        "rodata_bytes": rodata,
        "weight_array_bytes": gen.weight_bytes,
        "model_code_bytes": model_code,
        "ram_bytes": data + bss,  # the arena is a static array inside .bss; the stack is not included
        "data_bytes": data,
        "bss_bytes": bss,
        "arena_bytes": gen.plan.peak,
        "memory_plan": gen.plan.to_dict(),
    }


def profile_info(exe: McuExecutable, gen: GeneratedModel, example: list[torch.Tensor]) -> dict[str, Any]:
    owners = {"main": "harness", "bp_model_run": "model"} | {lay.fn: lay.node for lay in gen.layers}
    counts = profile(exe.board, exe.elf, _bytes_of(example), owners)
    layers = []
    for lay in gen.layers:
        ins = counts.get(lay.node, 0)
        row: dict[str, Any] = {"name": lay.node, "op": lay.op, "instructions": ins, "float": lay.float_math}
        if lay.macs:
            row |= {"macs": lay.macs, "instructions_per_mac": round(ins / lay.macs, 3), "schedule": lay.schedule or "float32"}
        layers.append(row)
    total = sum(counts.get(lay.node, 0) for lay in gen.layers) + counts.get("model", 0)
    macs = sum(lay.macs for lay in gen.layers)
    return {
        "instructions_per_inference": total,
        "macs_per_inference": macs,
        "instructions_per_mac": round(total / macs, 3) if macs else None,
        "layers": layers,
    }
