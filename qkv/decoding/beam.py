"""Beam search over any family's decode adapter: K hypotheses per input, the best K kept by summed
log-probability each step, finished ones scored ``sum log p / L ** length_penalty``; the rules of transformers'
beam search, so both return the same tokens.

Glossary: B inputs, K beams, M = max_new_tokens, V vocabulary.

The selection itself (``beam_select``) works on shapes that never change, so with ``compile=True`` it is compiled
like the model step; reordering the caches of the surviving beams stays eager (only the filled positions move).
``beam_search_trace`` (``trace.py``) records every step through the same selection.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .finite import CHECK_EVERY, FiniteWatch
from .sample import control, next_scores, seen_tokens
from .step import Run


def beam_search(run: Run, trace: "TraceLog | None" = None) -> torch.Tensor:
    """Batched beam search with K = num_beams hypotheses per input; returns (B * n, P + L) sequences, the n =
    num_return_sequences best of each input, best first.

    Each step scores all K * V one-token continuations of an input by summed log-probability and keeps the best
    2K candidates: those ending in EOS (among the best K) become finished hypotheses, scored
    ``sum log p / L ** length_penalty`` (L generated tokens, EOS included; Wu et al. 2016 use a smoothed
    form), and the best K that did not end continue. At ``max_new_tokens`` the best K running beams are
    finished as they are. An input stops once it holds K finished hypotheses and no running beam can beat the
    worst of them (``early_stopping``: False), or at once with K finished (True). One difference from
    transformers: a repetition penalty acts on the logits here (before the log-softmax), on the log-probabilities
    there. ``trace`` receives every step's ``BeamCandidates`` and the final scores (``beam_search_trace``)."""
    plan = run.plan
    K, M = plan.num_beams, plan.max_new_tokens
    B = run.prefix.shape[0]
    run.expand(K)
    device = run.out.device
    eos = None if plan.eos is None else plan.eos.to(device)
    state = _start(B, K, M, plan.pad, device)
    select = compiled_select(device.type) if run.compile and trace is None else beam_select
    fixed = dict(length_penalty=plan.length_penalty, early_stopping=plan.early_stopping,
                 in_top_k=torch.arange(2 * K, device=device) < K,  # (2K,): candidates that may finish
                 offsets=torch.arange(B, device=device)[:, None] * K,  # (B, 1): first row of each input
                 trace=trace is not None)  # eager when traced: the trace is host data
    step_t = torch.zeros(1, dtype=torch.long, device=device)  # the step as a tensor: one graph for all steps
    seen = seen_tokens(run) if plan.repetition_penalty != 1.0 else None
    watch = FiniteWatch(B * K, device)
    logits, step = run.logits, 0
    for step in range(M):
        watch.add(logits.amax(-1))
        # transformers' order: log-probabilities first, then the controls (not renormalised unless asked)
        scores = next_scores(logits, plan, seen).log_softmax(-1)
        if plan.controls.active:
            so_far = None
            if plan.controls.needs_sequences:
                so_far = torch.cat([run.prefix, state.tokens.view(B * K, M)[:, :step]], 1)
            scores = control(scores, so_far, run, step)
        last = step + 1 == M  # the last step finishes the running beams: a different rule, run once, not compiled
        state, parent, tokens, candidates = (beam_select if last else select)(scores, state, step_t, eos, last=last,
                                                                              **fixed)
        if trace is not None:
            trace.steps.append(candidates)
        if last:
            break
        step_t += 1
        if step % run.sync_every == run.sync_every - 1 and bool(state.done.all()):
            break
        watch.check(run, step, due=(step + 1) % CHECK_EVERY == 0)
        run.reorder(parent)  # (the watch's rows need not follow: any non-finite value anywhere stops the run)
        if seen is not None:
            seen = seen[parent]
            seen.scatter_(1, tokens[:, None], True)
        logits = run.step(tokens)
    watch.check(run, step)
    return _finish(run, state, trace)


