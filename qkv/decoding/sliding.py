"""Sliding context: generation past a model's learned positions, conditioned on the last W = ``max_positions``
tokens, as nanoGPT's ``generate`` does (it crops ``idx`` to the last ``block_size`` tokens before every step).

Glossary: N rows decoded, T prompt length, W the window (the model's learned positions), V vocabulary.

A table of W learned positions has no row for a (W + 1)-th token, so a model built on one reads at most W tokens.
A language model's next token is defined from any text, so past the table it is predicted from the last W tokens,
counted from position 0 again. Which families do this is their adapter's word (``Decoding.slides``, through
``qkv.models.context_window``): decoder-only language models with learned positions. An output for a source
(translation, captions) refuses instead, and positions that extrapolate (RoPE, ALiBi, sinusoids, relative buckets)
or models without positions (recurrent mixers) have no table end to slide past: they decode on as they are.

Exactness: every token is the model's prediction from a full pass over the cropped window, the same logits as
``model(ids[:, -W:])`` (``tests/test_sliding_context.py``). While the sequence fits in W tokens the run's cache
serves as usual; after that each step recomputes the window: with absolute positions every kept token moves down
one position when the window slides, and the position vector enters the first layer's input, so every key and
value of every layer changes and no cache entry can be reused. A step then costs a forward over W tokens (what
nanoGPT pays every step). The window is kept on the device beside the cache (``ContextWindow``), rows indexed with
beams and samples; how far a run has come is a host count, so sliding adds no read back to the host.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models import context_window


@dataclass(frozen=True)
class SlidingContext:
    """A run whose context slides. window: W, the tokens each prediction past the table conditions on (the
    model's ``max_positions``); from_new_token: the first new token (counting from 1) predicted from a cropped
    context, the last W tokens of a longer sequence (1 when the prompt itself is longer than W)."""
    window: int
    from_new_token: int

    def describe(self) -> str:
        """One line for a person: what slides, and from where."""
        return (f"the context slides past the model's {self.window} learned positions: new tokens from the "
                f"{_ordinal(self.from_new_token)} on are predicted from the last {self.window} tokens (the window "
                f"recomputed each step)")


def sliding_context(model, prompt_length: int, max_new_tokens: int) -> SlidingContext | None:
    """Whether a decode of ``max_new_tokens`` after a ``prompt_length``-token prompt slides its context on
    ``model``: a ``SlidingContext``, or None when the run fits the model's positions or the model does not slide
    (``qkv.models.context_window``; those past their table are refused by ``generate``, saying why). The last new
    token is predicted from prompt_length + max_new_tokens - 1 tokens: the run slides when that exceeds W."""
    W = context_window(model)
    if W is None or prompt_length + max_new_tokens - 1 <= W:
        return None
    return SlidingContext(W, max(W - prompt_length + 2, 1))


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


class ContextWindow:
    """The last W tokens of every row, ids (N, <= W) and padding mask (N, <= W) or None, beside the run's cache.

    ``push`` appends each step's tokens; ``sliding`` says (from a host count, no read) whether the sequence is now
    longer than W, the cache then unusable; ``logits`` is the family's full pass over the window
    (``Decoding.window_logits``). A left-padded prompt keeps its mask while padding is still in the window: each
    row then holds its own last W tokens (fewer real ones, right-aligned, for a row still shorter than W), which
    is the row decoded alone."""

    def __init__(self, ids: torch.Tensor, mask: torch.Tensor | None, size: int):
        self.size = size
        self.ids = ids[:, -size:]  # (N, min(T, W))
        self.mask = None if mask is None else mask[:, -size:]
        self.length = ids.shape[1]  # tokens in the sequence so far
        self.padded_until = ids.shape[1] if mask is not None else 0  # padding can sit only in the prompt

    @property
    def sliding(self) -> bool:
        return self.length > self.size

    def push(self, tokens: torch.Tensor) -> None:
        """Append (N,) tokens; the oldest falls out once the window is full."""
        drop = 1 if self.ids.shape[1] == self.size else 0
        self.ids = torch.cat([self.ids[:, drop:], tokens[:, None]], 1)
        self.length += 1
        if self.mask is not None:
            if self.length - self.size >= self.padded_until:  # the prompt has left the window: no padding in it
                self.mask = None
            else:
                self.mask = torch.cat([self.mask[:, drop:], self.mask.new_ones(self.mask.shape[0], 1)], 1)

    def index(self, index: torch.Tensor) -> None:
        """Rows ``index`` (beams and samples expanded, beam search's survivors)."""
        self.ids = self.ids[index]
        self.mask = None if self.mask is None else self.mask[index]

    def logits(self, model, decoding) -> torch.Tensor:
        """(N, V) next-token logits of a full pass over the window."""
        return decoding.window_logits(model, self.ids, self.mask)
