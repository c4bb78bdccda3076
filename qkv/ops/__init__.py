"""Pure functions on tensors, no parameters. Each op's reference and fast forms sit side by side."""
from .attention import SCORES, attention, scores
from .masks import causal_mask, global_mask, padding_mask, window_mask
from .rope import apply_rope, rope_frequencies, rope_tables

__all__ = ["SCORES", "attention", "scores", "causal_mask", "global_mask", "padding_mask", "window_mask",
           "apply_rope", "rope_frequencies", "rope_tables"]
