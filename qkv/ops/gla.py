"""Gated linear attention (Yang et al. 2024, "Gated Linear Attention Transformers with Hardware-Efficient
Training", Sec. 4), and RWKV-5 / RWKV-6 time mixing as its variant with a bonus for the current token.

GLA is linear attention whose state forgets: before each write, every key channel i of the state decays by a gate
alpha_ti in (0, 1] computed from the token itself (Sec. 4.1, eq. 4):

    S_t = diag(alpha_t) S_{t-1} + k_t^T v_t,        out_t = scale * q_t S_t

so token t reads token s <= t with weight scale * sum_i q_ti k_si prod_{j=s+1..t} alpha_ji. Gates are passed in
log space, g = log alpha <= 0, of shape (B, H, T, D) or anything broadcastable to it: (B, H, T, 1) is a scalar
gate per head and token (Mamba-2's SSD, Gated DeltaNet's alpha), (1, H, 1, D) a fixed decay per channel (RWKV-5).

RWKV-5 "Eagle" and RWKV-6 "Finch" (Peng et al. 2024, "Eagle and Finch", Sec. 4-5) are the same recurrence read
before the current token is written, which enters instead with a per-channel bonus u (``bonus=u``, scale 1):

    out_t = r_t (S_{t-1} + diag(u) k_t^T v_t),     S_t = diag(w_t) S_{t-1} + k_t^T v_t

RWKV-5 has one decay per head and channel (w fixed), RWKV-6 a data-dependent w_t. ``wkv5`` / ``wkv6`` below are
those calls, named as RWKV-LM names them.

Three forms of the same function, chosen by ``mode`` and tested equal:

- ``parallel``: the (T, T) weight matrix above, then weights @ V. The definition read as attention; O(T^2 D).
- ``recurrent``: one token at a time through S: the decode step. O(T D Dv) time, O(D Dv) memory.
- ``chunk``: the parallel form inside blocks of ``chunk_size`` tokens, the state carried between blocks.

Numerics. Every decay factor is exp of a sum of log-gates over a span of tokens, summed directly over that span
(the "segment sum" of Mamba-2's reference code, Dao & Gu 2024, Sec. 7) and masked before exp: it is <= 1, never
overflows, and is never the difference of two long running sums, which loses digits when gates are large (a
decay of e^-100 per step). No form divides by a cumulative decay, which overflows float32 within one block of
strong decays. The price is one explicit (C, C, D) tensor of decays per block rather than a single matmul.

The implicit attention map: ``return_weights=True`` returns the (T, T) matrix of the parallel form, in every mode,
so that out == weights @ v.

Shapes: q, k (B, H, T, D); v (B, H, T, Dv); g broadcastable to (B, H, T, D); bonus (H, D); state S (B, H, D, Dv).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import (FORMS, check_matrix_state, check_qkv_mode, checks_values, compute_dtype, outputs,
                     refuse_weights_with_state, run_form, start_state)

MODES = FORMS


@dataclass
class GLAState:
    """S = sum_s (decays since s) k_s^T v_s over the tokens seen so far (unscaled), (B, H, D, Dv).

    Example:

        >>> import torch
        >>> from qkv.ops import gla
        >>> q, k, v = (torch.randn(1, 2, 5, 4, dtype=torch.float64) for _ in range(3))
        >>> g = -torch.rand(1, 2, 5, 4, dtype=torch.float64)
        >>> _, state = gla(q[:, :, :2], k[:, :, :2], v[:, :, :2], g[:, :, :2], return_state=True)
        >>> state.S.shape                                                  # (B, H, D, Dv)
        torch.Size([1, 2, 4, 4])
        >>> rest = gla(q[:, :, 2:], k[:, :, 2:], v[:, :, 2:], g[:, :, 2:], initial_state=state)
        >>> torch.allclose(rest, gla(q, k, v, g)[:, :, 2:])                # carried state = one pass
        True
    """

    S: torch.Tensor


# -- decay arithmetic shared with the delta rule (qkv/ops/delta_rule.py) --------------------------------------------

def segment_sums(g: torch.Tensor, *, exclusive: bool = False) -> torch.Tensor:
    """L[..., t, s, :] = sum_{j=s+1..t} g_j (``exclusive``: sum_{j=s+1..t-1} g_j) for s <= t (s < t), -inf elsewhere.

    g (..., C, D) -> (..., C, C, D). Each entry is summed over its own span (a masked cumulative sum), so it is as
    exact as the gates themselves; exp(L) is the decay between key s and query t, in [0, 1]."""
    C = g.shape[-2]
    rows = g.unsqueeze(-2).expand(*g.shape[:-2], C, C, g.shape[-1])  # rows[..., t, s, :] = g_t
    below = torch.ones(C, C, dtype=torch.bool, device=g.device).tril(-1)  # j > s
    L = rows.masked_fill(~below.unsqueeze(-1), 0.0).cumsum(-3)  # sum over s < j <= t
    if exclusive:  # one token fewer: the sums up to t - 1, shifted down a row
        L = F.pad(L[..., :-1, :, :], (0, 0, 0, 0, 1, 0))
    keep = torch.ones(C, C, dtype=torch.bool, device=g.device).tril(-1 if exclusive else 0)
    return L.masked_fill(~keep.unsqueeze(-1), float("-inf"))


def decayed_scores(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, *, exclusive: bool = False) -> torch.Tensor:
    """M[..., t, s] = sum_i x_ti y_si exp(L[t, s, i]) with L = segment_sums(g, exclusive=...): the gated scores of
    queries x against keys y within one block, 0 where s > t (s >= t when exclusive). x, y, g (..., C, D)."""
    return (x.unsqueeze(-2) * y.unsqueeze(-3) * segment_sums(g, exclusive=exclusive).exp()).sum(-1)  # (..., C, C)


def prefix_sums(g: torch.Tensor, *, exclusive: bool = False) -> torch.Tensor:
    """sum_{j<=t} g_j (``exclusive``: j < t) along the block, (..., C, D): the decay since the block's start."""
    G = g.cumsum(-2)
    return F.pad(G[..., :-1, :], (0, 0, 1, 0)) if exclusive else G


