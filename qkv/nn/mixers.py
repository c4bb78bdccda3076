"""Linear-time token mixers with MultiHeadAttention's forward contract: linear attention, multi-scale retention and
a compressive-memory hybrid of softmax and linear attention. (RWKV-4 needs a state in its FFN too: see rwkv.py.)

Each layer trains with the chunk form of its op (matmul-friendly, O(T * chunk)) and decodes through a fixed-size
state: ``new_cache()`` returns a ``qkv.cache.RecurrentCache`` whose size never grows with the tokens fed. A forward
with a cache continues the cached sequence: a prompt goes through the chunk form starting from the state, a single
token through the recurrent step; both equal the full pass.

forward(x, context=None, *, mask=None, causal=True, cache=None, return_weights=False, rope=None, bias=None,
window=None) takes the same arguments as MultiHeadAttention so that Block can hold any mixer. What a layer cannot
honour raises instead of being ignored: cross-attention (context), padding masks (the state sums every token fed;
left padding would leak into it), logit biases (ALiBi, T5) and windows.

return_weights gives (out, weights (B, H, T, T)): the implicit attention map of the layer's parallel form, the
matrix that multiplies the values (before the output projection, gates and norms). A recurrent state keeps earlier
tokens only as a sum, so weights need a call without a cache or with an empty one.

Shapes: B batch, T new tokens, H heads, D head size, Dv value size.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..cache import RecurrentCache
from ..ops.attention import attention
from ..ops.linear_attention import LinearAttentionState, feature_map_fn, linear_attention
from ..ops.retention import RetentionState, retention
from ..ops.rope import apply_rope


def check_mixer_call(layer: str, *, context=None, mask=None, bias=None, window=None, rope=None, causal=True,
                     rope_ok: bool = False, noncausal_ok: bool = False, cache=None) -> None:
    """Raise on the MultiHeadAttention arguments a recurrent layer cannot honour (shared by every mixer here)."""
    if context is not None:
        raise ValueError(f"{layer} is a self-attention mixer: context must be None, got a tensor of shape "
                         f"{tuple(context.shape)} (use MultiHeadAttention for cross-attention)")
    if mask is not None:
        raise NotImplementedError(f"{layer} takes no padding mask (got one): its state sums every token fed, so "
                                  "feed unpadded (or right-padded) sequences without attention_mask")
    if bias is not None:
        raise ValueError(f"{layer} takes no logits bias (ALiBi / T5 relative positions); got one: use "
                         "position='none', 'learned' or (retention) 'rope'")
    if window is not None:
        raise ValueError(f"{layer} has no sliding window; got window={window!r}, expected None")
    if rope is not None and not rope_ok:
        raise ValueError(f"{layer} takes no rotary tables; got rope tables: use position='none' or 'learned'")
    if not causal and not noncausal_ok:
        raise ValueError(f"{layer} is causal by construction; got causal=False")
    if cache is not None and not isinstance(cache, RecurrentCache):
        raise TypeError(f"{layer} needs a RecurrentCache from its new_cache(), got {type(cache).__name__}")


def check_weights_call(layer: str, cache, return_weights: bool) -> None:
    """Weights are the parallel form's matrix over the tokens of one call: refuse them after earlier tokens."""
    if return_weights and cache is not None and cache.length:
        raise ValueError(f"{layer}: return_weights=True needs no cache or an empty one (the state holds "
                         f"{cache.length} earlier tokens only as a sum, so they have no weights)")


def _split_heads(x: torch.Tensor, n: int, d: int) -> torch.Tensor:
    B, T, _ = x.shape
    return x.view(B, T, n, d).transpose(1, 2)  # (B, n, T, d)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)  # (B, T, H * D)


def _head_dim(d_model: int, n_heads: int, head_dim: int | None) -> int:
    if n_heads < 1:
        raise ValueError(f"n_heads must be >= 1, got {n_heads}")
    if head_dim is None:
        if d_model % n_heads:
            raise ValueError(f"n_heads ({n_heads}) must divide d_model ({d_model}) unless head_dim is given")
        head_dim = d_model // n_heads
    return head_dim


