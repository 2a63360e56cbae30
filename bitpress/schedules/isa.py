"""What the llvm target's CPU can do, and what a built artifact needs from the CPU that runs it.

The CPU kernels are chosen from the target, not from the machine they were tuned on:

- `CpuIsa.of(target)` reads the LLVM target's features (its `-mcpu`, `-mattr`, `-mtriple`) and
  derives the vector width, the number of vector registers (register tiles are sized from it),
  and the int8 dot-product micro-kernel the W8A8 kernels are tensorized into:

    =============  ==================================  =====  ======  ==========================
    kernel         instruction                         lanes  k/lane  needs
    =============  ==================================  =====  ======  ==========================
    vnni-512       vpdpbusd zmm (u8 x s8, 4 -> i32)    16     4       avx512vnni
    vnni-256       vpdpbusd ymm                        8      4       avxvnni or avx512vnni+vl
    pmaddwd-512    vpmovsxbw + vpmaddwd zmm (exact)    16     2       avx512bw
    pmaddwd-256    vpmovsxbw + vpmaddwd ymm (exact)    8      2       avx2
    generic        plain widening multiply-add         8      4       anything (LLVM vectorizes)
    =============  ==================================  =====  ======  ==========================

  vpmaddubsw (AVX2's u8 x s8 instruction) is never used: it adds two products in a saturating
  int16, which is not the reference's arithmetic.  vpmaddwd multiplies int16 pairs into an
  exact int32, so the AVX2 path is bit-exact at half the bytes per instruction of VNNI.

- `host_target_spec()` is the target for "this machine": LLVM's name for the host CPU plus an
  `-mattr` that turns off what the CPU model implies but the host does not expose (a hypervisor
  may hide AVX-512 from a CPU whose model has it); without it the kernels would die with an
  illegal instruction.
- `required_features(target)` is what an artifact records; `check_runnable(features)` on load
  refuses, in one line, a host that lacks any of them.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "INT8_KERNELS",
    "CpuIsa",
    "Int8Kernel",
    "IsaError",
    "check_runnable",
    "host_features",
    "host_target_spec",
    "required_features",
]

# features an x86 kernel may use, by their LLVM names; /proc/cpuinfo spells some differently
X86_FEATURES = (
    "sse4.2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512vnni",
    "avxvnni",
    "avx512bf16",
    "avx512fp16",
)
AARCH64_FEATURES = ("neon", "dotprod", "i8mm", "sve", "fullfp16")
_CPUINFO_NAMES = {
    "sse4.2": "sse4_2",
    "avx512vnni": "avx512_vnni",
    "avxvnni": "avx_vnni",
    "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16",
}
_AARCH64_CPUINFO = {"neon": "asimd", "dotprod": "asimddp", "i8mm": "i8mm", "sve": "sve", "fullfp16": "asimdhp"}


class IsaError(ValueError):
    """The artifact needs CPU features this host does not have."""


@dataclass(frozen=True)
class Int8Kernel:
    """An int8 x int8 -> int32 micro-kernel: `lanes` int32 outputs, each summing `k` byte products."""

    name: str
    lanes: int
    k: int
    intrinsic: str | None  # the LLVM intrinsic, None for plain loops


INT8_KERNELS = {
    k.name: k
    for k in (
        Int8Kernel("vnni-512", 16, 4, "llvm.x86.avx512.vpdpbusd.512"),
        Int8Kernel("vnni-256", 8, 4, "llvm.x86.avx512.vpdpbusd.256"),
        Int8Kernel("pmaddwd-512", 16, 2, "llvm.x86.avx512.pmaddw.d.512"),
        Int8Kernel("pmaddwd-256", 8, 2, "llvm.x86.avx2.pmadd.wd"),
        Int8Kernel("generic", 8, 4, None),
    )
}


@dataclass(frozen=True)
class CpuIsa:
    """The parts of a CPU target that shape kernels."""

    arch: str  # "x86_64" | "aarch64" | ...
    mcpu: str
    features: frozenset[str]
    vector_bits: int
    vector_registers: int
    int8: Int8Kernel

    @staticmethod
    def of(target: Any) -> CpuIsa:
        return _isa_of(str(target))

    def has(self, *features: str) -> bool:
        return all(f in self.features for f in features)

    def describe(self) -> str:
        return f"{self.arch} {self.mcpu} ({self.vector_bits}-bit vectors x {self.vector_registers}, int8 dot {self.int8.name})"


@functools.lru_cache(maxsize=64)
def _isa_of(target_str: str) -> CpuIsa:
    import tvm
    from tvm.target import codegen

    target = tvm.target.Target(target_str)
    triple = str(target.attrs.get("mtriple", "") or codegen.llvm_get_system_triple())
    arch = triple.split("-", maxsplit=1)[0]
    mcpu = str(target.attrs.get("mcpu", "") or "generic")
    names = AARCH64_FEATURES if arch in ("aarch64", "arm64") else X86_FEATURES
    feats = frozenset(f for f in names if codegen.target_has_features(f, target))
    if arch in ("aarch64", "arm64"):
        return CpuIsa(arch, mcpu, feats, 128, 32, INT8_KERNELS["generic"])
    if "avx512f" in feats:
        bits, regs = 512, 32
    elif "avx" in feats or "avx2" in feats:
        bits, regs = 256, 16
    else:
        bits, regs = 128, 16
    if "avx512vnni" in feats and bits == 512:
        kernel = "vnni-512"
    elif "avxvnni" in feats or {"avx512vnni", "avx512vl"} <= feats:
        kernel = "vnni-256"
    elif "avx512bw" in feats:
        kernel = "pmaddwd-512"
    elif "avx2" in feats:
        kernel = "pmaddwd-256"
    else:
        kernel = "generic"
    return CpuIsa(arch, mcpu, feats, bits, regs, INT8_KERNELS[kernel])


@functools.cache
def host_features() -> frozenset[str] | None:
    """The host CPU's features by their LLVM names (None where they cannot be read)."""
    machine = platform.machine().lower()
    try:
        text = open("/proc/cpuinfo").read()  # noqa: SIM115 (a pseudo-file read once)
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, val = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(val.split())
            break
    if not flags:
        return None
    if machine in ("aarch64", "arm64"):
        return frozenset(f for f, c in _AARCH64_CPUINFO.items() if c in flags)
    return frozenset(f for f in X86_FEATURES if _CPUINFO_NAMES.get(f, f) in flags)