def _start(B: int, K: int, M: int, pad: int, device) -> "BeamState":
    """Every beam starts as the same prompt: only beam 0 may propose tokens at the first step, or the K beams
    would pick the same continuations K times."""
    neg_inf = float("-inf")
    running = torch.zeros(B, K, device=device)
    running[:, 1:] = neg_inf
    return BeamState(running=running, tokens=torch.full((B, K, M), pad, dtype=torch.long, device=device),
                     best=torch.full((B, K), neg_inf, device=device),  # finished scores, -inf = empty slot
                     best_tokens=torch.full((B, K, M), pad, dtype=torch.long, device=device),
                     best_len=torch.zeros(B, K, dtype=torch.long, device=device),
                     done=torch.zeros(B, dtype=torch.bool, device=device),
                     logps=torch.zeros(B, K, M, device=device), best_logps=torch.zeros(B, K, M, device=device))


def _finish(run: Run, state: "BeamState", trace) -> torch.Tensor:
    """The n best finished hypotheses of each input after its prefix, (B * n, P + L); with return_scores, their
    scores and token log-probabilities go to ``run.beam_scores``."""
    B, K, _ = state.tokens.shape
    n = run.plan.num_return_sequences
    if trace is not None:
        trace.best, trace.lengths = state.best[:, :n], state.best_len[:, :n]
    length = int(state.best_len[:, :n].max())
    tokens = state.best_tokens[:, :n, :length].reshape(B * n, length)
    if run.logprobs is not None:  # return_scores: the final scores and each chosen token's log-probability
        ended = torch.arange(length, device=tokens.device) >= state.best_len[:, :n, None]  # (B, n, length) padding
        run.beam_scores = (state.best[:, :n].reshape(B * n),
                           state.best_logps[:, :n, :length].masked_fill(ended, 0.0).reshape(B * n, length))
    prefix = run.prefix.view(B, K, -1)[:, :n].reshape(B * n, -1)
    return torch.cat([prefix, tokens], dim=1)


@dataclass
class BeamState:
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


torch.utils._pytree.register_dataclass(BeamState)  # a pytree, so torch.compile takes and returns it whole


@dataclass
class TraceLog:
    """What ``beam_search`` records when traced: each step's candidates, the finished scores and lengths (B, n)."""
    steps: list = field(default_factory=list)
    best: torch.Tensor | None = None
    lengths: torch.Tensor | None = None


@dataclass
class BeamCandidates:
    """What one step of ``beam_select`` looked at, for ``beam_search_trace``: the 2K best continuations per
    input, best first: summed log-probabilities (B, 2K), the running beam each extends (B, 2K), its token (B, 2K),
    whether it ended (B, 2K) and entered the finished hypotheses (B, 2K); and the candidates kept running (B, K)."""
    score: torch.Tensor
    beam: torch.Tensor
    token: torch.Tensor
    ended: torch.Tensor
    finished: torch.Tensor
    survivors: torch.Tensor | None


def beam_select(scores, state: BeamState, step, eos, *, length_penalty: float, early_stopping, last: bool,
                in_top_k, offsets, trace: bool = False):
    """One step of beam search (rules in ``beam_search``): (B * K, V) next-token log-probabilities of the running
    beams (after the logits controls) -> (new state, (B * K,) parent row of each new beam, (B * K,) their new
    tokens, ``BeamCandidates`` when ``trace`` else None). ``step`` is a (1,) tensor; ``in_top_k`` (2K,) marks the
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
        candidates = BeamCandidates(cand_score, beam, token, ended, entered & new, None)
    if last:
        return BeamState(state.running, state.tokens, best, best_tokens, best_len, state.done, state.logps,
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
    return BeamState(running, tokens, best, best_tokens, best_len, done, logps, best_logps), parent, new_tokens, \
        candidates


_COMPILED_SELECT: dict[str, Callable] = {}


def compiled_select(device_type: str) -> Callable:
    """The compiled ``beam_select`` (one graph per batch, beams and length): some 35 small ops fused into a few
    kernels, which is most of a beam step on a small model."""
    if device_type not in _COMPILED_SELECT:
        _COMPILED_SELECT[device_type] = torch.compile(beam_select, dynamic=False, fullgraph=True)
    return _COMPILED_SELECT[device_type]

