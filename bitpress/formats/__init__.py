"""Compressed formats: the floor between passes (which produce them) and backends (which consume them).

A format is a compressed op (its registration and reference semantics), its packed layout and
pack/unpack helpers, a typed view of its attributes, and the integer arithmetic its kernels share.
This package imports only `bitpress.compiler` (checked by import-linter in `make lint`).
"""

# importing the package registers every compressed op and its dense reconstruction
from bitpress.formats import binary, dense, dynamic_int8, integer, quantized, sparse
from bitpress.formats.dense import dense_weight, dense_weight_ops, register_dense_weight
from bitpress.formats.quantized import QuantAttrs

__all__ = [
    "QuantAttrs",
    "binary",
    "dense",
    "dense_weight",
    "dense_weight_ops",
    "dynamic_int8",
    "integer",
    "quantized",
    "register_dense_weight",
    "sparse",
]
