"""Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs").

Softmax attention scores a query against every key with exp(q . k). Linear attention replaces that kernel by a
dot product of feature maps, sim(q, k) = phi(q) . phi(k), so the weighted sum factorises (Sec. 3.2, eq. 4-5):

    out_t = phi(q_t)^T S_t / (phi(q_t) . z_t + eps),   S_t = sum_{s<=t} phi(k_s) v_s^T,   z_t = sum_{s<=t} phi(k_s)

Three forms of the same function, chosen by `mode` and tested equal:

- ``parallel``: the masked quadratic form, (phi(Q) phi(K)^T * mask) V. The definition; O(T^2) time and memory.
- ``recurrent``: one token at a time through the state (S, z) (Sec. 3.4, "transformers are RNNs"). Each loop
  step is exactly the per-token decode step; O(T) time, O(1) memory in T.
- ``chunk``: blocks of ``chunk_size`` tokens, quadratic inside a block and recurrent between blocks; the fast
  form for training on long sequences (O(T * chunk_size) time, matmul-friendly).

Non-causal attention (``causal=False``) uses the global sums S_T and z_T for every query; all modes agree.
Every mode takes and returns the state, so a sequence processed in pieces equals the sequence processed at once.

The implicit attention map. The output is a weighted sum of the values, out_t = sum_s A[t, s] v_s, with
A[t, s] = phi(q_t) . phi(k_s) / (phi(q_t) . z_t + eps) over the causal prefix: the attention matrix this op never
forms when it runs as an RNN. ``return_weights=True`` builds it from that parallel formula (in every mode), so
``out == weights @ v``. Unlike softmax weights, its rows need not sum to 1 (eps) and, for feature maps that can
go negative ("identity"), its entries need not be positive.

Shapes: q, k (B, H, T, D); v (B, H, T, Dv); S (B, H, D, Dv); z (B, H, D).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import torch
import torch.nn.functional as F

from .checks import FORMS, check_qkv_mode, compute_dtype, outputs, refuse_weights_with_state, run_form

FeatureMap = Union[str, None, Callable[[torch.Tensor], torch.Tensor]]
MODES = FORMS


@dataclass
class LinearAttentionState:
    """Running sums after the tokens seen so far: S = sum phi(k) v^T (B, H, D, Dv), z = sum phi(k) (B, H, D).

    Example:

        >>> import torch
        >>> from qkv.ops import linear_attention
        >>> q, k, v = (torch.randn(1, 2, 6, 4, dtype=torch.float64) for _ in range(3))
        >>> _, state = linear_attention(q[:, :, :4], k[:, :, :4], v[:, :, :4], return_state=True)
        >>> state.S.shape, state.z.shape                                   # (B, H, D, Dv), (B, H, D)
        (torch.Size([1, 2, 4, 4]), torch.Size([1, 2, 4]))
        >>> rest = linear_attention(q[:, :, 4:], k[:, :, 4:], v[:, :, 4:], initial_state=state)
        >>> torch.allclose(rest, linear_attention(q, k, v)[:, :, 4:])     # carried state = one pass
        True
    """

    S: torch.Tensor
    z: torch.Tensor


def _elu1(x: torch.Tensor) -> torch.Tensor:
    # elu(x) + 1 > 0 everywhere: keeps the denominator positive (the paper's choice, Sec. 3.2.1).
    return F.elu(x) + 1.0


FEATURE_MAPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "elu1": _elu1,
    "relu": F.relu,
    "identity": lambda x: x,
}


def feature_map_fn(feature_map: FeatureMap) -> Callable[[torch.Tensor], torch.Tensor]:
    """Resolve a feature-map name ("elu1", "relu", "identity"), None (identity) or a callable to a function."""
    if feature_map is None:
        return FEATURE_MAPS["identity"]
    if callable(feature_map):
        return feature_map
    if isinstance(feature_map, str) and feature_map in FEATURE_MAPS:
        return FEATURE_MAPS[feature_map]
    raise ValueError(
        f"feature_map={feature_map!r} is not supported; expected one of {sorted(FEATURE_MAPS)}, None or a callable"
    )


def _check(q, k, v, causal, mode, chunk_size, initial_state) -> LinearAttentionState | None:
    """Validate the arguments; return initial_state as a LinearAttentionState (or None)."""
    check_qkv_mode(q, k, v, mode, MODES, chunk_size)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {causal!r}")
    if initial_state is not None:
        B, H, _, D = q.shape
        want_S, want_z = (B, H, D, v.shape[-1]), (B, H, D)
        if not isinstance(initial_state, LinearAttentionState):
            if not (isinstance(initial_state, (tuple, list)) and len(initial_state) == 2):
                got = type(initial_state).__name__
                raise TypeError(f"initial_state must be a LinearAttentionState or a tuple (S, z), got {got}")
            initial_state = LinearAttentionState(*initial_state)
        if tuple(initial_state.S.shape) != want_S or tuple(initial_state.z.shape) != want_z:
            raise ValueError(
                f"initial_state has S {tuple(initial_state.S.shape)} and z {tuple(initial_state.z.shape)}; "
                f"expected S {want_S} and z {want_z}"
            )
    return initial_state


def _parallel(fq, fk, v, S0, z0, causal):
    """The definition: (phi(Q) phi(K)^T, causally masked) V, plus what the carried state adds."""
    A = fq @ fk.transpose(-1, -2)  # (B, H, T, T)
    if causal:
        T = A.shape[-1]
        keep = torch.ones(T, T, dtype=torch.bool, device=A.device).tril()
        A = A.masked_fill(~keep, 0.0)
    num = A @ v + fq @ S0  # (B, H, T, Dv)
    den = A.sum(-1) + (fq @ z0.unsqueeze(-1))[..., 0]  # (B, H, T)
    return num, den, S0 + fk.transpose(-1, -2) @ v, z0 + fk.sum(-2)


def _recurrent(fq, fk, v, S0, z0):
    """Token by token through (S, z) (Sec. 3.4): each iteration is the decode step of a linear transformer."""
    S, z = S0, z0
    nums, dens = [], []
    for t in range(fq.shape[2]):
        S = S + fk[:, :, t, :, None] * v[:, :, t, None, :]  # (B, H, D, Dv): add phi(k_t) v_t^T
        z = z + fk[:, :, t]  # (B, H, D)
        nums.append((fq[:, :, t, None, :] @ S)[:, :, 0])  # (B, H, Dv)
        dens.append((fq[:, :, t] * z).sum(-1))  # (B, H)
    B, H, _, Dv = v.shape
    if not nums:  # T = 0: nothing to attend
        return v.new_zeros(B, H, 0, Dv), v.new_zeros(B, H, 0), S, z
    return torch.stack(nums, 2), torch.stack(dens, 2), S, z


def _chunk(fq, fk, v, S0, z0, chunk_size):
    """Blocks of C tokens: the masked quadratic form inside a block, the carried state between blocks.

    Zero padding of phi(k) up to a whole number of blocks adds nothing to S or z, so padding is exact.
    """
    B, H, T, D = fq.shape
    Dv = v.shape[-1]
    C = chunk_size
    N = -(-T // C)  # number of blocks
    pad = N * C - T
    fq, fk, v = (F.pad(x, (0, 0, 0, pad)) for x in (fq, fk, v))
    qc = fq.view(B, H, N, C, D)
    kc = fk.view(B, H, N, C, D)
    vc = v.view(B, H, N, C, Dv)
    # Inside each block: the parallel form.
    A = qc @ kc.transpose(-1, -2)  # (B, H, N, C, C)
    keep = torch.ones(C, C, dtype=torch.bool, device=A.device).tril()
    A = A.masked_fill(~keep, 0.0)
    num = A @ vc  # (B, H, N, C, Dv)
    den = A.sum(-1)  # (B, H, N, C)
    # Between blocks: the state before block n is S0 plus the sums over blocks 0..n-1 (an exclusive cumsum).
    kv = kc.transpose(-1, -2) @ vc  # (B, H, N, D, Dv)
    ks = kc.sum(-2)  # (B, H, N, D)
    kv_cum, ks_cum = kv.cumsum(2), ks.cumsum(2)
    S_before = S0.unsqueeze(2) + F.pad(kv_cum[:, :, :-1], (0, 0, 0, 0, 1, 0))  # (B, H, N, D, Dv)
    z_before = z0.unsqueeze(2) + F.pad(ks_cum[:, :, :-1], (0, 0, 1, 0))  # (B, H, N, D)
    num = num + qc @ S_before
    den = den + (qc @ z_before.unsqueeze(-1))[..., 0]
    num = num.reshape(B, H, N * C, Dv)[:, :, :T]
    den = den.reshape(B, H, N * C)[:, :, :T]
    return num, den, S0 + kv_cum[:, :, -1], z0 + ks_cum[:, :, -1]


def _global(fq, fk, v, S0, z0):
    """Non-causal recurrent / chunk forms: every query reads the same global sums S_T, z_T."""
    S = S0 + fk.transpose(-1, -2) @ v  # (B, H, D, Dv)
    z = z0 + fk.sum(-2)  # (B, H, D)
    return fq @ S, (fq @ z.unsqueeze(-1))[..., 0], S, z


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    mode: str = "chunk",
    feature_map: FeatureMap = "elu1",
    normalize: bool = True,
    chunk_size: int = 64,
    initial_state: LinearAttentionState | tuple[torch.Tensor, torch.Tensor] | None = None,
    return_state: bool = False,
    return_weights: bool = False,
    eps: float = 1e-6,
):
    """Linear attention out_t = phi(q_t)^T S_t / (phi(q_t) . z_t + eps) in one of three equal forms.

    Args:
        q, k: (B, H, T, D) queries and keys (before the feature map).
        v: (B, H, T, Dv) values.
        causal: token t reads tokens <= t (running sums); False reads all T tokens (global sums).
        mode: "parallel" (masked quadratic, the definition), "recurrent" (token by token, the decode step)
            or "chunk" (blocks of ``chunk_size``: quadratic inside, recurrent between).
        feature_map: "elu1" (elu(x) + 1, the paper's), "relu", "identity" / None, or a callable on tensors.
        normalize: divide by phi(q_t) . z_t + eps; False returns the bare numerator phi(q_t)^T S_t.
        chunk_size: block length for mode="chunk" (any T works; the last block is zero-padded exactly).
        initial_state: a LinearAttentionState or (S, z) with S (B, H, D, Dv), z (B, H, D) from an earlier
            piece of the sequence; None starts from zeros.
        return_state: also return the state after the last token.
        return_weights: also return the implicit attention map (B, H, T, T) of the module docstring, built by
            the parallel formula whatever the mode; needs initial_state=None (a carried state keeps earlier
            tokens only as a sum, so they have no column).
        eps: added to the denominator.

    Returns:
        out (B, H, T, Dv) in the dtype of v; with ``return_weights`` and / or ``return_state`` a tuple
        (out, weights, state) of the ones asked for, in that order. The state is kept in float32 (or float64)
        even for half-precision inputs; the weights are in the dtype of v.

    Half-precision inputs are computed in float32 and cast back: the running sums grow with T.

    Example:

        >>> import torch
        >>> from qkv.ops import linear_attention
        >>> q, k, v = (torch.randn(1, 2, 7, 4, dtype=torch.float64) for _ in range(3))
        >>> out = linear_attention(q, k, v, mode="chunk", chunk_size=3)     # (B, H, T, Dv)
        >>> out.shape, torch.allclose(out, linear_attention(q, k, v, mode="recurrent"))
        (torch.Size([1, 2, 7, 4]), True)
        >>> _, w = linear_attention(q, k, v, return_weights=True)          # the implicit (B, H, T, T) map
        >>> torch.allclose(w.sum(-1), torch.ones(1, 2, 7, dtype=torch.float64))
        True
    """
    initial_state = _check(q, k, v, causal, mode, chunk_size, initial_state)
    refuse_weights_with_state(return_weights, initial_state)
    phi = feature_map_fn(feature_map)
    cdt = compute_dtype(q, v)
    fq, fk, vv = phi(q.to(cdt)), phi(k.to(cdt)), v.to(cdt)
    B, H, T, D = q.shape
    if initial_state is None:
        S0 = q.new_zeros(B, H, D, v.shape[-1], dtype=cdt)  # (B, H, D, Dv)
        z0 = q.new_zeros(B, H, D, dtype=cdt)  # (B, H, D)
    else:
        S0, z0 = initial_state.S.to(cdt), initial_state.z.to(cdt)
    global_sums = not causal and mode != "parallel"  # every query reads the same sums: one form serves both
    num, den, S, z = _global(fq, fk, vv, S0, z0) if global_sums else run_form(
        mode, parallel=lambda: _parallel(fq, fk, vv, S0, z0, causal), recurrent=lambda: _recurrent(fq, fk, vv, S0, z0),
        chunk=lambda C: _chunk(fq, fk, vv, S0, z0, C), tokens=T, chunk_size=chunk_size)
    out = num / (den + eps).unsqueeze(-1) if normalize else num
    weights = implicit_weights(fq, fk, causal, normalize, eps).to(v.dtype) if return_weights else None
    return outputs(out.to(v.dtype), weights, LinearAttentionState(S, z) if return_state else None)


def implicit_weights(fq: torch.Tensor, fk: torch.Tensor, causal: bool, normalize: bool, eps: float) -> torch.Tensor:
    """A[t, s] = phi(q_t) . phi(k_s) / (phi(q_t) . z_t + eps), (B, H, T, T), from feature-mapped queries and keys:
    the matrix the parallel form multiplies V by (eq. 4-5 read as attention). Causal: s <= t only."""
    A = fq @ fk.transpose(-1, -2)  # (B, H, T, T)
    if causal:
        T = A.shape[-1]
        A = A.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=A.device).tril(), 0.0)
    return A / (A.sum(-1, keepdim=True) + eps) if normalize else A
