"""Retention, the mixer of RetNet (Sun et al. 2023, "Retentive Network", Sec. 2.1-2.2).

Each head h has a fixed decay gamma_h in (0, 1); a token reads every earlier token with a weight that shrinks
geometrically with distance:

    out_t = scale * sum_{s<=t} gamma_h^(t-s) (q_t . k_s) v_s        (scale defaults to D^-0.5)

Three forms of the same function, chosen by `mode` and tested equal:

- ``parallel`` (Sec. 2.1, eq. 5): ((Q K^T) * Dmask) V with Dmask[t, s] = gamma^(t-s) for s <= t, else 0.
- ``recurrent`` (eq. 6): S_t = gamma S_{t-1} + k_t^T v_t, out_t = scale * q_t S_t; the decode step.
- ``chunk`` (Sec. 2.2, eq. 7): blocks of C tokens; the parallel form inside a block plus the state carried in
  from earlier blocks, decayed by gamma^(i+1) for the i-th token of the block.

Numerics: every decay factor is gamma^n with n >= 0, computed as exp(n * log gamma) in float32 or higher.
Nothing is ever divided by a power of gamma, so no exponent overflows however long T is (gamma^-T, which some
chunk formulations use, overflows float32 at T ~ 3000 for gamma = 1 - 2^-5).

The implicit attention map: retention is attention with weights A = scale * (Q K^T) * Dmask (eq. 5), no softmax,
so out = A V. ``return_weights=True`` returns A (B, H, T, T) in every mode (built by the parallel formula). Its
entries carry the sign of q . k, and each row fades geometrically into the past: a decay-dominated map.

Shapes: q, k (B, H, T, D); v (B, H, T, Dv); decay (H,); state S (B, H, D, Dv).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import (FORMS, check_matrix_state, check_qkv_mode, checks_values, compute_dtype, outputs,
                     refuse_weights_with_state, run_form, start_state)

MODES = FORMS


@dataclass
class RetentionState:
    """S = sum_s gamma^(T-1-s) k_s^T v_s over the tokens seen so far (unscaled), (B, H, D, Dv).

    Example:

        >>> import torch
        >>> from qkv.ops import retention
        >>> q, k, v = (torch.randn(1, 2, 5, 4, dtype=torch.float64) for _ in range(3))
        >>> _, state = retention(q[:, :, :3], k[:, :, :3], v[:, :, :3], [0.9, 0.5], return_state=True)
        >>> state.S.shape                                                  # (B, H, D, Dv)
        torch.Size([1, 2, 4, 4])
        >>> rest = retention(q[:, :, 3:], k[:, :, 3:], v[:, :, 3:], [0.9, 0.5], initial_state=state)
        >>> torch.allclose(rest, retention(q, k, v, [0.9, 0.5])[:, :, 3:])
        True
    """

    S: torch.Tensor


def _check(q, k, v, decay, mode, chunk_size, initial_state) -> torch.Tensor:
    check_qkv_mode(q, k, v, mode, MODES, chunk_size)
    decay = torch.as_tensor(decay, device=q.device)
    H = q.shape[1]
    if decay.shape != (H,):
        raise ValueError(f"decay must have shape (H,) = ({H},), one gamma per head; got shape {tuple(decay.shape)}")
    if not decay.is_floating_point():
        raise ValueError(f"decay must be a floating-point tensor of gammas in (0, 1), got dtype {decay.dtype}")
    # a host read: skipped under torch.compile and inside trusted_values() (decoding steps)
    if checks_values() and not bool(((decay > 0) & (decay < 1)).all()):
        shown = ", ".join(f"{g:.6g}" for g in decay.flatten().tolist())
        raise ValueError(f"decay=[{shown}] is invalid; expected every gamma strictly inside (0, 1)")
    check_matrix_state(initial_state, RetentionState, q, v)
    return decay


def _powers(log_g: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """gamma^n for integer n >= 0 as exp(n log gamma): (H,) x any shape -> (H, *n.shape), never overflows."""
    return torch.exp(log_g.view(-1, *([1] * n.dim())) * n)


def _decay_mask(log_g: torch.Tensor, L: int) -> torch.Tensor:
    """Dmask[h, t, s] = gamma_h^(t-s) for s <= t, else 0 (eq. 5), shape (H, L, L)."""
    idx = torch.arange(L, device=log_g.device, dtype=log_g.dtype)
    dist = idx[:, None] - idx[None, :]  # (L, L)
    return _powers(log_g, dist.clamp(min=0)) * (dist >= 0)


def _parallel(q, k, v, S0, log_g):
    """The definition, eq. 5, plus the carried state: token t (0-based) sees S0 decayed t + 1 times."""
    T = q.shape[2]
    Dm = _decay_mask(log_g, T)  # (H, T, T)
    t = torch.arange(T, device=q.device, dtype=log_g.dtype)
    out = ((q @ k.transpose(-1, -2)) * Dm) @ v  # (B, H, T, Dv)
    out = out + _powers(log_g, t + 1).unsqueeze(-1) * (q @ S0)
    # The state after token T-1: S0 decayed T times plus each k_s^T v_s decayed T-1-s times.
    k_to_end = k * _powers(log_g, T - 1 - t).unsqueeze(-1)  # (B, H, T, D)
    S = _powers(log_g, t.new_tensor(T)).view(-1, 1, 1) * S0 + k_to_end.transpose(-1, -2) @ v  # (B, H, D, Dv)
    return out, S


def _recurrent(q, k, v, S0, log_g):
    """Eq. 6, one token at a time: S_t = gamma S_{t-1} + k_t^T v_t, out_t = q_t S_t."""
    g = log_g.exp().view(-1, 1, 1)  # (H, 1, 1)
    S = S0
    outs = []
    for t in range(q.shape[2]):
        S = g * S + k[:, :, t, :, None] * v[:, :, t, None, :]  # (B, H, D, Dv)
        outs.append((q[:, :, t, None, :] @ S)[:, :, 0])  # (B, H, Dv)
    if not outs:
        return v.new_zeros(*v.shape), S
    return torch.stack(outs, 2), S


def _chunk(q, k, v, S0, log_g, chunk_size):
    """Eq. 7: the masked form inside blocks of C tokens; the state carried across blocks.

    T is zero-padded to N whole blocks. Padded keys are zero, and every decay is measured to the true end of
    its own block (the last one may be short), so the padding changes neither outputs nor the final state.
    """
    B, H, T, D = q.shape
    Dv = v.shape[-1]
    C = chunk_size
    N = -(-T // C)
    q, k, v = (F.pad(x, (0, 0, 0, N * C - T)) for x in (q, k, v))
    qc = q.view(B, H, N, C, D)
    kc = k.view(B, H, N, C, D)
    vc = v.view(B, H, N, C, Dv)
    # Inside each block: the parallel form with a (C, C) decay mask, shared by all blocks.
    out = ((qc @ kc.transpose(-1, -2)) * _decay_mask(log_g, C).unsqueeze(1)) @ vc  # (B, H, N, C, Dv)
    # What each block adds to the state: k_j^T v_j decayed to the block's last real token, L_n - 1 - j times.
    pos = torch.arange(N * C, device=q.device).view(N, C)
    L = (T - pos[:, :1]).clamp(max=C)  # (N, 1): real tokens per block
    to_end = (L - 1 - pos.remainder(C)).clamp(min=0).to(log_g.dtype)  # (N, C); padded slots have k = 0
    kv = (kc * _powers(log_g, to_end).unsqueeze(-1)).transpose(-1, -2) @ vc  # (B, H, N, D, Dv)
    block_decay = _powers(log_g, L[:, 0].to(log_g.dtype)).view(H, N, 1, 1)  # gamma^(L_n)
    # Across blocks: a short loop of N multiply-adds on (B, H, D, Dv) states.
    S, before = S0, []
    for n in range(N):
        before.append(S)
        S = block_decay[:, n] * S + kv[:, :, n]
    S_before = torch.stack(before, 2)  # (B, H, N, D, Dv)
    i1 = torch.arange(1, C + 1, device=q.device, dtype=log_g.dtype)  # the i-th token reads S decayed i + 1 times
    out = out + _powers(log_g, i1).view(H, 1, C, 1) * (qc @ S_before)
    return out.reshape(B, H, N * C, Dv)[:, :, :T], S


def retention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    decay,
    *,
    scale: float | None = None,
    mode: str = "chunk",
    chunk_size: int = 64,
    initial_state: RetentionState | torch.Tensor | None = None,
    return_state: bool = False,
    return_weights: bool = False,
):
    """RetNet retention out_t = scale * sum_{s<=t} gamma_h^(t-s) (q_t . k_s) v_s in one of three equal forms.

    Args:
        q, k: (B, H, T, D) queries and keys (rotated by xPos / RoPE beforehand if the model uses it).
        v: (B, H, T, Dv) values.
        decay: (H,) tensor (or sequence) of per-head gammas, each strictly in (0, 1). RetNet uses
            gamma_h = 1 - 2^(-5 - h) (Sec. 2.2).
        scale: multiplies q . k; default D^-0.5.
        mode: "parallel" (decay-masked quadratic, the definition), "recurrent" (token by token, the decode
            step) or "chunk" (blocks of ``chunk_size``).
        chunk_size: block length for mode="chunk"; any T works.
        initial_state: a RetentionState or tensor S (B, H, D, Dv) from an earlier piece; None starts at zero.
        return_state: also return the state after the last token.
        return_weights: also return the attention map scale * (Q K^T) * Dmask, (B, H, T, T), whatever the mode;
            needs initial_state=None (earlier tokens live on only as a sum in a carried state).

    Returns:
        out (B, H, T, Dv) in the dtype of v; with ``return_weights`` and / or ``return_state`` a tuple
        (out, weights, state) of the ones asked for, in that order. The state is kept in float32 (or float64),
        whatever the input dtype.

    Example:

        >>> import torch
        >>> from qkv.ops import retention
        >>> q, k, v = (torch.randn(1, 2, 9, 4, dtype=torch.float64) for _ in range(3))
        >>> decay = [0.9, 0.5]                                             # one gamma per head
        >>> out = retention(q, k, v, decay, mode="parallel")               # (B, H, T, Dv)
        >>> out.shape, torch.allclose(out, retention(q, k, v, decay, mode="chunk", chunk_size=4))
        (torch.Size([1, 2, 9, 4]), True)
    """
    decay = _check(q, k, v, decay, mode, chunk_size, initial_state)
    refuse_weights_with_state(return_weights, initial_state)
    cdt = compute_dtype(q, v)
    log_g = decay.to(cdt).log()  # (H,); decay powers in float32 or higher
    B, H, T, D = q.shape
    scale = D**-0.5 if scale is None else scale
    qq, kk, vv = q.to(cdt), k.to(cdt), v.to(cdt)
    S0 = start_state(initial_state, RetentionState, q, v, cdt)  # (B, H, D, Dv)
    out, S = run_form(mode, parallel=lambda: _parallel(qq, kk, vv, S0, log_g),
                      recurrent=lambda: _recurrent(qq, kk, vv, S0, log_g),
                      chunk=lambda C: _chunk(qq, kk, vv, S0, log_g, C), tokens=T, chunk_size=chunk_size)
    # Scale applied once at the end: the state stays unscaled, so pieces with the same scale chain exactly.
    weights = None
    if return_weights:  # (B, H, T, T)
        weights = (scale * (qq @ kk.transpose(-1, -2)) * _decay_mask(log_g, T)).to(v.dtype)
    return outputs((scale * out).to(v.dtype), weights, RetentionState(S) if return_state else None)
