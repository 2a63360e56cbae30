"""Cortex-M backend: a C project and firmware ELF per model, run and measured under QEMU."""

from bitpress.backends.mcu.backend import McuBackend, McuExecutable

__all__ = ["McuBackend", "McuExecutable"]
