"""Cortex-M cores, the QEMU boards that model them, and their compiler flags and memory maps.

The flags and addresses were checked on every board (notes/offline-assets.md, part 2): the M33
board boots from the secure alias, the M55 board's code lives in ITCM and its data in DTCM.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BOARDS", "Board", "board_for"]


@dataclass(frozen=True)
class Board:
    core: str  # "cortex-m4"
    machine: str  # qemu-system-arm -M
    cflags: tuple[str, ...]
    code_origin: int
    code_length: int
    ram_origin: int
    ram_length: int
    fpu: bool  # single-precision float in hardware
    dsp: bool  # ARMv7E-M / v8-M DSP extension: SMLAD, SXTB16
    mve: bool  # Helium (M-profile vector extension)

    @property
    def defsyms(self) -> str:
        return (
            f"-Wl,--defsym=CODE_ORIGIN={self.code_origin:#x},--defsym=CODE_LENGTH={self.code_length:#x},"
            f"--defsym=RAM_ORIGIN={self.ram_origin:#x},--defsym=RAM_LENGTH={self.ram_length:#x}"
        )


_MB = 1 << 20
BOARDS: dict[str, Board] = {
    b.core: b
    for b in (
        Board("cortex-m0", "microbit", ("-mcpu=cortex-m0",), 0x0, 256 << 10, 0x20000000, 16 << 10, False, False, False),
        Board("cortex-m3", "mps2-an385", ("-mcpu=cortex-m3",), 0x0, 4 * _MB, 0x20000000, 4 * _MB, False, False, False),
        Board(
            "cortex-m4",
            "mps2-an386",
            ("-mcpu=cortex-m4", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"),
            0x0,
            4 * _MB,
            0x20000000,
            4 * _MB,
            True,
            True,
            False,
        ),
        Board(
            "cortex-m7",
            "mps2-an500",
            ("-mcpu=cortex-m7", "-mfloat-abi=hard", "-mfpu=fpv5-d16"),
            0x0,
            4 * _MB,
            0x20000000,
            4 * _MB,
            True,
            True,
            False,
        ),
        Board(
            "cortex-m33",
            "mps2-an505",
            ("-mcpu=cortex-m33", "-mfloat-abi=hard", "-mfpu=fpv5-sp-d16"),
            0x10000000,
            4 * _MB,
            0x38000000,
            2 * _MB,
            True,
            True,
            False,
        ),
        Board(
            "cortex-m55", "mps3-an547", ("-mcpu=cortex-m55", "-mfloat-abi=hard"), 0x0, 512 << 10, 0x20000000, 128 << 10, True, True, True
        ),
    )
}


def board_for(target: str) -> Board:
    try:
        return BOARDS[target]
    except KeyError:
        raise ValueError(f"unknown MCU target {target!r}; known: {', '.join(sorted(BOARDS))}") from None
