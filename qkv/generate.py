"""Decoding: greedy, beam search, sampling and streaming, over any model that makes a cache (``new_cache``).

Glossary: B inputs, K beams, N rows decoded at once (B, B * K or B * num_return_sequences), T prompt length,
S source length (encoder-decoder), L tokens generated so far, V vocabulary.

How a run goes:
1. *Prefill*: the prompt (decoder-only) or the source through the encoder plus the decoder-start token
   (encoder-decoder) goes through the model once, for B rows, filling a cache preallocated for the whole run
   (``model.new_cache(B, max_len=prompt + max_new_tokens)``: its buffers never move).
2. *Expand*: beams and extra samples copy that state row-wise once (``cache.reorder``), so the prompt, the
   encoder output and the cross-attention keys and values are computed once per input, never per beam.
3. *Step*: one token per row goes in, only the last position's logits come out (``last_only=True``).
   Beam search keeps the caches of the surviving beams by reordering rows in place, never recomputing.

The family decides how each of these goes: its record's decode adapter (``qkv.models.decoding``: a prompt
continued, or a source encoded once and a target started from the decoder-start token) does prefill, step, expand
and reorder; nothing here tests which family a model is.

Host syncs: the loop reads one boolean per step (have all rows finished?), and only when something can finish
(an EOS id, stop strings or a stop callback); on an accelerator it reads it every ``_SYNC_EVERY`` steps and
trims the surplus all-padding columns at the end. Stop strings and the stop callback need the tokens on the host
every step by nature. The steps themselves read nothing back (a test counts the reads of every family).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from .logits_controls import LogitsControls, make_controls, top_k_top_p
from .models import decodable_positions, decoding_of
from .nn.cache import KVCache
from .nn.layers import packed_weights
from .ops.checks import trusted_values

_SYNC_EVERY = 8  # steps between "all finished?" checks on accelerators (on CPU a check is free: every step)


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
    sampling: the sum of ``token_logprobs``."""
    sequences: torch.Tensor
    token_logprobs: torch.Tensor
    sequences_scores: torch.Tensor


@dataclass
class _Options:
    max_new_tokens: int
    num_beams: int
    do_sample: bool
    temperature: float
    top_k: int | None
    top_p: float | None
    repetition_penalty: float
    length_penalty: float
    eos: torch.Tensor | None  # (E,) ids that end a sequence, or None
    pad: int
    num_return_sequences: int
    early_stopping: bool | str
    stop_strings: tuple[str, ...]
    decode: Callable | None
    stop: Callable | None
    generator: torch.Generator | None
    controls: LogitsControls = LogitsControls()  # forced / forbidden tokens (qkv/logits_controls.py)


# ---------------------------------------------------------------------------------------------------------------
# Public entry points

