"""Decoding many inputs at library speed, the one batcher: inputs of similar length batched under a token budget,
answers returned in the inputs' order (``generate_many``); sentences in, translations out is the translation
task's (``qkv.tasks.seq2seq.translate``, where the text rules of a translation model live).

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

from ..models import decoding_of
from .config import GenerationConfig
from .generate import generate
from .step import packed_for_decoding


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


def generate_many(model, inputs: Sequence[Sequence[int]], config: GenerationConfig | None = None, *,
                  tokens_per_batch: int = 32768, max_batch_size: int | None = None,
                  progress: Callable[[int], None] | None = None, generator: torch.Generator | None = None,
                  logits_processor=None, **overrides) -> list[Decoded]:
    """``qkv.generate`` over many inputs (lists of token ids: prompts, or sources of an encoder-decoder), batched
    by length; one ``Decoded`` per input, in order. ``progress(n)`` is called after each batch with the number of
    inputs it held. ``config``, ``overrides``, ``generator`` and ``logits_processor`` as ``generate``'s (one
    sequence per input); the padding id and
    the end-of-sequence ids are the resolved config's (``GenerationConfig.resolved``)."""
    config = (config or GenerationConfig()).replace(**overrides)
    if config.num_return_sequences > 1:
        raise ValueError(f"generate_many returns one answer per input, got num_return_sequences="
                         f"{config.num_return_sequences}")
    if any(len(x) == 0 for x in inputs):
        raise ValueError("inputs must be non-empty lists of token ids; got an empty one (leave blank lines out)")
    longest = max((len(x) for x in inputs), default=1)
    source = decoding_of(model).has_source
    plan = config.resolved(model, 1 if source else longest)  # the ids and the longest run's length
    device = next(model.parameters()).device
    answers: list[Decoded | None] = [None] * len(inputs)
    batches = length_batches([len(x) for x in inputs], tokens_per_batch, extra=plan.max_new_tokens,
                             rows_per_input=config.num_beams, max_batch_size=max_batch_size)
    with packed_for_decoding(model, config.compile):  # once for every batch
        for batch in batches:
            ids, mask = _padded([inputs[i] for i in batch], plan.pad, left=not source)
            out = generate(model, ids.to(device), config, attention_mask=mask.to(device), pad_token_id=plan.pad,
                           generator=generator, logits_processor=logits_processor)
            sequences, scores = (out.sequences, out.sequences_scores) if config.return_scores else (out, None)
            start = 1 if source else ids.shape[1]  # the decoder-start token, or the (padded) prompt
            for row, i in enumerate(batch):
                tokens = sequences[row, start:].tolist()
                cut = next((j for j, t in enumerate(tokens) if t in plan.eos_ids), None)
                tokens = tokens[:cut] if cut is not None else tokens
                answers[i] = Decoded(tokens, None if scores is None else float(scores[row]))
            if progress is not None:
                progress(len(batch))
    return answers


def _padded(rows: list, pad: int, *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids and their (B, T) mask: prompts padded on the left (the next token follows each row's last),
    sources on the right."""
    width = max(len(x) for x in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for row, x in enumerate(rows):
        span = slice(width - len(x), width) if left else slice(0, len(x))
        ids[row, span], mask[row, span] = torch.tensor(list(x), dtype=torch.long), 1
    return ids, mask
