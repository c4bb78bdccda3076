"""Decoder-only language models: GPT-2 (learned positions, LayerNorm, GELU, tied head), Llama (RoPE, RMSNorm,
SwiGLU, grouped-query attention, untied head), and the linear-time family (``mixer=``), all one class.

Data flow: tokens -> embeddings (+ positions) -> blocks of (masked mixer + FFN) -> final norm -> head -> logits.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..cache import Cache
from ..config import ModelConfig
from ..ops._checks import checks_values
from ..ops.masks import padding_mask, static_mask
from .common import Embeddings, QKVModel, RelativePositions, block_windows, final_norm, make_block, run_blocks


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
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.tokens.weight
        self.apply(_init_weights)

    def decoder_blocks(self):
        return self.blocks

    def forward(self, input_ids: torch.Tensor, cache: Cache | None = None, *, attention_mask=None,
                position_ids=None, return_weights: bool = False, last_only: bool = False):
        """input_ids: (B, T) token ids.
        cache: from ``new_cache``; the new tokens continue the cached ones (and are appended to it). After
            ``cache.use_slots(slots)`` they are written at ``slots`` instead and attend over the whole preallocated
            cache (static decoding: same shapes every step; the caller advances the lengths).
        attention_mask: (B, past + T), 1 = token, 0 = padding (e.g. left-padded prompts); (B, max_len) when static.
        position_ids: (B, T) or (T,) positions of the new tokens; default past .. past + T - 1 (static: slots).
        last_only: compute logits for the last position only (decoding needs no others).

        Returns logits (B, T or 1, V), or (logits, list of BlockWeights per layer) when ``return_weights``."""
        _check_ids(input_ids, self.config.vocab_size)
        B, T = input_ids.shape
        device = input_ids.device
        slots, masks = None if cache is None else cache.slots, None
        if slots is None:
            past = 0 if cache is None else cache.length
            if position_ids is None:
                position_ids = torch.arange(past, past + T, device=device)
            rope, bias = self.relative(position_ids, past, T, device)
            mask = None if attention_mask is None else padding_mask(attention_mask)  # (B, 1, 1, S)
            causal = True
        else:
            # Static decoding: attend over every cache position under one mask; the shapes never change.
            if position_ids is None:
                position_ids = slots
            rope, bias = self.relative(position_ids, 0, T, device, slots=slots, capacity=cache.max_len)
            # one mask per window in the stack (sliding-window and full layers of a hybrid): (B | 1, 1, T, max_len)
            masks = {w: static_mask(slots, cache.max_len, w, attention_mask) for w in block_windows(self.blocks)}
            mask, causal = None, False
        x = self.embed(input_ids, position_ids)  # (B, T, d_model)
        x, weights = run_blocks(self.blocks, x, cache, mask=mask, causal=causal, rope=rope, bias=bias, masks=masks,
                                return_weights=return_weights)
        if cache is not None and slots is None:
            cache.length += T
        if last_only:
            x = x[:, -1:]
        logits = self.head(self.norm(x))  # (B, T, V)
        if self.config.logit_softcap is not None:  # Gemma 2: logits kept in (-c, c)
            cap = self.config.logit_softcap
            logits = torch.tanh(logits / cap) * cap
        return (logits, weights) if return_weights else logits


def _check_ids(input_ids, vocab_size):
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int, torch.int16):
        raise TypeError(f"input_ids must be an integer tensor (B, T), got "
                        f"{getattr(input_ids, 'dtype', type(input_ids).__name__)}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
    # one host read on the good path, skipped where values are trusted (a decoding loop's own tokens)
    if checks_values() and input_ids.numel() and not bool(((input_ids >= 0) & (input_ids < vocab_size)).all()):
        raise ValueError(f"input_ids must lie in [0, {vocab_size}) (vocab_size), got values in "
                         f"[{int(input_ids.min())}, {int(input_ids.max())}]")


def _init_weights(module: nn.Module) -> None:
    """GPT-2's initialisation: N(0, 0.02) weights, zero biases, unit norms."""
    if isinstance(module, (nn.Linear, nn.Embedding)) and not hasattr(module, "inv_freq"):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