class LinearAttention(nn.Module):
    """Causal linear attention (Katharopoulos et al. 2020): out_t = phi(q_t)^T S_t / (phi(q_t) . z_t), with
    S_t = sum_{s<=t} phi(k_s) v_s^T and z_t = sum_{s<=t} phi(k_s) as the whole decoding state (Sec. 3.4).

    Parameters: ``qkv`` (d_model -> 3 H D, [W_Q; W_K; W_V]) and ``out`` (H D -> d_model, W_O).
    Args: feature_map: "elu1" (the paper's elu(x) + 1), "relu", "identity". chunk_size: block length of the
    training form. causal=False (no cache) gives the non-causal form over global sums."""

    def __init__(self, d_model: int, n_heads: int, *, feature_map: str = "elu1", head_dim: int | None = None,
                 bias: bool = False, chunk_size: int = 64, eps: float = 1e-6):
        super().__init__()
        feature_map_fn(feature_map)  # validate early
        self.n_heads, self.head_dim = n_heads, _head_dim(d_model, n_heads, head_dim)
        self.feature_map, self.chunk_size, self.eps = feature_map, chunk_size, eps
        self.qkv = nn.Linear(d_model, 3 * n_heads * self.head_dim, bias=bias)
        self.out = nn.Linear(n_heads * self.head_dim, d_model, bias=bias)

    def new_cache(self, max_len: int | None = None) -> RecurrentCache:
        """An empty state (S, z), allocated on first use; max_len is accepted for the common interface."""
        return RecurrentCache()

    def forward(self, x, context=None, *, mask=None, causal: bool = True, cache: RecurrentCache | None = None,
                return_weights: bool = False, rope=None, bias=None, window=None):
        """x: (B, T, d_model) -> (B, T, d_model); with ``cache`` the tokens continue the cached sequence."""
        check_mixer_call("LinearAttention", context=context, mask=mask, bias=bias, window=window, rope=rope,
                         causal=causal, noncausal_ok=cache is None, cache=cache)
        check_weights_call("LinearAttention", cache, return_weights)
        H, D = self.n_heads, self.head_dim
        q, k, v = (_split_heads(t, H, D) for t in self.qkv(x).chunk(3, dim=-1))  # (B, H, T, D) each
        state = LinearAttentionState(cache["S"], cache["z"]) if cache is not None and "S" in cache else None
        # The recurrent form is the decode step; the chunk form serves training and prompts (same function).
        mode = "recurrent" if cache is not None and x.shape[1] == 1 else "chunk"
        y, *weights, state = linear_attention(q, k, v, causal=causal, mode=mode, feature_map=self.feature_map,
                                              chunk_size=self.chunk_size, initial_state=state, return_state=True,
                                              return_weights=return_weights, eps=self.eps)
        if cache is not None:
            cache["S"], cache["z"] = state.S, state.z  # (B, H, D, D), (B, H, D)
            cache.length += x.shape[1]
        out = self.out(_merge_heads(y))
        return (out, weights[0]) if return_weights else out


def retention_decays(n_heads: int, *, device=None) -> torch.Tensor:
    """RetNet's multi-scale decays gamma_h = 1 - 2^(-5 - h), h = 0 .. H-1 (Sun et al. 2023, Sec. 2.2), float64:
    head 0 forgets fastest (effective span ~32 tokens), each next head remembers twice as long."""
    h = torch.arange(n_heads, device=device, dtype=torch.float64)
    return 1.0 - 2.0 ** (-5.0 - h)


