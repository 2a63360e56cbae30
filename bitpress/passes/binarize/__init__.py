"""Binarization (sign, multi-basis, ternary, partial/PB-LLM, binary activations) and
shift-add (ShiftAddLLM binary-coded, power-of-two) passes, with their packed ops."""

from bitpress.passes.binarize.passes import Binarize, ShiftAdd, binarize_rules, shift_add_rules

__all__ = ["Binarize", "ShiftAdd", "binarize_rules", "shift_add_rules"]
