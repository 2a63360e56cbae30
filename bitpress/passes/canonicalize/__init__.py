"""Canonicalization: exact rewrites run before every compression pipeline.

Order (see `canonicalize_pipeline`): drop identities, fold constants, fold batch-norm
into the preceding conv/linear, common-subexpression elimination, dead-code
elimination.  Each is exact: tests check bit-exact or allclose against the input graph.
"""

from bitpress.passes.canonicalize.passes import (
    CommonSubexpressionElimination,
    DeadCodeElimination,
    DropIdentity,
    FoldBatchNorm,
    FoldConstants,
    canonicalize_pipeline,
    fold_batch_norm_rules,
    identity_rules,
)

__all__ = [
    "CommonSubexpressionElimination",
    "DeadCodeElimination",
    "DropIdentity",
    "FoldBatchNorm",
    "FoldConstants",
    "canonicalize_pipeline",
    "fold_batch_norm_rules",
    "identity_rules",
]
