"""aarch64 Linux backend: a static NEON/dot-product executable per model, run under qemu-aarch64."""

from bitpress.backends.aarch64.backend import Aarch64Backend, Aarch64Executable

__all__ = ["Aarch64Backend", "Aarch64Executable"]