def generate(model, input_ids: torch.Tensor, *, max_new_tokens: int, num_beams: int = 1, do_sample: bool = False,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             repetition_penalty: float = 1.0, length_penalty: float = 1.0, eos_token_id=None,
             pad_token_id: int | None = None, attention_mask: torch.Tensor | None = None,
             num_return_sequences: int = 1, early_stopping: bool | str = False,
             stop_strings: str | Sequence[str] | None = None, decode: Callable | None = None,
             stop: Callable | None = None, generator: torch.Generator | None = None, static_cache: bool = True,
             max_len: int | None = None, compile: bool = False, no_repeat_ngram_size: int = 0,
             bad_words_ids: Sequence[Sequence[int]] | None = None, min_length: int = 0, min_new_tokens: int = 0,
             forced_bos_token_id: int | None = None, forced_eos_token_id=None,
             renormalize_logits: bool = False, logits_processor=None, min_p: float | None = None,
             typical_p: float | None = None, decoder_input_ids: torch.Tensor | None = None,
             return_scores: bool = False, draft_model=None, num_draft_tokens: int = 4,
             adaptive_draft: bool = False, prompt_lookup_num_tokens: int | None = None,
             prompt_lookup_max_ngram: int = 3, speculative_stats=None):
    """Continue ``input_ids`` by up to ``max_new_tokens`` tokens.

    Args:
        model: a qkv model of a family that generates (decoder-only, encoder-decoder: its record's decode
            adapter drives it).
        input_ids: (B, T) prompt (decoder-only) or source (encoder-decoder); left-padded when rows differ in
            length, with ``attention_mask`` (B, T) marking tokens 1 and padding 0.
        num_beams: 1 = greedy or sampling; K > 1 = beam search (K hypotheses per input, the best K kept by
            summed log-probability each step; finished ones scored ``sum log p / L ** length_penalty``).
        do_sample: sample from ``softmax(logits / temperature)``, restricted to the ``top_k`` best tokens and to
            the smallest set holding ``top_p`` of the mass (nucleus sampling); ``generator`` seeds it.
        repetition_penalty: > 1 discourages tokens already in the sequence (Keskar et al. 2019, sec. 4.1: positive
            logits divided by it, negative ones multiplied).
        eos_token_id: an id or ids that end a sequence; None takes ``model.config.eos_token_id``; ``()`` none.
            A finished row is padded with ``pad_token_id`` (default: config's pad id, else the first EOS id, else 0).
        num_return_sequences: the n best hypotheses per input (beam search, n <= num_beams) or n samples.
        early_stopping: False (the default, as transformers') goes on while the best running beam could still win
            at its current length; True ends an input once it has ``num_beams`` finished hypotheses, however poor:
            short, unlikely hypotheses that end early can then fill the list before the likely one ends, and beam
            search returns worse than greedy (docs/benchmarks.md, the demo); "never" goes on while the best running
            beam could win at the maximum length.
        stop_strings, decode: end a row once ``decode(generated ids as a list)`` contains one of the strings.
        stop: a callback ``stop(sequences (N, T + L)) -> bool (N,)`` ending the rows it marks.
        generator: a ``torch.Generator`` for reproducible sampling.
        static_cache: preallocate the cache for the whole run (``max_len`` positions, default prompt +
            max_new_tokens) so its buffers never move; False lets it grow.
        compile: run every step after the prompt through one ``torch.compile``d graph over a static cache (any
            family that generates, recurrent layers included; CUDA graphs on a GPU). The first call for a model
            and batch size compiles (seconds to a minute); later ones reuse it. Same tokens as without.
        no_repeat_ngram_size, bad_words_ids, min_length, min_new_tokens, forced_bos_token_id,
            forced_eos_token_id, renormalize_logits, min_p, typical_p: transformers' controls of the same names
            (``qkv/logits_controls.py``), applied to the logits (greedy, sampling) or log-probabilities (beams);
            min_p and typical_p narrow sampling.
        logits_processor: a function ``f(input_ids (N, L), scores (N, V)) -> scores`` or a list of them, applied
            after the controls above (input_ids: the sequence so far, prompt or decoder prefix included).
        decoder_input_ids: (B, P) or (1, P) encoder-decoder only: the decoder's first tokens (a language code, a
            prefix to continue); the decoder-start token is put in front when they do not begin with it, as in
            transformers. The output starts with them.
        return_scores: return a ``GenerateOutput`` (sequences, per-token log-probabilities, sequence scores).
        draft_model, num_draft_tokens, adaptive_draft: speculative decoding (``qkv/speculative.py``): the draft
            proposes ``num_draft_tokens`` tokens, this model checks them in one pass; greedy gives exactly this
            model's greedy tokens, sampling exactly its distribution. adaptive_draft: K grows while every guess
            is accepted and shrinks on a rejection.
        prompt_lookup_num_tokens, prompt_lookup_max_ngram: prompt-lookup decoding: the draft is the continuation
            of the last n-gram's (n <= max_ngram) latest earlier occurrence in the sequence, up to that many
            tokens; no second model. speculative_stats: a ``qkv.speculative.SpeculativeStats`` to fill (rounds,
            proposed and accepted guesses).

    Returns:
        (B * num_return_sequences, T + L) token ids for a decoder-only model (prompt included, padding kept), or
        (B * num_return_sequences, 1 + L) for an encoder-decoder model (starting with decoder_start_token_id).
        L <= max_new_tokens: the run stops early once every row has finished.
    """
    opts = _options(model, max_new_tokens, num_beams, do_sample, temperature, top_k, top_p, repetition_penalty,
                    length_penalty, eos_token_id, pad_token_id, num_return_sequences, early_stopping,
                    stop_strings, decode, stop, generator,
                    controls=dict(no_repeat_ngram_size=no_repeat_ngram_size, bad_words_ids=bad_words_ids,
                                  min_length=min_length, min_new_tokens=min_new_tokens,
                                  forced_bos_token_id=forced_bos_token_id, forced_eos_token_id=forced_eos_token_id,
                                  renormalize_logits=renormalize_logits, logits_processor=logits_processor,
                                  min_p=min_p, typical_p=typical_p))
    if draft_model is not None or prompt_lookup_num_tokens is not None:
        from .speculative import speculative_generate
        draft_packs = contextlib.nullcontext() if draft_model is None else packed_for_decoding(draft_model)
        with packed_for_decoding(model), draft_packs:
            return speculative_generate(model, input_ids, opts, attention_mask=attention_mask,
                                        draft_model=draft_model, num_draft_tokens=num_draft_tokens,
                                        adaptive=adaptive_draft, prompt_lookup_num_tokens=prompt_lookup_num_tokens,
                                        prompt_lookup_max_ngram=prompt_lookup_max_ngram,
                                        decoder_input_ids=decoder_input_ids, return_scores=return_scores,
                                        static_cache=static_cache, compile=compile, stats=speculative_stats)
    with torch.inference_mode(), packed_for_decoding(model, compile):
        run = _Runner(model, input_ids, attention_mask, opts, static_cache, max_len, compile, decoder_input_ids,
                      return_scores)
        if opts.num_beams > 1:
            sequences = _beam_search(run, opts)
            if not return_scores:
                return sequences
            scores, logprobs = run.beam_scores
            return GenerateOutput(sequences, logprobs, scores)
        steps = sum(1 for _ in _sample_loop(run, opts))
        length = run.trimmed_length(steps)
        sequences = torch.cat([run.prefix, run.out[:, :length]], dim=1)
        if not return_scores:
            return sequences
        logprobs = run.logprobs[:, :length]
        return GenerateOutput(sequences, logprobs, logprobs.sum(-1))


def stream(model, input_ids: torch.Tensor, *, max_new_tokens: int, decode: Callable | None = None,
           do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, repetition_penalty: float = 1.0, eos_token_id=None,
           pad_token_id: int | None = None, attention_mask: torch.Tensor | None = None,
           num_return_sequences: int = 1, stop_strings: str | Sequence[str] | None = None,
           stop: Callable | None = None, generator: torch.Generator | None = None, static_cache: bool = True,
           max_len: int | None = None, compile: bool = False, **controls) -> Iterator[StreamChunk]:
    """Greedy decoding or sampling, one ``StreamChunk`` per step as soon as it is known (arguments as in
    ``generate``, the logits controls included). With ``decode`` (ids list -> str) each chunk also carries every
    row's new text."""
    opts = _options(model, max_new_tokens, 1, do_sample, temperature, top_k, top_p, repetition_penalty, 1.0,
                    eos_token_id, pad_token_id, num_return_sequences, True, stop_strings, decode, stop, generator,
                    controls=controls)
    with torch.inference_mode(), packed_for_decoding(model, compile):
        run = _Runner(model, input_ids, attention_mask, opts, static_cache, max_len, compile)
        shown = [""] * run.out.shape[0]  # text already yielded, per row
        for step, tokens in enumerate(_sample_loop(run, opts)):
            text = None
            if decode is not None:
                text = []
                ends = [step + 1] * len(shown) if run.finished_at is None else \
                    (run.finished_at.clamp(max=step) + 1).tolist()
                for row, ids in enumerate(run.out[:, : step + 1].tolist()):
                    full = decode(ids[: ends[row]])
                    # A piece ending in U+FFFD is a multi-byte character cut in half: wait for the rest.
                    new = "" if full.endswith("\ufffd") or not full.startswith(shown[row]) else full[len(shown[row]):]
                    shown[row] += new
                    text.append(new)
            yield StreamChunk(tokens.clone(), text)


