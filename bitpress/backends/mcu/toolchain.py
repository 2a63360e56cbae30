"""arm-none-eabi-gcc, arm-none-eabi-size/nm and qemu-system-arm: build, measure and run a firmware ELF.

Instruction counts come from QEMU's translation-block log (`-d in_asm,exec,nochain`): every
executed block is logged with its guest PC, and the block's instructions are listed once when it
is translated, so the count is exact and repeatable (QEMU models no cycles).  MVE instructions,
which QEMU 7.2's disassembler lists as two lines, count once (`_is_split_wide`).  Each instruction
is attributed to the layer function (an `nm` symbol range) that was last entered, so helpers a
layer calls (64-bit shifts, libm) count towards that layer.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from bitpress.backends.mcu.boards import Board

__all__ = ["ToolchainError", "check_tools", "elf_sizes", "profile", "qemu_run", "symbols"]


class ToolchainError(RuntimeError):
    """The MCU toolchain or QEMU is missing or failed."""


TOOLS = ("arm-none-eabi-gcc", "arm-none-eabi-size", "arm-none-eabi-nm", "qemu-system-arm", "make")


def check_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise ToolchainError(
            f"MCU toolchain missing: {', '.join(missing)}; install with `make apt` "
            "(apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm make)"
        )


def make(project: Path, quiet: bool = True) -> Path:
    r = subprocess.run(["make", "-s", "-C", str(project)], capture_output=True, text=True)
    if r.returncode != 0:
        raise ToolchainError(f"firmware build failed in {project}:\n{(r.stdout + r.stderr)[-4000:]}")
    return project / "model.elf"


def elf_sizes(elf: Path) -> dict[str, int]:
    """Section sizes (bytes) from `arm-none-eabi-size -A`."""
    r = subprocess.run(["arm-none-eabi-size", "-A", str(elf)], capture_output=True, text=True, check=True)
    out: dict[str, int] = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


@dataclass(frozen=True)
class Symbol:
    name: str
    addr: int
    size: int


def symbols(elf: Path) -> list[Symbol]:
    r = subprocess.run(["arm-none-eabi-nm", "-S", "--defined-only", str(elf)], capture_output=True, text=True, check=True)
    out = []
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4:
            out.append(Symbol(parts[3], int(parts[0], 16), int(parts[1], 16)))
    return out


def _qemu_cmd(board: Board, elf: Path) -> list[str]:
    return [
        "qemu-system-arm",
        "-M",
        board.machine,
        "-nographic",
        "-monitor",
        "none",
        "-serial",
        "none",
        "-semihosting-config",
        "enable=on,target=native",
        "-kernel",
        str(elf),
    ]


def qemu_run(board: Board, elf: Path, inputs: bytes, timeout: float = 600.0) -> bytes:
    """Run the firmware on `inputs` (concatenated samples); returns output.bin's bytes."""
    with tempfile.TemporaryDirectory(prefix="bp-qemu-") as d:
        (Path(d) / "input.bin").write_bytes(inputs)
        try:
            r = subprocess.run(_qemu_cmd(board, elf.resolve()), cwd=d, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ToolchainError(f"QEMU ({board.machine}) did not finish within {timeout:.0f} s") from None
        if r.returncode != 0:
            raise ToolchainError(f"firmware exited with status {r.returncode} on {board.machine}: {(r.stdout + r.stderr).decode()[-2000:]}")
        return (Path(d) / "output.bin").read_bytes()


_EXEC = re.compile(r"^Trace \d+: 0x([0-9a-f]+) \[[0-9a-f]+/([0-9a-f]+)/")
_INSN = re.compile(r"^0x([0-9a-f]+):\s+([0-9a-f]{4})(\s[0-9a-f]{4})?\s")


def _is_split_wide(line: str) -> bool:
    """A listing line holding only the first halfword of a 32-bit Thumb-2 instruction.

    QEMU 7.2's disassembler does not know MVE (Helium) encodings: it prints their first halfword as
    `.byte` and decodes the second halfword as a separate 16-bit instruction.  A halfword >= 0xE800
    always starts a 32-bit instruction, so the next listed line is not an instruction of its own."""
    m = _INSN.match(line)
    return m is not None and m.group(3) is None and int(m.group(2), 16) >= 0xE800


def profile(board: Board, elf: Path, inputs: bytes, owners: dict[str, str], timeout: float = 600.0) -> dict[str, int]:
    """Executed instructions per owner for one run on `inputs`.

    `owners` maps function symbols to labels; a block is counted for the label of the owner
    function entered last (blocks outside any owner before the first owner count as "other").
    """
    syms = {s.name: s for s in symbols(elf)}
    ranges = sorted((syms[f].addr & ~1, (syms[f].addr & ~1) + syms[f].size, lab) for f, lab in owners.items() if f in syms)
    starts = [r[0] for r in ranges]
    import bisect

    def owner_of(pc: int) -> str | None:
        i = bisect.bisect_right(starts, pc) - 1
        if i >= 0 and pc < ranges[i][1]:
            return ranges[i][2]
        return None

    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bp-prof-") as d:
        dd = Path(d)
        (dd / "input.bin").write_bytes(inputs)
        fifo = dd / "trace.fifo"
        os.mkfifo(fifo)
        cmd = [*_qemu_cmd(board, elf.resolve()), "-d", "in_asm,exec,nochain", "-D", str(fifo)]
        proc = subprocess.Popen(cmd, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            tb_len: dict[int, int] = {}  # host TB pointer -> instructions
            pending = 0  # instructions of the block being listed by in_asm
            skip = False  # the next listed line is the second half of a 32-bit instruction
            current = "other"
            with open(fifo, encoding="latin-1") as f:
                for line in f:
                    if line[0] == "0":
                        if skip:
                            skip = False
                        elif _INSN.match(line):
                            pending += 1
                            skip = _is_split_wide(line)
                        continue
                    if line.startswith("Trace"):
                        m = _EXEC.match(line)
                        if m is None:
                            continue
                        host, pc = int(m.group(1), 16), int(m.group(2), 16)
                        if pending:
                            tb_len[host] = pending
                            pending = 0
                        lab = owner_of(pc)
                        if lab is not None:
                            current = lab
                        counts[current] = counts.get(current, 0) + tb_len.get(host, 0)
                    elif line.startswith("IN:"):
                        pending, skip = 0, False
            rc = proc.wait()
        finally:
            timer.cancel()
        if rc != 0:
            raise ToolchainError(f"profiling run exited with status {rc}")
    return counts
