"""ModelConfig -> the linear-time layers of qkv/nn/mixers.py and qkv/nn/rwkv.py (registered in common.py).

Builders read the config here so that the layers keep taking primitives. RWKV-4 replaces the whole block (its FFN
has a token-shift state too), so it is built by a block builder rather than a mixer builder.
"""
from __future__ import annotations

from ..config import ModelConfig
from ..nn import LinearAttention, MemoryAttention, MultiScaleRetention, RWKVBlock


def make_linear(cfg: ModelConfig) -> LinearAttention:
    return LinearAttention(cfg.d_model, cfg.n_heads, head_dim=cfg.head_dim, bias=cfg.bias)


def make_retention(cfg: ModelConfig) -> MultiScaleRetention:
    return MultiScaleRetention(cfg.d_model, cfg.n_heads, head_dim=cfg.head_dim, bias=cfg.bias,
                               norm_eps=cfg.norm_eps)


def make_memory(cfg: ModelConfig) -> MemoryAttention:
    return MemoryAttention(cfg.d_model, cfg.n_heads, head_dim=cfg.head_dim, bias=cfg.bias)


def make_rwkv_block(cfg: ModelConfig, layer: int) -> RWKVBlock:
    """RWKV-4's time mix is n_heads * head_dim wide (RWKV-LM's dim_att; one "head" in every release)."""
    return RWKVBlock(cfg.d_model, cfg.d_ff, d_att=cfg.n_heads * cfg.head_dim, first=layer == 0, layer=layer,
                     n_layers=cfg.n_layers, eps=cfg.norm_eps)
