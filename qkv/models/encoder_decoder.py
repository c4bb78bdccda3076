"""Encoder-decoder models: the original Transformer (Vaswani et al. 2017), T5 (Raffel et al. 2020), MBART
(Liu et al. 2020) and Marian (Junczys-Dowmunt et al. 2018), all one class configured by fields.

Data flow:
  source tokens -> embeddings (+ positions) -> encoder blocks (self-attention + FFN) -> final norm -> memory
  target tokens -> embeddings (+ positions) -> decoder blocks (masked self-attention, cross-attention over the
                   memory, FFN) -> final norm -> head -> logits

What the variants change, field by field:
  original  post-norm LayerNorm, sinusoidal positions, embeddings scaled by sqrt(d_model), tied head (sec. 3.4)
  T5        pre-norm RMSNorm, a learned relative-position bias computed once per stack and shared by its blocks
            (bidirectional buckets in the encoder, causal ones in the decoder), no biases, unscaled dot-product
            scores, ReLU FFN (v1.1: gated GELU); a tied head sees the output scaled by d_model^-0.5 (scale_head)
  MBART     pre-norm, learned positions with 2 spare rows, a norm on the embeddings, final norms, logits bias
  Marian    post-norm, sinusoidal positions with sines then cosines, scaled embeddings, logits bias

Glossary: B batch, S source length, T target length (new tokens), V vocabulary, H heads.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..nn.cache import Cache
from ..nn.layers import Linear
from ..ops.masks import padding_mask
from .common import Embeddings, QKVModel, check_ids, count_flops, final_norm, make_block, pattern_letters, run_blocks
from .decoding import Decoding, Prefilled
from .positions import RelativePositions, step_positions


@dataclass
class Seq2SeqWeights:
    """Attention weights per layer, when asked for. encoder_self: (B, H, S, S); decoder_self: (B, H, T, past + T);
    cross: (B, H, T, S). ``encoder_self`` is empty when the encoder did not run (memory given or cached)."""
    encoder_self: list[torch.Tensor] = field(default_factory=list)
    decoder_self: list[torch.Tensor] = field(default_factory=list)
    cross: list[torch.Tensor] = field(default_factory=list)


class Stack(nn.Module):
    """Embeddings, blocks and the final norm of one side: the encoder (bidirectional self-attention) or the
    decoder (causal self-attention + cross-attention over the encoder's output)."""

    def __init__(self, cfg: ModelConfig, n_layers: int, *, tokens: nn.Embedding, decoder: bool):
        super().__init__()
        self.decoder = decoder
        self.embed = Embeddings(cfg, tokens=tokens)  # one token table for source, target (and head)
        self.relative = RelativePositions(cfg, bidirectional=not decoder)  # T5: computed once, shared by blocks
        self.blocks = nn.ModuleList(make_block(cfg, layer=i, cross=decoder, mixer="attention")
                                    for i in range(n_layers))
        self.norm = final_norm(cfg)

    def forward(self, ids, *, attention_mask=None, context=None, context_mask=None, cache: Cache | None = None,
                return_weights: bool = False):
        """ids (B, T) -> hidden states (B, T, d_model) after the final norm, and the per-layer BlockWeights.

        attention_mask: (B, keys) padding of this side's keys, 1 = token (the decoder's: past + T, or a static
        cache's max_len); context / context_mask: the memory (B, S, d_model) and its padding (B, 1, 1, S), decoder
        only. cache: the decoder's state; new tokens continue at its positions."""
        T = ids.shape[1]
        step = step_positions(cache, ids, attention_mask=attention_mask, causal=self.decoder)
        rope, bias = self.relative(step.positions, step.q_pos, step.keys)  # bias: (1, H, T, keys) or None
        x = self.embed(ids, step.positions)  # (B, T, d_model)
        x, weights = run_blocks(self.blocks, x, cache, context=context, context_mask=context_mask, rope=rope,
                                bias=bias, return_weights=return_weights, **step.block_kwargs())
        if cache is not None:
            cache.commit(T)
        return self.norm(x), weights


class EncoderDecoder(QKVModel):
    """A sequence-to-sequence model.

    forward(input_ids (B, S), decoder_input_ids (B, T), attention_mask (B, S)) -> logits (B, T, V).
    With ``cache = model.new_cache(B)`` the source is encoded at the first call and kept in the cache
    (``cache.memory``, ``cache.memory_mask``); later calls feed only the new target tokens (``input_ids`` is then not
    read again) and give the same logits as one full pass.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.family != "encoder_decoder":
            raise ValueError(f"EncoderDecoder needs family='encoder_decoder', got {config.family!r}")
        if config.mixer != "attention":
            raise ValueError(f"encoder-decoder models use softmax attention; mixer must be 'attention', "
                             f"got {config.mixer!r}")
        self.config = config
        tokens = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = Stack(config, config.n_layers, tokens=tokens, decoder=False)
        self.decoder = Stack(config, config.n_decoder_layers, tokens=tokens, decoder=True)
        self.head = Linear(config.d_model, config.vocab_size, bias=config.head_bias)
        if config.tie_embeddings:  # Press & Wolf 2017; Vaswani et al. 2017, sec. 3.4
            self.head.weight = tokens.weight
        # T5 keeps the tied head's logits small by scaling the decoder output (Mesh TensorFlow's convention).
        self.head_scale = config.d_model ** -0.5 if config.scale_head else 1.0
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """N(0, 0.02) weights and zero biases; a token table multiplied by sqrt(d_model) starts at N(0, 1/d_model)
        so that the scaled embeddings have unit variance, like the sinusoidal positions added to them."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            if module is self.head and self.config.tie_embeddings:  # the token table, initialised as such
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
                return
            std = 0.02
            if module is self.encoder.embed.tokens and self.config.scale_embeddings:
                std = self.config.d_model ** -0.5
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def decoder_blocks(self):
        return self.decoder.blocks

    def layer_mixers(self) -> list[tuple[str, int | None]]:
        """Every block of both stacks is full softmax attention, encoder first."""
        return [("attention", None)] * (self.config.n_layers + self.config.n_decoder_layers)

    def stack(self) -> str:
        letters, legend = pattern_letters(self.layer_mixers())
        n = self.config.n_layers
        return f"{letters[:n]} | {letters[n:]} (encoder | decoder; {legend})"

    def flops_per_token(self, seq_len: int | None = None) -> int:
        return count_flops(self, seq_len, tied_head=self.config.tie_embeddings)

    # -- the two halves -------------------------------------------------------------------------------------------
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
               return_weights: bool = False):
        """input_ids (B, S), attention_mask (B, S) with 1 = token, 0 = padding -> memory (B, S, d_model),
        or (memory, list of (B, H, S, S) per layer) when ``return_weights``."""
        check_ids(input_ids, self.config.vocab_size)
        _check_mask("attention_mask", attention_mask, input_ids.shape)
        memory, weights = self.encoder(input_ids, attention_mask=attention_mask, return_weights=return_weights)
        return (memory, [w.self_attn for w in weights]) if return_weights else memory

    def decode(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor, *,
               attention_mask: torch.Tensor | None = None, cache: Cache | None = None, last_only: bool = False,
               return_weights: bool = False, decoder_attention_mask: torch.Tensor | None = None):
        """decoder_input_ids (B, T): target tokens (the new ones when decoding with a cache).
        memory (B, S, d_model): the encoder's output. attention_mask (B, S): the SOURCE padding (1 = token).
        cache: from ``new_cache``; positions continue from cache.length, and the cross-attention keys and values
        are computed from the memory once, at the first step. decoder_attention_mask: (B, past + T) target padding
        ((B, max_len) for a static cache, as in DecoderLM.forward).
        last_only: logits for the last position only.

        Returns logits (B, T or 1, V), or (logits, Seq2SeqWeights) when ``return_weights``."""
        check_ids(decoder_input_ids, self.config.vocab_size)
        if memory.dim() != 3 or memory.shape[0] != decoder_input_ids.shape[0] \
                or memory.shape[2] != self.config.d_model:
            raise ValueError(f"memory must be (B, S, d_model) = ({decoder_input_ids.shape[0]}, S, "
                             f"{self.config.d_model}), got shape {tuple(memory.shape)}")
        B, S = memory.shape[:2]
        _check_mask("attention_mask", attention_mask, (B, S))
        T = decoder_input_ids.shape[1]
        _check_mask("decoder_attention_mask", decoder_attention_mask, (B, T if cache is None else cache.keys(T)))
        x, weights = self.decoder(
            decoder_input_ids, context=memory, cache=cache, return_weights=return_weights,
            attention_mask=decoder_attention_mask,
            context_mask=None if attention_mask is None else padding_mask(attention_mask))
        if last_only:
            x = x[:, -1:]
        if self.head_scale != 1.0:
            x = x * self.head_scale
        logits = self.head(x)  # (B, T, V)
        if not return_weights:
            return logits
        return logits, Seq2SeqWeights(decoder_self=[w.self_attn for w in weights],
                                      cross=[w.cross_attn for w in weights])

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None, *, decoder_attention_mask: torch.Tensor | None = None,
                cache: Cache | None = None, return_weights: bool = False, last_only: bool = False):
        """input_ids (B, S) source, decoder_input_ids (B, T) target (teacher forcing: the shifted reference),
        attention_mask (B, S) source padding (1 = token, 0 = padding).

        With a cache, the first call encodes the source and keeps the memory and its mask in it (``cache.memory``,
        ``cache.memory_mask``; beam search's ``cache.reorder`` keeps them in step); later calls reuse them.

        Returns logits (B, T, V), or (logits, Seq2SeqWeights) when ``return_weights``."""
        encoder_weights = []
        if cache is not None and cache.memory is not None:
            memory, attention_mask = cache.memory, cache.memory_mask
        else:
            encoded = self.encode(input_ids, attention_mask, return_weights=return_weights)
            memory, encoder_weights = encoded if return_weights else (encoded, [])
            if cache is not None:
                cache.memory, cache.memory_mask = memory, attention_mask
        out = self.decode(decoder_input_ids, memory, attention_mask=attention_mask, cache=cache,
                          last_only=last_only, return_weights=return_weights,
                          decoder_attention_mask=decoder_attention_mask)
        if return_weights:
            out[1].encoder_self = encoder_weights
        return out


