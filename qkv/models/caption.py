"""Image to text: an image encoder gives a grid of annotation vectors, a decoder attends over them while it writes
(Xu et al. 2015, "Show, Attend and Tell").

Data flow: pixels (B, C, H, W) -> ImageEncoder -> annotations (B, N, d_model), N = R x C cells -> decoder, one word
per step, attending over the N cells -> logits (B, T, V).

Two decoders (``caption_decoder``): "lstm", Show, Attend and Tell's (qkv/models/show_attend_tell.py: additive score,
gating scalar, deep output, the doubly stochastic penalty), or "transformer", qkv's decoder blocks whose cross-
attention reads the cells. How the decoder attends (``attn_select``): soft, hard (one cell) or local (a window of
attn_local_window x attn_local_window cells, soft inside), hard and local trained by REINFORCE or Gumbel straight-
through (``attn_estimator``) and decoded by argmax or sampling (``attn_decode``).

Decoding (``CaptionDecoding``): the image is the source, encoded once into the cache (``cache.memory``); the caption
starts from ``decoder_start_token_id``. ``qkv.generate`` hands the adapter the image as integer ids (the image's
C * H * W bytes, ``qkv.models.image_encoder.image_bytes``).

Glossary: B batch, T caption tokens, N cells, V vocabulary, H heads.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..nn.cache import Cache, LayerCache, RecurrentCache
from ..nn.layers import Linear
from ..ops.checks import checks_values
from .common import QKVModel, check_ids, init_weights
from .decoding import Decoding, Prefilled
from .encoder_decoder import Stack
from .image_encoder import ImageEncoder
from .show_attend_tell import LSTMDecoder


@dataclass
class CaptionWeights:
    """Where the decoder looked, per caption token. alpha (B, T, N): the distribution over cells (LSTM: alpha_t;
    transformer: the last layer's cross-attention weights averaged over heads); weights (B, T, N): the weights used
    (a pick is one-hot, a window soft inside); pick (B, T): the attended cell (argmax of alpha when soft, the pick
    or the window's centre when hard or local); beta (B, T): the LSTM's gate (None for a transformer); cross: every
    layer's (B, H, T, N) cross-attention weights (transformer)."""
    alpha: torch.Tensor
    weights: torch.Tensor
    pick: torch.Tensor
    beta: torch.Tensor | None = None
    cross: list[torch.Tensor] = field(default_factory=list)


class CaptionModel(QKVModel):
    """An image captioner.

    forward(pixel_values, decoder_input_ids (B, T)) -> logits (B, T, V); pixel_values in any form the encoder takes
    (float (B, C, H, W) in [0, 1], uint8, or byte ids (B, C * H * W)). With ``cache = model.new_cache(B)`` the first
    call encodes the image into the cache and later calls feed only the new tokens, giving the same logits as one
    full pass (the argmax or a fixed sample of each pick: evaluation mode)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.family != "caption":
            raise ValueError(f"CaptionModel needs family='caption', got {config.family!r}")
        self.config = cfg = config
        self.encoder = ImageEncoder(cfg)
        self.grid = self.encoder.grid
        if cfg.caption_decoder == "lstm":
            reinforce = (cfg.attn_baseline_decay, cfg.attn_entropy) \
                if cfg.attn_select != "soft" and cfg.attn_estimator == "reinforce" else None
            attention = dict(select=cfg.attn_select, estimator=cfg.attn_estimator, decode=cfg.attn_decode,
                             window=cfg.attn_local_window, tau=cfg.attn_tau, grid=self.grid)
            self.decoder = LSTMDecoder(cfg.vocab_size, cfg.d_model, cfg.d_model, cfg.d_model, cfg.d_model,
                                       n_layers=cfg.n_decoder_layers, attention=attention,
                                       tie=cfg.tie_embeddings, dropout=cfg.dropout, reinforce=reinforce,
                                       expectation=cfg.attn_expectation)
        else:
            self.decoder = Stack(cfg, cfg.n_decoder_layers, tokens=nn.Embedding(cfg.vocab_size, cfg.d_model),
                                 decoder=True)
            for block in self.decoder.blocks:
                block.cross.grid = self.grid  # local windows over the image are square patches of cells
            self.head = Linear(cfg.d_model, cfg.vocab_size, bias=cfg.head_bias)
            if cfg.tie_embeddings:
                self.head.weight = self.decoder.embed.tokens.weight
        if self.lstm:
            # PyTorch's default initialisation for the LSTM and its layers, as the common Show-Attend-Tell training
            # recipes keep it (GPT-2's N(0, 0.02) starves the image's path of gradient), embeddings U(-0.1, 0.1)
            nn.init.uniform_(self.decoder.embed.weight, -0.1, 0.1)
        else:
            self.decoder.apply(init_weights)
            self.head.apply(init_weights)

    @property
    def lstm(self) -> bool:
        return self.config.caption_decoder == "lstm"

    # -- what the base class asks -----------------------------------------------------------------------------------
    def decoder_blocks(self):
        if self.lstm:
            raise NotImplementedError("the LSTM decoder has no blocks: new_cache makes its state")
        return self.decoder.blocks

    def layer_mixers(self) -> list[tuple[str, int | None]]:
        return [] if self.lstm else [("attention", None)] * self.config.n_decoder_layers

    def stack(self) -> str:
        cfg = self.config
        r, c = self.grid
        decoder = "LSTM" if self.lstm else f"{cfg.n_decoder_layers} transformer blocks"
        return (f"{cfg.image_encoder} encoder -> {r} x {c} cells -> {decoder}, {cfg.attn_select} attention over the "
                f"cells" + ("" if cfg.attn_select == "soft" else f" ({cfg.attn_estimator}, decoded by "
                                                                 f"{cfg.attn_decode})"))

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Forward FLOPs per caption token: 2 per decoder weight, plus the attention over the N cells (scores and
        weighted sum), plus the encoder's FLOPs spread over a caption of ``seq_len`` tokens (default 16)."""
        cfg, (r, c) = self.config, self.grid
        n = r * c
        decoder = sum(p.numel() for name, p in self.named_parameters() if not name.startswith("encoder."))
        attend = 2 * 2 * n * cfg.d_model * max(len(self.layer_mixers()), 1)
        encoder = 2 * sum(p.numel() for p in self.encoder.parameters()) * n
        return int(2 * decoder + attend + encoder // (seq_len or 16))

    def new_cache(self, batch_size: int, max_len: int | None = None, *, static: bool = False,
                  rewind: int = 0) -> Cache:
        """The decoding state: the transformer's KV caches, or the LSTM's (h, c) in one recurrent entry; the image's
        annotations go into ``cache.memory`` at the first call."""
        if not self.lstm:
            return super().new_cache(batch_size, max_len, static=static, rewind=rewind)
        return Cache([LayerCache(mixer=RecurrentCache(static=static))], batch_size=batch_size, max_len=max_len,
                     static=static)

    # -- the two halves ---------------------------------------------------------------------------------------------
    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixels (any form ``qkv.models.image_encoder.pixels_from`` takes) -> annotations (B, N, d_model)."""
        return self.encoder(pixel_values)

    def decode(self, decoder_input_ids: torch.Tensor, memory: torch.Tensor, *, cache: Cache | None = None,
               last_only: bool = False, return_weights: bool = False, decoder_attention_mask=None):
        """decoder_input_ids (B, T) (the new ones with a cache); memory (B, N, d_model) the annotations.
        decoder_attention_mask (B, T): 1 on real tokens (training: REINFORCE counts the picks there only).
        Returns logits (B, T or 1, V), or (logits, CaptionWeights) when ``return_weights``."""
        check_ids(decoder_input_ids, self.config.vocab_size)
        B, T = decoder_input_ids.shape
        if memory.dim() != 3 or memory.shape[0] != B or memory.shape[2] != self.config.d_model:
            raise ValueError(f"memory must be (B, N, d_model) = ({B}, N, {self.config.d_model}), got shape "
                             f"{tuple(memory.shape)}")
        if self.lstm:
            logits, weights = self._decode_lstm(decoder_input_ids, memory, cache, decoder_attention_mask)
        else:
            x, blocks = self.decoder(decoder_input_ids, context=memory, cache=cache,
                                     return_weights=return_weights)
            logits = self.head(x)  # (B, T, V)
            weights = None
            if return_weights:
                cross = [w.cross_attn for w in blocks]
                mean = cross[-1].float().mean(1)  # (B, T, N)
                weights = CaptionWeights(mean, mean, mean.argmax(-1), None, cross)
        if last_only:
            logits = logits[:, -1:]
        return (logits, weights) if return_weights else logits

    def _decode_lstm(self, ids, memory, cache, mask):
        state = None
        if cache is not None and "h0" in cache.layers[0].mixer:
            rc = cache.layers[0].mixer
            n = len(self.decoder.cells)
            state = ([rc[f"h{i}"] for i in range(n)], [rc[f"c{i}"] for i in range(n)])
        logits, (h, c), steps = self.decoder(ids, memory, state, mask=mask)
        if cache is not None:
            rc = cache.layers[0].mixer
            for i in range(len(h)):
                rc[f"h{i}"], rc[f"c{i}"] = h[i], c[i]
            rc.commit(ids.shape[1])
            cache.commit(ids.shape[1])
        return logits, CaptionWeights(steps.alpha, steps.weights, steps.pick, steps.beta)

    def forward(self, pixel_values: torch.Tensor, decoder_input_ids: torch.Tensor, *, cache: Cache | None = None,
                return_weights: bool = False, last_only: bool = False, decoder_attention_mask=None):
        """pixel_values: the image (any input form); decoder_input_ids (B, T): BOS + caption[:-1] (teacher forcing).
        With a cache the first call encodes the image and keeps its annotations in ``cache.memory``; later calls
        read them. Returns logits (B, T, V), or (logits, CaptionWeights) when ``return_weights``."""
        if cache is not None and cache.memory is not None:
            memory = cache.memory
        else:
            memory = self.encode(pixel_values)
            if cache is not None:
                cache.memory = memory
        return self.decode(decoder_input_ids, memory, cache=cache, last_only=last_only, return_weights=return_weights,
                           decoder_attention_mask=decoder_attention_mask)


class CaptionDecoding(Decoding):
    """The image is the source (encoded once, kept in the cache), the caption the output, started from
    ``decoder_start_token_id``. ``qkv.generate`` passes the image as integer ids: its C * H * W bytes
    (``image_bytes``); the adapter also takes pixel tensors directly."""
    has_source = True

    def prompt_length(self, input_ids):
        return 1  # the decoder starts from one token

    def source_length(self, input_ids):
        # cross-attention keys per row: the cells, fewer than this upper bound (the image's bytes)
        return input_ids.shape[-1]

    def prefill(self, model, input_ids, attention_mask, cache, positions):
        start = model.config.decoder_start_token_id
        if start is None:
            raise ValueError("an image-to-text model needs config.decoder_start_token_id to start a caption")
        if attention_mask is not None and checks_values() and not bool(attention_mask.all()):
            raise ValueError("attention_mask: an image has no padding; pass None (or all ones)")
        cache.memory = model.encode(input_ids)  # (B, N, d_model)
        prefix = torch.full((cache.memory.shape[0], 1), start, dtype=torch.long, device=cache.memory.device)
        logits = model.decode(prefix, cache.memory, cache=cache, last_only=True)
        return Prefilled(prefix, None, logits[:, -1])

    def step(self, model, tokens, cache, state):
        return model.decode(tokens, cache.memory, cache=cache, last_only=True)

    def teacher_forced(self, model, input_ids, tokens):
        device = next(model.parameters()).device
        target = torch.tensor([[model.config.decoder_start_token_id] + list(tokens[:-1])], device=device)
        return model(torch.tensor([list(input_ids)], device=device), target)[0]
