"""Modules with parameters, built from primitives (d_model, n_heads), never from ModelConfig."""
from .attention import MultiHeadAttention, Reinforce, needs_reward, reinforce_loss
from .block import Block, BlockWeights
from .cache import Cache, CacheSnapshot, CrossKVCache, KVCache, LayerCache, RecurrentCache
from .gated import HGRN2, DeltaNet, GatedLinearAttention, Mamba2, short_conv
from .layers import ACTIVATIONS, NORMS, FeedForward, LayerNorm, Linear, RMSNorm, make_norm, packed_weights
from .mixers import LinearAttention, MemoryAttention, MultiScaleRetention, retention_decays
from .rnn_attention import RecurrentAttention
from .rnn_decoder import RecurrentDecoder
from .rnn_encoder import RecurrentEncoder
from .position import ALiBi, LearnedPositions, RotaryEmbedding, SinusoidalPositions, T5RelativeBias, alibi_slopes
from .rwkv import RWKVBlock, RWKVChannelMix, RWKVTimeMix
from .rwkv6 import RWKV5TimeMix, RWKV6ChannelMix, RWKV6TimeMix
from .rwkv7 import RWKV7ChannelMix, RWKV7TimeMix

__all__ = ["MultiHeadAttention", "Reinforce", "reinforce_loss", "needs_reward", "Block", "BlockWeights", "Cache", "CacheSnapshot", "CrossKVCache", "KVCache",
           "LayerCache", "RecurrentCache", "FeedForward", "LayerNorm", "Linear", "RMSNorm", "make_norm",
           "packed_weights",
           "ACTIVATIONS", "NORMS", "ALiBi", "LearnedPositions", "RotaryEmbedding", "SinusoidalPositions",
           "T5RelativeBias", "alibi_slopes", "LinearAttention", "MultiScaleRetention", "MemoryAttention",
           "retention_decays", "RWKVBlock", "RWKVTimeMix", "RWKVChannelMix", "RWKV5TimeMix", "RWKV6TimeMix",
           "RWKV6ChannelMix", "RWKV7TimeMix", "RWKV7ChannelMix", "GatedLinearAttention", "HGRN2", "DeltaNet", "Mamba2",
           "short_conv", "RecurrentEncoder", "RecurrentAttention", "RecurrentDecoder"]
