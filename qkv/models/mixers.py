"""ModelConfig -> the linear-time layers of qkv/nn (registered in common.py), and what each mixer costs per token.

Builders read the config here so that the layers keep taking primitives. RWKV replaces the whole block (its FFN
has a token-shift state too), so its versions are built by block builders rather than mixer builders.
"""
from __future__ import annotations

from ..config import ModelConfig
from ..nn import (DeltaNet, GatedLinearAttention, LinearAttention, Mamba2, MemoryAttention, MultiScaleRetention,
                  RWKV5TimeMix, RWKV6ChannelMix, RWKV6TimeMix, RWKV7ChannelMix, RWKV7TimeMix, RWKVBlock,
                  RWKVChannelMix)
from ..nn.rwkv7 import default_ranks


def make_linear(cfg: ModelConfig) -> LinearAttention:
    return LinearAttention(cfg.d_model, cfg.n_heads, head_dim=cfg.head_dim, bias=cfg.bias)


def make_retention(cfg: ModelConfig) -> MultiScaleRetention:
    return MultiScaleRetention(cfg.d_model, cfg.n_heads, head_dim=cfg.head_dim, bias=cfg.bias,
                               norm_eps=cfg.norm_eps)


def make_memory(cfg: ModelConfig) -> MemoryAttention:
    return MemoryAttention(cfg.d_model, cfg.n_heads, head_dim=cfg.head_dim, bias=cfg.bias)


def make_gla(cfg: ModelConfig) -> GatedLinearAttention:
    return GatedLinearAttention(cfg.d_model, cfg.n_heads, head_dim=cfg.head_dim, norm_eps=cfg.norm_eps)


def make_deltanet(cfg: ModelConfig) -> DeltaNet:
    return DeltaNet(cfg.d_model, cfg.n_heads, head_dim=cfg.head_dim, norm_eps=cfg.norm_eps)


def make_gated_deltanet(cfg: ModelConfig) -> DeltaNet:
    return DeltaNet(cfg.d_model, cfg.n_heads, head_dim=cfg.head_dim, gated=True, norm_eps=cfg.norm_eps)


def make_mamba2(cfg: ModelConfig) -> Mamba2:
    """Mamba-2 with n_heads heads over 2 d_model channels and a state of head_dim x (2 d_model / n_heads) per head."""
    return Mamba2(cfg.d_model, cfg.n_heads, state_size=cfg.head_dim, norm_eps=cfg.norm_eps)


def _first_of_its_kind(cfg: ModelConfig, layer: int) -> bool:
    kind = cfg.layer_mixer(layer)[0]
    return all(cfg.layer_mixer(i)[0] != kind for i in range(layer))


def make_rwkv_block(cfg: ModelConfig, layer: int) -> RWKVBlock:
    """An RWKV block of the version ``cfg.layer_mixer(layer)`` names. RWKV-4's time mix is n_heads * head_dim
    wide (RWKV-LM's dim_att; its heads only group channels for plots); RWKV-5/6 have n_heads heads of head_dim;
    RWKV-7's heads span d_model. ln0 normalises the embeddings in block 0; RWKV-7's value residual starts at the
    stack's first RWKV-7 block."""
    kind = cfg.layer_mixer(layer)[0]
    H, N, C = cfg.n_heads, cfg.head_dim, cfg.d_model
    depth = dict(layer=layer, n_layers=cfg.n_layers)
    if kind == "rwkv4":
        return RWKVBlock(C, cfg.d_ff, d_att=H * N, first=layer == 0, eps=cfg.norm_eps, n_heads=H, **depth)
    ranks = {**default_ranks(C), "mix": 32, **(cfg.rwkv_ranks or {})}
    if kind == "rwkv5":
        mixer, ffn = RWKV5TimeMix(C, H, N, **depth), RWKVChannelMix(C, cfg.d_ff, **depth)
    elif kind == "rwkv6":
        mixer = RWKV6TimeMix(C, H, N, mix_rank=ranks["mix"], decay_rank=ranks.get("decay", 64), **depth)
        ffn = RWKV6ChannelMix(C, cfg.d_ff, **depth)
    elif kind == "rwkv7":
        mixer = RWKV7TimeMix(C, H, first=_first_of_its_kind(cfg, layer), ranks=ranks, **depth)
        ffn = RWKV7ChannelMix(C, cfg.d_ff, **depth)
    else:
        raise ValueError(f"make_rwkv_block builds rwkv4 .. rwkv7 blocks, got mixer {kind!r}")
    return RWKVBlock(C, first=layer == 0, eps=cfg.norm_eps, mixer=mixer, ffn=ffn)


# State multiply-adds per token and head, in units of D x Dv (read, write, decay), for the recurrent mixers: a cost
# that does not depend on how many tokens came before (the point of these layers).
_STATE_PASSES = {"linear": 4, "retention": 5, "gla": 5, "rwkv5": 7, "rwkv6": 7, "deltanet": 8, "gated_deltanet": 9,
                 "rwkv7": 9}


def mixing_flops(cfg: ModelConfig, kind: str, window: int | None, context: int) -> int:
    """Forward FLOPs per token of one layer's token mixing beyond its weight matmuls, at ``context`` tokens.

    Softmax attention scores and sums over the keys it sees: 2 * 2 * S * H * D (Kaplan et al. 2020, Sec. 2.1), with
    S the context (window + 1 at most for sliding windows). The recurrent mixers update and read a fixed-size state
    (_STATE_PASSES of H * D * Dv); RWKV-4 works per channel (about 12 operations each); the compressive memory
    attends within its segment and reads its memory. None of these grows with the context."""
    H, D = cfg.n_heads, cfg.head_dim
    if kind == "attention":
        seen = context if window is None else min(context, window + 1)
        return 4 * seen * H * D
    if kind == "memory":
        return 4 * min(context, 64) * H * D + 4 * H * D * D  # segment 64 (MemoryAttention's default)
    if kind == "rwkv4":
        return 12 * H * D
    if kind == "mamba2":  # a state of head_dim (N) x 2 d_model / H (P) per head, written, decayed and read
        return 5 * H * D * (2 * cfg.d_model // H)
    Dv = 2 * D if kind == "retention" else D  # RetNet's values are twice as wide
    return _STATE_PASSES[kind] * H * D * Dv
