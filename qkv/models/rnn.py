"""The recurrent encoder-decoder with attention, where the attention notes begin: an RNN that squeezes a sentence
into one vector (Sutskever et al. 2014; Cho et al. 2014), and the same RNN given "a bunch of new paths from the
encoder to the decoder, one per input value" (Bahdanau et al. 2015; Luong et al. 2015).

Data flow:
  source tokens -> embeddings -> fused recurrent layers (nn.GRU / nn.LSTM, bidirectional or not) -> memory (B, S, Dm)
                                                                      and final states -> the decoder's first state
  target tokens -> embeddings -> recurrent cells, one word per step, attending over the memory -> logits (B, T, V)

Fields (``ModelConfig``): d_model is the state size N (per direction), n_layers and n_decoder_layers the depths,
rnn_cell, rnn_attention (none | bahdanau | global | local_m | local_p) with ``score``, rnn_bidirectional,
rnn_input_feeding, rnn_local_window (D), rnn_embed_dim, d_ff (Bahdanau's maxout), dropout, tie_embeddings. Source
and target have their own embeddings (the papers' two vocabularies), over qkv's one shared token list.

Decoding keeps the decoder's state (every layer's h and c, the fed-back h~, the step count) as one recurrent state
in the cache, and the encoder's outputs with the attention's keys as the cross-attention keys and values, computed
once per source: beam search reorders the state by rows like any cache. Glossary: B batch, S source length,
T target length, V vocabulary, N state size, Dm memory size (N, or 2N with a bidirectional encoder).
"""
from __future__ import annotations

import torch

from ..config import ModelConfig
from ..nn.cache import Cache, CrossKVCache, LayerCache, RecurrentCache
from ..nn.rnn_decoder import RecurrentDecoder
from ..nn.rnn_encoder import Encoded, RecurrentEncoder
from .common import QKVModel, check_ids
from .decoding import Prefilled
from .encoder_decoder import Seq2SeqDecoding, Seq2SeqWeights