@dataclass
class BeamStep:
    """One step of beam search for one input: the 2K best one-token continuations of the K running beams, best
    first (``_beam_select`` ranks them so; the first K that end and every one that runs on are chosen from them).

    tokens: each candidate's new token. parents: the index, in the previous step's candidate list, of the
    hypothesis it extends (-1 at the first step: the prompt). scores: summed log-probability of the whole
    hypothesis (None where it is -inf). status: "running" (one of the K beams of the next step), "finished" (ended
    with EOS, or at max_new_tokens, and entered the K best finished hypotheses), "ended" (ended but not among
    them) or "pruned" (fell outside the best K). greedy: the candidate that is greedy decoding's prefix at this
    step, if it is one of them (None where greedy's path fell out of the beam, or greedy had already ended)."""
    tokens: list[int]
    parents: list[int]
    scores: list[float | None]
    status: list[str]
    greedy: int | None


@dataclass
class BeamTrace:
    """``beam_search_trace``'s answer. sequences: (K, T + L) or (K, 1 + L) exactly as ``generate(...,
    num_beams=K, num_return_sequences=K)`` returns them, best first; scores: their final scores, ``sum log p /
    L ** length_penalty`` (K,), with L their generated tokens (EOS included) in lengths (K,); steps: one BeamStep
    per decoding step; greedy: greedy decoding's generated tokens (up to and including EOS) for comparison;
    prompt_length: the columns of ``sequences`` before the generated tokens."""
    sequences: torch.Tensor
    scores: list[float]
    lengths: list[int]
    steps: list[BeamStep]
    greedy: list[int]
    prompt_length: int


