"""The delta rule: DeltaNet (Schlag et al. 2021; Yang et al. 2024, "Parallelizing Linear Transformers with the
Delta Rule over Sequence Length"), Gated DeltaNet (Yang et al. 2025, "Gated Delta Networks") and RWKV-7 "Goose"
(Peng et al. 2025), whose transition generalises both.

Linear attention only ever adds k_t^T v_t to its state S (D x Dv, read as a key -> value memory); the delta rule
first reads what S already stores under k_t and replaces that by v_t, a step of online regression (DeltaNet,
Sec. 2.2; Gated DeltaNet adds a forget gate alpha_t, Sec. 3.1):

    S_t = alpha_t (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t,      out_t = scale * q_t S_t

RWKV-7 (Sec. 4) writes the transition as a diagonal decay plus a rank-one term. This module computes that general
form, the "generalised delta rule", with column vectors per token:

    S_t = diag(exp g_t) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T,       out_t = scale * S_t^T q_t

and DeltaNet / Gated DeltaNet are the special case a_t = k_t, b_t = -alpha_t beta_t k_t, g_t = log alpha_t, with
the written key beta_t k_t (``delta_rule``); RWKV-7 has a = -kk, b = kk * a, w = g (``wkv7``).

Three forms of the same function, chosen by ``mode`` and tested equal:

- ``recurrent``: the decode step, token by token.
- ``parallel``: the (T, T) weight matrix, then weights @ V. With u_t = S_{t-1}^T a_t (what the state returns for
  a_t), the recurrence is gated linear attention with two writes per token, (k_t, v_t) and (b_t, u_t), and the u_t
  solve a unit lower-triangular system (I - A_ab) U = A_ak V, where A_xy[t, s] = x_t . y_s decayed over
  (s, t - 1] for s < t (DeltaNet's "UT transform", Sec. 3.2; RWKV-7 Sec. 4). Hence
      weights = scale * (A_qk + A_qb (I - A_ab)^-1 A_ak),     A_qx decayed over (s, t], s <= t.
- ``chunk``: that form inside blocks of ``chunk_size`` tokens, the state carried between blocks (the state enters
  each block's system as one more right-hand side).

Decays are formed as in qkv/ops/gla.py: each a sum of log-gates over its own span, masked before exp, never
divided by. ``return_weights=True`` returns the weight matrix (out == weights @ v) in every mode.

Shapes: q, k, a, b (B, H, T, D); v (B, H, T, Dv); g broadcastable to (B, H, T, D); beta (B, H, T); S (B, H, D, Dv).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import (FORMS, check_matrix_state, check_qkv_mode, checks_values, compute_dtype, outputs,
                     refuse_weights_with_state, run_form, start_state)
from .gla import blocks, decayed_scores, prefix_sums, suffix_sums

MODES = FORMS


@dataclass
class DeltaRuleState:
    """The key -> value memory after the tokens seen so far (unscaled), S (B, H, D, Dv).

    Example:

        >>> import torch
        >>> import torch.nn.functional as F
        >>> from qkv.ops import delta_rule
        >>> q, k = (F.normalize(torch.randn(1, 1, 5, 4, dtype=torch.float64), dim=-1) for _ in range(2))
        >>> v, beta = torch.randn(1, 1, 5, 4, dtype=torch.float64), torch.rand(1, 1, 5, dtype=torch.float64)
        >>> _, state = delta_rule(q[:, :, :2], k[:, :, :2], v[:, :, :2], beta[:, :, :2], return_state=True)
        >>> state.S.shape                                                  # (B, H, D, Dv)
        torch.Size([1, 1, 4, 4])
        >>> rest = delta_rule(q[:, :, 2:], k[:, :, 2:], v[:, :, 2:], beta[:, :, 2:], initial_state=state)
        >>> torch.allclose(rest, delta_rule(q, k, v, beta)[:, :, 2:])
        True
    """

    S: torch.Tensor


def _check(q, k, v, a, b, g, mode, chunk_size, initial_state) -> None:
    check_qkv_mode(q, k, v, mode, MODES, chunk_size)
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.shape != q.shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must have the shape of q and k, (B, H, T, D) = {tuple(q.shape)}, got {got}")
    if g is not None:
        if not isinstance(g, torch.Tensor) or g.dim() != 4:
            got = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            raise ValueError(f"g (log gates) must be a 4-d tensor broadcastable to (B, H, T, D) = {tuple(q.shape)}, "
                             f"got {got}")
        try:
            torch.broadcast_shapes(g.shape, q.shape)
        except RuntimeError:
            raise ValueError(f"g (log gates) of shape {tuple(g.shape)} does not broadcast to (B, H, T, D) = "
                             f"{tuple(q.shape)}") from None
        # a host read: skipped under torch.compile and inside trusted_values() (decoding steps)
        if checks_values() and g.numel() and not bool((g <= 0).all()):
            raise ValueError(f"g must hold log gates <= 0 (decays in (0, 1]), got max(g) = {g.max().item():.6g}")
    check_matrix_state(initial_state, DeltaRuleState, q, v)


def _system(q, k, a, b, g):
    """The matrices of one block (..., C, C): A_qk, A_qb (decayed over (s, t]) and I - A_ab, A_ak (over (s, t-1])."""
    C = q.shape[-2]
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    return (decayed_scores(q, k, g), decayed_scores(q, b, g), eye - decayed_scores(a, b, g, exclusive=True),
            decayed_scores(a, k, g, exclusive=True))


def _solve(M, rhs):
    """M^-1 rhs for the unit lower-triangular M (..., C, C): forward substitution, exact in C steps."""
    return torch.linalg.solve_triangular(M, rhs, upper=False, unitriangular=True)


def _chunk(q, k, v, a, b, g, S0, C):
    """Blocks of C tokens. Within a block, U = M^-1 (A_ak V + (a * decay-from-start) S_n) splits into a part that
    does not depend on the inherited state S_n (computed for all blocks at once) and W S_n, W = M^-1 (a * decay);
    so the blocks chain by S_{n+1} = P_n S_n + R_n with (D, D) and (D, Dv) matrices, and outputs are
    O_n = Q_n S_n + (the state-free part). Zero padding (no decay, zero vectors) changes nothing."""
    T = q.shape[2]
    qc, kc, vc, ac, bc, gc = (blocks(x, C) for x in (q, k, v, a, b, g))  # (B, H, N, C, D | Dv)
    A_qk, A_qb, M, A_ak = _system(qc, kc, ac, bc, gc)
    U_free = _solve(M, A_ak @ vc)  # (B, H, N, C, Dv): u_t from this block's own tokens
    W = _solve(M, ac * prefix_sums(gc, exclusive=True).exp())  # (B, H, N, C, D): u_t per unit of inherited state
    out = A_qk @ vc + A_qb @ U_free  # (B, H, N, C, Dv)
    Q = qc * prefix_sums(gc).exp() + A_qb @ W  # (B, H, N, C, D): how each query reads the inherited state
    to_end = suffix_sums(gc).exp()  # (B, H, N, C, D): decay from token s to the block's end
    kd, bd = kc * to_end, bc * to_end
    P = torch.diag_embed(gc.sum(-2).exp()) + bd.transpose(-1, -2) @ W  # (B, H, N, D, D)
    R = kd.transpose(-1, -2) @ vc + bd.transpose(-1, -2) @ U_free  # (B, H, N, D, Dv)
    S, before = S0, []
    for n in range(qc.shape[2]):  # N small matmuls on (D, D) x (D, Dv)
        before.append(S)
        S = P[:, :, n] @ S + R[:, :, n]
    out = out + Q @ torch.stack(before, 2)
    B, H, N, _, Dv = out.shape
    return out.reshape(B, H, N * C, Dv)[:, :, :T], S


def _recurrent(q, k, v, a, b, g, S0):
    """Token by token: read u = S^T a, then decay, write b u^T and k v^T, then read with q. The decode step."""
    S, outs = S0, []
    for t in range(q.shape[2]):
        u = a[:, :, t].unsqueeze(-2) @ S  # (B, H, 1, Dv)
        S = g[:, :, t].exp().unsqueeze(-1) * S + b[:, :, t].unsqueeze(-1) * u \
            + k[:, :, t].unsqueeze(-1) * v[:, :, t].unsqueeze(-2)  # (B, H, D, Dv)
        outs.append((q[:, :, t].unsqueeze(-2) @ S)[:, :, 0])
    return (torch.stack(outs, 2) if outs else v.new_zeros(v.shape)), S


def generalized_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    g: torch.Tensor | None = None,
    *,
    scale: float | None = None,
    mode: str = "chunk",
    chunk_size: int = 32,
    initial_state: DeltaRuleState | torch.Tensor | None = None,
    return_state: bool = False,
    return_weights: bool = False,
):
    """S_t = diag(exp g_t) S_{t-1} + b_t (a_t^T S_{t-1}) + k_t v_t^T, out_t = scale * S_t^T q_t, in three equal forms.

    Args:
        q, k: (B, H, T, D) queries (RWKV: receptance) and the keys written.
        v: (B, H, T, Dv) values.
        a, b: (B, H, T, D) the rank-one part of the transition: the state is read along a_t, the answer written
            back along b_t (DeltaNet: a = k, b = -beta k; RWKV-7: a = -kk, b = kk * a).
        g: log gates <= 0 broadcastable to (B, H, T, D) (4-d), or None for no decay.
        scale: multiplies the output; default D^-0.5 (RWKV-7: 1.0).
        mode: "parallel", "recurrent" or "chunk"; chunk_size: block length of "chunk" (any T works).
        initial_state: a DeltaRuleState or tensor S (B, H, D, Dv); None starts from zeros.
        return_state: also return the state after the last token.
        return_weights: also return the (B, H, T, T) weight matrix (out == weights @ v), built by the parallel
            formula whatever the mode; needs initial_state=None.

    Returns:
        out (B, H, T, Dv) in the dtype of v; with ``return_weights`` and / or ``return_state`` a tuple
        (out, weights, state) of the ones asked for. The state is float32 (float64 for float64 inputs).

    Example:

        >>> import torch
        >>> import torch.nn.functional as F
        >>> from qkv.ops import generalized_delta_rule
        >>> q, k, v = (torch.randn(1, 2, 6, 4, dtype=torch.float64) for _ in range(3))
        >>> kk = F.normalize(k, dim=-1)
        >>> a, b = -kk, kk * torch.rand(1, 2, 6, 4, dtype=torch.float64)   # RWKV-7's rank-one transition
        >>> out = generalized_delta_rule(q, k, v, a, b, chunk_size=4)
        >>> out.shape, torch.allclose(out, generalized_delta_rule(q, k, v, a, b, mode="parallel"))
        (torch.Size([1, 2, 6, 4]), True)
    """
    _check(q, k, v, a, b, g, mode, chunk_size, initial_state)
    refuse_weights_with_state(return_weights, initial_state)
    cdt = compute_dtype(q, v)
    B, H, T, D = q.shape
    scale = D**-0.5 if scale is None else scale
    qq, kk, vv, aa, bb = (x.to(cdt) for x in (q, k, v, a, b))
    gg = q.new_zeros((), dtype=cdt).expand(B, H, T, D) if g is None else g.to(cdt).expand(B, H, T, D)
    S0 = start_state(initial_state, DeltaRuleState, q, v, cdt)  # (B, H, D, Dv)
    out, S = run_form(mode, recurrent=lambda: _recurrent(qq, kk, vv, aa, bb, gg, S0),
                      chunk=lambda C: _chunk(qq, kk, vv, aa, bb, gg, S0, C), tokens=T, chunk_size=chunk_size)
    weights = None
    if return_weights:
        A_qk, A_qb, M, A_ak = _system(qq, kk, aa, bb, gg)
        weights = (scale * (A_qk + A_qb @ _solve(M, A_ak))).to(v.dtype)  # (B, H, T, T)
    return outputs((scale * out).to(v.dtype), weights, DeltaRuleState(S) if return_state else None)


def delta_rule(q, k, v, beta, *, g=None, **kwargs):
    """DeltaNet (g None) and Gated DeltaNet: S_t = alpha_t (I - beta_t k_t^T k_t) S_{t-1} + beta_t k_t^T v_t,
    out_t = scale * q_t S_t, with alpha_t = exp(g_t).

    q, k (B, H, T, D) (the papers L2-normalise them, which keeps the transition a contraction for beta in (0, 2));
    v (B, H, T, Dv); beta (B, H, T) the writing strength; g (B, H, T) log forget gates <= 0 (Gated DeltaNet) or
    None. Other keywords as ``generalized_delta_rule``.

    Example:

        >>> import torch
        >>> import torch.nn.functional as F
        >>> from qkv.ops import delta_rule
        >>> q, k = (F.normalize(torch.randn(1, 2, 7, 4, dtype=torch.float64), dim=-1) for _ in range(2))
        >>> v, beta = torch.randn(1, 2, 7, 4, dtype=torch.float64), torch.rand(1, 2, 7, dtype=torch.float64)
        >>> out = delta_rule(q, k, v, beta, chunk_size=3)                  # (B, H, T, Dv)
        >>> out.shape, torch.allclose(out, delta_rule(q, k, v, beta, mode="recurrent"))
        (torch.Size([1, 2, 7, 4]), True)
    """
    if not isinstance(beta, torch.Tensor) or beta.shape != q.shape[:3]:
        got = tuple(beta.shape) if isinstance(beta, torch.Tensor) else type(beta).__name__
        raise ValueError(f"beta must have shape (B, H, T) = {tuple(q.shape[:3])}, got {got}")
    if g is not None and (not isinstance(g, torch.Tensor) or g.shape != q.shape[:3]):
        got = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
        raise ValueError(f"g must have shape (B, H, T) = {tuple(q.shape[:3])} (one log gate per head and token), "
                         f"got {got}")
    beta = beta.unsqueeze(-1)
    shrink = beta if g is None else beta * g.unsqueeze(-1).exp()  # alpha_t beta_t
    return generalized_delta_rule(q, beta * k, v, k, -shrink * k, None if g is None else g.unsqueeze(-1), **kwargs)


def wkv7(r, k, v, w, a, b, **kwargs):
    """RWKV-7 time mixing (RWKV-LM's wkv7 kernel): ``generalized_delta_rule(r, k, v, a, b, g=w, scale=1)``.

    r, k, a, b, w (B, H, T, D); v (B, H, T, Dv). w is the log decay <= 0 (RWKV-7: -exp(-0.5) * sigmoid(...)),
    a = -kk and b = kk * a as the layer computes them. Other keywords as ``generalized_delta_rule``.

    Example:

        >>> import torch
        >>> import torch.nn.functional as F
        >>> from qkv.ops import wkv7
        >>> r, k, v = (torch.randn(1, 2, 5, 4, dtype=torch.float64) for _ in range(3))
        >>> kk, w = F.normalize(k, dim=-1), -0.6 * torch.rand(1, 2, 5, 4, dtype=torch.float64)
        >>> a = torch.rand(1, 2, 5, 4, dtype=torch.float64)
        >>> out = wkv7(r, k, v, w, -kk, kk * a)                            # (B, H, T, Dv)
        >>> out.shape, torch.allclose(out, wkv7(r, k, v, w, -kk, kk * a, mode="recurrent"))
        (torch.Size([1, 2, 5, 4]), True)
    """
    return generalized_delta_rule(r, k, v, a, b, w, scale=kwargs.pop("scale", 1.0), **kwargs)