def suffix_sums(g: torch.Tensor) -> torch.Tensor:
    """sum_{j>s} g_j along the block, (..., C, D): the decay from token s to the block's end."""
    R = g.flip(-2).cumsum(-2).flip(-2)  # sum_{j>=s}
    return F.pad(R[..., 1:, :], (0, 0, 0, 1))


def blocks(x: torch.Tensor, C: int) -> torch.Tensor:
    """(B, H, T, D) -> (B, H, N, C, D), zero-padded at the end to N whole blocks."""
    B, H, T, D = x.shape
    N = -(-T // C)
    return F.pad(x, (0, 0, 0, N * C - T)).view(B, H, N, C, D)


# -- GLA ----------------------------------------------------------------------------------------------------------

def _check(q, k, v, g, bonus, mode, chunk_size, initial_state) -> None:
    check_qkv_mode(q, k, v, mode, MODES, chunk_size)
    B, H, T, D = q.shape
    if not isinstance(g, torch.Tensor) or g.dim() != 4:
        got = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
        raise ValueError(f"g (log gates) must be a 4-d tensor broadcastable to (B, H, T, D) = {(B, H, T, D)}, "
                         f"got {got}")
    try:
        torch.broadcast_shapes(g.shape, q.shape)
    except RuntimeError:
        raise ValueError(f"g (log gates) of shape {tuple(g.shape)} does not broadcast to (B, H, T, D) = "
                         f"{(B, H, T, D)}") from None
    # a host read: skipped under torch.compile and inside trusted_values() (decoding steps)
    if checks_values() and g.numel() and not bool((g <= 0).all()):
        raise ValueError(f"g must hold log gates <= 0 (decays in (0, 1]), got max(g) = {g.max().item():.6g}")
    if bonus is not None and (not isinstance(bonus, torch.Tensor) or tuple(bonus.shape) != (H, D)):
        got = tuple(bonus.shape) if isinstance(bonus, torch.Tensor) else type(bonus).__name__
        raise ValueError(f"bonus must be a tensor of shape (H, D) = {(H, D)}, got {got}")
    check_matrix_state(initial_state, GLAState, q, v)


def _weights(q, k, g, bonus):
    """The weight matrix of one block, (..., C, C): q_t . k_s decayed over (s, t] (bonus: over (s, t - 1], with
    q_t . (u * k_t) on the diagonal)."""
    A = decayed_scores(q, k, g, exclusive=bonus is not None)
    if bonus is not None:
        u = bonus.view(bonus.shape[0], *[1] * (q.dim() - 3), bonus.shape[1])  # (H, 1.., D)
        A = A + torch.diag_embed((q * u * k).sum(-1))
    return A


def _chunk(q, k, v, g, bonus, S0, C):
    """Blocks of C tokens: the weight matrix inside each block, the state carried across blocks.

    Padding (zero q, k, v and zero log gates, i.e. no decay) adds nothing to the state and leaves the decays of the
    real tokens alone, so any T works."""
    T = q.shape[2]
    qc, kc, vc, gc = (blocks(x, C) for x in (q, k, v, g))  # (B, H, N, C, D | Dv)
    out = _weights(qc, kc, gc, bonus) @ vc  # inside each block: (B, H, N, C, Dv)
    # What each block adds to the state: k_s v_s^T decayed to the block's end; the state it inherits, decayed.
    kv = (kc * suffix_sums(gc).exp()).transpose(-1, -2) @ vc  # (B, H, N, D, Dv)
    carry = gc.sum(-2).exp().unsqueeze(-1)  # (B, H, N, D, 1): decay over a whole block
    S, before = S0, []
    for n in range(qc.shape[2]):  # a short loop of N multiply-adds on (B, H, D, Dv) states
        before.append(S)
        S = carry[:, :, n] * S + kv[:, :, n]
    # Query t of a block reads the inherited state decayed from the block's start to t (t - 1 with a bonus).
    out = out + (qc * prefix_sums(gc, exclusive=bonus is not None).exp()) @ torch.stack(before, 2)
    B, H, N, _, Dv = out.shape
    return out.reshape(B, H, N * C, Dv)[:, :, :T], S


def _recurrent(q, k, v, g, bonus, S0):
    """Token by token (eq. 4); each step is GLA's (or RWKV-5/6's) decode step."""
    S, outs = S0, []
    for t in range(q.shape[2]):
        qt, kt, vt = q[:, :, t], k[:, :, t], v[:, :, t]  # (B, H, D | Dv)
        kv = kt.unsqueeze(-1) * vt.unsqueeze(-2)  # (B, H, D, Dv)
        if bonus is None:
            S = g[:, :, t].exp().unsqueeze(-1) * S + kv
            outs.append((qt.unsqueeze(-2) @ S)[:, :, 0])
        else:  # read first, the current token through its bonus; then decay and write
            outs.append((qt.unsqueeze(-2) @ (S + bonus.unsqueeze(-1) * kv))[:, :, 0])
            S = g[:, :, t].exp().unsqueeze(-1) * S + kv
    return (torch.stack(outs, 2) if outs else v.new_zeros(v.shape)), S


def gla(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    *,
    bonus: torch.Tensor | None = None,
    scale: float | None = None,
    mode: str = "chunk",
    chunk_size: int = 32,
    initial_state: GLAState | torch.Tensor | None = None,
    return_state: bool = False,
    return_weights: bool = False,
):
    """Gated linear attention out_t = scale * q_t S_t, S_t = diag(exp g_t) S_{t-1} + k_t^T v_t, in three equal forms.

    Args:
        q, k: (B, H, T, D) queries and keys (RWKV: receptance and key).
        v: (B, H, T, Dv) values.
        g: log gates <= 0, broadcastable to (B, H, T, D) (4-d): how much of each key channel of the state survives
            the step into token t.
        bonus: None (GLA), or (H, D): the RWKV-5/6 form, where token t reads the state before its own write and
            itself through q_t . (bonus * k_t) (RWKV-LM's time_faaaa, "u").
        scale: multiplies every score; default D^-0.5 (RWKV: pass 1.0).
        mode: "parallel", "recurrent" or "chunk" (see the module docstring).
        chunk_size: block length of mode="chunk" (any T works). Memory grows as T * chunk_size * D.
        initial_state: a GLAState or tensor S (B, H, D, Dv) from an earlier piece; None starts from zeros.
        return_state: also return the state after the last token.
        return_weights: also return the (B, H, T, T) weight matrix (out == weights @ v), built by the parallel
            formula whatever the mode; needs initial_state=None.

    Returns:
        out (B, H, T, Dv) in the dtype of v; with ``return_weights`` and / or ``return_state`` a tuple
        (out, weights, state) of the ones asked for. The state is float32 (float64 for float64 inputs).

    Example:

        >>> import torch
        >>> from qkv.ops import gla
        >>> q, k, v = (torch.randn(1, 2, 7, 4, dtype=torch.float64) for _ in range(3))
        >>> g = -torch.rand(1, 2, 7, 4, dtype=torch.float64)                 # log gates <= 0
        >>> out, w = gla(q, k, v, g, chunk_size=3, return_weights=True)      # (B, H, T, Dv), (B, H, T, T)
        >>> out.shape, torch.allclose(out, gla(q, k, v, g, mode="recurrent")), torch.allclose(out, w @ v)
        (torch.Size([1, 2, 7, 4]), True, True)
    """
    _check(q, k, v, g, bonus, mode, chunk_size, initial_state)
    refuse_weights_with_state(return_weights, initial_state)
    cdt = compute_dtype(q, v)
    B, H, T, D = q.shape
    scale = D**-0.5 if scale is None else scale
    qq, kk, vv = q.to(cdt), k.to(cdt), v.to(cdt)
    gg = g.to(cdt).expand(B, H, T, D)
    uu = None if bonus is None else bonus.to(cdt)
    S0 = start_state(initial_state, GLAState, q, v, cdt)  # (B, H, D, Dv)
    out, S = run_form(mode, recurrent=lambda: _recurrent(qq, kk, vv, gg, uu, S0),
                      chunk=lambda C: _chunk(qq, kk, vv, gg, uu, S0, C), tokens=T, chunk_size=chunk_size)
    weights = (scale * _weights(qq, kk, gg, uu)).to(v.dtype) if return_weights else None  # (B, H, T, T)
    return outputs((scale * out).to(v.dtype), weights, GLAState(S) if return_state else None)


def wkv5(r, k, v, w, u, **kwargs):
    """RWKV-5.2 time mixing: ``gla(r, k, v, log w, bonus=u, scale=1)`` with one decay per head and channel.

    r, k (B, H, T, D); v (B, H, T, Dv); w (H, D) the log decay <= 0 (RWKV-LM stores time_decay = d and decays by
    exp(-exp(d)) per step, so w = -exp(time_decay)); u (H, D) the bonus (time_faaaa). Other keywords as ``gla``.

    Example:

        >>> import torch
        >>> from qkv.ops import gla, wkv5
        >>> r, k, v = (torch.randn(1, 2, 6, 4, dtype=torch.float64) for _ in range(3))
        >>> w, u = -torch.rand(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)   # (H, D) each
        >>> out = wkv5(r, k, v, w, u)                                      # (B, H, T, Dv)
        >>> out.shape, torch.allclose(out, gla(r, k, v, w[None, :, None], bonus=u, scale=1.0))
        (torch.Size([1, 2, 6, 4]), True)
    """
    return gla(r, k, v, w.view(1, *w.shape[:1], 1, w.shape[-1]), bonus=u, scale=kwargs.pop("scale", 1.0), **kwargs)


def wkv6(r, k, v, w, u, **kwargs):
    """RWKV-6 time mixing: ``gla(r, k, v, w, bonus=u, scale=1)`` with a data-dependent log decay w (B, H, T, D)
    (RWKV-6 computes w = -exp(time_decay + lora(x))). Other arguments as ``wkv5``.

    Example:

        >>> import torch
        >>> from qkv.ops import wkv6
        >>> r, k, v = (torch.randn(1, 2, 6, 4, dtype=torch.float64) for _ in range(3))
        >>> w = -torch.rand(1, 2, 6, 4, dtype=torch.float64)               # data-dependent log decay (B, H, T, D)
        >>> u = torch.randn(2, 4, dtype=torch.float64)
        >>> out = wkv6(r, k, v, w, u, chunk_size=4)
        >>> out.shape, torch.allclose(out, wkv6(r, k, v, w, u, mode="recurrent"))
        (torch.Size([1, 2, 6, 4]), True)
    """
    return gla(r, k, v, w, bonus=u, scale=kwargs.pop("scale", 1.0), **kwargs)


def ssd(x, dt, A, B, C, *, D=None, **kwargs):
    """Mamba-2's state-space duality layer (Dao & Gu 2024, "Transformers are SSMs", Sec. 3-6): the selective SSM
    with a scalar decay per head, h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T, y_t = C_t h_t + D x_t, which is GLA
    with a scalar gate: ``gla(C, dt B, x, dt A, scale=1)`` plus the skip D x.

    x (B, H, T, P) the inputs of each head; dt (B, H, T) > 0 the step sizes; A (H,) < 0; B, C (B, H, T, N) the
    input and output projections of the state (Mamba-2 shares them across heads: pass them expanded); D (H,) or
    None. Other keywords as ``gla``; with return_weights the map includes D on its diagonal (out == weights @ x).

    Example:

        >>> import torch
        >>> from qkv.ops import ssd
        >>> x = torch.randn(1, 2, 6, 3, dtype=torch.float64)                # (B, H, T, P)
        >>> dt, A = torch.rand(1, 2, 6, dtype=torch.float64), -torch.rand(2, dtype=torch.float64)
        >>> B, C = torch.randn(1, 2, 6, 5, dtype=torch.float64), torch.randn(1, 2, 6, 5, dtype=torch.float64)   # N = 5
        >>> y = ssd(x, dt, A, B, C, D=torch.ones(2, dtype=torch.float64))
        >>> y.shape, torch.allclose(y, ssd(x, dt, A, B, C, D=torch.ones(2, dtype=torch.float64), mode="recurrent"))
        (torch.Size([1, 2, 6, 3]), True)
    """
    H, T = x.shape[1], x.shape[2]
    result = gla(C, B * dt.unsqueeze(-1), x, (dt * A.view(-1, 1)).unsqueeze(-1), scale=1.0, **kwargs)
    if D is None:
        return result
    out, *rest = result if isinstance(result, tuple) else (result,)
    out = out + D.view(-1, 1, 1).to(x.dtype) * x
    if kwargs.get("return_weights"):
        rest[0] = rest[0] + torch.diag_embed(D.view(-1, 1).expand(H, T)).to(rest[0].dtype)  # (H, T, T)
    return (out, *rest) if rest else out
