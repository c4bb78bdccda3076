"""A generated translation task whose word alignment is known, so a model's attention can be scored against it.

Sources are strings of letters (one token each under a character tokenizer); the target applies a rule whose
alignment is fixed: target position i reads source position ``align[i]``.

    swap      each adjacent pair swapped: "abcde" -> "badce"   (near-monotonic: Luong's local-m can follow it)
    reverse   the whole string reversed: "abcde" -> "edcba"    (Sutskever et al. 2014 reversed their sources)
    copy      the string itself

Bahdanau et al. 2015 (fig. 3) show alignments by eye; here the argmax of each output token's attention either
lands on its source position or it does not, and the share that does is a number (``alignment_accuracy``).
"""
from __future__ import annotations

import itertools
import random

RULES = ("swap", "reverse", "copy")
LENGTHS = ("uniform", "harmonic")
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def alignment(n: int, rule: str) -> list[int]:
    """The source position (from 0) each of the n target positions reads, under ``rule``."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if rule == "swap":
        return [i ^ 1 if (i ^ 1) < n else i for i in range(n)]
    if rule == "reverse":
        return list(range(n - 1, -1, -1))
    return list(range(n))


def apply_rule(source: str, rule: str) -> str:
    """The target of ``source`` (one letter per position) under ``rule``."""
    return "".join(source[j] for j in alignment(len(source), rule))


def make_pairs(n: int, *, rule: str = "swap", min_len: int = 1, max_len: int = 60, letters: str = LETTERS,
               lengths: str = "uniform", seed: int = 0) -> list[tuple[str, str]]:
    """n (source, target) pairs, letters drawn uniformly. Source lengths: ``uniform`` in [min_len, max_len] (every
    length as many pairs), or ``harmonic``, P(length k) proportional to 1/k (every length as many letters: among
    lengths 1-64 drawn uniformly, sources of 1-8 letters hold under 2% of the letters a model learns from, and a
    model that can hold only short sources, the fixed-vector RNN, never starts to learn them)."""
    if not (isinstance(min_len, int) and isinstance(max_len, int) and 1 <= min_len <= max_len):
        raise ValueError(f"need ints 1 <= min_len <= max_len, got min_len={min_len!r}, max_len={max_len!r}")
    if lengths not in LENGTHS:
        raise ValueError(f"lengths must be one of {LENGTHS}, got {lengths!r}")
    rng = random.Random(seed)
    sizes = range(min_len, max_len + 1)
    cumulative = list(itertools.accumulate(1 / k for k in sizes)) if lengths == "harmonic" else None  # once
    pairs = []
    for _ in range(n):
        size = rng.randint(min_len, max_len) if cumulative is None else rng.choices(sizes, cum_weights=cumulative)[0]
        source = "".join(rng.choice(letters) for _ in range(size))
        pairs.append((source, apply_rule(source, rule)))
    return pairs


def alignment_accuracy(weights, source_lengths: list[int], rule: str) -> float:
    """The share of target words whose attention's argmax is the source position the rule aligns them with.

    weights: one (T_i, S_i) map per pair (rows: the target words in order, an EOS row after them may follow;
    columns: source positions, the source's EOS after its words); source_lengths: each pair's word count n_i.
    Only the n_i word rows are scored."""
    hits = total = 0
    for w, n in zip(weights, source_lengths):
        best = w[:n].argmax(-1).tolist()
        hits += sum(b == a for b, a in zip(best, alignment(n, rule)))
        total += n
    return hits / max(total, 1)
