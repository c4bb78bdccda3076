"""Beam search step by step, for a diagram: every step's candidates, their scores and fates, made by the very
selection code ``generate`` runs (``beam.beam_select``), so the final hypotheses are ``generate``'s."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .beam import TraceLog, beam_search
from .config import GenerationConfig
from .prefill import prefill
from .sample import sample_loop
from .step import packed_for_decoding


@dataclass
class BeamStep:
    """One step of beam search for one input: the 2K best one-token continuations of the K running beams, best
    first (``beam_select`` ranks them so; the first K that end and every one that runs on are chosen from them).

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


def beam_search_trace(model, input_ids: torch.Tensor, config: GenerationConfig | None = None,
                      **overrides) -> BeamTrace:
    """Beam search on one input ``input_ids`` (1, T), recording each step's candidates. ``config`` and
    ``overrides`` as ``generate``'s (default 4 beams; every hypothesis is returned: num_return_sequences =
    num_beams). Returns a ``BeamTrace``."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be one input, shape (1, T), got "
                         f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__}")
    beams = overrides.get("num_beams", 4 if config is None else config.num_beams)
    if not isinstance(beams, int) or isinstance(beams, bool) or beams < 2:
        raise ValueError(f"num_beams must be an int >= 2 for a beam trace, got {beams!r}")
    config = (config or GenerationConfig()).replace(**{**overrides, "num_beams": beams, "num_return_sequences": beams,
                                                       "compile": False})
    log = TraceLog()
    with torch.inference_mode(), packed_for_decoding(model):
        run = prefill(model, input_ids, config)
        run.sync_every = 1  # stop at the very step the input is done, on any device: the trace ends there
        with run.steps():
            sequences = beam_search(run, trace=log)
        greedy_run = prefill(model, input_ids, config.replace(num_beams=1, num_return_sequences=1))
        with greedy_run.steps():
            steps_run = sum(1 for _ in sample_loop(greedy_run))
        greedy = greedy_run.out[0, :greedy_run.trimmed_length(steps_run)].tolist()
    eos = set(run.plan.eos_ids)
    ends = [i for i, t in enumerate(greedy) if t in eos]  # up to the first EOS; the rest is padding
    greedy = greedy[: ends[0] + 1] if ends else greedy
    return BeamTrace(sequences, log.best[0].tolist(), log.lengths[0].tolist(), _steps(log, greedy), greedy,
                     run.prefix.shape[1])


def _steps(log: TraceLog, greedy: list[int]) -> list[BeamStep]:
    """The first input's candidates of every step, with their parents, fates and greedy's place among them."""
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
    return steps
