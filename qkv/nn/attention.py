"""Multi-head attention: project to heads, attend (qkv.ops.attention), concatenate, project back with W_O."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..ops.attention import SCORES, attention
from ..ops.linear import linear
from ..ops.rope import apply_rope
from .cache import CrossKVCache, KVCache
from .layers import Linear


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention with H query heads and G key/value heads (G = H: multi-head; G = 1: multi-query;
    otherwise grouped-query, Ainslie et al. 2023).

    Parameters: one input projection ``qkv`` (d_model -> (H + 2G) * D, laid out [W_Q; W_K; W_V]) and ``out``
    (H * D -> d_model, W_O). Cross-attention applies the W_Q rows to x and the W_K, W_V rows to the context.

    Args:
        d_model: model width. n_heads: H. n_kv_heads: G (default H).
        head_dim: D (default d_model / H). score: a name from ``qkv.ops.SCORES``.
        bias: biases on the input projection; out_bias: on W_O (default: ``bias``).
        dropout: on the attention weights while training. scale: the logit scale (default D^-0.5).
        q_norm, k_norm: modules applied to each head's queries / keys (D features) before RoPE: query-key
            normalisation (Qwen3, Gemma 3). softcap: attention-logit soft-capping (``qkv.ops.attention``).
    """

    def __init__(self, d_model: int, n_heads: int, *, n_kv_heads: int | None = None, head_dim: int | None = None,
                 score: str = "scaled_dot", bias: bool = True, out_bias: bool | None = None, dropout: float = 0.0,
                 scale: float | None = None, q_norm: nn.Module | None = None, k_norm: nn.Module | None = None,
                 softcap: float | None = None):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads < 1 or n_kv_heads < 1:
            raise ValueError(f"n_heads and n_kv_heads must be >= 1, got n_heads={n_heads}, n_kv_heads={n_kv_heads}")
        if head_dim is None:
            if d_model % n_heads:
                raise ValueError(f"n_heads ({n_heads}) must divide d_model ({d_model}) unless head_dim is given")
            head_dim = d_model // n_heads
        if n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads ({n_kv_heads}) must divide n_heads ({n_heads})")
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.score, self.scale, self.dropout, self.softcap = score, scale, dropout, softcap
        self.q_norm, self.k_norm = q_norm, k_norm
        self.qkv = Linear(d_model, (n_heads + 2 * n_kv_heads) * head_dim, bias=bias)
        self.out = Linear(n_heads * head_dim, d_model, bias=bias if out_bias is None else out_bias)
        # Learned score parameters, shared by the heads (Luong's W; Bahdanau's W_q, W_k, v with A = D).
        if score == "bilinear":
            self.W = nn.Parameter(torch.randn(n_heads, head_dim, head_dim) * head_dim ** -0.5)
        elif score == "additive":
            self.W_q = nn.Parameter(torch.randn(head_dim, head_dim) * head_dim ** -0.5)
            self.W_k = nn.Parameter(torch.randn(head_dim, head_dim) * head_dim ** -0.5)
            self.v = nn.Parameter(torch.randn(head_dim) * head_dim ** -0.5)

    def new_cache(self, max_len: int | None = None, *, window: int | None = None, static: bool = False,
                  rewind: int = 0) -> KVCache:
        """An empty self-attention cache for this layer (buffers allocated on first use). With ``window`` (the
        layer's sliding window) it keeps only the keys a later query can see (plus ``rewind``): memory bounded by
        the window. static: fixed shapes (see ``qkv.nn.cache``)."""
        return KVCache(max_len, window=window, static=static, rewind=rewind)

    def _score_params(self):
        if self.score == "bilinear":
            return {"W": self.W}
        if self.score == "additive":
            return {"W_q": self.W_q, "W_k": self.W_k, "v": self.v}
        return None

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)  # (B, n, T, D)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, *, mask=None, causal: bool = False,
                cache: KVCache | CrossKVCache | None = None, return_weights: bool = False, rope=None, bias=None,
                window: int | None = None, token_mask=None):
        """x: (B, T, d_model). context: (B, S, d_model) for cross-attention (None: self-attention).

        mask: bool (True = may attend) or float additive, broadcastable to (B, H, T, S). causal / window: see
        ``qkv.ops.attention``. cache: a KVCache (self-attention: the new keys are written at the cache's positions
        for them, and the queries see the keys it hands back) or a CrossKVCache (cross-attention: context keys
        computed once). rope: (cos, sin) tables for x's positions. bias: float logits bias (ALiBi, T5 relative
        positions). token_mask: the recurrent mixers' (B, T) padding; attention reads padding from ``mask``.

        Returns (B, T, d_model), or (out, weights (B, H, T, S)) when ``return_weights``."""
        if x.dim() != 3:
            raise ValueError(f"x must be (B, T, d_model), got shape {tuple(x.shape)}")
        H, G, D = self.n_heads, self.n_kv_heads, self.head_dim
        W, b = self.qkv.weight, self.qkv.bias
        if context is None:
            q, k, v = self.qkv(x).split([H * D, G * D, G * D], dim=-1)
            q, k, v = self._heads(q, H), self._heads(k, G), self._heads(v, G)  # (B, H|G, T, D)
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            if cache is not None:
                k, v = cache.update(k, v)  # (B, G, S, D): the keys to see (a rolling cache: the last S)
                S = k.shape[2]
                # a rolling cache returns only the keys still in the window: align the mask and bias to them
                if mask is not None and mask.shape[-1] > S:
                    mask = mask[..., -S:]
                if bias is not None and bias.shape[-1] > S:
                    bias = bias[..., -S:]
        else:
            q = self._heads(linear(x, W[: H * D], None if b is None else b[: H * D]), H)
            if self.q_norm is not None:
                q = self.q_norm(q)
            if cache is not None and cache.k is not None:
                k, v = cache.k, cache.v  # the encoder's keys and values, computed at the first step
            else:
                kv = linear(context, W[H * D:], None if b is None else b[H * D:])
                k, v = (self._heads(t, G) for t in kv.split([G * D, G * D], dim=-1))
                if self.k_norm is not None:
                    k = self.k_norm(k)
                if cache is not None:
                    cache.k, cache.v = k, v
        result = attention(q, k, v, score=self.score, mask=mask, causal=causal, window=window, bias=bias,
                           scale=self.scale, dropout_p=self.dropout if self.training else 0.0,
                           return_weights=return_weights, params=self._score_params(), softcap=self.softcap)
        out, weights = result if return_weights else (result, None)
        B, _, T, _ = out.shape
        out = self.out(out.transpose(1, 2).reshape(B, T, H * D))  # concatenate heads, then W_O
        return (out, weights) if return_weights else out