def beam_search_trace(model, input_ids: torch.Tensor, *, num_beams: int = 4, max_new_tokens: int,
                      length_penalty: float = 1.0, eos_token_id=None, pad_token_id: int | None = None,
                      early_stopping: bool | str = False) -> BeamTrace:
    """Beam search on one input ``input_ids`` (1, T), recording each step's candidates: what a beam-search
    diagram shows, made by the very selection code ``generate`` runs (``_beam_select``), so the final
    hypotheses are ``generate``'s. Arguments as in ``generate``. Returns a ``BeamTrace``."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be one input, shape (1, T), got "
                         f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__}")
    if not isinstance(num_beams, int) or num_beams < 2:
        raise ValueError(f"num_beams must be an int >= 2 for a beam trace, got {num_beams!r}")
    opts = _options(model, max_new_tokens, num_beams, False, 1.0, None, None, 1.0, length_penalty, eos_token_id,
                    pad_token_id, num_beams, early_stopping, None, None, None, None)
    log = _TraceLog()
    with torch.inference_mode():
        run = _Runner(model, input_ids, None, opts, True, None)
        run.sync_every = 1  # stop at the very step the input is done, on any device: the trace ends there
        prompt_length = run.prefix.shape[1]
        sequences = _beam_search(run, opts, trace=log)
        greedy_opts = _options(model, max_new_tokens, 1, False, 1.0, None, None, 1.0, 1.0, eos_token_id,
                               pad_token_id, 1, True, None, None, None, None)
        greedy_run = _Runner(model, input_ids, None, greedy_opts, True, None)
        steps_run = sum(1 for _ in _sample_loop(greedy_run, greedy_opts))
        greedy = greedy_run.out[0, :greedy_run.trimmed_length(steps_run)].tolist()
    if greedy_opts.eos is not None:  # up to the first EOS; the rest is padding
        ends = [i for i, t in enumerate(greedy) if t in set(greedy_opts.eos.tolist())]
        greedy = greedy[: ends[0] + 1] if ends else greedy
    steps, previous, prefixes = [], None, [()]
    for t, c in enumerate(log.steps):
        tokens, beams = c.token[0].tolist(), c.beam[0].tolist()
        parents = [-1] * len(tokens) if previous is None else [previous[b] for b in beams]
        paths = [prefixes[max(p, 0)] + (tok,) for p, tok in zip(parents, tokens)]
        running = set() if c.survivors is None else set(c.survivors[0].tolist())
        status = ["finished" if f else "ended" if e else "running" if i in running else "pruned"
                  for i, (f, e) in enumerate(zip(c.finished[0].tolist(), c.ended[0].tolist()))]
        scores = [v if math.isfinite(v) else None for v in c.score[0].tolist()]
        on_greedy = [i for i, path in enumerate(paths) if t < len(greedy) and list(path) == greedy[: t + 1]]
        steps.append(BeamStep(tokens, parents, scores, status, on_greedy[0] if on_greedy else None))
        previous = None if c.survivors is None else c.survivors[0].tolist()
        prefixes = paths
    return BeamTrace(sequences, log.best[0].tolist(), log.lengths[0].tolist(), steps, greedy, prompt_length)


# ---------------------------------------------------------------------------------------------------------------
# Argument checks

def _options(model, max_new_tokens, num_beams, do_sample, temperature, top_k, top_p, repetition_penalty,
             length_penalty, eos_token_id, pad_token_id, num_return_sequences, early_stopping, stop_strings,
             decode, stop, generator, *, controls: dict | None = None) -> _Options:
    def is_int(x):
        return isinstance(x, int) and not isinstance(x, bool)

    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"model must be a qkv model (qkv.build, qkv.load, qkv.from_hf), got {type(model).__name__}")
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if not is_int(num_beams) or num_beams < 1:
        raise ValueError(f"num_beams must be an int >= 1, got {num_beams!r}")
    if not is_int(num_return_sequences) or num_return_sequences < 1:
        raise ValueError(f"num_return_sequences must be an int >= 1, got {num_return_sequences!r}")
    if num_beams > 1 and num_return_sequences > num_beams:
        raise ValueError(f"num_return_sequences must be <= num_beams ({num_beams}) in beam search, "
                         f"got {num_return_sequences}")
    if num_beams == 1 and not do_sample and num_return_sequences > 1:
        raise ValueError(f"num_return_sequences > 1 needs do_sample=True or num_beams > 1 (greedy decoding "
                         f"returns one sequence per input), got {num_return_sequences}")
    if num_beams > 1 and do_sample:
        raise ValueError(f"do_sample=True is not supported with num_beams > 1 (got num_beams={num_beams}); "
                         f"use num_beams=1 to sample")
    if do_sample and not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature must be a number > 0 when sampling, got {temperature!r}")
    if top_k is not None and (not is_int(top_k) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be None or a number in (0, 1], got {top_p!r}")
    if not (isinstance(repetition_penalty, (int, float)) and repetition_penalty > 0):
        raise ValueError(f"repetition_penalty must be a number > 0 (1 = off), got {repetition_penalty!r}")
    if not isinstance(length_penalty, (int, float)) or not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be a finite number, got {length_penalty!r}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if isinstance(stop_strings, str):
        stop_strings = (stop_strings,)
    stop_strings = tuple(stop_strings or ())
    if stop_strings and decode is None:
        raise ValueError("stop_strings need decode (a function from a list of token ids to text), got decode=None")
    if any(not isinstance(s, str) or not s for s in stop_strings):
        raise ValueError(f"stop_strings must be non-empty strings, got {stop_strings!r}")
    if num_beams > 1 and (stop_strings or stop is not None):
        raise ValueError(f"stop_strings and stop work with num_beams=1 only, got num_beams={num_beams}")
    if stop is not None and not callable(stop):
        raise TypeError(f"stop must be a callable (sequences (N, L)) -> bool (N,), got {type(stop).__name__}")

    config = model.config
    if eos_token_id is None:
        eos_token_id = getattr(config, "eos_token_id", None)
    eos_ids = [] if eos_token_id is None else [eos_token_id] if is_int(eos_token_id) else list(eos_token_id)
    if any(not is_int(e) or e < 0 for e in eos_ids):
        raise ValueError(f"eos_token_id must be an int >= 0, a sequence of them, () or None, got {eos_token_id!r}")
    if pad_token_id is None:
        pad_token_id = getattr(config, "pad_token_id", None)
    if pad_token_id is None:
        pad_token_id = eos_ids[0] if eos_ids else 0
    if not is_int(pad_token_id):
        raise ValueError(f"pad_token_id must be an int, got {pad_token_id!r}")
    eos = torch.tensor(eos_ids, dtype=torch.long) if eos_ids else None
    known = {"no_repeat_ngram_size", "bad_words_ids", "min_length", "min_new_tokens", "forced_bos_token_id",
             "forced_eos_token_id", "renormalize_logits", "logits_processor", "min_p", "typical_p"}
    if set(controls or {}) - known:
        raise TypeError(f"unknown decoding arguments {sorted(set(controls) - known)}; known controls: {sorted(known)}")
    logits_controls = make_controls(**(controls or {}), vocab_size=config.vocab_size, eos_ids=eos_ids)
    return _Options(max_new_tokens, num_beams, bool(do_sample), float(temperature), top_k, top_p,
                    float(repetition_penalty), float(length_penalty), eos, pad_token_id, num_return_sequences,
                    early_stopping, stop_strings, decode, stop, generator, logits_controls)


def _check_inputs(model, input_ids, attention_mask, max_new_tokens, decoding):
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int, torch.int16):
        raise TypeError(f"input_ids must be an integer tensor (B, T), got "
                        f"{getattr(input_ids, 'dtype', type(input_ids).__name__)}")
    if input_ids.dim() != 2 or input_ids.shape[0] < 1 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids must be (B, T) with B >= 1 and T >= 1 (a non-empty prompt), got shape "
                         f"{tuple(input_ids.shape)}")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"attention_mask must have input_ids' shape {tuple(input_ids.shape)}, got "
                         f"{tuple(attention_mask.shape)}")
    cfg = model.config
    T, limit = input_ids.shape[1], getattr(cfg, "max_positions", None)
    if limit is None:
        return
    if T > limit:
        raise ValueError(f"input_ids has {T} positions, more than the model's context: max_positions={limit}")
    # A position table ends; RoPE, ALiBi, sinusoids and relative buckets extrapolate (rarely well).
    prompt, bound = decoding.prompt_length(input_ids), decodable_positions(cfg)
    if bound is not None and prompt + max_new_tokens > bound:
        raise ValueError(f"max_new_tokens={max_new_tokens} with a {prompt}-token decoder prompt needs "
                         f"{prompt + max_new_tokens} positions, more than the model's {bound} learned positions "
                         f"(max_positions); expected max_new_tokens <= {bound - prompt}")


# ---------------------------------------------------------------------------------------------------------------
# The model side: the family's decode adapter does prefill, step, expand and reorder

class _Runner:
    """Drives one model through a run, through its family's decode adapter. Holds the cache (which holds every
    per-row state of the model: KV, recurrent states, the encoder output), the adapter's per-row state (padding,
    positions) and the output buffer.

    ``prefix``: (B, T) prompt or (B, 1) decoder-start tokens (expanded with the rows); ``out``: (N, max_new)
    generated ids; ``logits``: (N, V) next-token logits after prefill / each step."""

    def __init__(self, model, input_ids, attention_mask, opts: _Options, static_cache: bool, max_len: int | None,
                 compile: bool = False, decoder_input_ids: torch.Tensor | None = None, return_scores: bool = False):
        self.model, self.opts = model, opts
        self.decoding = decoding_of(model)
        _check_inputs(model, input_ids, attention_mask, opts.max_new_tokens, self.decoding)
        B, T = input_ids.shape
        decoder_input_ids = _decoder_prefix(model, self.decoding, decoder_input_ids, B, input_ids.device)
        prompt = self.decoding.prompt_length(input_ids)
        if decoder_input_ids is not None:
            prompt = decoder_input_ids.shape[1]
        needed = prompt + opts.max_new_tokens
        if max_len is not None and (not isinstance(max_len, int) or max_len < needed):
            raise ValueError(f"max_len must be an int >= {needed} (prompt + max_new_tokens), got {max_len!r}")
        if compile and not static_cache:
            raise ValueError("compile=True needs static_cache=True: the compiled step writes a preallocated cache")
        capacity = (max_len or needed) if static_cache else None
        _check_memory(model, input_ids, opts, capacity or needed, self.decoding)
        device = input_ids.device
        if attention_mask is not None:
            attention_mask = attention_mask.to(device=device, dtype=torch.long)
            if attention_mask.numel() and bool(attention_mask.all()):
                attention_mask = None  # no padding: the mask-free attention path is the fast one
        self.cache = _new_cache(model, B, capacity, static=compile)
        self.sync_every = 1 if device.type == "cpu" else _SYNC_EVERY
        pre = self.decoding.prefill(model, input_ids.long(), attention_mask, self.cache, capacity or needed)
        self.prefix, self.prefix_mask, self.logits, self.state = pre.prefix, pre.prefix_mask, pre.logits, pre.state
        self.out = torch.full((B, opts.max_new_tokens), opts.pad, dtype=torch.long, device=device)
        self.finished_at = None  # (N,) step at which each row finished, when rows can finish
        self.compile = compile
        self._pinned = False  # CUDA graphs: the cache's buffers marked as static addresses (first compiled step)
        if decoder_input_ids is not None and decoder_input_ids.shape[1] > 1:
            for column in decoder_input_ids[:, 1:].unbind(1):  # the rest of the decoder prefix, token by token
                self.step(column)
            self.prefix = decoder_input_ids
        # return_scores: (N, max_new) log-probability of each chosen token (greedy, sampling)
        self.logprobs = torch.zeros(B, opts.max_new_tokens, device=device) if return_scores else None
        self.beam_scores = None  # beam search with return_scores: ((N,) final scores, (N, L) token log-probs)

    def expand(self, n: int) -> None:
        """Repeat every row n times (beams, samples): cache, encoder state, masks, positions, logits."""
        if n == 1:
            return
        index = torch.arange(self.prefix.shape[0], device=self.prefix.device).repeat_interleave(n)
        self.state = self.decoding.expand(self.cache, self.state, index)
        self.prefix, self.logits, self.out = self.prefix[index], self.logits[index], self.out[index]
        if self.logprobs is not None:
            self.logprobs = self.logprobs[index]
        self.prefix_mask = None if self.prefix_mask is None else self.prefix_mask[index]

    def reorder(self, index: torch.Tensor) -> None:
        """Beam search: row i continues row ``index[i]`` of the same input. Encoder state, masks and positions
        are equal across the beams of one input, so only the decoder's own caches move (eagerly, also when
        compiled: only the filled positions, where a graph would copy whole buffers)."""
        self.state = self.decoding.reorder(self.cache, self.state, index)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row, (N,); return the next logits (N, V)."""
        tokens = tokens[:, None]  # (N, 1)
        step = self.decoding.step
        if self.compile:
            if not self._pinned and tokens.device.type == "cuda":  # CUDA graphs replay fixed addresses
                for t in self.cache.tensors():
                    torch._dynamo.mark_static_address(t)
                self._pinned = True
            step = _compiled_step(self.decoding, tokens.device.type)
        fed = self.cache.length
        with trusted_values():  # the model's own tokens, at positions _check_inputs allowed: no host reads
            logits = step(self.model, tokens, self.cache, self.state)
        if self.cache.length == fed:  # a compiled step counts nothing on the host: count its token here
            self.cache.advance(1)
        self.state = self.decoding.advance(self.state)
        self.logits = logits[:, -1]
        return self.logits

    def trimmed_length(self, steps: int) -> int:
        """Columns of ``out`` worth returning: up to the step where the last row finished."""
        if self.finished_at is None or steps == 0:
            return steps
        return min(steps, int(self.finished_at.max()) + 1)