class MultiScaleRetention(nn.Module):
    """Multi-scale retention, RetNet's mixer (Sun et al. 2023, Sec. 2.2, eq. 8):

        Y = GroupNorm_h(Retention(X, gamma_h)),   out = W_O (swish(W_G X) * Y)

    with one decay gamma_h per head (``retention_decays``), a GroupNorm per head over the retention output (the
    heads' scales differ with their decays) and a swish gate. Relative position: rotary tables passed as ``rope``
    (the model's RoPE; RetNet's xPos is RoPE with an extra per-feature decay, left out here).

    Parameters: ``qkv`` (d_model -> 2 H D + H Dv), ``gate`` (d_model -> H Dv), ``norm`` (GroupNorm, H groups),
    ``out`` (H Dv -> d_model). value_factor: Dv = value_factor * D (RetNet uses 2 and a smaller FFN)."""

    def __init__(self, d_model: int, n_heads: int, *, head_dim: int | None = None, value_factor: int = 2,
                 bias: bool = False, chunk_size: int = 64, norm_eps: float = 1e-5):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, _head_dim(d_model, n_heads, head_dim)
        self.value_dim = value_factor * self.head_dim
        self.chunk_size = chunk_size
        H, D, Dv = n_heads, self.head_dim, self.value_dim
        self.qkv = nn.Linear(d_model, 2 * H * D + H * Dv, bias=bias)
        self.gate = nn.Linear(d_model, H * Dv, bias=bias)
        self.norm = nn.GroupNorm(H, H * Dv, eps=norm_eps)
        self.out = nn.Linear(H * Dv, d_model, bias=bias)
        # The gammas, made once per device: not a buffer, so that model.to(bfloat16) cannot round 1 - 2^-9 to 1.
        self._decays: dict[torch.device, torch.Tensor] = {}

    def decays(self, device) -> torch.Tensor:
        """The per-head gammas (H,) in float64 on ``device``, built on first use there."""
        device = torch.device(device)
        if device not in self._decays:
            self._decays[device] = retention_decays(self.n_heads, device=device)
        return self._decays[device]

    def new_cache(self, max_len: int | None = None) -> RecurrentCache:
        """An empty state S (B, H, D, Dv), allocated on first use."""
        return RecurrentCache()

    def forward(self, x, context=None, *, mask=None, causal: bool = True, cache: RecurrentCache | None = None,
                return_weights: bool = False, rope=None, bias=None, window=None):
        """x: (B, T, d_model) -> (B, T, d_model). rope: (cos, sin) tables for the new tokens' positions."""
        check_mixer_call("MultiScaleRetention", context=context, mask=mask, bias=bias, window=window, rope=rope,
                         causal=causal, rope_ok=True, cache=cache)
        check_weights_call("MultiScaleRetention", cache, return_weights)
        B, T, _ = x.shape
        H, D, Dv = self.n_heads, self.head_dim, self.value_dim
        q, k, v = self.qkv(x).split([H * D, H * D, H * Dv], dim=-1)
        q, k, v = _split_heads(q, H, D), _split_heads(k, H, D), _split_heads(v, H, Dv)  # (B, H, T, D|Dv)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        state = RetentionState(cache["S"]) if cache is not None and "S" in cache else None
        mode = "recurrent" if cache is not None and T == 1 else "chunk"
        y, *weights, state = retention(q, k, v, self.decays(x.device), mode=mode, chunk_size=self.chunk_size,
                                       initial_state=state, return_state=True,
                                       return_weights=return_weights)  # (B, H, T, Dv)
        if cache is not None:
            cache["S"] = state.S
            cache.length += T
        # GroupNorm per head, per token, in float32 (Sec. 2.2: the heads' variances differ).
        ndt = torch.promote_types(x.dtype, torch.float32)
        y = _merge_heads(y).reshape(B * T, H * Dv).to(ndt)
        y = F.group_norm(y, H, self.norm.weight.to(ndt), self.norm.bias.to(ndt), self.norm.eps)
        y = y.to(x.dtype).view(B, T, H * Dv)
        out = self.out(F.silu(self.gate(x)) * y)
        return (out, weights[0]) if return_weights else out