def host_target_spec() -> dict[str, Any]:
    """mcpu (and mattr switching off what the host hides) for building on and for this machine."""
    import tvm
    from tvm.target import codegen

    mcpu = codegen.llvm_get_system_cpu()
    spec: dict[str, Any] = {"mcpu": mcpu}
    have = host_features()
    if have is None:
        return spec
    implied = CpuIsa.of(tvm.target.Target({"kind": "llvm", "mcpu": mcpu})).features
    hidden = sorted(implied - have)
    if hidden:
        spec["mattr"] = [f"-{f}" for f in hidden]
    return spec


def required_features(target: Any) -> list[str]:
    """The CPU features a build for `target` may use (recorded in the artifact)."""
    return sorted(CpuIsa.of(target).features)


def check_runnable(features: Iterable[str], *, what: str, mcpu: str = "") -> None:
    """Refuse to run code that needs features this host lacks (instead of an illegal instruction)."""
    have = host_features()
    if have is None:
        return
    missing = sorted(set(features) - have)
    if missing:
        built = f" (built with -mcpu={mcpu})" if mcpu else ""
        raise IsaError(
            f"{what} needs CPU features this host lacks: {', '.join(missing)}{built}; "
            "rebuild here, or for a portable baseline with options={'mcpu': 'x86-64-v3'} (or 'x86-64-v2')"
        )
