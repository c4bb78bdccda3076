"""Decoder-only language models: GPT-2 (learned positions, LayerNorm, GELU, tied head), Llama (RoPE, RMSNorm,
SwiGLU, grouped-query attention, untied head), and the linear-time family (``mixer=``), all one class.

Data flow: tokens -> embeddings (+ positions) -> blocks of (masked mixer + FFN) -> final norm -> head -> logits.
Decoding (``CausalDecoding``): the prompt once, then one token per step; a left-padded batch keeps its padding
mask and each row's next position.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..nn.cache import Cache
from ..nn.layers import Linear
from .common import (Embeddings, QKVModel, check_ids, count_flops, final_norm, init_weights,
                     make_block, run_blocks)
from .decoding import Decoding, Prefilled
from .positions import RelativePositions, step_positions


class DecoderLM(QKVModel):
    """A causal language model.

    forward(input_ids (B, T), cache=None) -> logits (B, T, V). Feeding tokens one at a time through
    ``cache = model.new_cache(B)`` gives the same logits as one full pass.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.family != "decoder":
            raise ValueError(f"DecoderLM needs family='decoder', got {config.family!r}")
        self.config = config
        self.embed = Embeddings(config)
        self.relative = RelativePositions(config, bidirectional=False)
        self.blocks = nn.ModuleList(make_block(config, layer=i) for i in range(config.n_layers))
        self.norm = final_norm(config)
        self.head = Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.tokens.weight
        self.apply(init_weights)

    def decoder_blocks(self):
        return self.blocks

    def flops_per_token(self, seq_len: int | None = None) -> int:
        return count_flops(self, seq_len, tied_head=self.config.tie_embeddings)

    def forward(self, input_ids: torch.Tensor, cache: Cache | None = None, *, attention_mask=None,
                position_ids=None, return_weights: bool = False, last_only: bool = False):
        """input_ids: (B, T) token ids.
        cache: from ``new_cache``; the new tokens continue the cached ones and are written into it (a static
            cache: at its position tensor, attending over its whole buffer under a mask; its owner advances it).
        attention_mask: (B, past + T), 1 = token, 0 = padding (e.g. left-padded prompts); (B, max_len) for a
            static cache. Recurrent layers skip the padded tokens: their state holds the real ones only.
        position_ids: (B, T) or (T,) positions of the new tokens; default: their cache positions.
        last_only: compute logits for the last position only (decoding needs no others).

        Returns logits (B, T or 1, V), or (logits, list of BlockWeights per layer) when ``return_weights``."""
        check_ids(input_ids, self.config.vocab_size)
        T = input_ids.shape[1]
        step = step_positions(cache, input_ids, position_ids=position_ids, attention_mask=attention_mask,
                              blocks=self.blocks)
        rope, bias = self.relative(step.positions, step.q_pos, step.keys)
        x = self.embed(input_ids, step.positions)  # (B, T, d_model)
        x, weights = run_blocks(self.blocks, x, cache, rope=rope, bias=bias, return_weights=return_weights,
                                **step.block_kwargs())
        if cache is not None:
            cache.commit(T)
        if last_only:
            x = x[:, -1:]
        logits = self.head(self.norm(x))  # (B, T, V)
        if self.config.logit_softcap is not None:  # Gemma 2: logits kept in (-c, c)
            cap = self.config.logit_softcap
            logits = torch.tanh(logits / cap) * cap
        return (logits, weights) if return_weights else logits


@dataclass
class PaddedRows:
    """A left-padded batch's decoding state: the padding mask over every position of the run (N, positions),
    prompt then 1s, and each row's next position id (N, 1) (real tokens count from 0)."""
    mask: torch.Tensor
    positions: torch.Tensor


class CausalDecoding(Decoding):
    """A prompt continued: the output is the prompt followed by the new tokens. Past a position table's end the
    context slides (``slides``): a language model's next token is defined from any text, and the last
    ``max_positions`` tokens are the most the model can read (nanoGPT's ``generate`` crops the same way)."""
    slides = True

    def prompt_length(self, input_ids):
        return input_ids.shape[1]

    def prefill(self, model, input_ids, attention_mask, cache, positions):
        B, T = input_ids.shape
        state, position_ids = None, None
        if attention_mask is not None:
            if not bool(attention_mask[:, -1].all()):
                raise ValueError("attention_mask must be left padding for decoding (every row's last position a "
                                 "token, 1); got a row ending in padding")
            mask = attention_mask.new_ones(B, max(positions, cache.keys(T)))  # prompt mask, then 1 per new token
            mask[:, :T] = attention_mask
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): real tokens count from 0
            state = PaddedRows(mask, position_ids[:, -1:] + 1)
        logits = model(input_ids, cache, attention_mask=None if state is None else state.mask[:, :cache.keys(T)],
                       position_ids=position_ids, last_only=True)
        return Prefilled(input_ids, attention_mask, logits[:, -1], state)

    def step(self, model, tokens, cache, state: PaddedRows | None):
        if state is None:
            return model(tokens, cache, last_only=True)
        return model(tokens, cache, attention_mask=state.mask[:, :cache.keys(1)], position_ids=state.positions,
                     last_only=True)

    def advance(self, state: PaddedRows | None):
        return None if state is None else PaddedRows(state.mask, state.positions + 1)

    def expand(self, cache, state: PaddedRows | None, index):
        cache.reorder(index)
        return None if state is None else PaddedRows(state.mask[index], state.positions[index])

    def window_logits(self, model, ids, mask):
        if mask is None:
            return model(ids, last_only=True)[:, -1]
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # (N, W): each row's real tokens count from 0
        return model(ids, attention_mask=mask, position_ids=position_ids, last_only=True)[:, -1]

    def teacher_forced(self, model, input_ids, tokens):
        ids = torch.tensor([list(input_ids) + list(tokens[:-1])], device=next(model.parameters()).device)
        return model(ids)[0, len(input_ids) - 1:]
