"""The step: one token per row into the model, the next token's logits out, through the family's decode adapter
(``qkv.models.decoding``), eagerly or as one compiled graph; and ``Run``, what a decoding run holds between steps.

Glossary: B inputs, N rows decoded (B, B * K beams or B * num_return_sequences), P prefix length, V vocabulary.
A step reads nothing back to the host (``tests/models/test_decode_host_reads.py``): the loop around it decides
when to look (``sync_every``).
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch

from ..files import available_bytes
from ..nn.layers import packed_weights
from ..ops.checks import trusted_values
from .config import Resolved

SYNC_EVERY = 8  # steps between host reads ("all finished?", "all finite?") on accelerators; on CPU a read is free


class Run:
    """One model through one run: the cache (every per-row state of the model: KV, recurrent states, the encoder
    output), the adapter's per-row state (padding, positions), the output buffer and the run's settings.

    ``prefix``: (B, P) prompt or decoder-start (+ prefix) tokens, expanded with the rows; ``out``: (N, max_new)
    generated ids; ``logits``: (N, V) next-token logits after prefill / each step; ``plan``: the resolved config;
    ``generator`` / ``decode`` / ``stop``: the caller's sampling generator, text decoder and stop callback;
    ``window``: a run past the learned positions, the last W tokens of every row (``sliding.py``), and ``sliding``,
    what it says about it (a ``SlidingContext``), both None otherwise."""

    def __init__(self, model, decoding, plan: Resolved, cache, prefilled, *, generator=None, decode=None,
                 stop=None, return_scores: bool = False, window=None, sliding=None):
        self.model, self.decoding, self.plan, self.cache = model, decoding, plan, cache
        self.prefix, self.prefix_mask = prefilled.prefix, prefilled.prefix_mask
        self.logits, self.state = prefilled.logits, prefilled.state
        self.generator, self.decode, self.stop = generator, decode, stop
        B, device = self.prefix.shape[0], self.prefix.device
        self.out = torch.full((B, plan.max_new_tokens), plan.pad, dtype=torch.long, device=device)
        self.finished_at = None  # (N,) step at which each row finished, when rows can finish
        self.compile = plan.compile
        self.sync_every = 1 if device.type == "cpu" else SYNC_EVERY
        self._pinned = False  # CUDA graphs: the cache's buffers marked as static addresses (first compiled step)
        # return_scores: (N, max_new) log-probability of each chosen token (greedy, sampling)
        self.logprobs = torch.zeros(B, plan.max_new_tokens, device=device) if return_scores else None
        self.beam_scores = None  # beam search with return_scores: ((N,) final scores, (N, L) token log-probs)
        self.inputs = None  # (input_ids, attention_mask): what a refusal re-runs to name a non-finite tensor
        self.window, self.sliding = window, sliding

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
        if self.window is not None:
            self.window.index(index)

    def reorder(self, index: torch.Tensor) -> None:
        """Beam search: row i continues row ``index[i]`` of the same input. Encoder state, masks and positions
        are equal across the beams of one input, so only the decoder's own caches move (eagerly, also when
        compiled: only the filled positions, where a graph would copy whole buffers)."""
        if self.window is not None:
            self.window.index(index)
            if self.window.sliding:  # the cache is read no more: nothing else to move
                return
        self.state = self.decoding.reorder(self.cache, self.state, index)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row, (N,); return the next logits (N, V). The caller holds ``trusted_values()``
        around its loop: the model's own tokens, at positions the prefill checked, need no host reads."""
        if self.window is not None:
            self.window.push(tokens)
            if self.window.sliding:  # past the learned positions: the last W tokens, recomputed (sliding.py)
                self.logits = self.window.logits(self.model, self.decoding)
                return self.logits
        tokens = tokens[:, None]  # (N, 1)
        step = self.decoding.step
        if self.compile:
            if not self._pinned and tokens.device.type == "cuda":  # CUDA graphs replay fixed addresses
                for t in self.cache.tensors():
                    torch._dynamo.mark_static_address(t)
                self._pinned = True
            step = compiled_step(self.decoding, tokens.device.type)
            fed = self.cache.length
            logits = step(self.model, tokens, self.cache, self.state)
            if self.cache.length == fed:  # a compiled step counts nothing on the host: count its token here
                self.cache.advance(1)
        else:
            logits = step(self.model, tokens, self.cache, self.state)
        self.state = self.decoding.advance(self.state)
        self.logits = logits[:, -1]
        return self.logits

    def trimmed_length(self, steps: int) -> int:
        """Columns of ``out`` worth returning: up to the step where the last row finished."""
        if self.finished_at is None or steps == 0:
            return steps
        return min(steps, int(self.finished_at.max()) + 1)

    def steps(self):
        """The context every decoding loop runs its steps in: no autograd, no per-step value checks."""
        return _Steps()


class _Steps(contextlib.ExitStack):
    def __enter__(self):
        super().__enter__()
        self.enter_context(torch.inference_mode())
        self.enter_context(trusted_values())
        return self


def packed_for_decoding(model, compile: bool = False):
    """Decode from packed copies of the large float32 and bfloat16 CPU weights (``qkv.nn.packed_weights``: up to
    about twice the speed of a step on CPU) where the copies take at most half the memory available. Compiled steps
    choose their own kernels: nothing to pack for them. ``generate`` and ``stream`` enter it for their call; a loop
    of calls (a file's batches) enters it once around them all, and the calls inside pack nothing again."""
    return contextlib.nullcontext() if compile else packed_weights(model, max_bytes=available_bytes() // 2)


_COMPILED: dict[tuple, Callable] = {}


def compiled_step(decoding, device_type: str) -> Callable:
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