class RecurrentSeq2Seq(QKVModel):
    """forward(input_ids (B, S), decoder_input_ids (B, T), attention_mask (B, S)) -> logits (B, T, V).

    With ``cache = model.new_cache(B)`` the first call encodes the source into the cache and later calls feed only
    new target tokens, giving the logits of one full pass (the decoder runs one step per token either way)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.family != "rnn":
            raise ValueError(f"RecurrentSeq2Seq needs family='rnn', got {config.family!r}")
        self.config = cfg = config
        bidirectional = cfg.rnn_bidirectional == "encoder"
        self.encoder = RecurrentEncoder(cfg.vocab_size, cfg.rnn_embed_dim, cfg.d_model, cfg.n_layers,
                                        cell=cfg.rnn_cell, bidirectional=bidirectional, dropout=cfg.dropout)
        self.decoder = RecurrentDecoder(
            cfg.vocab_size, cfg.rnn_embed_dim, cfg.d_model, cfg.n_decoder_layers, cell=cfg.rnn_cell,
            attention=cfg.rnn_attention, memory_dim=self.encoder.out_dim, score=cfg.score,
            input_feeding=cfg.rnn_input_feeding, half_width=cfg.rnn_local_window, deep_output=cfg.d_ff,
            bridge=cfg.d_model if bidirectional else None, dropout=cfg.dropout)
        for p in self.parameters():  # Luong et al. 2015, sec. 4.1 (and Sutskever et al. 2014): U(-0.1, 0.1)
            torch.nn.init.uniform_(p, -0.1, 0.1)
        if cfg.tie_embeddings:  # the config checked the sizes agree
            self.decoder.head.weight = self.decoder.embed.weight

    # -- what the registry and summaries read ----------------------------------------------------------------------
    def layer_mixers(self) -> list[tuple[str, int | None]]:
        """One softmax attention (the decoder's over the source), none for the fixed-vector baseline."""
        return [] if self.config.rnn_attention == "none" else [("attention", None)]

    def stack(self) -> str:
        cfg = self.config
        both = "bidirectional " if cfg.rnn_bidirectional == "encoder" else ""
        feed = ", input feeding" if cfg.rnn_input_feeding else ""
        window = f", D={cfg.rnn_local_window}" if cfg.rnn_local_window is not None else ""
        how = "no attention" if cfg.rnn_attention == "none" else f"{cfg.rnn_attention} attention ({cfg.score}{window})"
        return (f"{cfg.n_layers} {both}{cfg.rnn_cell} | {cfg.n_decoder_layers} {cfg.rnn_cell}, {how}{feed} "
                f"(encoder | decoder)")

    def describe(self) -> list[tuple[str, str]]:
        cfg = self.config
        return [("state x embed", f"{cfg.d_model} x {cfg.rnn_embed_dim}, vocabulary {cfg.vocab_size}"),
                ("stack", self.stack())]

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Forward FLOPs per target token, with one source token per target token: 2 per weight of every matrix
        product (a tied output layer counted), plus the attention over ``seq_len`` source positions: scores and
        weighted sum, 2 * 2 * S * Dm (an additive score's tanh layer adds 2 * S * A)."""
        cfg = self.config
        matmul = 2 * self.num_parameters(exclude_embeddings=True)
        if cfg.tie_embeddings:
            matmul += 2 * self.decoder.head.in_features * cfg.vocab_size
        S = seq_len or cfg.max_positions
        attn = 0 if cfg.rnn_attention == "none" else 4 * S * self.encoder.out_dim
        if cfg.rnn_attention != "none" and cfg.score == "additive":
            attn += 2 * S * cfg.d_model
        return int(matmul + attn)

    # -- encoding and the decoding state ---------------------------------------------------------------------------
    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Encoded:
        """input_ids (B, S), attention_mask (B, S) 1 = token, 0 = padding (anywhere) -> ``Encoded`` (memory
        (B, S, Dm), each encoder layer's final states)."""
        check_ids(input_ids, self.config.vocab_size)
        _check_mask("attention_mask", attention_mask, input_ids.shape)
        return self.encoder(input_ids, attention_mask)

    def new_cache(self, batch_size: int, max_len: int | None = None, *, static: bool = False,
                  rewind: int = 0) -> Cache:
        """The decoding state of ``batch_size`` rows: one recurrent state (the decoder's) and the source's keys and
        values (``start`` fills both). Nothing grows with the output: max_len only bounds a static run."""
        return Cache([LayerCache(mixer=RecurrentCache(static=static), cross=CrossKVCache())], batch_size=batch_size,
                     max_len=max_len, static=static)

    def start(self, cache: Cache, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
        """Encode the source into ``cache``: its outputs (``cache.memory``, ``cache.memory_mask``), the attention's
        keys and values (computed once per source), and the decoder's first state."""
        encoded = self.encode(input_ids, attention_mask)
        cache.memory, cache.memory_mask = encoded.memory, attention_mask
        layer = cache.layers[0]
        keys = self.decoder.keys(encoded.memory)
        if keys is not None:
            layer.cross.k, layer.cross.v = keys, encoded.memory[:, None]  # (B, 1, S, .)
        for name, t in self.decoder.initial_state(encoded).items():
            layer.mixer[name] = t

    def decode(self, decoder_input_ids: torch.Tensor, cache: Cache, *, last_only: bool = False,
               return_weights: bool = False, decoder_attention_mask: torch.Tensor | None = None):
        """decoder_input_ids (B, T) the next target tokens, after ``start``: one step each, from the cache's state,
        which moves on. decoder_attention_mask (B, T) may only mark padding at the end of rows (a recurrent decoder
        reads left to right: trailing padding changes no earlier output). Returns logits (B, T or 1, V), or
        (logits, Seq2SeqWeights) when ``return_weights`` (cross: one (B, 1, T, S) map; none for rnn_attention
        'none', which has no alignment)."""
        check_ids(decoder_input_ids, self.config.vocab_size)
        layer, T = cache.layers[0], decoder_input_ids.shape[1]
        if "h" not in layer.mixer:
            raise ValueError("decode needs a started cache: model.start(cache, input_ids, attention_mask) first")
        _check_mask("decoder_attention_mask", decoder_attention_mask, decoder_input_ids.shape)
        state = {name: layer.mixer[name] for name in list(layer.mixer.state)}
        logits, weights, state = self.decoder(decoder_input_ids, state, layer.cross.k, layer.cross.v,
                                              cache.memory_mask, last_only=last_only, return_weights=return_weights)
        for name, t in state.items():
            layer.mixer[name] = t
        layer.mixer.commit(T)
        cache.commit(T)
        if not return_weights:
            return logits
        return logits, Seq2SeqWeights(cross=[] if weights is None else [weights[:, None]])

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None, *, decoder_attention_mask: torch.Tensor | None = None,
                cache: Cache | None = None, return_weights: bool = False, last_only: bool = False):
        """input_ids (B, S) source, decoder_input_ids (B, T) target (teacher forcing: the shifted reference),
        attention_mask (B, S) source padding, anywhere in a row. A cache is started at its first call (later calls
        read no input_ids). Returns logits (B, T, V), or (logits, Seq2SeqWeights) when ``return_weights``."""
        if cache is None:
            cache = self.new_cache(input_ids.shape[0])
        if cache.memory is None:
            self.start(cache, input_ids, attention_mask)
        return self.decode(decoder_input_ids, cache, last_only=last_only, return_weights=return_weights,
                           decoder_attention_mask=decoder_attention_mask)


def _check_mask(name: str, mask, shape) -> None:
    if mask is not None and tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} (1 = token, 0 = padding), got {tuple(mask.shape)}")


class RecurrentDecoding(Seq2SeqDecoding):
    """A source encoded once into the cache (``RecurrentSeq2Seq.start``), a target started from
    ``decoder_start_token_id``, one step per token; the rest is the encoder-decoder adapter's."""

    def prefill(self, model, input_ids, attention_mask, cache, positions):
        start = model.config.decoder_start_token_id
        if start is None:
            raise ValueError("a recurrent encoder-decoder needs config.decoder_start_token_id to start decoding")
        model.start(cache, input_ids, attention_mask)
        prefix = torch.full((input_ids.shape[0], 1), start, dtype=torch.long, device=input_ids.device)
        return Prefilled(prefix, None, model.decode(prefix, cache, last_only=True)[:, -1])

    def step(self, model, tokens, cache, state):
        return model.decode(tokens, cache, last_only=True)
