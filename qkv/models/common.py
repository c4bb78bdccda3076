"""What every family shares: the base class (save, summary, caches), embeddings, position machinery, blocks.

This is the only place outside the family files that reads ModelConfig; it turns fields into primitives for
``qkv.nn``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..cache import Cache, CrossKVCache, KVCache, LayerCache
from ..config import PATTERN_LETTERS, ModelConfig
from .mixers import (make_deltanet, make_gated_deltanet, make_gla, make_linear, make_mamba2, make_memory,
                     make_retention, make_rwkv_block, mixing_flops)
from ..nn import (ALiBi, Block, FeedForward, LearnedPositions, MultiHeadAttention, RotaryEmbedding,
                  SinusoidalPositions, T5RelativeBias, make_norm)

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


class QKVModel(nn.Module):
    """Base of every family: holds the config, saves itself, counts parameters and FLOPs, makes caches."""

    config: ModelConfig

    def save(self, path) -> Path:
        """Write qkv's own folder: config.json + model.safetensors (tied weights stored once) + manifest.json (the
        sha256 of both, which ``qkv.load`` checks)."""
        from safetensors.torch import save_model
        from ..safety import write_atomic, write_manifest
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ValueError(f"{path}: is a file; expected a folder to write the model into")
        path.mkdir(parents=True, exist_ok=True)
        write_atomic(path / CONFIG_FILE, self.config.to_json())
        tmp = path / (WEIGHTS_FILE + ".tmp")
        try:
            save_model(self, str(tmp))
            tmp.replace(path / WEIGHTS_FILE)  # atomic: a crash mid-write leaves the old weights whole
        finally:
            tmp.unlink(missing_ok=True)
        write_manifest(path, [CONFIG_FILE, WEIGHTS_FILE])  # the folder may hold other files (tokenizer/, ...)
        return path

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        seen, total = set(), 0
        for name, p in self.named_parameters():
            if id(p) in seen or (exclude_embeddings and isinstance(self.get_submodule(name.rsplit(".", 1)[0]),
                                                                   (nn.Embedding,))):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Forward FLOPs per token at context ``seq_len``: 2 per weight of every matmul, plus each layer's token
        mixing: softmax attention's scores and weighted sum (2 * 2 * T * d at context T; Kaplan et al. 2020,
        sec. 2.1), a sliding window's up to its width, and the recurrent mixers' state update and read, which do
        not grow with the context (qkv/models/mixers.py, ``mixing_flops``)."""
        cfg = self.config
        T = seq_len or cfg.max_positions
        matmul = 2 * self.num_parameters(exclude_embeddings=True)
        if cfg.tie_embeddings and cfg.family != "vit":
            matmul += 2 * cfg.d_model * cfg.vocab_size  # the tied output layer is a matmul too
        mixing = sum(mixing_flops(cfg, kind, window, T) for kind, window in self.layer_mixers())
        return int(matmul + mixing)

    def layer_mixers(self) -> list[tuple[str, int | None]]:
        """(mixer, window) of every block, encoder first: the stack ``summary`` prints and FLOPs are counted over
        (an encoder-decoder model's blocks are all full softmax attention)."""
        cfg = self.config
        if cfg.family == "encoder_decoder":
            return [("attention", None)] * (cfg.n_layers + cfg.n_decoder_layers)
        return [cfg.layer_mixer(i) for i in range(cfg.n_layers)]

    def stack(self) -> str:
        """The blocks' mixers as pattern letters with a legend, e.g. "RARA (R retention, A attention)"."""
        letter = {v: k for k, v in reversed(PATTERN_LETTERS.items())}  # first letter of each mixer
        letters = "".join("W" if window is not None else letter[kind] for kind, window in self.layer_mixers())
        legend = {ch: ("sliding-window attention" if ch == "W" else PATTERN_LETTERS[ch]) for ch in letters}
        legend = ", ".join(f"{ch} {name}" for ch, name in legend.items())
        if self.config.family == "encoder_decoder":
            n = self.config.n_layers
            return f"{letters[:n]} | {letters[n:]} (encoder | decoder; {legend})"
        return f"{letters} ({legend})"

    def summary(self, seq_len: int | None = None) -> str:
        cfg, n = self.config, self.num_parameters()
        window = f", window {cfg.window}" if cfg.window is not None else ""
        lines = [f"{type(self).__name__} ({cfg.family})",
                 f"  parameters:       {n:,} ({n / 1e6:.2f} M)",
                 f"  non-embedding:    {self.num_parameters(exclude_embeddings=True):,}",
                 f"  FLOPs per token:  {self.flops_per_token(seq_len) / 1e6:.2f} M "
                 f"(forward, context {seq_len or cfg.max_positions})",
                 f"  weights memory:   {sum(p.numel() * p.element_size() for p in self.parameters()) / 2**20:.1f} MiB",
                 f"  layers x width:   {cfg.n_layers} x {cfg.d_model}, heads {cfg.n_heads} "
                 f"(kv {cfg.n_kv_heads}), head size {cfg.head_dim}, FFN {cfg.d_ff} ({cfg.activation})",
                 f"  position:         {cfg.position}; norm: {cfg.norm} ({'pre' if cfg.prenorm else 'post'})",
                 f"  stack:            {self.stack()}{window}"]
        return "\n".join(lines)

    def new_cache(self, batch_size: int, max_len: int | None = None, *, static: bool = False) -> Cache:
        """An empty decoding state for ``batch_size`` sequences (KV caches grow unless ``max_len`` is given).

        Sliding-window layers get rolling caches, bounded by their window, unless ``static`` asks for every
        position to stay addressable (static-slot decoding, ``Cache.use_slots``)."""
        blocks = self.decoder_blocks()

        def mixer_cache(block):
            window = getattr(block, "window", None)
            if window is None or static:
                return block.mixer.new_cache(max_len)
            return block.mixer.new_cache(max_len, window=window)

        return Cache([LayerCache(mixer=mixer_cache(b), cross=CrossKVCache() if b.cross is not None else None)
                      for b in blocks], batch_size=batch_size, max_len=max_len)

    def decoder_blocks(self):
        raise NotImplementedError(f"{type(self).__name__} does not decode token by token")


