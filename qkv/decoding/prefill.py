"""Prefill: the input checked, the config resolved against the model, the cache made for the whole run, and the
prompt (decoder-only) or the source plus the decoder-start token (encoder-decoder) through the model once.

Glossary: B inputs, T input length, P decoder prefix length, S source length, V vocabulary.

The cache is preallocated for prompt + max_new_tokens positions (``static_cache``), so its buffers never move; a
run that cannot fit (a request for gigabytes per row) is refused before anything is allocated. The prefill's
logits are checked once for non-finite values (one host read per run): a model that overflows stops here, before
a token is printed.
"""
from __future__ import annotations

import contextlib

import torch

from ..files import check_fits
from ..models import decodable_positions, decoding_of
from ..nn.cache import KVCache
from .config import GenerationConfig
from .finite import check_prefill
from .sliding import ContextWindow, sliding_context
from .step import Run


def prefill(model, input_ids: torch.Tensor, config: GenerationConfig, *, attention_mask=None,
            decoder_input_ids=None, logits_processor=None, generator=None, decode=None, stop=None) -> Run:
    """A run of ``model`` on ``input_ids`` (B, T) ready for its first step: ``run.logits`` (B, V) are the next
    token's. ``config`` is resolved here (``GenerationConfig.resolved``); the other arguments as ``generate``'s.
    The caller decides autograd (``generate`` runs it all under ``torch.inference_mode``). A run past a decoder's
    learned positions slides its context (``sliding.py``): ``run.sliding`` says so; a prompt longer than them is
    read from its last W tokens."""
    check_model(model)
    decoding = decoding_of(model)
    _check_shapes(input_ids, attention_mask)
    B = input_ids.shape[0]
    prompt = decoding.prompt_length(input_ids)
    start = config.decoder_start_token_id
    with _starting_from(model, start if decoding.has_source else None):
        prefix_ids = _decoder_prefix(model, decoding, decoder_input_ids, B, input_ids.device)
        if prefix_ids is not None:
            prompt = prefix_ids.shape[1]
        plan = config.resolved(model, prompt, logits_processor=logits_processor)
        sliding = sliding_context(model, prompt, plan.max_new_tokens)
        _check_positions(model, input_ids, plan.max_new_tokens, prompt, sliding)
        if stop is not None and not callable(stop):
            raise TypeError(f"stop must be a callable (sequences (N, L)) -> bool (N,), got {type(stop).__name__}")
        if plan.stop_strings and decode is None:
            raise ValueError("stop_strings need decode (a function from a list of token ids to text), got decode=None")
        if plan.num_beams > 1 and stop is not None:
            raise ValueError(f"stop_strings and stop work with num_beams=1 only, got num_beams={plan.num_beams}")
        # positions the cache holds: sliding, the first W (later steps recompute the window without it)
        needed = prompt + plan.max_new_tokens if sliding is None else sliding.window
        if plan.max_len is not None and plan.max_len < needed:
            raise ValueError(f"max_len must be an int >= {needed} (prompt + max_new_tokens"
                             f"{'' if sliding is None else ', at most the learned positions'}), got {plan.max_len!r}")
        capacity = (plan.max_len or needed) if plan.static_cache else None
        _check_memory(model, input_ids, plan, capacity or needed, decoding)
        if attention_mask is not None:
            attention_mask = attention_mask.to(device=input_ids.device, dtype=torch.long)
            if attention_mask.numel() and bool(attention_mask.all()):
                attention_mask = None  # no padding: the mask-free attention path is the fast one
        window = None if sliding is None else ContextWindow(input_ids.long(), attention_mask, sliding.window)
        read = input_ids if window is None else window.ids  # a prompt longer than W: its last W tokens
        read_mask = attention_mask if window is None else window.mask
        cache = new_cache(model, B, capacity, static=plan.compile)
        pre = decoding.prefill(model, read.long(), read_mask, cache, capacity or needed)
        if read is not input_ids:  # the output still starts with the whole prompt
            pre.prefix, pre.prefix_mask = input_ids.long(), attention_mask
        run = Run(model, decoding, plan, cache, pre, generator=generator, decode=decode, stop=stop,
                  return_scores=plan.return_scores, window=window, sliding=sliding)
        run.inputs = (read, read_mask)
    if prefix_ids is not None and prefix_ids.shape[1] > 1:
        with run.steps():
            for column in prefix_ids[:, 1:].unbind(1):  # the rest of the decoder prefix, token by token
                run.step(column)
        run.prefix = prefix_ids
    check_prefill(run)
    return run


