"""The rules a decoding setting's value must follow, one small function per kind of value. Each returns the value
in its normal form (ints stay ints, numbers become floats, lists become tuples) or raises ``Bad`` with what was
expected; ``GenerationConfig`` turns that into one line naming the file (if any), the field and the value.

Booleans are refused where a number belongs (``True`` is an int to Python, not to a reader of the file), and
non-finite numbers (NaN, ``Infinity``, ``1e400`` read from JSON) wherever a number belongs.
"""
from __future__ import annotations

import math


class Bad(Exception):
    """A value that breaks its rule; the argument says what was expected ("an int >= 1")."""


def is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def int_at_least(low: int, *, optional: bool = False):
    expected = f"{'None or ' if optional else ''}an int >= {low}"

    def rule(x):
        if x is None and optional:
            return None
        if not is_int(x) or x < low:
            raise Bad(expected)
        return x
    return rule


def number(*, low=None, high=None, low_open=False, high_open=False, optional=False, expected=None):
    """A finite number in the interval given (ends open or closed), as a float."""
    if expected is None:
        left, right = ("(" if low_open else "["), (")" if high_open else "]")
        span = f"in {left}{low}, {high}{right}" if low is not None and high is not None else \
            f"{'>' if low_open else '>='} {low}" if low is not None else "finite"
        expected = f"{'None or ' if optional else ''}a number {span}".replace("a number finite", "a finite number")

    def rule(x):
        if x is None and optional:
            return None
        if not is_number(x):
            raise Bad(expected)
        if low is not None and (x < low or (low_open and x == low)):
            raise Bad(expected)
        if high is not None and (x > high or (high_open and x == high)):
            raise Bad(expected)
        return float(x)
    return rule


def boolean(x):
    if not isinstance(x, bool):
        raise Bad("true or false")
    return x


def token_id(x, *, optional: bool = False):
    if x is None and optional:
        return None
    if not is_int(x) or x < 0:
        raise Bad(f"{'None or ' if optional else ''}a token id (an int >= 0)")
    return x


def token_ids(x):
    """One id or a list of them (an empty list: none); None: the model's."""
    if x is None or is_int(x) and x >= 0:
        return x
    if isinstance(x, (list, tuple)) and all(is_int(t) and t >= 0 for t in x):
        return tuple(x)
    raise Bad("None, a token id (an int >= 0) or a list of them")


def token_sequences(x):
    if x is None:
        return None
    if isinstance(x, (list, tuple)) and all(isinstance(w, (list, tuple)) and w and
                                            all(is_int(t) and t >= 0 for t in w) for w in x):
        return tuple(tuple(w) for w in x)
    raise Bad("a list of non-empty lists of token ids (ints >= 0), or None")


def strings(x):
    if x is None:
        return None
    if isinstance(x, str):
        x = (x,)
    if isinstance(x, (list, tuple)) and all(isinstance(s, str) and s for s in x):
        return tuple(x)
    raise Bad("None, a non-empty string or a list of them")


def early_stopping(x):
    if x is True or x is False or x == "never":
        return x
    raise Bad("True, False or 'never'")