def load_config(path) -> ModelConfig:
    from ..safety import inside, read_json
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a qkv model folder: {CONFIG_FILE} is missing")
    fields = read_json(inside(path, path / CONFIG_FILE, what=CONFIG_FILE))
    try:
        return ModelConfig.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path / CONFIG_FILE}: {e}") from None


# -- embeddings and positions -----------------------------------------------------------------------------------

class Embeddings(nn.Module):
    """Token embeddings (scaled by sqrt(d_model) if asked) + absolute positions + token types, then an optional
    norm and dropout."""

    def __init__(self, cfg: ModelConfig, *, tokens: nn.Embedding | None = None):
        super().__init__()
        self.tokens = tokens if tokens is not None else nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0
        self.positions = None
        if cfg.position == "learned":
            self.positions = LearnedPositions(cfg.max_positions, cfg.d_model, offset=cfg.position_offset)
        elif cfg.position == "sinusoidal":
            self.positions = SinusoidalPositions(cfg.d_model, interleaved=cfg.sinusoidal_interleaved)
        self.types = nn.Embedding(cfg.type_vocab_size, cfg.d_model) if cfg.type_vocab_size else None
        self.norm = make_norm(cfg.norm, cfg.d_model, eps=cfg.norm_eps, bias=cfg.norm_bias,
                              offset=cfg.norm_offset) if cfg.embed_norm else None
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids, positions, token_type_ids=None):
        """input_ids (B, T), positions (T,) or (B, T) -> (B, T, d_model)."""
        x = self.tokens(input_ids)
        if self.scale != 1.0:
            x = x * self.scale
        if self.positions is not None:
            x = x + self.positions(positions).to(x.dtype)
        if self.types is not None:
            types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            x = x + self.types(types)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x) if self.dropout.p else x


@dataclass
class WindowedRope:
    """RoPE tables of a stack whose sliding-window layers rotate with another base: (cos, sin) for each kind."""
    full: tuple
    local: tuple


class RelativePositions(nn.Module):
    """The position signals that act inside attention, for one stack of blocks: RoPE tables, or a logits bias
    (ALiBi, T5 relative buckets), computed once per forward and shared by every block of the stack."""

    def __init__(self, cfg: ModelConfig, *, bidirectional: bool):
        super().__init__()
        self.rope = RotaryEmbedding(cfg.head_dim, base=cfg.rope_base, rotary_dim=cfg.rotary_dim,
                                    scaling=cfg.rope_scaling) if cfg.position == "rope" else None
        # sliding-window layers with a RoPE of their own (Gemma 3's local layers): plain rotation, another base
        self.local_rope = RotaryEmbedding(cfg.head_dim, base=cfg.rope_local_base, rotary_dim=cfg.rotary_dim) \
            if cfg.rope_local_base is not None else None
        self.alibi = ALiBi(cfg.n_heads) if cfg.position == "alibi" else None
        self.relative = T5RelativeBias(cfg.n_heads, num_buckets=cfg.relative_buckets,
                                       max_distance=cfg.relative_max_distance, bidirectional=bidirectional) \
            if cfg.position == "relative" else None

    def forward(self, positions, past: int, T: int, device, *, slots=None, capacity: int | None = None):
        """positions: (T,) or (B, T) of the new tokens; keys are positions 0 .. past + T - 1, or, in static
        decoding, the new tokens sit at cache ``slots`` (T,) and the keys are all ``capacity`` cache positions.
        Returns (rope tables or None, bias (1, H, T, S) or None). With a local RoPE the tables are a
        ``WindowedRope`` (full layers' tables, sliding-window layers' tables), which ``run_blocks`` splits."""
        rope = self.rope(positions) if self.rope is not None else None
        if self.local_rope is not None:
            rope = WindowedRope(rope, self.local_rope(positions))
        bias = None
        if self.alibi is not None or self.relative is not None:
            if slots is None:
                q_pos, k_pos = torch.arange(past, past + T, device=device), torch.arange(past + T, device=device)
            else:
                q_pos, k_pos = slots, torch.arange(capacity, device=device)
            bias = (self.alibi or self.relative)(q_pos, k_pos)
        return rope, bias


