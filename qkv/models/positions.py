"""Where tokens sit: the position kinds a config names (one table), and, per forward, the positions, cache slots and
masks of the new tokens.

Each kind of ``ModelConfig.position`` is one ``PositionKind``: a signal added to the embeddings (learned,
sinusoidal), a rotation of queries and keys (RoPE), or a bias on the attention logits (ALiBi, T5's buckets), and
whether a table bounds how far a model can read (learned positions end at ``max_positions``). The names are
``qkv.config.POSITIONS``; this table covers exactly them (checked below, at import).

Per forward, ``StepPositions`` says where the T new tokens go: their position ids (for the embeddings and RoPE),
their cache slots (the key positions they sit at), how many keys the queries see, and the masks. A growing cache
hands back the keys written so far, the new queries being the last T of them, so causality and windows need no
mask tensor; a static cache hands back every position, and the mask says which are written and seen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ..config import POSITIONS, ModelConfig
from ..nn import ALiBi, LearnedPositions, RotaryEmbedding, SinusoidalPositions, T5RelativeBias
from ..nn.cache import Cache
from ..ops.masks import padding_mask, static_mask


@dataclass(frozen=True)
class PositionKind:
    """What one ``position`` value builds. added: (cfg) -> module adding position vectors to the embeddings;
    rotary: (cfg) -> RotaryEmbedding; bias: (cfg, bidirectional) -> module giving a (1, H, T, S) logits bias from
    query and key positions. table: the position vectors are weights (a checkpoint holds them), which end at
    max_positions (decoding cannot go past it)."""
    added: Callable[[ModelConfig], nn.Module] | None = None
    rotary: Callable[[ModelConfig], nn.Module] | None = None
    bias: Callable[[ModelConfig, bool], nn.Module] | None = None
    table: bool = False


def _rope(cfg: ModelConfig) -> RotaryEmbedding:
    return RotaryEmbedding(cfg.head_dim, base=cfg.rope_base, rotary_dim=cfg.rotary_dim, scaling=cfg.rope_scaling)


POSITION_KINDS: dict[str, PositionKind] = {
    "learned": PositionKind(added=lambda c: LearnedPositions(c.max_positions, c.d_model, offset=c.position_offset),
                            table=True),
    "sinusoidal": PositionKind(added=lambda c: SinusoidalPositions(c.d_model, interleaved=c.sinusoidal_interleaved)),
    "rope": PositionKind(rotary=_rope),
    "alibi": PositionKind(bias=lambda c, bidirectional: ALiBi(c.n_heads)),
    "relative": PositionKind(bias=lambda c, bidirectional: T5RelativeBias(
        c.n_heads, num_buckets=c.relative_buckets, max_distance=c.relative_max_distance, bidirectional=bidirectional)),
    "none": PositionKind(),
}
if set(POSITION_KINDS) != set(POSITIONS):  # one list: the config's names, each built here
    raise ImportError(f"qkv.models.positions covers positions {sorted(POSITION_KINDS)}, but qkv.config.POSITIONS "
                      f"names {sorted(POSITIONS)}")


def position_kind(cfg: ModelConfig) -> PositionKind:
    return POSITION_KINDS[cfg.position]


def decodable_positions(cfg: ModelConfig) -> int | None:
    """The positions a model can read at most: ``max_positions`` when a table holds them, None when its positions
    extrapolate (RoPE, ALiBi, sinusoids and relative buckets go past the end, rarely well)."""
    return cfg.max_positions if position_kind(cfg).table else None


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
        kind = position_kind(cfg)
        self.rope = kind.rotary(cfg) if kind.rotary else None
        # sliding-window layers with a RoPE of their own (Gemma 3's local layers): plain rotation, another base
        self.local_rope = RotaryEmbedding(cfg.head_dim, base=cfg.rope_local_base, rotary_dim=cfg.rotary_dim) \
            if cfg.rope_local_base is not None else None
        self.relative = kind.bias(cfg, bidirectional) if kind.bias else None  # a relative-position logits bias

    def forward(self, positions: torch.Tensor, q_pos: torch.Tensor, keys: int):
        """positions: (T,) or (B, T) position ids of the new tokens (RoPE); q_pos: (T,) the key positions they sit
        at, among ``keys`` key positions 0 .. keys - 1 (logits bias). Returns (rope tables or None, bias (1, H, T,
        keys) or None). With a local RoPE the tables are a ``WindowedRope``, which ``run_blocks`` splits."""
        rope = self.rope(positions) if self.rope is not None else None
        if self.local_rope is not None:
            rope = WindowedRope(rope, self.local_rope(positions))
        bias = None
        if self.relative is not None:
            bias = self.relative(q_pos, torch.arange(keys, device=q_pos.device))
        return rope, bias


@dataclass(slots=True)
class StepPositions:
    """Where one forward's T new tokens go. positions: (T,) or (B, T) position ids. q_pos: (T,) their key positions
    (cache slots). keys: key positions the queries see (S). mask / causal: for attention layers (``mask`` (B, 1,
    1, S) padding, or None); masks: window -> (B | 1, 1, T, S) mask holding causality, window and padding, when
    the queries are not the last T keys (a static cache), else None. token_mask: (B, T) bool, True at real tokens
    of this call, for recurrent layers (their state must skip padding), or None when there is no padding."""
    positions: torch.Tensor
    q_pos: torch.Tensor
    keys: int
    mask: torch.Tensor | None
    causal: bool
    masks: dict | None
    token_mask: torch.Tensor | None

    def block_kwargs(self) -> dict:
        """The masks as ``run_blocks`` takes them."""
        return dict(mask=self.mask, causal=self.causal, masks=self.masks, token_mask=self.token_mask)


def step_positions(cache: Cache | None, ids: torch.Tensor, *, position_ids=None, attention_mask=None,
                   causal: bool = True, blocks=()) -> StepPositions:
    """The positions and masks of a forward of the new tokens ``ids`` (B, T) through ``cache`` (None: a full pass).
    attention_mask: (B, S) with 1 = token, 0 = padding, over every key position (past and new; a static cache's
    whole buffer). blocks: the stack's blocks, whose attention windows a static cache's masks hold."""
    (B, T), device = ids.shape, ids.device
    if cache is None:
        q_pos, keys, static = torch.arange(T, device=device), T, False
    else:
        q_pos, keys, static = cache.begin(T, device), cache.keys(T), cache.static
    positions = q_pos if position_ids is None else position_ids
    token_mask = None if attention_mask is None else attention_mask.index_select(1, q_pos).bool()  # (B, T)
    if not static:  # the queries are the last T keys: causality and windows are rules, not tensors
        mask = None if attention_mask is None else padding_mask(attention_mask)  # (B, 1, 1, S)
        return StepPositions(positions, q_pos, keys, mask, causal, None, token_mask)
    windows = {getattr(b, "window", None) for b in blocks} | {None}
    masks = {w: static_mask(q_pos, keys, w, attention_mask) for w in windows}  # (B | 1, 1, T, S) each
    if token_mask is None:  # the masks are attention's; recurrent layers read that every token is real
        token_mask = torch.ones(B, T, dtype=torch.bool, device=device)
    return StepPositions(positions, q_pos, keys, None, False, masks, token_mask)
