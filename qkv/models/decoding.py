"""The decode adapter: how ``qkv.generate`` drives a family token by token, whatever the family.

A family that generates (its record in ``qkv.models.registry`` has ``decoding``) implements this contract in its
own module (decoder.py: a prompt continued; encoder_decoder.py: a source encoded once, a target started from the
decoder-start token). ``generate`` then runs any of them the same way:

    pre = decoding.prefill(model, input_ids, attention_mask, cache, positions)   # the prompt / source, once
    state = decoding.expand(cache, pre.state, index)     # beams and samples: rows repeated, never recomputed
    logits = decoding.step(model, tokens, cache, state)  # one token per row; compiled as one graph if asked
    state = decoding.advance(state)                      # after each step, outside any compiled graph
    state = decoding.reorder(cache, state, parents)      # beam search's survivors
    logits = decoding.window_logits(model, ids, mask)    # past the learned positions: the last W tokens again

Everything a run keeps per row lives in the cache (KV, recurrent states, the encoder output) or in ``state``
(tensors, batch first), so expanding and reordering rows is indexing both.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Prefilled:
    """What ``prefill`` returns. prefix: (B, P) the ids the output starts with (the prompt, or the decoder-start
    token); prefix_mask: (B, P) 1 = token, 0 = padding, or None; logits: (B, V) the next token's; state: the
    adapter's per-row state (or None)."""
    prefix: torch.Tensor
    prefix_mask: torch.Tensor | None
    logits: torch.Tensor
    state: object = None


class Decoding:
    """The contract (see the module docstring). has_source: the input is a source the output is conditioned on,
    not a prompt the output continues (it is not returned, and the decoder starts from one token).

    slides: past a position table's end (learned positions), the family keeps generating from the last
    ``max_positions`` tokens, recomputed (``window_logits``), as nanoGPT's ``generate`` does; no_slide: why a
    family that does not slide refuses instead (said in the refusal)."""
    has_source: bool = False
    slides: bool = False
    no_slide: str = ("its output is written for a source it is conditioned on (a translation, a caption) and was "
                     "trained to fit the learned positions whole: cropping its start would drop the words the rest "
                     "is aligned with, a different model from the trained one")

    def prompt_length(self, input_ids: torch.Tensor) -> int:
        """Decoder positions the input takes before the first new token."""
        raise NotImplementedError

    def source_length(self, input_ids: torch.Tensor) -> int:
        """Encoder positions the input takes (cross-attention keys per row): 0 without a source."""
        return 0

    def prefill(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, cache,
                positions: int) -> Prefilled:
        """Run the input once into ``cache``; ``positions``: decoder positions the whole run will take."""
        raise NotImplementedError

    def step(self, model, tokens: torch.Tensor, cache, state) -> torch.Tensor:
        """(N, 1) tokens -> (N, 1, V) logits. Reads no Python number that changes between steps, so that one
        compiled graph serves every step of a static cache."""
        raise NotImplementedError

    def advance(self, state):
        """The state after a step (outside the compiled graph)."""
        return state

    def expand(self, cache, state, index: torch.Tensor):
        """Rows ``index`` of everything (beams and samples copy each input's rows once)."""
        cache.reorder(index)
        return state

    def reorder(self, cache, state, index: torch.Tensor):
        """Beam search: row i continues row ``index[i]`` of the same input. Per-input state (the encoder's, the
        padding) is equal across its beams, so only the decoder's own caches move."""
        cache.reorder(index, cross=False)
        return state

    def window_logits(self, model, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """A family that ``slides``: (N, V) next-token logits of a full pass over ``ids`` (N, W), the last W tokens
        of every row (left-padded where ``mask`` (N, W) holds 0s), without a cache, positions counted from 0."""
        raise NotImplementedError

    def teacher_forced(self, model, input_ids: list[int], tokens: list[int]) -> torch.Tensor:
        """(L, V) logits of each of ``tokens`` given the input and the tokens before it (one full pass)."""
        raise NotImplementedError