def make_attention(cfg: ModelConfig) -> MultiHeadAttention:
    def qk_norm():  # one RMSNorm over the D features of every head (Qwen3, Gemma 3)
        return make_norm("rms", cfg.head_dim, eps=cfg.norm_eps, offset=cfg.norm_offset) if cfg.qk_norm else None

    return MultiHeadAttention(cfg.d_model, cfg.n_heads, n_kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
                              score=cfg.score, bias=cfg.bias, out_bias=cfg.out_bias, dropout=cfg.attn_dropout, scale=cfg.attn_scale,
                              q_norm=qk_norm(), k_norm=qk_norm(), softcap=cfg.attn_softcap)


# Token mixers by config name. The linear-time family registers its layers here (qkv/nn/mixers.py).
MIXER_BUILDERS = {"attention": make_attention, "linear": make_linear, "retention": make_retention,
                  "memory": make_memory, "gla": make_gla, "deltanet": make_deltanet,
                  "gated_deltanet": make_gated_deltanet, "mamba2": make_mamba2}
# Mixers that replace the whole block (their FFN keeps a state too): name -> builder(cfg, layer).
BLOCK_BUILDERS = {"rwkv4": make_rwkv_block, "rwkv5": make_rwkv_block, "rwkv6": make_rwkv_block,
                  "rwkv7": make_rwkv_block}


def make_block(cfg: ModelConfig, *, layer: int = 0, cross: bool = False, mixer: str | None = None) -> Block:
    """Block ``layer`` of a stack: its mixer and window from ``cfg.layer_mixer`` (``mixer`` forces a full-context
    one, e.g. the encoder-decoder stacks' softmax attention)."""
    kind, window = (mixer, None) if mixer else cfg.layer_mixer(layer)
    if kind in BLOCK_BUILDERS:
        if cross:
            raise ValueError(f"mixer {kind!r} builds a whole block without cross-attention; cross=True needs a mixer")
        return BLOCK_BUILDERS[kind](cfg, layer)
    if kind not in MIXER_BUILDERS:
        raise ValueError(f"mixer {kind!r} is not available; registered mixers: "
                         f"{sorted(MIXER_BUILDERS) + sorted(BLOCK_BUILDERS)}")
    ffn = FeedForward(cfg.d_model, cfg.d_ff, activation=cfg.activation, bias=cfg.ffn_bias, dropout=cfg.ffn_dropout)
    return Block(cfg.d_model, MIXER_BUILDERS[kind](cfg), ffn, cross=make_attention(cfg) if cross else None,
                 norm=cfg.norm, prenorm=cfg.prenorm, eps=cfg.norm_eps, norm_bias=cfg.norm_bias, dropout=cfg.dropout,
                 window=window, norm_offset=cfg.norm_offset, sandwich=cfg.sandwich_norm)


def block_windows(blocks) -> set:
    """The distinct attention windows of a stack's blocks (None: full context)."""
    return {getattr(b, "window", None) for b in blocks}


def run_blocks(blocks, x: torch.Tensor, cache: Cache | None = None, *, return_weights: bool = False,
               masks: dict | None = None, **kwargs):
    """x through every block, block i with ``cache.layers[i]``; the other keywords go to every block, and each
    block's own ``window`` to its mixer. ``masks`` (static decoding) maps each window in ``block_windows`` to
    the mask that already holds it, given to the blocks of that window instead. Blocks that declare
    ``takes_shared`` also get one dict that lives for this call (RWKV-7's first-layer values ride in it).
    Returns (x, list of BlockWeights per block, empty unless ``return_weights``)."""
    weights, shared = [], {}
    for i, block in enumerate(blocks):
        window, kw = getattr(block, "window", None), kwargs
        if isinstance(kwargs.get("rope"), WindowedRope):
            kw = {**kwargs, "rope": kwargs["rope"].full if window is None else kwargs["rope"].local}
        if masks is not None:
            kw = {**kw, "mask": masks[window]}
        elif window is not None:
            kw = {**kw, "window": window}
        if getattr(block, "takes_shared", False):
            kw = {**kw, "shared": shared}
        x = block(x, cache=None if cache is None else cache.layers[i], return_weights=return_weights, **kw)
        if return_weights:
            x, w = x
            weights.append(w)
    return x, weights


def final_norm(cfg: ModelConfig) -> nn.Module:
    return make_norm(cfg.norm, cfg.d_model, eps=cfg.norm_eps, bias=cfg.norm_bias, offset=cfg.norm_offset) \
        if cfg.final_norm else nn.Identity()
