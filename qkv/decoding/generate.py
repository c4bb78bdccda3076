"""``generate`` and ``stream``: greedy decoding, beam search, sampling and speculative decoding over any model that
makes a cache (``new_cache``), with one ``GenerationConfig`` (or its fields as keywords) saying how.

Glossary: B inputs, K beams, N rows decoded at once (B, B * K or B * num_return_sequences), T prompt length,
S source length (encoder-decoder), L tokens generated so far, V vocabulary.

How a run goes:
1. *Prefill* (``prefill.py``): the prompt (decoder-only) or the source through the encoder plus the decoder-start
   token (encoder-decoder) goes through the model once, for B rows, filling a cache preallocated for the whole run.
2. *Expand*: beams and extra samples copy that state row-wise once (``cache.reorder``), so the prompt, the
   encoder output and the cross-attention keys and values are computed once per input, never per beam.
3. *Step* (``step.py``): one token per row goes in, only the last position's logits come out; the next token is
   chosen by greedy decoding or sampling (``sample.py``) or beam search (``beam.py``), or guessed and checked
   (``speculative.py``).

The family decides how each of these goes: its record's decode adapter (``qkv.models.decoding``) does prefill,
step, expand and reorder; nothing here tests which family a model is.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from .config import GenerationConfig
from .outputs import GenerateOutput, StreamChunk
from .beam import beam_search
from .prefill import check_model, prefill
from .sample import sample_loop
from .speculative import speculative_generate
from .step import packed_for_decoding


def generate(model, input_ids: torch.Tensor, config: GenerationConfig | None = None, *,
             attention_mask: torch.Tensor | None = None, decoder_input_ids: torch.Tensor | None = None,
             generator: torch.Generator | None = None, decode: Callable | None = None, stop: Callable | None = None,
             logits_processor=None, draft_model=None, speculative_stats=None, **overrides):
    """Continue ``input_ids`` by up to ``max_new_tokens`` tokens.

    Args:
        model: a qkv model of a family that generates (decoder-only, encoder-decoder: its record's decode
            adapter drives it).
        input_ids: (B, T) prompt (decoder-only) or source (encoder-decoder); left-padded when rows differ in
            length, with ``attention_mask`` (B, T) marking tokens 1 and padding 0.
        config: a ``GenerationConfig`` (default: qkv's defaults); ``overrides`` are its fields as keywords
            (``max_new_tokens=20, num_beams=4``), applied over it. Each field documents itself in
            ``qkv/decoding/config.py``: beam search, sampling and its filters, transformers' logits controls, the
            token ids (eos_token_id: None takes the model's, ``()`` none), stop_strings, speculative decoding,
            static_cache, max_len, compile (one ``torch.compile``d step; the same tokens), return_scores.
        decoder_input_ids: (B, P) or (1, P) encoder-decoder only: the decoder's first tokens (a language code, a
            prefix to continue); the decoder-start token is put in front when they do not begin with it, as in
            transformers. The output starts with them.
        generator: a ``torch.Generator`` for reproducible sampling. decode: ``decode(generated ids as a list) ->
            text`` for stop_strings; stop: ``stop(sequences (N, T + L)) -> bool (N,)`` ends the rows it marks.
        logits_processor: a function ``f(input_ids (N, L), scores (N, V)) -> scores`` or a list of them, applied
            after the controls (input_ids: the sequence so far, prompt or decoder prefix included).
        draft_model, speculative_stats: speculative decoding (``qkv/decoding/speculative.py``): the draft proposes
            num_draft_tokens tokens, this model checks them in one pass; greedy gives exactly this model's greedy
            tokens, sampling exactly its distribution. speculative_stats: a ``SpeculativeStats`` to fill.

    Returns:
        (B * num_return_sequences, T + L) token ids for a decoder-only model (prompt included, padding kept), or
        (B * num_return_sequences, 1 + L) for an encoder-decoder model (starting with decoder_start_token_id);
        a ``GenerateOutput`` with ``return_scores``. L <= max_new_tokens: the run stops early once every row has
        finished. ValueError when the model's logits go non-finite (naming where).

    Past a decoder-only model's learned positions the context slides, as in nanoGPT: each later token is predicted
    from the last ``max_positions`` tokens (greedy, sampling, beam search per beam, speculative decoding;
    ``qkv/decoding/sliding.py``); ``sliding_context(model, T, max_new_tokens)`` says beforehand whether a run
    will, ``GenerateOutput.sliding`` afterwards. Families that do not slide (an output for a source) refuse.

    Example:

        >>> import torch, qkv
        >>> model = qkv.build(qkv.preset("gpt2-tiny")).eval()
        >>> prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])              # (B, T)
        >>> out = qkv.generate(model, prompt, max_new_tokens=4)        # greedy, with a KV cache: (B, T + 4)
        >>> ids = prompt
        >>> for _ in range(4):                                         # greedy again, no cache: the whole prefix
        ...     ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
        >>> out.shape, torch.equal(out, ids)
        (torch.Size([2, 7]), True)
    """
    check_model(model)
    config = (config or GenerationConfig()).replace(**overrides)
    if draft_model is not None or config.prompt_lookup_num_tokens is not None:
        with packed_for_decoding(model), _packed_draft(draft_model):
            return speculative_generate(model, input_ids, config, attention_mask=attention_mask,
                                        draft_model=draft_model, decoder_input_ids=decoder_input_ids,
                                        generator=generator, stop=stop, logits_processor=logits_processor,
                                        stats=speculative_stats)
    with torch.inference_mode(), packed_for_decoding(model, config.compile):
        run = prefill(model, input_ids, config, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                      logits_processor=logits_processor, generator=generator, decode=decode, stop=stop)
        with run.steps():
            if config.num_beams > 1:
                sequences = beam_search(run)
                if not config.return_scores:
                    return sequences
                scores, logprobs = run.beam_scores
                return GenerateOutput(sequences, logprobs, scores, sliding=run.sliding)
            steps = sum(1 for _ in sample_loop(run))
        length = run.trimmed_length(steps)
        sequences = torch.cat([run.prefix, run.out[:, :length]], dim=1)
        if not config.return_scores:
            return sequences
        logprobs = run.logprobs[:, :length]
        return GenerateOutput(sequences, logprobs, logprobs.sum(-1), sliding=run.sliding)


def _packed_draft(draft_model):
    return contextlib.nullcontext() if draft_model is None else packed_for_decoding(draft_model)


def stream(model, input_ids: torch.Tensor, config: GenerationConfig | None = None, *,
           decode: Callable | None = None, attention_mask: torch.Tensor | None = None,
           generator: torch.Generator | None = None, stop: Callable | None = None, logits_processor=None,
           **overrides) -> Iterator[StreamChunk]:
    """Greedy decoding or sampling, one ``StreamChunk`` per step as soon as it is known (arguments as in
    ``generate``; num_beams must be 1). With ``decode`` (ids list -> str) each chunk also carries every row's new
    text.

    Example:

        >>> import torch, qkv
        >>> model = qkv.build(qkv.preset("gpt2-tiny")).eval()
        >>> prompt = torch.tensor([[1, 2, 3]])
        >>> chunks = list(qkv.stream(model, prompt, max_new_tokens=4))   # one StreamChunk per step
        >>> len(chunks), chunks[0].tokens.shape                         # (N,) new tokens per step
        (4, torch.Size([1]))
        >>> new = torch.stack([c.tokens for c in chunks], dim=1)        # (N, 4): generate's new tokens
        >>> torch.equal(new, qkv.generate(model, prompt, max_new_tokens=4)[:, 3:])
        True
    """
    check_model(model)
    config = (config or GenerationConfig()).replace(**overrides)
    if config.num_beams != 1:
        raise ValueError(f"stream decodes greedily or by sampling: num_beams must be 1, got {config.num_beams}")
    with torch.inference_mode(), packed_for_decoding(model, config.compile):
        run = prefill(model, input_ids, config, attention_mask=attention_mask, logits_processor=logits_processor,
                      generator=generator, decode=decode, stop=stop)
        shown = [""] * run.out.shape[0]  # text already yielded, per row
        loop, step = sample_loop(run), 0
        while True:
            with run.steps():  # around the step only: the caller's code between chunks keeps its value checks
                tokens = next(loop, None)
            if tokens is None:
                return
            yield StreamChunk(tokens.clone(), None if decode is None else _new_text(run, step, shown))
            step += 1


def _new_text(run, step: int, shown: list[str]) -> list[str]:
    """Every row's text after this step minus what was shown (``shown`` updated)."""
    text = []
    ends = [step + 1] * len(shown) if run.finished_at is None else (run.finished_at.clamp(max=step) + 1).tolist()
    for row, ids in enumerate(run.out[:, : step + 1].tolist()):
        full = run.decode(ids[: ends[row]])
        # A piece ending in U+FFFD is a multi-byte character cut in half: wait for the rest.
        new = "" if full.endswith("\ufffd") or not full.startswith(shown[row]) else full[len(shown[row]):]
        shown[row] += new
        text.append(new)
    return text
