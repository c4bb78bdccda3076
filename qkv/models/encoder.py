"""Encoder-only models: BERT (Devlin et al. 2019). Every token sees every other real token; no causal mask.

Data flow: tokens -> embeddings (token + position + token type, then LayerNorm) -> post-LN blocks of
(attention + GELU FFN) -> last hidden state. The heads sit apart, each chosen by a config field:

- ``mlm_head``: masked-LM head (sec. 3.1, task #1): dense + GELU + LayerNorm, then a decoder tied to the token
  embeddings with its own bias, giving logits over the vocabulary at every position;
- ``num_labels > 0``: sequence classification (sec. 4.1): the pooler (tanh dense on the [CLS] position), then a
  linear classifier.

``model(input_ids, attention_mask)`` returns the hidden state; ``model.mlm_logits(hidden)`` and
``model.classify(hidden)`` apply the heads.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..nn import make_norm
from ..nn.layers import PLAIN_ACTIVATIONS, Linear
from ..ops.linear import linear
from ..ops.masks import padding_mask
from .common import Embeddings, QKVModel, check_ids, count_flops, final_norm, init_weights, make_block, run_blocks
from .positions import position_kind


class MaskedLMHead(nn.Module):
    """BERT's masked-LM head: (B, T, d) -> (B, T, V). ``decoder.weight`` is the token embedding matrix when tied."""

    def __init__(self, d_model: int, vocab_size: int, *, activation: str, norm: str, eps: float):
        super().__init__()
        if activation not in PLAIN_ACTIVATIONS:
            raise ValueError(f"the masked-LM head needs an ungated activation {tuple(PLAIN_ACTIVATIONS)}, got "
                             f"{activation!r}")
        self.dense = Linear(d_model, d_model)
        self.act = PLAIN_ACTIVATIONS[activation]
        self.norm = make_norm(norm, d_model, eps=eps)
        self.decoder = Linear(d_model, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))  # per-token output bias, never tied

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.act(self.dense(hidden)))
        return linear(h, self.decoder.weight, self.bias)  # bias inside the matmul: no extra (B, T, V) pass


class ClassificationHead(nn.Module):
    """BERT's sequence classifier: pool the first ([CLS]) position with tanh(W h + b), dropout, then a linear
    layer. (B, T, d) -> (B, num_labels)."""

    def __init__(self, d_model: int, num_labels: int, *, dropout: float = 0.0):
        super().__init__()
        self.pooler = Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.classifier = Linear(d_model, num_labels)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.pooler(hidden[:, 0]))  # (B, d)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pool(hidden)))


class Encoder(QKVModel):
    """A bidirectional Transformer encoder (BERT).

    forward(input_ids (B, T), attention_mask (B, T) or None, *, token_type_ids=None) -> hidden (B, T, d_model).
    Heads: ``mlm_logits(hidden)`` -> (B, T, V) when ``config.mlm_head``; ``classify(hidden)`` -> (B, num_labels)
    when ``config.num_labels > 0``.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.family != "encoder":
            raise ValueError(f"Encoder needs family='encoder', got {config.family!r}")
        kind = position_kind(config)
        if kind.rotary or kind.bias:  # the blocks run without RelativePositions: only added positions reach them
            raise ValueError(f"Encoder supports absolute positions (learned, sinusoidal, none), got "
                             f"position={config.position!r}")
        self.config = config
        self.embed = Embeddings(config)
        self.blocks = nn.ModuleList(make_block(config, layer=i) for i in range(config.n_layers))
        self.norm = final_norm(config)  # BERT is post-LN: no final norm (Identity)
        self.mlm = None
        if config.mlm_head:
            self.mlm = MaskedLMHead(config.d_model, config.vocab_size, activation=config.activation,
                                    norm=config.norm, eps=config.norm_eps)
        self.cls = ClassificationHead(config.d_model, config.num_labels, dropout=config.dropout) \
            if config.num_labels > 0 else None
        self.apply(init_weights)
        if self.mlm is not None and config.tie_embeddings:
            self.mlm.decoder.weight = self.embed.tokens.weight

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                token_type_ids: torch.Tensor | None = None, return_weights: bool = False):
        """input_ids: (B, T) token ids. attention_mask: (B, T), 1 = token, 0 = padding (padded keys are never
        attended to; padded positions still get an output, which callers ignore). token_type_ids: (B, T)
        segment ids (sentence A = 0, B = 1), default all 0.

        Returns the last hidden state (B, T, d_model), or (hidden, list of BlockWeights) with ``return_weights``."""
        check_ids(input_ids, self.config.vocab_size)
        B, T = input_ids.shape
        if attention_mask is not None and attention_mask.shape != (B, T):
            raise ValueError(f"attention_mask must be (B, T) = {(B, T)} like input_ids, got {tuple(attention_mask.shape)}")
        if token_type_ids is not None and token_type_ids.shape != (B, T):
            raise ValueError(f"token_type_ids must be (B, T) = {(B, T)} like input_ids, got {tuple(token_type_ids.shape)}")
        positions = torch.arange(T, device=input_ids.device)
        x = self.embed(input_ids, positions, token_type_ids)  # (B, T, d_model)
        mask = None if attention_mask is None else padding_mask(attention_mask)  # (B, 1, 1, T)
        x, weights = run_blocks(self.blocks, x, mask=mask, return_weights=return_weights)
        x = self.norm(x)
        return (x, weights) if return_weights else x

    def flops_per_token(self, seq_len: int | None = None) -> int:
        return count_flops(self, seq_len, tied_head=self.mlm is not None and self.config.tie_embeddings)

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, d_model) hidden state -> (B, T, V) masked-LM logits."""
        if self.mlm is None:
            raise ValueError("this encoder has no masked-LM head (config.mlm_head is False)")
        return self.mlm(hidden)

    def classify(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, d_model) hidden state -> (B, num_labels) logits from the [CLS] position."""
        if self.cls is None:
            raise ValueError("this encoder has no classification head (config.num_labels is 0)")
        return self.cls(hidden)

    def pooled(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, d_model) -> (B, d_model): the pooler output, tanh(W h_[CLS] + b) (needs the classification head)."""
        if self.cls is None:
            raise ValueError("this encoder has no pooler (config.num_labels is 0)")
        return self.cls.pool(hidden)