def check_model(model) -> None:
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise TypeError(f"model must be a qkv model (qkv.build, qkv.load, qkv.from_hf), got {type(model).__name__}")


def new_cache(model, batch_size, capacity, *, static=False):
    """The run's cache. Sliding-window layers roll (memory bounded by their window) except in a static cache
    (``compile``), whose graph addresses every position."""
    return model.new_cache(batch_size, capacity, static=static)


@contextlib.contextmanager
def _starting_from(model, start: int | None):
    """An encoder-decoder whose config asks for another decoder-start token than the model's own (a folder's
    generation_config.json): the adapter reads ``model.config.decoder_start_token_id`` during the prefill, so it
    holds the asked one for that long and the model's own afterwards."""
    own = getattr(model.config, "decoder_start_token_id", None)
    if start is None or start == own:
        yield
        return
    model.config.decoder_start_token_id = start
    try:
        yield
    finally:
        model.config.decoder_start_token_id = own


def _check_shapes(input_ids, attention_mask) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int, torch.int16):
        raise TypeError(f"input_ids must be an integer tensor (B, T), got "
                        f"{getattr(input_ids, 'dtype', type(input_ids).__name__)}")
    if input_ids.dim() != 2 or input_ids.shape[0] < 1 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids must be (B, T) with B >= 1 and T >= 1 (a non-empty prompt), got shape "
                         f"{tuple(input_ids.shape)}")
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"attention_mask must have input_ids' shape {tuple(input_ids.shape)}, got "
                         f"{tuple(attention_mask.shape)}")


def _check_positions(model, input_ids, max_new_tokens: int, prompt: int, sliding) -> None:
    cfg = model.config
    T, limit = input_ids.shape[1], getattr(cfg, "max_positions", None)
    if limit is None or sliding is not None:  # sliding: any prompt and length, the last W tokens read
        return
    if T > limit:
        raise ValueError(f"input_ids has {T} positions, more than the model's context: max_positions={limit}")
    # A position table ends; RoPE, ALiBi, sinusoids and relative buckets extrapolate (rarely well). A family that
    # slides past the end does (``sliding``); the others are refused here, saying why.
    bound = decodable_positions(cfg)
    if bound is not None and prompt + max_new_tokens > bound:
        raise ValueError(f"max_new_tokens={max_new_tokens} with a {prompt}-token decoder prompt needs "
                         f"{prompt + max_new_tokens} positions, more than the model's {bound} learned positions "
                         f"(max_positions); expected max_new_tokens <= {bound - prompt}. A model of family "
                         f"{cfg.family!r} does not slide its context past them: {decoding_of(model).no_slide}")


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


def _check_memory(model, input_ids, plan, positions: int, decoding) -> None:
    """Refuse a run whose output buffer, caches and logits cannot fit where the prompt lives, before allocating
    them: ``max_new_tokens=10**9`` is a request for gigabytes per row, not a long wait."""
    cfg = model.config
    B, T = input_ids.shape
    rows = B * max(plan.num_beams, plan.num_return_sequences)
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
    nbytes = rows * (positions * per_position + cross + 8 * plan.max_new_tokens + 2 * 4 * cfg.vocab_size)
    check_fits(nbytes, device=input_ids.device,
               what=f"decoding max_new_tokens={plan.max_new_tokens} for {rows} row(s) (batch {B} x "
                    f"num_beams={plan.num_beams}, num_return_sequences={plan.num_return_sequences}; caches of "
                    f"{positions} positions)")
