"""Low-rank factorization and low-rank error compensation.

`LowRank(method="svd" | "asvd", rank=...)` factors linears into two thin linears;
`Compensate(rank=...)` adds a low-rank correction after a lossy pass.  Other packages make
their compressed ops compensable with `register_dense_weight` (see `dense.py`).
"""

from bitpress.formats.dense import dense_weight, dense_weight_ops, register_dense_weight
from bitpress.passes.lowrank.passes import Compensate, LowRank, compensate_rules, lowrank_rules

__all__ = ["Compensate", "LowRank", "compensate_rules", "dense_weight", "dense_weight_ops", "lowrank_rules", "register_dense_weight"]