def _decoder_prefix(model, decoding, ids, B: int, device) -> torch.Tensor | None:
    """decoder_input_ids checked and completed: (B, P) with the decoder-start token first (transformers' rule)."""
    if ids is None:
        return None
    if not decoding.has_source:
        raise ValueError("decoder_input_ids is for encoder-decoder models (a decoder prefix); a decoder-only model "
                         "continues input_ids: put the prefix there")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[0] not in (1, B) or \
            ids.dtype not in (torch.long, torch.int) or ids.shape[1] < 1:
        raise ValueError(f"decoder_input_ids must be an integer tensor (B, P) or (1, P) with B = {B}, P >= 1, got "
                         f"{tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__}")
    V = model.config.vocab_size
    if bool(((ids < 0) | (ids >= V)).any()):
        raise ValueError(f"decoder_input_ids must hold token ids in [0, {V})")
    ids = ids.to(device=device, dtype=torch.long).expand(B, -1)
    start = model.config.decoder_start_token_id
    if not bool((ids[:, 0] == start).all()):
        ids = torch.cat([torch.full((B, 1), start, dtype=torch.long, device=device), ids], 1)
    return ids


def _check_memory(model, input_ids, opts: _Options, positions: int, decoding) -> None:
    """Refuse a run whose output buffer, caches and logits cannot fit where the prompt lives, before allocating
    them: ``max_new_tokens=10**9`` is a request for gigabytes per row, not a long wait."""
    from .files import check_fits
    cfg = model.config
    B, T = input_ids.shape
    rows = B * max(opts.num_beams, opts.num_return_sequences)
    try:
        layers = model.new_cache(1).layers  # buffers are lazy: nothing allocated
        kv_layers = sum(isinstance(layer.mixer, KVCache) for layer in layers)
        cross_layers = sum(layer.cross is not None for layer in layers)
    except (NotImplementedError, AttributeError):
        kv_layers = cross_layers = cfg.n_layers
    p = next(model.parameters(), None)
    elem = p.element_size() if p is not None else 4
    kv_bytes = 2 * cfg.n_kv_heads * cfg.head_dim * elem  # keys and values of one position in one layer
    per_position = kv_layers * kv_bytes + 8  # + the padding mask
    cross = cross_layers * kv_bytes * decoding.source_length(input_ids)
    nbytes = rows * (positions * per_position + cross + 8 * opts.max_new_tokens + 2 * 4 * cfg.vocab_size)
    check_fits(nbytes, device=input_ids.device,
               what=f"decoding max_new_tokens={opts.max_new_tokens} for {rows} row(s) (batch {B} x "
                    f"num_beams={opts.num_beams}, num_return_sequences={opts.num_return_sequences}; caches of "
                    f"{positions} positions)")


