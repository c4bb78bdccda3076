"""The attention of a recurrent decoder over its encoder's outputs: one head, the scores of ``qkv.ops.attention``.

Where it sits is the variant's choice, made by the decoder (``qkv/nn/rnn_decoder.py``):
  bahdanau  queried by the previous decoder state s_{i-1}; the context enters the recurrence (Bahdanau et al.
            2015, sec. 3.1 and appendix A.1.2)
  global    queried by the current top state h_t, over every source position (Luong et al. 2015, sec. 3.1)
  local_m   the same inside the window [t - D, t + D] (sec. 3.2, monotonic)
  local_p   the same inside [p_t - D, p_t + D], p_t predicted from h_t, weighted by a Gaussian (sec. 3.2, eq. 9-10)

The score is any of ``qkv.ops.SCORES``: Bahdanau's alignment model and Luong's "concat" are ``additive``
(v^T tanh(W_q q + W_k k)), Luong's "general" is ``bilinear`` (q^T W k), "dot" is ``dot``. The keys' half of an
additive score is computed once per source (``keys``), not at every step.

Glossary: B batch, T target steps, S source positions, Dq query size (the decoder state), Dm memory size (the
encoder's outputs: twice its state size when bidirectional), A the additive score's hidden size.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..ops.attention import SCORES, attention
from ..ops.local_attention import local_attention, predicted_centers, source_positions

KINDS = ("bahdanau", "global", "local_m", "local_p")


class RecurrentAttention(nn.Module):
    """One attention head from a decoder state (Dq) over encoder outputs (Dm).

    Args:
        query_dim: Dq. memory_dim: Dm. kind: one of ``KINDS``. score: one of ``qkv.ops.SCORES`` (dot-like scores
            need Dq == Dm). half_width: D of the local kinds. hidden: A of the additive score and of local-p's
            position network (default Dq).
    Parameters: additive W_q (A, Dq), W_k (A, Dm), v (A,), b (A,); bilinear W (Dq, Dm); local-p W_p (A, Dq),
    v_p (A,).

    Example:

        >>> import torch
        >>> from qkv.nn import RecurrentAttention
        >>> attn = RecurrentAttention(8, 16, kind="local_p", score="bilinear", half_width=2)
        >>> memory = torch.randn(1, 6, 16)                  # encoder outputs (B, S, Dm)
        >>> context, w = attn(torch.randn(1, 3, 8), attn.keys(memory), memory[:, None])
        >>> tuple(context.shape), tuple(w.shape)            # (B, T, Dm), (B, T, S)
        ((1, 3, 16), (1, 3, 6))
        >>> bool((w.sum(-1) < 1).all())                     # local-p: the Gaussian multiplies after the softmax
        True
    """

    def __init__(self, query_dim: int, memory_dim: int, *, kind: str, score: str, half_width: int | None = None,
                 hidden: int | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if score in ("dot", "scaled_dot", "cosine") and query_dim != memory_dim:
            raise ValueError(f"score={score!r} compares the decoder state ({query_dim}) with the encoder outputs "
                             f"({memory_dim}) directly, so their sizes must agree; use 'bilinear' or 'additive'")
        local = kind in ("local_m", "local_p")
        if local and (not isinstance(half_width, int) or half_width < (1 if kind == "local_p" else 0)):
            raise ValueError(f"kind={kind!r} needs half_width, an int >= {1 if kind == 'local_p' else 0}, "
                             f"got {half_width!r}")
        self.kind, self.score, self.half_width = kind, score, half_width if local else None
        A = hidden or query_dim
        if score == "additive":
            self.W_q = nn.Parameter(torch.empty(A, query_dim))
            self.W_k = nn.Parameter(torch.empty(A, memory_dim))
            self.v = nn.Parameter(torch.empty(A))
            self.b = nn.Parameter(torch.zeros(A))
        elif score == "bilinear":
            self.W = nn.Parameter(torch.empty(query_dim, memory_dim))
        if kind == "local_p":
            self.W_p = nn.Parameter(torch.empty(A, query_dim))
            self.v_p = nn.Parameter(torch.empty(A))
        for p in self.parameters():
            nn.init.uniform_(p, -0.1, 0.1)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        """What the score compares queries with, from memory (B, S, Dm), once per source: (B, 1, S, A) = the
        memory times W_k^T for an additive score, else the memory itself (B, 1, S, Dm)."""
        if self.score == "additive":
            return (memory @ self.W_k.transpose(-2, -1))[:, None]
        return memory[:, None]

    def _params(self, keys: torch.Tensor) -> dict | None:
        if self.score == "additive":
            return {"W_q": self.W_q, "k_proj": keys, "v": self.v, "b": self.b}
        if self.score == "bilinear":
            return {"W": self.W}
        return None

    def forward(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, *,
                mask: torch.Tensor | None = None, steps: torch.Tensor | None = None):
        """query (B, T, Dq); keys from ``keys`` (B, 1, S, .); values (B, 1, S, Dm) the encoder outputs;
        mask (B, S), 1 = token, or None; steps (B, T) the target position t of each query, from 1 (local_m).

        Returns (context (B, T, Dm), weights (B, T, S)). Local weights are zero outside the window (and local-p's
        sum to less than 1: the Gaussian multiplies after the softmax, eq. 10)."""
        q = query[:, None]  # (B, 1, T, Dq)
        k = values if self.score == "additive" else keys  # additive: the projected keys ride in params
        allowed = None if mask is None else mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        params = self._params(keys)
        if self.kind in ("bahdanau", "global"):
            out, weights = attention(q, k, values, score=self.score, mask=allowed, params=params, return_weights=True)
            return out[:, 0], weights[:, 0]
        S = values.shape[2]
        dtype = torch.promote_types(query.dtype, torch.float32)  # positions counted exactly in float32 at least
        positions, lengths = source_positions(mask, S, device=query.device, dtype=dtype)
        if self.kind == "local_m":
            centers = steps.to(dtype)  # p_t = t
        else:
            centers = predicted_centers(query.to(dtype), self.W_p.to(dtype), self.v_p.to(dtype), lengths)
        out, weights = local_attention(q, k, values, centers, positions, half_width=self.half_width,
                                       gaussian=self.kind == "local_p", mask=allowed, score=self.score, params=params)
        return out[:, 0], weights[:, 0]
