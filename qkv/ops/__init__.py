"""Pure functions on tensors, no parameters: each op's reference and fast forms side by side."""
from qkv.ops.linear_attention import LinearAttentionState, linear_attention
from qkv.ops.retention import RetentionState, retention
from qkv.ops.wkv import WKVState, wkv4