def packed_for_decoding(model, compile: bool = False):
    """Decode from packed copies of the large float32 and bfloat16 CPU weights (``qkv.nn.packed_weights``: up to
    about twice the speed of a step on CPU) where the copies take at most half the memory available. Compiled steps
    choose their own kernels: nothing to pack for them. ``generate`` and ``stream`` enter it for their call; a loop
    of calls (a file's batches) enters it once around them all, and the calls inside pack nothing again."""
    from .files import available_bytes
    return contextlib.nullcontext() if compile else packed_weights(model, max_bytes=available_bytes() // 2)


_COMPILED: dict[tuple, Callable] = {}


def _compiled_step(decoding, device_type: str) -> Callable:
    """The compiled decode step of a family (its adapter's ``step``), made once per adapter and device type. Dynamo
    keeps one graph per model and shapes (guarded), so a new model or batch size compiles again, and the same ones
    never do; a family whose input is a source (translation: sources differ in length from batch to batch) lets
    Dynamo turn the changing sizes into symbols after the first change instead (``dynamic=None``). On CUDA the
    graph is replayed as a CUDA graph ("reduce-overhead"): one launch per token instead of one per kernel."""
    key = (type(decoding), device_type)
    if key not in _COMPILED:
        mode = "reduce-overhead" if device_type == "cuda" else None
        _COMPILED[key] = torch.compile(decoding.step, mode=mode, dynamic=None if decoding.has_source else False,
                                       fullgraph=True)
    return _COMPILED[key]


def _new_cache(model, batch_size, capacity, *, static=False):
    """The run's cache. Sliding-window layers roll (memory bounded by their window) except in a static cache
    (``compile``), whose graph addresses every position."""
    return model.new_cache(batch_size, capacity, static=static)


# ---------------------------------------------------------------------------------------------------------------
# Logits processing

def _seen_tokens(run: _Runner) -> torch.Tensor:
    """(N, V) bool: which tokens the sequence holds so far (prompt or start token, padding excluded)."""
    N, V = run.logits.shape
    ids = run.prefix
    weight = torch.ones_like(ids) if run.prefix_mask is None else run.prefix_mask.to(ids.dtype)
    return torch.zeros(N, V, dtype=torch.long, device=ids.device).scatter_add_(1, ids, weight) > 0


def _penalise(logits, seen, penalty):
    # CTRL (Keskar et al. 2019, eq. in sec. 4.1): make seen tokens less likely whatever the logit's sign.
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def _filter(logits, top_k, top_p):
    return top_k_top_p(logits, top_k, top_p)  # shared with speculative decoding (qkv/logits_controls.py)


def _control(scores, sequences, run, opts: _Options, step: int):
    """The logits controls at generated step ``step`` (the sequence so far: prefix + ``step`` tokens)."""
    prompt = run.prefix.shape[1]
    return opts.controls.apply(scores, sequences, length=prompt + step, prompt_length=prompt,
                               max_length=prompt + opts.max_new_tokens, eos=opts.eos)


def _next_scores(logits, opts: _Options, seen):
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if seen is not None:
        logits = _penalise(logits, seen, opts.repetition_penalty)
    return logits


# ---------------------------------------------------------------------------------------------------------------
# Greedy decoding and sampling

def _sample_loop(run: _Runner, opts: _Options) -> Iterator[torch.Tensor]:
    """Yield the (N,) new tokens of every step, written into ``run.out`` as they come."""
    run.expand(opts.num_return_sequences if opts.do_sample else 1)
    N, device = run.out.shape[0], run.out.device
    eos = None if opts.eos is None else opts.eos.to(device)
    can_finish = eos is not None or opts.stop_strings or opts.stop is not None
    unfinished = torch.ones(N, dtype=torch.bool, device=device)
    if can_finish:
        run.finished_at = torch.full((N,), opts.max_new_tokens, dtype=torch.long, device=device)
    seen = _seen_tokens(run) if opts.repetition_penalty != 1.0 else None
    logits = run.logits
    for step in range(opts.max_new_tokens):
        scores = _next_scores(logits, opts, seen)
        if opts.controls.active:
            so_far = torch.cat([run.prefix, run.out[:, :step]], 1) if opts.controls.needs_sequences else None
            scores = _control(scores, so_far, run, opts, step)
        if opts.do_sample:
            scores = opts.controls.warp(_filter(scores / opts.temperature, opts.top_k, opts.top_p))
            tokens = torch.multinomial(scores.softmax(-1), 1, generator=opts.generator).squeeze(1)
        else:
            tokens = scores.argmax(-1)  # (N,)
        if can_finish:
            tokens = tokens.masked_fill(~unfinished, opts.pad)
        run.out[:, step] = tokens
        if run.logprobs is not None:
            chosen = scores.log_softmax(-1).gather(1, tokens[:, None]).squeeze(1)
            run.logprobs[:, step] = chosen.masked_fill(~unfinished, 0.0) if can_finish else chosen
        if seen is not None:
            seen.scatter_(1, tokens[:, None], True)
        if can_finish:
            ended = torch.zeros_like(unfinished) if eos is None else torch.isin(tokens, eos)
            ended |= _stopped(run, opts, step, unfinished)
            run.finished_at.masked_fill_(unfinished & ended, step)
            unfinished &= ~ended
        yield tokens
        if step + 1 == opts.max_new_tokens:
            break
        if can_finish and (step + 1) % run.sync_every == 0 and not bool(unfinished.any()):
            break  # the one host sync per step
        logits = run.step(tokens)


def _stopped(run: _Runner, opts: _Options, step: int, unfinished: torch.Tensor) -> torch.Tensor:
    """(N,) bool: rows a stop string or the stop callback ends after this step."""
    N, device = run.out.shape[0], run.out.device
    hit = torch.zeros(N, dtype=torch.bool, device=device)
    if opts.stop is not None:
        so_far = torch.cat([run.prefix, run.out[:, : step + 1]], dim=1)
        hit |= torch.as_tensor(opts.stop(so_far), dtype=torch.bool, device=device).reshape(N)
    if opts.stop_strings:
        # Decoding text is host work: only the rows still running are looked at.
        for row in unfinished.nonzero().flatten().tolist():
            text = opts.decode(run.out[row, : step + 1].tolist())
            hit[row] = any(s in text for s in opts.stop_strings)
    return hit


# ---------------------------------------------------------------------------------------------------------------
# Beam search

def _beam_search(run: _Runner, opts: _Options, trace: _TraceLog | None = None) -> torch.Tensor:
    """Batched beam search with K = num_beams hypotheses per input.

    Each step scores all K * V one-token continuations of an input by summed log-probability and keeps the best
    2K candidates: those ending in EOS (among the best K) become finished hypotheses, scored
    ``sum log p / L ** length_penalty`` (L generated tokens, EOS included; Wu et al. 2016 use a smoothed
    form), and the best K that did not end continue. At ``max_new_tokens`` the best K running beams are
    finished as they are. An input stops once it holds K finished hypotheses and no running beam can beat the
    worst of them (``early_stopping``: False), or at once with K finished (True). These are
    the rules of transformers' beam search, so both return the same tokens; one difference: a repetition
    penalty acts on the logits here (before the log-softmax), on the log-probabilities there.

    The selection itself is ``_beam_select``, on shapes that never change; with ``compile=True`` it is compiled
    like the model step. ``trace`` receives every step's ``_BeamCandidates`` and the final scores
    (``beam_search_trace``)."""
    K, M = opts.num_beams, opts.max_new_tokens
    B = run.prefix.shape[0]
    run.expand(K)
    device = run.out.device
    eos = None if opts.eos is None else opts.eos.to(device)
    neg_inf = float("-inf")
    # Every beam starts as the same prompt: only beam 0 may propose tokens at the first step, or the K beams
    # would pick the same continuations K times.
    running = torch.zeros(B, K, device=device)
    running[:, 1:] = neg_inf
    state = _BeamState(running=running,
                       tokens=torch.full((B, K, M), opts.pad, dtype=torch.long, device=device),
                       best=torch.full((B, K), neg_inf, device=device),  # finished scores, -inf = empty slot
                       best_tokens=torch.full((B, K, M), opts.pad, dtype=torch.long, device=device),
                       best_len=torch.zeros(B, K, dtype=torch.long, device=device),
                       done=torch.zeros(B, dtype=torch.bool, device=device),
                       logps=torch.zeros(B, K, M, device=device), best_logps=torch.zeros(B, K, M, device=device))
    select = _compiled_select(device.type) if run.compile else _beam_select
    fixed = dict(length_penalty=opts.length_penalty, early_stopping=opts.early_stopping,
                 in_top_k=torch.arange(2 * K, device=device) < K,  # (2K,): candidates that may finish
                 offsets=torch.arange(B, device=device)[:, None] * K)  # (B, 1): first row of each input
    step_t = torch.zeros(1, dtype=torch.long, device=device)  # the step as a tensor: one graph for all steps
    seen = _seen_tokens(run) if opts.repetition_penalty != 1.0 else None
    logits = run.logits
    if trace is not None:
        fixed["trace"] = True
        select = _beam_select  # eager: the trace is host data
    for step in range(M):
        # transformers' order: log-probabilities first, then the controls (not renormalised unless asked)
        scores = _next_scores(logits, opts, seen).log_softmax(-1)
        if opts.controls.active:
            so_far = None
            if opts.controls.needs_sequences:
                so_far = torch.cat([run.prefix, state.tokens.view(B * K, M)[:, :step]], 1)
            scores = _control(scores, so_far, run, opts, step)
        if step + 1 == M:  # the last step finishes the running beams: a different rule, run once, not compiled
            state, _, _, candidates = _beam_select(scores, state, step_t, eos, last=True, **fixed)
            if trace is not None:
                trace.steps.append(candidates)
            break
        state, parent, tokens, candidates = select(scores, state, step_t, eos, last=False, **fixed)
        if trace is not None:
            trace.steps.append(candidates)
        step_t += 1
        if step % run.sync_every == run.sync_every - 1 and bool(state.done.all()):
            break
        run.reorder(parent)
        if seen is not None:
            seen = seen[parent]
            seen.scatter_(1, tokens[:, None], True)
        logits = run.step(tokens)
    n = opts.num_return_sequences
    if trace is not None:
        trace.best, trace.lengths = state.best[:, :n], state.best_len[:, :n]
    length = int(state.best_len[:, :n].max())
    tokens = state.best_tokens[:, :n, :length].reshape(B * n, length)
    if run.logprobs is not None:  # return_scores: the final scores and each chosen token's log-probability
        ended = torch.arange(length, device=device) >= state.best_len[:, :n, None]  # (B, n, length) padding
        run.beam_scores = (state.best[:, :n].reshape(B * n),
                           state.best_logps[:, :n, :length].masked_fill(ended, 0.0).reshape(B * n, length))
    prefix = run.prefix.view(B, K, -1)[:, :n].reshape(B * n, -1)
    return torch.cat([prefix, tokens], dim=1)


@dataclass
class _BeamState:
    """Beam search's tensors, B inputs x K beams, M = max_new_tokens: the running beams' scores (B, K) and tokens
    (B, K, M); the finished hypotheses' scores (B, K), tokens (B, K, M) and lengths (B, K); inputs done (B,)."""
    running: torch.Tensor
    tokens: torch.Tensor
    best: torch.Tensor
    best_tokens: torch.Tensor
    best_len: torch.Tensor
    done: torch.Tensor
    logps: torch.Tensor  # (B, K, M): each running beam's tokens' log-probabilities (return_scores)
    best_logps: torch.Tensor  # (B, K, M): the same for the finished hypotheses


torch.utils._pytree.register_dataclass(_BeamState)  # a pytree, so torch.compile takes and returns it whole


@dataclass
class _TraceLog:
    """What ``_beam_search`` records when traced: each step's candidates, the finished scores and lengths (B, n)."""
    steps: list = field(default_factory=list)
    best: torch.Tensor | None = None
    lengths: torch.Tensor | None = None


@dataclass
class _BeamCandidates:
    """What one step of ``_beam_select`` looked at, for ``beam_search_trace``: the 2K best continuations per
    input, best first: summed log-probabilities (B, 2K), the running beam each extends (B, 2K), its token (B, 2K),
    whether it ended (B, 2K) and entered the finished hypotheses (B, 2K); and the candidates kept running (B, K)."""
    score: torch.Tensor
    beam: torch.Tensor
    token: torch.Tensor
    ended: torch.Tensor
    finished: torch.Tensor
    survivors: torch.Tensor | None


def _beam_select(scores, state: _BeamState, step, eos, *, length_penalty: float, early_stopping, last: bool,
                 in_top_k, offsets, trace: bool = False):
    """One step of beam search (rules in ``_beam_search``): (B * K, V) next-token log-probabilities of the running
    beams (after the logits controls) -> (new state, (B * K,) parent row of each new beam, (B * K,) their new
    tokens, ``_BeamCandidates`` when ``trace`` else None). ``step`` is a (1,) tensor; ``in_top_k`` (2K,) marks the
    candidates that may finish, ``offsets`` (B, 1) is each input's first row."""
    B, K, M = state.tokens.shape
    V = scores.shape[-1]
    neg_inf = float("-inf")
    L = (step + 1).float()  # (1,) tokens generated, this one included
    logp = scores.float().view(B, K, V) + state.running[..., None]  # (B, K, V)
    cand_score, cand = logp.view(B, K * V).topk(2 * K, dim=-1)  # (B, 2K), best first
    beam, token = cand // V, cand % V
    cand_tokens = state.tokens.gather(1, beam[..., None].expand(B, 2 * K, M))  # (B, 2K, M)
    cand_tokens = cand_tokens.index_copy(2, step, token[..., None])
    token_logp = scores.float().view(B, K * V).gather(1, cand)  # (B, 2K): the new token's log-probability
    cand_logps = state.logps.gather(1, beam[..., None].expand(B, 2 * K, M)).index_copy(2, step, token_logp[..., None])
    if last:
        ended = torch.ones_like(token, dtype=torch.bool)
    elif eos is None:
        ended = torch.zeros_like(token, dtype=torch.bool)
    else:
        ended = torch.isin(token, eos)
    # Finished hypotheses: merge the new ones (ended among the best K, of inputs not done) into the K best so far.
    new = ended & in_top_k & ~state.done[:, None]
    new_score = torch.where(new, cand_score / L ** length_penalty, neg_inf)
    best, keep = torch.cat([state.best, new_score], dim=1).topk(K, dim=-1)  # of (B, 3K)
    best_tokens = torch.cat([state.best_tokens, cand_tokens], dim=1).gather(1, keep[..., None].expand(B, K, M))
    best_len = torch.cat([state.best_len, (step + 1).expand(B, 2 * K)], dim=1).gather(1, keep)
    best_logps = torch.cat([state.best_logps, cand_logps], dim=1).gather(1, keep[..., None].expand(B, K, M))
    candidates = None
    if trace:  # which new hypotheses made it into the K best finished ones (kept slots K.. are this step's)
        entered = torch.zeros(B, 3 * K, dtype=torch.bool, device=keep.device).scatter(1, keep, True)[:, K:]
        candidates = _BeamCandidates(cand_score, beam, token, ended, entered & new, None)
    if last:
        return _BeamState(state.running, state.tokens, best, best_tokens, best_len, state.done, state.logps,
                          best_logps), None, None, candidates
    # Running beams: the best K candidates that did not end.
    survivors = cand_score.masked_fill(ended, neg_inf).topk(K, dim=-1).indices  # (B, K)
    running = cand_score.gather(1, survivors)
    tokens = cand_tokens.gather(1, survivors[..., None].expand(B, K, M))
    logps = cand_logps.gather(1, survivors[..., None].expand(B, K, M))
    parent = (beam.gather(1, survivors) + offsets).view(-1)  # (B * K,) rows they continue
    full = (best > neg_inf).all(-1)
    if early_stopping is True:
        done = state.done | full
    else:
        # Could the best running beam still beat the worst finished one? Log-probabilities only fall, so at the
        # current length it cannot improve; with a positive length penalty a longer one might ("never").
        horizon = float(M) if early_stopping == "never" and length_penalty > 0 else L
        done = state.done | (full & (running[:, 0] / horizon ** length_penalty <= best.min(-1).values))
    new_tokens = tokens.index_select(2, step).view(-1)  # (B * K,)
    if candidates is not None:
        candidates.survivors = survivors
    return _BeamState(running, tokens, best, best_tokens, best_len, done, logps, best_logps), parent, new_tokens, \
        candidates


_COMPILED_SELECT: dict[str, Callable] = {}


def _compiled_select(device_type: str) -> Callable:
    """The compiled ``_beam_select`` (one graph per batch, beams and length): some 35 small ops fused into a few
    kernels, which is most of a beam step on a small model."""
    if device_type not in _COMPILED_SELECT:
        _COMPILED_SELECT[device_type] = torch.compile(_beam_select, dynamic=False, fullgraph=True)
    return _COMPILED_SELECT[device_type]


# -- text in, text out ------------------------------------------------------------------------------------------

def translate(model, tokenizer, sentences: list[str], *, num_beams: int = 1, max_new_tokens: int = 60,
              batch_size: int = 64, compile: bool = False) -> list[str]:
    """Translate sentences with ``qkv.generate`` (greedy or beam search, ``compile`` as there), returning
    detokenized strings."""
    out = []
    with packed_for_decoding(model, compile):  # once for every batch
        for i in range(0, len(sentences), batch_size):
            chunk = sentences[i: i + batch_size]
            ids = [tokenizer.encode(s) + [tokenizer.eos_id] for s in chunk]
            width = max(len(x) for x in ids)
            src = torch.full((len(ids), width), tokenizer.pad_id, dtype=torch.long)
            for row, x in enumerate(ids):
                src[row, : len(x)] = torch.tensor(x)
            src = src.to(next(model.parameters()).device)
            mask = src != tokenizer.pad_id
            limit = min(max_new_tokens, model.config.max_positions - 1)
            with torch.no_grad():
                hyp = generate(model, src, attention_mask=mask, max_new_tokens=limit, num_beams=num_beams,
                               eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id, compile=compile)
            for row in hyp.tolist():
                row = [t for t in row if t != model.config.decoder_start_token_id] if row else row
                if tokenizer.eos_id in row:
                    row = row[: row.index(tokenizer.eos_id)]
                out.append(tokenizer.decode(row))
    return out
