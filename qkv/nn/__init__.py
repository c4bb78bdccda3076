"""Modules with parameters, built from primitives (d_model, n_heads), never from ModelConfig."""
from .attention import MultiHeadAttention
from .block import Block, BlockWeights
from .layers import ACTIVATIONS, NORMS, FeedForward, LayerNorm, RMSNorm, make_norm
from .mixers import LinearAttention, MemoryAttention, MultiScaleRetention, retention_decays
from .position import ALiBi, LearnedPositions, RotaryEmbedding, SinusoidalPositions, T5RelativeBias, alibi_slopes
from .rwkv import RWKVBlock, RWKVChannelMix, RWKVTimeMix

__all__ = ["MultiHeadAttention", "Block", "BlockWeights", "FeedForward", "LayerNorm", "RMSNorm", "make_norm",
           "ACTIVATIONS", "NORMS", "ALiBi", "LearnedPositions", "RotaryEmbedding", "SinusoidalPositions",
           "T5RelativeBias", "alibi_slopes", "LinearAttention", "MultiScaleRetention", "MemoryAttention",
           "retention_decays", "RWKVBlock", "RWKVTimeMix", "RWKVChannelMix"]
