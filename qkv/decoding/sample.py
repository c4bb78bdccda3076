"""Greedy decoding and sampling: each step's logits -> scores (repetition penalty, the logits controls of
``controls.py``, temperature, top-k / top-p / min-p / typical filters) -> the next token of every row.

Glossary: N rows, V vocabulary, L tokens generated so far.

Host reads: the loop reads one boolean per step (have all rows finished?) only when something can finish (an EOS
id, stop strings or a stop callback), every ``run.sync_every`` steps; and the non-finite accumulator every
``CHECK_EVERY`` steps and at the end (``finite.py``). Stop strings and the stop callback need the tokens on the
host every step by nature. Plain greedy decoding (no control, no penalty, no scores asked) takes the best token
and its logit in one op, the logit feeding the non-finite check.
"""
from __future__ import annotations

from typing import Iterator

import torch

from .controls import top_k_top_p
from .finite import CHECK_EVERY, FiniteWatch
from .step import Run


def seen_tokens(run: Run) -> torch.Tensor:
    """(N, V) bool: which tokens the sequence holds so far (prompt or start token, padding excluded)."""
    N, V = run.logits.shape
    ids = run.prefix
    weight = torch.ones_like(ids) if run.prefix_mask is None else run.prefix_mask.to(ids.dtype)
    return torch.zeros(N, V, dtype=torch.long, device=ids.device).scatter_add_(1, ids, weight) > 0


def penalise(logits, seen, penalty):
    # CTRL (Keskar et al. 2019, eq. in sec. 4.1): make seen tokens less likely whatever the logit's sign.
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def next_scores(logits, plan, seen):
    """(N, V) logits -> float32 (at least) scores, the repetition penalty applied where ``seen``."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if seen is not None:
        logits = penalise(logits, seen, plan.repetition_penalty)
    return logits


def control(scores, sequences, run: Run, step: int):
    """The logits controls at generated step ``step`` (the sequence so far: prefix + ``step`` tokens)."""
    prompt, plan = run.prefix.shape[1], run.plan
    return plan.controls.apply(scores, sequences, length=prompt + step, prompt_length=prompt,
                               max_length=prompt + plan.max_new_tokens, eos=plan.eos)


def warp(scores, plan):
    """Sampling's filters on (N, V) scores: temperature, then top-k / top-p, then min-p / typical-p."""
    return plan.controls.warp(top_k_top_p(scores / plan.temperature, plan.top_k, plan.top_p))


def sample_loop(run: Run) -> Iterator[torch.Tensor]:
    """Yield the (N,) new tokens of every step, written into ``run.out`` as they come. Runs inside
    ``run.steps()``; raises ValueError (``finite.refuse``) when the model's logits go non-finite."""
    plan = run.plan
    run.expand(plan.num_return_sequences if plan.do_sample else 1)
    N, device = run.out.shape[0], run.out.device
    eos = None if plan.eos is None else plan.eos.to(device)
    can_finish = eos is not None or bool(plan.stop_strings) or run.stop is not None
    unfinished = torch.ones(N, dtype=torch.bool, device=device)
    if can_finish:
        run.finished_at = torch.full((N,), plan.max_new_tokens, dtype=torch.long, device=device)
    seen = seen_tokens(run) if plan.repetition_penalty != 1.0 else None
    plain = not (plan.do_sample or seen is not None or plan.controls.active or run.logprobs is not None)
    watch = FiniteWatch(N, device)
    logits, step = run.logits, 0
    for step in range(plan.max_new_tokens):
        if plain:
            best, tokens = logits.max(-1)  # (N,), (N,): the first best token, as argmax
            watch.add(best)
        else:
            watch.add(logits.amax(-1))
            tokens, scores = _choose(run, logits, seen, step, watch)
        if can_finish:
            tokens = tokens.masked_fill(~unfinished, plan.pad)
        run.out[:, step] = tokens
        if run.logprobs is not None:
            chosen = scores.log_softmax(-1).gather(1, tokens[:, None]).squeeze(1)
            run.logprobs[:, step] = chosen.masked_fill(~unfinished, 0.0) if can_finish else chosen
        if seen is not None:
            seen.scatter_(1, tokens[:, None], True)
        if can_finish:
            ended = torch.zeros_like(unfinished) if eos is None else torch.isin(tokens, eos)
            ended |= stopped(run, step, unfinished)
            run.finished_at.masked_fill_(unfinished & ended, step)
            unfinished &= ~ended
        yield tokens
        if step + 1 == plan.max_new_tokens:
            break
        if can_finish and (step + 1) % run.sync_every == 0 and not bool(unfinished.any()):
            break  # the one host sync per step
        watch.check(run, step, due=(step + 1) % CHECK_EVERY == 0)
        logits = run.step(tokens)
    watch.check(run, step)


def _choose(run: Run, logits, seen, step: int, watch: FiniteWatch):
    """(N,) next tokens and the (N, V) scores they were chosen from (penalty, controls, filters applied)."""
    plan = run.plan
    scores = next_scores(logits, plan, seen)
    if plan.controls.active:
        so_far = torch.cat([run.prefix, run.out[:, :step]], 1) if plan.controls.needs_sequences else None
        scores = control(scores, so_far, run, step)
    if not plan.do_sample:
        return scores.argmax(-1), scores
    scores = warp(scores, plan)
    try:
        tokens = torch.multinomial(scores.softmax(-1), 1, generator=run.generator).squeeze(1)
    except RuntimeError:  # a distribution of NaNs: name the model's fault if it is one
        watch.check(run, step)
        raise
    return tokens, scores


def stopped(run: Run, step: int, unfinished: torch.Tensor) -> torch.Tensor:
    """(N,) bool: rows a stop string or the stop callback ends after this step."""
    N, device = run.out.shape[0], run.out.device
    hit = torch.zeros(N, dtype=torch.bool, device=device)
    if run.stop is not None:
        so_far = torch.cat([run.prefix, run.out[:, : step + 1]], dim=1)
        hit |= torch.as_tensor(run.stop(so_far), dtype=torch.bool, device=device).reshape(N)
    if run.plan.stop_strings:
        # Decoding text is host work: only the rows still running are looked at.
        for row in unfinished.nonzero().flatten().tolist():
            text = run.decode(run.out[row, : step + 1].tolist())
            hit[row] = any(s in text for s in run.plan.stop_strings)
    return hit
