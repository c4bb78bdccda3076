"""Input checks shared by the linear-time ops (one message per mistake, naming the argument and the value), the
switch for checks that read tensor values, and the plumbing every entry point shares: the three forms and the one
dispatch over them, the carried state in, the results out."""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, TypeVar

import torch

R = TypeVar("R")
# The forms every linear-time op computes, equal to each other: "parallel" (the definition, quadratic in T),
# "recurrent" (token by token: the decode step) and "chunk" (parallel inside blocks, recurrent between them).
FORMS = ("parallel", "recurrent", "chunk")

_TRUSTED = contextvars.ContextVar("qkv_trusted_values", default=False)


def checks_values() -> bool:
    """Whether checks that read tensor values on the host (token ids in range, positions within the table) run.
    Such a read waits for the device and splits a compiled graph, so it is skipped under ``torch.compile`` and
    inside ``trusted_values()``."""
    return not (torch.compiler.is_compiling() or _TRUSTED.get())  # is_compiling first: dynamo never sees the var


@contextlib.contextmanager
def trusted_values():
    """Skip value checks inside: for a caller that made the inputs itself, such as a decoding loop feeding back the
    model's own tokens at positions it checked before the run (``qkv.generate``)."""
    token = _TRUSTED.set(True)
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def check_qkv_mode(q, k, v, mode, modes, chunk_size) -> None:
    """q, k (B, H, T, D) of one shape, v (B, H, T, Dv); ``mode`` one of ``modes``; ``chunk_size`` an int >= 1."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, T, D), got shape {tuple(t.shape)}")
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape (B, H, T, D), got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must have shape (B, H, T, Dv) = {tuple(q.shape[:3])} + (Dv,), got {tuple(v.shape)}")
    if mode not in modes:
        raise ValueError(f"mode={mode!r} is not supported; expected one of {modes}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} is invalid; expected an int >= 1")


# -- the plumbing every linear-time entry point shares (gla, generalized_delta_rule, retention, linear_attention,
# -- wkv4): one refusal, one compute dtype, one way of starting from a state, one shape of result
def run_form(mode: str, *, recurrent: Callable[[], R], chunk: Callable[[int], R], tokens: int, chunk_size: int,
             parallel: Callable[[], R] | None = None) -> R:
    """The one dispatch of the linear-time ops over their forms (``mode`` already checked against ``FORMS``):
    ``recurrent()``, ``chunk(C)`` with blocks of C = ``chunk_size`` tokens, or ``parallel()``; an op without a
    parallel form of its own computes it as one block of all ``tokens`` (the chunk form with C = T is the
    definition: one block, no state carried between blocks)."""
    if mode == "recurrent":
        return recurrent()
    if mode == "parallel":
        return parallel() if parallel is not None else chunk(max(tokens, 1))
    return chunk(chunk_size)


def check_matrix_state(initial_state, state_type, q: torch.Tensor, v: torch.Tensor) -> None:
    """``initial_state``: None, a ``state_type`` record (its field S) or the tensor S itself, of shape
    (B, H, D, Dv) for q (B, H, T, D) and v (B, H, T, Dv)."""
    if initial_state is None:
        return
    S0 = initial_state.S if isinstance(initial_state, state_type) else initial_state
    want = (q.shape[0], q.shape[1], q.shape[-1], v.shape[-1])
    if not isinstance(S0, torch.Tensor) or tuple(S0.shape) != want:
        got = tuple(S0.shape) if isinstance(S0, torch.Tensor) else type(S0).__name__
        raise ValueError(f"initial_state must be a {state_type.__name__} or a tensor of shape (B, H, D, Dv) = "
                         f"{want}, got {got}")


def refuse_weights_with_state(return_weights: bool, state, name: str = "initial_state") -> None:
    if return_weights and state is not None:
        raise ValueError(f"return_weights=True needs {name}=None: the weights cover the tokens of this call, and a "
                         f"carried state holds earlier tokens only as a sum")


def compute_dtype(a: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    """float32, or wider when the inputs are: running sums over T lose too much in half precision."""
    return torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)


def start_state(initial_state, state_type, q: torch.Tensor, v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The matrix state S0 (B, H, D, Dv) in ``dtype``: zeros, or ``initial_state`` (a ``state_type`` record with
    field S, or the tensor itself)."""
    if initial_state is None:
        B, H, _, D = q.shape
        return q.new_zeros(B, H, D, v.shape[-1], dtype=dtype)
    return (initial_state.S if isinstance(initial_state, state_type) else initial_state).to(dtype)


def outputs(out: torch.Tensor, weights: torch.Tensor | None = None, state=None):
    """``out`` alone, or the tuple (out, weights, state) of those asked for (None: not asked), in that order."""
    result = (out,) + tuple(x for x in (weights, state) if x is not None)
    return result if len(result) > 1 else out
