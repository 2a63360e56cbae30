"""Model merging and LoRA fold-in: soups, task arithmetic, TIES, DARE, breadcrumbs, slerp.

- `Merge`: merge fine-tuned checkpoints (modules, state dicts or files) into the compiled
  model's weights, in parameter space, before canonicalization's folds (see `passes.py`
  for how constants are matched to parameters).  Runs first among the user's passes.
- `FoldLoRA`: W <- W + scale * B @ A for each lora_A/lora_B pair, as a rewrite rule.
- `MergeLinearChain`: linear(linear(x, W1, b1), W2, b2) -> linear(x, W2 W1, W2 b1 + b2).
- `merge_state_dicts`, `fold_lora_state_dict`: the same maths on state dicts (the CLI's
  `bitpress merge` uses them).

Does not handle: permutation alignment (Git Re-Basin), Fisher merging, LoRA adapters on
embeddings or convolutions (FoldLoRA folds linear layers; it names any adapter it cannot use).
"""

from bitpress.passes.merge._lora import fold_lora_state_dict, parse_lora
from bitpress.passes.merge._methods import merge_state_dicts
from bitpress.passes.merge.passes import (
    FoldLoRA,
    Merge,
    MergeLinearChain,
    fold_lora_rules,
    linear_chain_rules,
)

__all__ = [
    "FoldLoRA",
    "Merge",
    "MergeLinearChain",
    "fold_lora_rules",
    "fold_lora_state_dict",
    "linear_chain_rules",
    "merge_state_dicts",
    "parse_lora",
]
