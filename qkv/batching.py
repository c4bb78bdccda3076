"""Decoding many inputs at library speed: inputs of similar length batched under a token budget, answers returned
in the inputs' order.

One input at a time leaves a CPU or GPU mostly idle (a decode step costs about the same for 1 row as for 32), but
batching inputs of very different lengths wastes the padding. So the inputs are sorted by length, longest first (a
batch that does not fit shows at once, not at the end), and cut into batches whose padded size, rows x (longest
input + max_new_tokens) x beams, stays within ``tokens_per_batch``. Padding is masked (``attention_mask``: left for
a prompt, right for a source), so every row decodes as it would alone; tests check the tokens equal one-at-a-time
decoding, greedy and beam search.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .models import decoding_of


@dataclass
class Decoded:
    """One input's answer: tokens generated (decoder-start / prompt and padding removed, the first EOS and what
    follows removed), and, with ``return_scores``, the sequence score (beam score, or summed log-probability)."""
    tokens: list[int]
    score: float | None = None


def length_batches(lengths: Sequence[int], tokens_per_batch: int, *, extra: int = 0, rows_per_input: int = 1,
                   max_batch_size: int | None = None) -> list[list[int]]:
    """Indices of ``lengths`` in batches, longest first, each within ``rows x (longest + extra) x rows_per_input <=
    tokens_per_batch`` (a single input over budget gets a batch of its own)."""
    if not isinstance(tokens_per_batch, int) or isinstance(tokens_per_batch, bool) or tokens_per_batch < 1:
        raise ValueError(f"tokens_per_batch must be an int >= 1, got {tokens_per_batch!r}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches:
            batch = batches[-1]
            longest = lengths[batch[0]]  # sorted: the first is the longest
            rows = len(batch) + 1
            if rows * (longest + extra) * rows_per_input <= tokens_per_batch and \
                    (max_batch_size is None or rows <= max_batch_size):
                batch.append(i)
                continue
        batches.append([i])
    return batches


def generate_many(model, inputs: Sequence[Sequence[int]], *, max_new_tokens: int, tokens_per_batch: int = 32768,
                  pad_token_id: int, eos_token_id=None, num_beams: int = 1, return_scores: bool = False,
                  progress: Callable[[int], None] | None = None, **generate_kwargs) -> list[Decoded]:
    """``qkv.generate`` over many inputs (lists of token ids: prompts, or sources of an encoder-decoder), batched
    by length; one ``Decoded`` per input, in order. ``progress(n)`` is called after each batch with the number of
    inputs it held. Other arguments as ``qkv.generate``'s (one sequence per input)."""
    from .generate import generate, packed_for_decoding
    if any(len(x) == 0 for x in inputs):
        raise ValueError("inputs must be non-empty lists of token ids; got an empty one (leave blank lines out)")
    source = decoding_of(model).has_source
    device = next(model.parameters()).device
    eos = eos_token_id if eos_token_id is not None else getattr(model.config, "eos_token_id", None)
    eos_ids = set() if eos is None else {eos} if isinstance(eos, int) else set(eos)
    answers: list[Decoded | None] = [None] * len(inputs)
    batches = length_batches([len(x) for x in inputs], tokens_per_batch, extra=max_new_tokens,
                             rows_per_input=num_beams)
    with packed_for_decoding(model, bool(generate_kwargs.get("compile"))):  # once for every batch
        for batch in batches:
            width = max(len(inputs[i]) for i in batch)
            ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
            mask = torch.zeros(len(batch), width, dtype=torch.long)
            for row, i in enumerate(batch):
                x = torch.tensor(list(inputs[i]), dtype=torch.long)
                span = slice(0, len(x)) if source else slice(width - len(x), width)  # sources right, prompts left
                ids[row, span], mask[row, span] = x, 1
            out = generate(model, ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                           num_beams=num_beams, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                           return_scores=return_scores, **generate_kwargs)
            sequences, scores = (out.sequences, out.sequences_scores) if return_scores else (out, None)
            start = 1 if source else ids.shape[1]  # the decoder-start token, or the (padded) prompt
            for row, i in enumerate(batch):
                tokens = sequences[row, start:].tolist()
                cut = next((j for j, t in enumerate(tokens) if t in eos_ids), None)
                tokens = tokens[:cut] if cut is not None else tokens
                answers[i] = Decoded(tokens, None if scores is None else float(scores[row]))
            if progress is not None:
                progress(len(batch))
    return answers

