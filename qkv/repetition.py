"""A decode that ran to its length limit repeating itself: what repeats, and how often.

A model that never emits its end token keeps going until ``max_new_tokens``; a small model often does so by
looping ("veintiuna veintiuna veintiuna ..."), each token likely given the ones before it, so the score stays
high and nothing else says the answer is broken. This leaf module finds such a loop in the generated ids, so
the command line and the explorer can say so in one line. Pure: ids in, a small record out; no model, no text.

    found = repetition([5, 9, 9, 9, 9, 9, 9], hit_limit=True)   # Repetition(unit=(9,), count=6, start=1, covered=6)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

MIN_REPEATS = 3  # a unit seen fewer times at the end of an output is not called a loop
MIN_SHARE = 0.5  # ... nor one that fills less than this share of the output
MAX_PERIOD = 64  # the longest repeating unit looked for, in tokens (keeps the search linear in the output)


@dataclass(frozen=True)
class Repetition:
    """The loop an output ends in.

    unit:  the ids that repeat, as first seen in the run (ids[start : start + len(unit)]).
    count: how many whole times the unit repeats at the end of the output (a partial unit after them is
           counted in ``covered`` only).
    start: where the run of repeats begins in the ids.
    covered: how many ids, from ``start`` to the end, the run spans.
    """
    unit: tuple[int, ...]
    count: int
    start: int
    covered: int


def _run_length(ids: Sequence[int], period: int) -> int:
    """How many ids at the end of ``ids`` follow period ``period`` (ids[i] == ids[i + period]), the first unit
    included; 0 when fewer than one unit's worth of ids exist."""
    n = len(ids)
    if period > n:
        return 0
    i = n - period - 1
    while i >= 0 and ids[i] == ids[i + period]:
        i -= 1
    return n - (i + 1)


def repetition(ids: Sequence[int], *, hit_limit: bool, min_repeats: int = MIN_REPEATS,
               min_share: float = MIN_SHARE, max_period: int = MAX_PERIOD) -> Repetition | None:
    """The loop at the end of a decode's generated ``ids`` (the end token and what follows removed), or None.

    hit_limit: the decode stopped at its length limit, not at an end token; an output that ended by itself is
    never called a loop (a list like "uno, uno, uno" can be the right answer). A loop is a unit of at most
    ``max_period`` ids repeated at least ``min_repeats`` whole times at the end, spanning at least ``min_share``
    of the output. Of the units that qualify, the one whose run reaches furthest back wins, the shortest on a
    tie (so "a a a a" is (a,) x 4, not (a, a) x 2)."""
    if not isinstance(min_repeats, int) or min_repeats < 2:
        raise ValueError(f"min_repeats={min_repeats!r}: expected an int >= 2")
    if not 0.0 <= min_share <= 1.0:
        raise ValueError(f"min_share={min_share!r}: expected a share in [0, 1]")
    if not isinstance(max_period, int) or max_period < 1:
        raise ValueError(f"max_period={max_period!r}: expected an int >= 1")
    ids = list(ids)
    n = len(ids)
    if not hit_limit or n < min_repeats:
        return None
    best: tuple[int, int] | None = None  # (run length, period)
    for period in range(1, min(max_period, n // min_repeats) + 1):
        run = _run_length(ids, period)
        if run // period >= min_repeats and (best is None or run > best[0]):
            best = (run, period)
    if best is None or best[0] < min_share * n:
        return None
    run, period = best
    start = n - run
    return Repetition(unit=tuple(ids[start:start + period]), count=run // period, start=start, covered=run)


def describe(found: Repetition, text: str, *, limit: int | None = None, width: int = 40) -> str:
    """What a loop did, for a person, as a predicate its caller gives a subject to ("the output " + it): ``text``
    is the unit decoded (the caller's tokenizer), cut to ``width`` characters; limit, when known, is the length
    limit the decode ran to. One line."""
    shown = text if len(text) <= width else text[: width - 1] + "…"
    until = f"the length limit ({limit} tokens)" if limit is not None else "the length limit"
    return f"ran to {until} repeating {shown!r} {found.count} times: the model never ended it, whatever its score says"