class MemoryAttention(nn.Module):
    """Softmax attention within a segment plus a compressive linear-attention memory of all earlier segments:
    Infini-attention (Munkhdalai et al. 2024, Sec. 2.1), the hybrid in which attention writes to a recurrent state.

    For a token in segment s (segments of ``segment`` tokens) and sigma = elu + 1:

        A_local = softmax attention over the tokens of segment s up to itself (causal)
        A_mem   = sigma(q) M_{s-1} / (sigma(q) . z_{s-1})       (retrieval, eq. 3)
        out     = W_O (g_h A_mem + (1 - g_h) A_local),  g_h = sigmoid(beta_h) learned per head (eq. 6)

    and at the end of each segment the memory absorbs its keys and values: M_s = M_{s-1} + sigma(K_s)^T V_s,
    z_s = z_{s-1} + sum_t sigma(k_t) (the linear update, eq. 4). The full pass runs all segments at once (local
    attention batched over segments, memory by an exclusive cumulative sum); decoding keeps (M, z) plus the current
    segment's keys and values in a preallocated (segment)-long buffer: O(1) state in the sequence length."""

    def __init__(self, d_model: int, n_heads: int, *, segment: int = 64, head_dim: int | None = None,
                 bias: bool = False, eps: float = 1e-6):
        super().__init__()
        if isinstance(segment, bool) or not isinstance(segment, int) or segment < 1:
            raise ValueError(f"segment={segment!r} is invalid; expected an int >= 1 (tokens per local segment)")
        self.n_heads, self.head_dim = n_heads, _head_dim(d_model, n_heads, head_dim)
        self.segment, self.eps = segment, eps
        self.qkv = nn.Linear(d_model, 3 * n_heads * self.head_dim, bias=bias)
        self.out = nn.Linear(n_heads * self.head_dim, d_model, bias=bias)
        self.beta = nn.Parameter(torch.zeros(n_heads))  # sigmoid(0) = 1/2: local and memory mixed evenly

    def new_cache(self, max_len: int | None = None) -> RecurrentCache:
        """An empty state: memory M (B, H, D, D), z (B, H, D), segment buffers (B, H, segment, D)."""
        return RecurrentCache()

    def _retrieve(self, fq, M, z):
        """sigma(q) M / (sigma(q) . z + eps); an empty memory (first segment) reads 0."""
        return (fq @ M) / ((fq * z.unsqueeze(-2)).sum(-1, keepdim=True) + self.eps)

    def _mix(self, mem, local, dtype):
        g = torch.sigmoid(self.beta).to(mem.dtype).view(-1, *[1] * (mem.dim() - 2))  # (H, 1, ..)
        return (g * mem + (1 - g) * local.to(mem.dtype)).to(dtype)

    def forward(self, x, context=None, *, mask=None, causal: bool = True, cache: RecurrentCache | None = None,
                return_weights: bool = False, rope=None, bias=None, window=None):
        """x: (B, T, d_model) -> (B, T, d_model); with ``cache`` the tokens continue the cached sequence."""
        check_mixer_call("MemoryAttention", context=context, mask=mask, bias=bias, window=window, rope=rope,
                         causal=causal, cache=cache)
        check_weights_call("MemoryAttention", cache, return_weights)
        H, D = self.n_heads, self.head_dim
        q, k, v = (_split_heads(t, H, D) for t in self.qkv(x).chunk(3, dim=-1))  # (B, H, T, D) each
        y = self._parallel(q, k, v) if cache is None else self._continue(q, k, v, cache)
        out = self.out(_merge_heads(y))
        return (out, self.weights(q, k)) if return_weights else out

    def weights(self, q, k):
        """The map behind ``_parallel``, (B, H, T, T): (1 - g_h) x softmax over the token's own segment up to itself,
        plus g_h x sigma(q_t) . sigma(k_s) / (sigma(q_t) . z) over the earlier segments (the memory's keys)."""
        T = q.shape[2]
        seg = torch.arange(T, device=q.device) // self.segment
        local = (seg[:, None] == seg[None, :]) & torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        _, w_local = attention(q, k, k, mask=local, return_weights=True)  # (B, H, T, T)
        cdt = torch.promote_types(q.dtype, torch.float32)
        fq, fk = (F.elu(t.to(cdt)) + 1 for t in (q, k))
        scores = (fq @ fk.transpose(-1, -2)).masked_fill(~(seg[:, None] > seg[None, :]), 0.0)  # earlier segments
        w_mem = scores / (scores.sum(-1, keepdim=True) + self.eps)
        return self._mix(w_mem, w_local, q.dtype)

    def _parallel(self, q, k, v):
        """All segments at once: local attention batched over segments, the memory as an exclusive cumsum."""
        B, H, T, D = q.shape
        C = self.segment
        N = -(-T // C)
        pad = N * C - T  # zero padding at the end: later queries only, which are cut off below
        q, k, v = (F.pad(t, (0, 0, 0, pad)).reshape(B, H * N, C, D) for t in (q, k, v))  # segments as extra heads
        local = attention(q, k, v, causal=True).reshape(B, H, N, C, D)
        cdt = torch.promote_types(q.dtype, torch.float32)  # the sums grow with T: float32 at least
        fq, fk = ((F.elu(t.to(cdt)) + 1).reshape(B, H, N, C, D) for t in (q, k))  # sigma = elu + 1
        vv = v.to(cdt).reshape(B, H, N, C, D)
        kv = (fk.transpose(-1, -2) @ vv).cumsum(2)  # (B, H, N, D, D): memory after each segment
        ks = fk.sum(-2).cumsum(2)  # (B, H, N, D)
        M = F.pad(kv[:, :, :-1], (0, 0, 0, 0, 1, 0))  # memory before each segment (exclusive)
        z = F.pad(ks[:, :, :-1], (0, 0, 1, 0))
        mem = self._retrieve(fq, M, z)  # (B, H, N, C, D)
        return self._mix(mem, local, q.dtype).reshape(B, H, N * C, D)[:, :, :T]

    def _continue(self, q, k, v, cache: RecurrentCache):
        """Tokens after the cached ones, piece by piece so that no piece crosses a segment boundary."""
        B, H, T, D = q.shape
        C = self.segment
        cdt = torch.promote_types(q.dtype, torch.float32)
        if "M" not in cache:
            cache["M"] = q.new_zeros(B, H, D, D, dtype=cdt)
            cache["z"] = q.new_zeros(B, H, D, dtype=cdt)
            cache["k"], cache["v"] = q.new_zeros(B, H, C, D), v.new_zeros(B, H, C, D)  # preallocated segment
        outs, start = [], 0
        while start < T:
            fill = cache.length % C  # tokens of the current segment already in the buffer
            P = min(C - fill, T - start)
            qp, kp, vp = (t[:, :, start:start + P] for t in (q, k, v))
            keys = torch.cat([cache["k"][:, :, :fill], kp], 2)  # (B, H, fill + P, D)
            vals = torch.cat([cache["v"][:, :, :fill], vp], 2)
            local = attention(qp, keys, vals, causal=True)  # queries are the last P of the fill + P keys
            mem = self._retrieve(F.elu(qp.to(cdt)) + 1, cache["M"], cache["z"])
            outs.append(self._mix(mem, local, q.dtype))
            # Out of place, so the buffer's size stays fixed and autograd sees no in-place writes.
            cache["k"] = torch.cat([keys, cache["k"][:, :, fill + P:]], 2)
            cache["v"] = torch.cat([vals, cache["v"][:, :, fill + P:]], 2)
            cache.length += P
            start += P
            if cache.length % C == 0:  # segment complete: write it to the memory (eq. 4)
                fk = F.elu(cache["k"].to(cdt)) + 1
                cache["M"] = cache["M"] + fk.transpose(-1, -2) @ cache["v"].to(cdt)
                cache["z"] = cache["z"] + fk.sum(-2)
        return torch.cat(outs, 2) if outs else q.new_zeros(B, H, 0, D)
