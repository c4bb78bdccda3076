"""RWKV-4 time mixing, the "WKV" operator (Peng et al. 2023, "RWKV: Reinventing RNNs", Sec. 3.1.2 / eq. 14).

Per channel c (dropped below), with a decay rate w > 0 and a bonus u for the current token:

    wkv_t = (sum_{i<t} e^{-(t-1-i) w + k_i} v_i + e^{u + k_t} v_t) / (sum_{i<t} e^{-(t-1-i) w + k_i} + e^{u + k_t})

so each earlier token is weighted by e^{k_i}, shrunk by e^{-w} per step of distance, and the current token gets
e^{u + k_t} instead. It is a softmax over i <= t of the exponents above, taken on v.

Three forms, chosen by `mode` and tested equal:

- ``recurrent``: the RNN. The state holds the running sums A_t = sum_{i<t} e^{-(t-1-i)w + k_i} v_i and
  B_t = sum_{i<t} e^{-(t-1-i)w + k_i}, stored as (a, b, p) with A = a e^p, B = b e^p and p the running maximum
  exponent, so that e^{k} is never formed: keys of 50..100 would overflow float32 (e^89 > 3.4e38). This is the
  decode step.
- ``parallel``: the (T, T) matrix of exponents per channel, maximum-subtracted per row, then a weighted sum.
  O(T^2 C) memory: a reference, and the training form for short T. Terms below e^-60 of a row's largest are
  dropped (exact to float64 resolution; it keeps CPU exp() off its slow subnormal path).
- ``chunk``: ``parallel`` over blocks of ``chunk_size`` tokens, carrying the state between blocks; O(T C) memory.

Every form takes and returns the state, so pieces chain: running T in two pieces equals running it at once.
Inputs in float16 / bfloat16 are computed in float32 and cast back; the state is always float32 (or float64).

Loading official RWKV-4 checkpoints. RWKV-LM stores ``att.time_decay`` (call it d) and ``att.time_first``, and
computes with ``w_official = -exp(d)`` (a negative log-decay added to exponents). Here w is the positive rate,
so a loader passes ``w = exp(time_decay.float())`` and ``u = time_first.float()``. RWKV-LM's inference state
(aa, bb, pp) is exactly (a, b, p) here.

The implicit attention map: per channel c, wkv_t is a softmax over i <= t of the exponents above, taken on v, so
wkv[b, t, c] = sum_i A[b, c, t, i] v[b, i, c] with A[b, c, t, :] that softmax (rows sum to 1). ``return_weights=True``
returns A (B, C, T, T) in every mode, from the parallel formula: one (T, T) map per channel, each fading into the
past at its own rate exp(-w_c) per step (a decay-dominated map; the RWKV layer averages channels into heads).

Shapes: k, v (B, T, C); w, u (C,); state a, b, p each (B, C).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import FORMS, checks_values, compute_dtype, outputs, refuse_weights_with_state, run_form

MODES = FORMS
_NEGLIGIBLE = 60.0  # log-space cut below the row maximum (see _parallel)


@dataclass
class WKVState:
    """Running sums over the tokens seen so far: numerator a e^p, denominator b e^p; a, b, p each (B, C).

    Example:

        >>> import torch
        >>> from qkv.ops import wkv4
        >>> w, u = torch.rand(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
        >>> k, v = torch.randn(1, 5, 8, dtype=torch.float64), torch.randn(1, 5, 8, dtype=torch.float64)
        >>> _, state = wkv4(w, u, k[:, :3], v[:, :3], return_state=True)
        >>> state.a.shape, state.b.shape, state.p.shape                    # (B, C) each
        (torch.Size([1, 8]), torch.Size([1, 8]), torch.Size([1, 8]))
        >>> torch.allclose(wkv4(w, u, k[:, 3:], v[:, 3:], state=state), wkv4(w, u, k, v)[:, 3:])
        True
    """

    a: torch.Tensor
    b: torch.Tensor
    p: torch.Tensor

    @classmethod
    def zeros(cls, batch: int, channels: int, *, device=None, dtype=torch.float32) -> "WKVState":
        """The empty state: no tokens seen. p starts at the most negative finite value, so e^p is 0 and
        max(p, x) = x, without the -inf - -inf = nan that -inf gives if a key itself is -inf (a masked token)."""
        z = torch.zeros(batch, channels, device=device, dtype=dtype)
        return cls(z, z.clone(), torch.full_like(z, torch.finfo(dtype).min))


def _check(w, u, k, v, mode, chunk_size, state) -> None:
    for name, t in (("w", w), ("u", u), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if k.dim() != 3 or k.shape != v.shape:
        raise ValueError(f"k and v must both have shape (B, T, C), got {tuple(k.shape)} and {tuple(v.shape)}")
    C = k.shape[-1]
    for name, t in (("w", w), ("u", u)):
        if t.shape != (C,):
            raise ValueError(f"{name} must have shape (C,) = ({C},), one value per channel; got {tuple(t.shape)}")
    # a host read: skipped under torch.compile and inside trusted_values() (decoding steps)
    if checks_values() and not bool((w > 0).all()):
        raise ValueError(
            f"w must be a positive decay rate (per-step decay exp(-w)), got min(w) = {w.min().item()}; "
            "for an RWKV-4 checkpoint pass w = exp(time_decay)"
        )
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not supported; expected one of {MODES}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} is invalid; expected an int >= 1")
    if state is not None:
        if not isinstance(state, WKVState):
            raise TypeError(f"state must be a WKVState, got {type(state).__name__}")
        want = (k.shape[0], C)
        for name in ("a", "b", "p"):
            if tuple(getattr(state, name).shape) != want:
                got = tuple(getattr(state, name).shape)
                raise ValueError(f"state.{name} must have shape (B, C) = {want}, got {got}")


def _recurrent(w, u, k, v, state: WKVState):
    """Token by token in log space; each step is the RWKV-4 decode step. w, u (C,); k, v (B, T, C)."""
    a, b, p = state.a, state.b, state.p  # (B, C) each
    outs = []
    for t in range(k.shape[1]):
        kt, vt = k[:, t], v[:, t]  # (B, C)
        # Output: the sums so far plus the current token with its bonus, all scaled by e^-m, m the larger exponent.
        cur = u + kt
        m = torch.maximum(p, cur)
        e_old, e_cur = torch.exp(p - m), torch.exp(cur - m)
        outs.append((e_old * a + e_cur * vt) / (e_old * b + e_cur))
        # State: decay the sums one step (exponent p - w), add the current token without bonus (exponent k_t).
        old = p - w
        m = torch.maximum(old, kt)
        e_old, e_cur = torch.exp(old - m), torch.exp(kt - m)
        a, b, p = e_old * a + e_cur * vt, e_old * b + e_cur, m
    out = torch.stack(outs, 1) if outs else torch.zeros_like(v)
    return out, WKVState(a, b, p)


def _offsets(w, u, T: int):
    """O[t, i] = -(t-1-i) w for i < t, u for i = t, -inf for i > t, shape (T, T, C): the exponent of key i for
    query t is k_i + O[t, i]. Shared by the batch and, in chunk mode, by every full block."""
    t = torch.arange(T, device=w.device, dtype=w.dtype)
    dist = t[:, None] - 1 - t[None, :]  # (T, T): steps of decay from key i to query t
    O = -dist.clamp(min=0)[:, :, None] * w  # (T, T, C)
    O = torch.where((dist == -1)[:, :, None], u, O)  # i = t: the bonus instead of a decay
    # i > t: excluded, with -inf so that it can neither count nor inflate the row maximum below.
    return O.masked_fill((dist < -1)[:, :, None], float("-inf"))


def _parallel(w, u, k, v, state: WKVState, offsets=None, *, weights: bool = False):
    """All T outputs at once from the (T, T) exponent matrix per channel, plus the carried state as one extra
    term: token t sees the state decayed t times (exponent p - t w). Returns out (B, T, C) and the new state,
    and with ``weights`` the softmax weights (B, C, T, T) of the keys (valid for an empty carried state)."""
    B, T, C = k.shape
    t = torch.arange(T, device=k.device, dtype=k.dtype)
    E = k[:, None, :, :] + (_offsets(w, u, T) if offsets is None else offsets)  # (B, T, T, C): query t, key i
    s = state.p[:, None, :] - t[None, :, None] * w  # (B, T, C): exponent of the carried state for query t
    # Subtracting the row maximum is exact (it cancels between numerator and denominator) and keeps exp <= 1;
    # detached because the result does not depend on it.
    m = torch.maximum(E.amax(2), s).detach()  # (B, T, C)
    x = E - m[:, :, None, :]  # (B, T, T, C), <= 0
    # Terms below e^-60 of the row's largest are dropped to exact zeros: they are beneath float64 resolution
    # (2^-52 ~ e^-36) even summed over millions of tokens, and exp() that underflows into subnormal floats runs
    # ~10-50x slower on CPUs. This is what keeps long-decayed keys (w * distance large) from slowing the op.
    ex = torch.exp(x.masked_fill(x < -_NEGLIGIBLE, float("-inf")))  # (B, T, T, C)
    es = torch.exp(s - m)  # (B, T, C)
    num = (ex * v[:, None, :, :]).sum(2) + es * state.a[:, None, :]
    den = ex.sum(2) + es * state.b[:, None, :]
    # The state after the last token: key i decayed T-1-i times (no bonus), the old state decayed T times.
    Ef = k - (T - 1 - t)[None, :, None] * w  # (B, T, C)
    sf = state.p - T * w  # (B, C)
    p = torch.maximum(Ef.amax(1), sf).detach()  # (B, C)
    ef, esf = torch.exp(Ef - p[:, None, :]), torch.exp(sf - p)
    a = (ef * v).sum(1) + esf * state.a
    b = ef.sum(1) + esf * state.b
    if weights:
        return num / den, WKVState(a, b, p), (ex / den[:, :, None, :]).permute(0, 3, 1, 2)  # (B, C, T, T)
    return num / den, WKVState(a, b, p)


def _chunk(w, u, k, v, state: WKVState, chunk_size: int):
    """The parallel form on blocks of ``chunk_size`` tokens, the state carried between them. Costs O(T L C)
    for blocks of L tokens, so small blocks (16-32) are fastest here; L trades Python overhead for work."""
    offsets = _offsets(w, u, min(chunk_size, k.shape[1]))  # for every full block
    outs = []
    for kc, vc in zip(k.split(chunk_size, 1), v.split(chunk_size, 1)):
        out, state = _parallel(w, u, kc, vc, state, offsets if kc.shape[1] == offsets.shape[0] else None)
        outs.append(out)
    return (torch.cat(outs, 1) if outs else torch.zeros_like(v)), state


def wkv4(
    w: torch.Tensor,
    u: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mode: str = "parallel",
    chunk_size: int = 16,
    state: WKVState | None = None,
    return_state: bool = False,
    return_weights: bool = False,
):
    """RWKV-4 WKV (see the module docstring for the formula) in one of three equal forms.

    Args:
        w: (C,) decay rate per channel, > 0; a past token's weight shrinks by exp(-w) per step.
            From an official RWKV-4 checkpoint: w = exp(time_decay).
        u: (C,) bonus added to the current token's key (RWKV-4's time_first).
        k, v: (B, T, C) keys and values.
        mode: "parallel" ((T, T) per channel, O(T^2 C) memory), "recurrent" (token by token, log-space: the
            decode step) or "chunk" (parallel inside blocks of ``chunk_size``, recurrent between them).
        chunk_size: block length for mode="chunk". Work grows as T * chunk_size * C (a (L, L, C) block of
            exponentials per block), unlike the matmul-bound linear attention and retention, so the default
            is smaller than theirs (16 vs 64).
        state: a WKVState from an earlier piece of the sequence; None starts empty (WKVState.zeros).
        return_state: also return the state after the last token.
        return_weights: also return the per-channel softmax weights (B, C, T, T) of the module docstring,
            whatever the mode; needs state=None (a carried state holds earlier tokens only as sums).

    Returns:
        wkv (B, T, C) in the dtype of v; with ``return_weights`` and / or ``return_state`` a tuple
        (wkv, weights, state) of the ones asked for, in that order. The state is float32 (or float64 for
        float64 inputs).

    Example:

        >>> import torch
        >>> from qkv.ops import wkv4
        >>> w, u = torch.rand(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)   # (C,) decay, bonus
        >>> k, v = torch.randn(2, 6, 8, dtype=torch.float64), torch.randn(2, 6, 8, dtype=torch.float64)
        >>> out = wkv4(w, u, k, v, mode="parallel")                        # (B, T, C)
        >>> out.shape, torch.allclose(out, wkv4(w, u, k, v, mode="recurrent"))
        (torch.Size([2, 6, 8]), True)
    """
    _check(w, u, k, v, mode, chunk_size, state)
    refuse_weights_with_state(return_weights, state, "state")
    cdt = compute_dtype(k, v)
    ww, uu, kk, vv = (x.to(cdt) for x in (w, u, k, v))
    if state is None:
        state = WKVState.zeros(k.shape[0], k.shape[-1], device=k.device, dtype=cdt)
    else:
        state = WKVState(state.a.to(cdt), state.b.to(cdt), state.p.to(cdt))
    start = state
    out, state = run_form(mode, parallel=lambda: _parallel(ww, uu, kk, vv, start),
                          recurrent=lambda: _recurrent(ww, uu, kk, vv, start),
                          chunk=lambda C: _chunk(ww, uu, kk, vv, start, C), tokens=k.shape[1], chunk_size=chunk_size)
    weights = None
    if return_weights:
        empty = WKVState.zeros(k.shape[0], k.shape[-1], device=k.device, dtype=cdt)
        weights = _parallel(ww, uu, kk, vv, empty, weights=True)[2].to(v.dtype)
    return outputs(out.to(v.dtype), weights, state if return_state else None)
