"""Pure functions on tensors, no parameters. Each op's reference and fast forms sit side by side."""
from .attention import SCORES, attention, scores
from .delta_rule import DeltaRuleState, delta_rule, generalized_delta_rule, wkv7
from .gla import GLAState, gla, ssd, wkv5, wkv6
from .linear import linear, pack_weight
from .linear_attention import LinearAttentionState, linear_attention
from .local_attention import local_attention
from .masks import causal_mask, global_mask, padding_mask, window_mask
from .retention import RetentionState, retention
from .rope import apply_rope, rope_frequencies, rope_tables
from .wkv import WKVState, wkv4

__all__ = ["SCORES", "attention", "scores", "causal_mask", "global_mask", "padding_mask", "window_mask",
           "apply_rope", "rope_frequencies", "rope_tables", "linear", "pack_weight", "linear_attention",
           "LinearAttentionState",
           "retention", "RetentionState", "wkv4", "WKVState", "gla", "GLAState", "wkv5", "wkv6", "ssd",
           "delta_rule", "generalized_delta_rule", "wkv7", "DeltaRuleState", "local_attention"]
