"""aarch64-linux-gnu-gcc, -objdump, -size and qemu-aarch64 (user mode): build, inspect and run the model executable.

On an aarch64 Linux host the executable runs natively; elsewhere under `qemu-aarch64 -cpu max` (every
Armv8.x extension GCC can target, dot product and int8 matrix multiply included).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path

__all__ = [
    "ToolchainError",
    "check_tools",
    "cpu_features",
    "dot_instructions",
    "elf_sizes",
    "host_missing_features",
    "make",
    "profile",
    "run_executable",
]

GCC = "aarch64-linux-gnu-gcc"
APT = "gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user make"


class ToolchainError(RuntimeError):
    """The aarch64 cross toolchain or QEMU is missing or failed."""


def native() -> bool:
    """Whether this host runs aarch64 Linux executables itself."""
    return platform.system() == "Linux" and platform.machine() in ("aarch64", "arm64")


def _tools() -> tuple[str, ...]:
    tools = (GCC, "aarch64-linux-gnu-objdump", "aarch64-linux-gnu-size", "make")
    return tools if native() else (*tools, "qemu-aarch64")


def check_tools() -> None:
    missing = [t for t in _tools() if shutil.which(t) is None]
    if missing:
        raise ToolchainError(f"aarch64 toolchain missing: {', '.join(missing)}; install with `make apt` (apt-get install {APT})")


_FEATURES = {
    "neon": "__ARM_NEON",
    "dotprod": "__ARM_FEATURE_DOTPROD",
    "i8mm": "__ARM_FEATURE_MATMUL_INT8",
    "fp16": "__ARM_FEATURE_FP16_SCALAR_ARITHMETIC",
}


def cpu_features(cflags: list[str]) -> dict[str, bool]:
    """The ACLE features GCC enables for `cflags` (-mcpu / -march); a one-line error when GCC rejects them."""
    r = subprocess.run([GCC, *cflags, "-dM", "-E", "-x", "c", "-"], input="", capture_output=True, text=True)
    if r.returncode != 0:
        err = next((ln for ln in r.stderr.splitlines() if "error" in ln), r.stderr.strip())
        raise ValueError(f"{GCC} rejects {' '.join(cflags)}: {err.split('error:')[-1].strip()}")
    macros = set(re.findall(r"^#define (\w+)", r.stdout, re.M))
    return {name: m in macros for name, m in _FEATURES.items()}


# ACLE feature -> the flag Linux lists for it in /proc/cpuinfo's "Features"
_HWCAPS = {"neon": "asimd", "dotprod": "asimddp", "i8mm": "i8mm", "fp16": "fphp"}


def host_cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags Linux reports for this aarch64 host."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    return {f for line in text.splitlines() if line.lower().startswith("features") for f in line.split(":", 1)[1].split()}


def host_missing_features(features: dict[str, bool], host_flags: set[str] | None = None) -> list[str]:
    """The features an executable was built with (`cpu_features` of its flags) that this host lacks.  Under
    qemu-aarch64 (`-cpu max`) none; on an aarch64 host the ones /proc/cpuinfo does not list."""
    if host_flags is None:
        if not native():
            return []
        host_flags = host_cpu_flags()
    return [f for f, on in features.items() if on and f in _HWCAPS and _HWCAPS[f] not in host_flags]


def make(project: Path) -> Path:
    r = subprocess.run(["make", "-s", "-C", str(project)], capture_output=True, text=True)
    if r.returncode != 0:
        raise ToolchainError(f"aarch64 build failed in {project}:\n{(r.stdout + r.stderr)[-4000:]}")
    return project / "model"


def elf_sizes(exe: Path) -> dict[str, int]:
    """Section sizes (bytes) from `aarch64-linux-gnu-size -A`."""
    r = subprocess.run(["aarch64-linux-gnu-size", "-A", str(exe)], capture_output=True, text=True, check=True)
    out: dict[str, int] = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            out[parts[0]] = out.get(parts[0], 0) + int(parts[1])
    return out


_FUNC = re.compile(r"^[0-9a-f]+ <([^>]+)>:$")
_DOT = re.compile(r"\t(sdot|udot|usdot|sudot|smmla|ummla|usmmla)\t")


def dot_instructions(exe: Path, prefixes: tuple[str, ...] = ("__tvm_ffi_", "bp_")) -> dict[str, list[str]]:
    """The integer dot-product instructions (sdot, udot, smmla, ...) in the model's functions, per function,
    from `aarch64-linux-gnu-objdump -d` (the C library is left out)."""
    r = subprocess.run(["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", str(exe)], capture_output=True, text=True, check=True)
    out: dict[str, list[str]] = {}
    fn = None
    for line in r.stdout.splitlines():
        m = _FUNC.match(line)
        if m:
            fn = m.group(1) if m.group(1).startswith(prefixes) else None
            continue
        if fn is not None and _DOT.search(line):
            out.setdefault(fn, []).append(line.strip())
    return out


def run_executable(exe: Path, inputs: bytes, timeout: float = 600.0) -> bytes:
    """Run the model on `inputs` (concatenated samples); returns the concatenated outputs."""
    with tempfile.TemporaryDirectory(prefix="bp-aarch64-") as d:
        fi, fo = Path(d) / "input.bin", Path(d) / "output.bin"
        fi.write_bytes(inputs)
        cmd = [str(exe.resolve()), str(fi), str(fo)]
        if not native():
            if shutil.which("qemu-aarch64") is None:
                raise ToolchainError(f"running {exe} on this {platform.machine()} host needs qemu-aarch64 (apt-get install qemu-user)")
            cmd = ["qemu-aarch64", "-cpu", "max", *cmd]
        try:
            r = subprocess.run(cmd, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ToolchainError(f"{exe} did not finish within {timeout:.0f} s") from None
        if r.returncode == -signal.SIGILL:
            raise ToolchainError(f"{exe} hit an illegal instruction: it was built for CPU features this host lacks")
        if r.returncode != 0:
            raise ToolchainError(f"{exe} exited with status {r.returncode}: {(r.stdout + r.stderr).decode(errors='replace')[-2000:]}")
        return fo.read_bytes()


_TRACE = re.compile(r"^Trace \d+: 0x([0-9a-f]+) \[[0-9a-f]+/([0-9a-f]+)/[^\]]*\] ?(\S*)")
_INSN = re.compile(r"^0x[0-9a-f]+:\s+[0-9a-f]{8}\s")


def profile(exe: Path, inputs: bytes, owners: dict[str, str], timeout: float = 600.0) -> dict[str, int]:
    """Executed instructions per owner for one run of the executable on `inputs`, from QEMU's translation-block
    log (`-d in_asm,exec,nochain`: each executed block with its guest PC and function, each block's instructions
    listed once when translated; exact and repeatable).  `owners` maps function symbols to labels; a block counts
    for the label of the owner function entered last ("other" before the first, e.g. the C library's start-up)."""
    if native():
        raise ToolchainError("instruction counts need qemu-aarch64 (this host runs the executable natively)")
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bp-aarch64-prof-") as d:
        dd = Path(d)
        (dd / "input.bin").write_bytes(inputs)
        fifo = dd / "trace.fifo"
        os.mkfifo(fifo)
        cmd = ["qemu-aarch64", "-cpu", "max", "-d", "in_asm,exec,nochain", "-D", str(fifo), str(exe.resolve()), "input.bin", "output.bin"]
        proc = subprocess.Popen(cmd, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            tb_len: dict[int, int] = {}  # host translation block -> guest instructions
            pending = 0
            current = "other"
            with open(fifo, encoding="latin-1") as f:
                for line in f:
                    if line.startswith("0x"):
                        pending += _INSN.match(line) is not None
                    elif line.startswith("Trace"):
                        m = _TRACE.match(line)
                        if m is None:
                            continue
                        host = int(m.group(1), 16)
                        if pending:
                            tb_len[host] = pending
                            pending = 0
                        current = owners.get(m.group(3), current)
                        counts[current] = counts.get(current, 0) + tb_len.get(host, 0)
                    elif line.startswith("IN:"):
                        pending = 0
            rc = proc.wait()
        finally:
            timer.cancel()
        if rc != 0:
            raise ToolchainError(f"profiling run of {exe} exited with status {rc}")
    return counts
