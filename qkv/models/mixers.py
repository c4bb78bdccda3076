"""ModelConfig -> token mixers: one table, ``MIXER_KINDS``, holding for each mixer name its builder and what it
costs per token. The names are ``qkv.config.MIXERS``; the table covers exactly them (checked at import).

Builders read the config here so that the layers keep taking primitives. Most mixers sit inside qkv's ``Block``
(with an FFN); RWKV replaces the whole block (its FFN has a token-shift state too), so its versions build blocks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from ..config import MIXERS, ModelConfig
from ..nn import (HGRN2, DeltaNet, GatedLinearAttention, LinearAttention, Mamba2, MemoryAttention, MultiHeadAttention,
                  MultiScaleRetention, RWKV5TimeMix, RWKV6ChannelMix, RWKV6TimeMix, RWKV7ChannelMix, RWKV7TimeMix,
                  RWKVBlock, RWKVChannelMix, make_norm)
from ..nn.rwkv7 import default_ranks


def make_attention(cfg: ModelConfig, *, picks: bool = True) -> MultiHeadAttention:
    """Softmax attention from the config. picks: this layer is the one that reads the block's context, so
    ``attn_select`` (hard / local attention) applies to it; the self-attention of a block that also has
    cross-attention passes False and stays soft."""
    def qk_norm():  # one RMSNorm over the D features of every head (Qwen3, Gemma 3)
        return make_norm("rms", cfg.head_dim, eps=cfg.norm_eps, offset=cfg.norm_offset) if cfg.qk_norm else None

    return MultiHeadAttention(cfg.d_model, cfg.n_heads, n_kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
                              score=cfg.score, bias=cfg.bias, out_bias=cfg.out_bias, dropout=cfg.attn_dropout,
                              scale=cfg.attn_scale, q_norm=qk_norm(), k_norm=qk_norm(), softcap=cfg.attn_softcap,
                              select=cfg.attn_select if picks else "soft", estimator=cfg.attn_estimator,
                              decode=cfg.attn_decode, local_window=cfg.attn_local_window, tau=cfg.attn_tau,
                              entropy_weight=cfg.attn_entropy, baseline_decay=cfg.attn_baseline_decay)


def make_linear(cfg: ModelConfig) -> LinearAttention:
    return LinearAttention(cfg.d_model, cfg.n_heads, head_dim=cfg.head_dim, bias=cfg.bias)


def make_retention(cfg: ModelConfig) -> MultiScaleRetention:
    return MultiScaleRetention(cfg.d_model, cfg.n_heads, head_dim=cfg.head_dim, bias=cfg.bias,
                               norm_eps=cfg.norm_eps)


def make_memory(cfg: ModelConfig) -> MemoryAttention:
    return MemoryAttention(cfg.d_model, cfg.n_heads, head_dim=cfg.head_dim, bias=cfg.bias)


def make_gla(cfg: ModelConfig) -> GatedLinearAttention:
    return GatedLinearAttention(cfg.d_model, cfg.n_heads, head_dim=cfg.head_dim, norm_eps=cfg.norm_eps)


def make_hgrn2(cfg: ModelConfig) -> HGRN2:
    return HGRN2(cfg.d_model, cfg.n_heads, head_dim=cfg.head_dim, norm_eps=cfg.norm_eps)


def make_deltanet(cfg: ModelConfig) -> DeltaNet:
    return DeltaNet(cfg.d_model, cfg.n_heads, head_dim=cfg.head_dim, norm_eps=cfg.norm_eps)


def make_gated_deltanet(cfg: ModelConfig) -> DeltaNet:
    return DeltaNet(cfg.d_model, cfg.n_heads, head_dim=cfg.head_dim, gated=True, norm_eps=cfg.norm_eps)


def make_mamba2(cfg: ModelConfig) -> Mamba2:
    """Mamba-2 with n_heads heads over 2 d_model channels and a state of head_dim x (2 d_model / n_heads) per head."""
    return Mamba2(cfg.d_model, cfg.n_heads, state_size=cfg.head_dim, norm_eps=cfg.norm_eps)


def first_of_its_kind(cfg: ModelConfig, layer: int) -> bool:
    kind = cfg.layer_mixer(layer)[0]
    return all(cfg.layer_mixer(i)[0] != kind for i in range(layer))


def _rwkv_block(version: int) -> Callable[[ModelConfig, int], RWKVBlock]:
    """A builder of RWKV-``version`` blocks. RWKV-4's time mix is n_heads * head_dim wide (RWKV-LM's dim_att; its
    heads only group channels for plots); RWKV-5/6 have n_heads heads of head_dim; RWKV-7's heads span d_model.
    ln0 normalises the embeddings in block 0; RWKV-7's value residual starts at the stack's first RWKV-7 block."""
    def build(cfg: ModelConfig, layer: int) -> RWKVBlock:
        H, N, C = cfg.n_heads, cfg.head_dim, cfg.d_model
        depth = dict(layer=layer, n_layers=cfg.n_layers)
        if version == 4:
            return RWKVBlock(C, cfg.d_ff, d_att=H * N, first=layer == 0, eps=cfg.norm_eps, n_heads=H, **depth)
        ranks = {**default_ranks(C), "mix": 32, **(cfg.rwkv_ranks or {})}
        if version == 5:
            mixer, ffn = RWKV5TimeMix(C, H, N, **depth), RWKVChannelMix(C, cfg.d_ff, **depth)
        elif version == 6:
            mixer = RWKV6TimeMix(C, H, N, mix_rank=ranks["mix"], decay_rank=ranks.get("decay", 64), **depth)
            ffn = RWKV6ChannelMix(C, cfg.d_ff, **depth)
        else:
            mixer = RWKV7TimeMix(C, H, first=first_of_its_kind(cfg, layer), ranks=ranks, **depth)
            ffn = RWKV7ChannelMix(C, cfg.d_ff, **depth)
        return RWKVBlock(C, first=layer == 0, eps=cfg.norm_eps, mixer=mixer, ffn=ffn)
    return build


# -- what token mixing costs per token ---------------------------------------------------------------------------

def _attention_flops(cfg: ModelConfig, window: int | None, context: int) -> int:
    """Softmax attention scores and sums over the keys it sees: 2 * 2 * S * H * D (Kaplan et al. 2020, Sec. 2.1),
    with S the context (window + 1 at most for sliding windows): the one term that grows with the context."""
    return 4 * (context if window is None else min(context, window + 1)) * cfg.n_heads * cfg.head_dim


def _state_flops(passes: int, value_factor: int = 1):
    """A recurrent state of D x Dv per head, updated and read with ``passes`` multiply-adds per entry (read, write,
    decay): a cost that does not depend on how many tokens came before (the point of these layers)."""
    return lambda cfg, window, context: passes * cfg.n_heads * cfg.head_dim * value_factor * cfg.head_dim


def _memory_flops(cfg: ModelConfig, window, context: int) -> int:
    """Attention within a segment (64, MemoryAttention's default) plus a read of the D x D memory."""
    H, D = cfg.n_heads, cfg.head_dim
    return 4 * min(context, 64) * H * D + 4 * H * D * D


@dataclass(frozen=True)
class MixerKind:
    """One mixer name: ``layer`` builds the token mixer of a qkv Block (cfg -> module) or ``block`` builds the whole
    block (cfg, layer index -> module); ``flops`` (cfg, window, context) -> forward FLOPs per token of its token
    mixing beyond the weight matmuls."""
    flops: Callable[[ModelConfig, int | None, int], int]
    layer: Callable[[ModelConfig], nn.Module] | None = None
    block: Callable[[ModelConfig, int], nn.Module] | None = None


MIXER_KINDS: dict[str, MixerKind] = {
    "attention": MixerKind(_attention_flops, layer=make_attention),
    "linear": MixerKind(_state_flops(4), layer=make_linear),
    "retention": MixerKind(_state_flops(5, value_factor=2), layer=make_retention),  # RetNet's values: 2 D wide
    "rwkv4": MixerKind(lambda cfg, w, c: 12 * cfg.n_heads * cfg.head_dim, block=_rwkv_block(4)),  # ~12 per channel
    "memory": MixerKind(_memory_flops, layer=make_memory),
    "rwkv5": MixerKind(_state_flops(7), block=_rwkv_block(5)),
    "rwkv6": MixerKind(_state_flops(7), block=_rwkv_block(6)),
    "rwkv7": MixerKind(_state_flops(9), block=_rwkv_block(7)),
    "gla": MixerKind(_state_flops(5), layer=make_gla),
    "hgrn2": MixerKind(_state_flops(5), layer=make_hgrn2),  # GLA's passes: its key is 1 - f
    "deltanet": MixerKind(_state_flops(8), layer=make_deltanet),
    "gated_deltanet": MixerKind(_state_flops(9), layer=make_gated_deltanet),
    # a state of head_dim (N) x 2 d_model / H (P) per head, written, decayed and read
    "mamba2": MixerKind(lambda cfg, w, c: 5 * cfg.n_heads * cfg.head_dim * (2 * cfg.d_model // cfg.n_heads),
                        layer=make_mamba2),
}
if set(MIXER_KINDS) != set(MIXERS):  # one list: the config's names, each built here
    raise ImportError(f"qkv.models.mixers builds mixers {sorted(MIXER_KINDS)}, but qkv.config.MIXERS names "
                      f"{sorted(MIXERS)}")


def mixing_flops(cfg: ModelConfig, kind: str, window: int | None, context: int) -> int:
    """Forward FLOPs per token of one layer's token mixing beyond its weight matmuls, at ``context`` tokens."""
    return MIXER_KINDS[kind].flops(cfg, window, context)
