"""RTN: round to nearest with per-group ranges (`weight_clip="mse"` searches the clipping ratio per group).

Needs no calibration data for weight-only codes; with data it reports the layers' output SQNR.
"""

from __future__ import annotations

from typing import ClassVar

from bitpress.passes.quantize._plan import QuantizeMethod, register_method

__all__ = ["Rtn"]


@register_method
class Rtn(QuantizeMethod):
    """The default one-pass plan and RTN codes (both inherited)."""

    name: ClassVar[str] = "rtn"
    needs_data: ClassVar[bool] = False
