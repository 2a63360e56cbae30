"""Quantization: RTN (MSE clipping), SmoothQuant, AWQ, GPTQ and mixed precision.

`Quantize` is the pass (recipes find it as "quantize"); importing this package also
registers the quantized ops (`qlinear`, `qconv2d`, `quantize_act`, `dequantize_act`,
`qlinear_w8a8`, `qconv2d_w8a8`) whose reference semantics live in `ops.py`.
"""

from bitpress.formats import quantized as ops  # the quantized ops (registered by bitpress.formats)
from bitpress.passes.quantize.passes import Quantize, quantize_rules

__all__ = ["Quantize", "ops", "quantize_rules"]