def _check_mask(name: str, mask, shape) -> None:
    if mask is not None and tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (1 = token, 0 = padding), "
                         f"got {tuple(mask.shape)}")


class Seq2SeqDecoding(Decoding):
    """A source encoded once (its output kept in the cache), a target started from ``decoder_start_token_id``: the
    output is the target, the source is not part of it."""
    has_source = True

    def prompt_length(self, input_ids):
        return 1  # the decoder starts from one token

    def source_length(self, input_ids):
        return input_ids.shape[1]

    def prefill(self, model, input_ids, attention_mask, cache, positions):
        start = getattr(model.config, "decoder_start_token_id", None)
        if start is None:
            raise ValueError("an encoder-decoder model needs config.decoder_start_token_id to start decoding")
        cache.memory = model.encode(input_ids, attention_mask=attention_mask)  # (B, S, d_model)
        cache.memory_mask = attention_mask
        prefix = torch.full((input_ids.shape[0], 1), start, dtype=torch.long, device=input_ids.device)
        logits = model.decode(prefix, cache.memory, attention_mask=attention_mask, cache=cache, last_only=True)
        return Prefilled(prefix, None, logits[:, -1])

    def step(self, model, tokens, cache, state):
        return model.decode(tokens, cache.memory, attention_mask=cache.memory_mask, cache=cache, last_only=True)

    def teacher_forced(self, model, input_ids, tokens):
        device = next(model.parameters()).device
        target = torch.tensor([[model.config.decoder_start_token_id] + list(tokens[:-1])], device=device)
        return model(torch.tensor([list(input_ids)], device=device), target)[0]
