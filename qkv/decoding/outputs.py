"""What decoding returns besides plain token ids: ``GenerateOutput`` (``return_scores=True``) and ``StreamChunk``
(one step of ``stream``). Glossary: N rows decoded (B inputs x num_return_sequences), P prefix length, L tokens
generated."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StreamChunk:
    """One step of ``stream``: the new token of every row, (N,) (``pad_token_id`` for finished rows), and, when a
    ``decode`` function was given, the new text of every row ("" while a multi-byte character is incomplete)."""
    tokens: torch.Tensor
    text: list[str] | None = None


@dataclass
class GenerateOutput:
    """``generate(..., return_scores=True)``'s answer. sequences: what ``generate`` returns otherwise, (N, P + L).
    token_logprobs: (N, L) the log-probability of each generated token as the search chose it: greedy and sampling,
    ``log_softmax`` of the processed scores (controls, temperature and filters applied: transformers'
    ``compute_transition_scores(..., normalize_logits=True)``); beam search, the processed log-probability the beam
    score summed (transformers' with ``beam_indices``). 0.0 after a row finished. sequences_scores: (N,) beam
    search's final score ``sum log p / L ** length_penalty`` (transformers' ``sequences_scores``); greedy and
    sampling: the sum of ``token_logprobs``. sliding: a ``SlidingContext`` when the run went past the model's
    learned positions (the context slid: ``qkv/decoding/sliding.py``), else None. speculative: speculative
    decoding's ``SpeculativeStats`` (proposed / accepted guesses, target passes), else None."""
    sequences: torch.Tensor
    token_logprobs: torch.Tensor
    sequences_scores: torch.Tensor
    sliding: object = None
    speculative: object = None
