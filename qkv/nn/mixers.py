"""Linear-time token mixers with MultiHeadAttention's forward contract: linear attention, multi-scale retention and
a compressive-memory hybrid of softmax and linear attention. (RWKV-4 needs a state in its FFN too: see rwkv.py.)

Each layer trains with the chunk form of its op (matmul-friendly, O(T * chunk)) and decodes through a fixed-size
state: ``new_cache()`` returns a ``qkv.nn.cache.RecurrentCache`` whose size never grows with the tokens fed. A
forward with a cache continues the cached sequence: a prompt goes through the chunk form starting from the state, a
single token through the recurrent step; both equal the full pass.

forward(x, context=None, *, mask=None, causal=True, cache=None, return_weights=False, rope=None, bias=None,
window=None, token_mask=None) takes the same arguments as MultiHeadAttention so that Block can hold any mixer.
Padding comes as ``token_mask`` (B, T), True at real tokens: a padded token adds nothing to the state (its key's
contribution is zeroed; the state before it is empty, since padding is on the left of a prompt, so its decay does
not matter) and its output is zero, so a left-padded row gives what the row alone gives. What a layer cannot
honour raises instead of being ignored: cross-attention (context), key masks (``mask``: the state has no keys to
mask), logit biases (ALiBi, T5) and windows.

return_weights gives (out, weights (B, H, T, T)): the implicit attention map of the layer's parallel form, the
matrix that multiplies the values (before the output projection, gates and norms). A recurrent state keeps earlier
tokens only as a sum, so weights need a call without a cache or with an empty one.

Shapes: B batch, T new tokens, H heads, D head size, Dv value size.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.attention import attention
from ..ops.linear_attention import LinearAttentionState, feature_map_fn, linear_attention
from ..ops.retention import RetentionState, retention
from ..ops.rope import apply_rope
from .cache import RecurrentCache
from .layers import Linear


class MixerCall:
    """One forward of a recurrent mixer: the cache it continues (or None), the padding (``token_mask`` (B, T), True
    at real tokens), whether weights were asked for, the rotary tables and causality the stack passed, and the
    number of new tokens. ``run`` is the protocol every recurrent mixer shares, written once."""

    def __init__(self, cache, token_mask, return_weights: bool, rope, causal: bool, tokens: int):
        self.cache, self.token_mask, self.return_weights = cache, token_mask, return_weights
        self.rope, self.causal, self.tokens = rope, causal, tokens

    def real(self, x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """x (B, T, ...) with every entry of a padded token set to ``fill`` (``real_tokens``)."""
        return real_tokens(x, self.token_mask, fill)

    def real_heads(self, x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """x (B, H, T, D) with every entry of a padded token set to ``fill`` (``real_heads``)."""
        return real_heads(x, self.token_mask, fill)

    def run(self, op, *args, state_type, state_arg: str = "initial_state", **kwargs):
        """The state protocol: the state the cache holds (none before its first use: the op starts from zeros), the
        recurrent form for one cached token and the chunk form otherwise (a prompt, training), the op, the new state
        written back under its field names (``state_type``'s: S, z, a, b, p), the tokens committed. Returns
        (out, weights or None); ``args`` and ``kwargs`` go to ``op`` as they are."""
        cache = self.cache
        fields = tuple(state_type.__dataclass_fields__)  # the names the cache keeps the state under, in order
        state = state_type(*[cache[f] for f in fields]) if cache is not None and fields[0] in cache else None
        mode = "recurrent" if cache is not None and self.tokens == 1 else "chunk"
        y, *weights, new = op(*args, mode=mode, **{state_arg: state}, return_state=True,
                              return_weights=self.return_weights, **kwargs)
        if cache is not None:
            for f in fields:
                cache[f] = getattr(new, f)
            cache.commit(self.tokens)
        return y, (weights[0] if weights else None)


class RecurrentMixer(nn.Module):
    """A mixer whose decoding state is a fixed-size recurrent state (no per-token history): its cache is an empty
    RecurrentCache, filled on first use (max_len is accepted for the common interface).

    ``forward`` takes MultiHeadAttention's arguments, refuses what a recurrent layer cannot honour
    (``check_mixer_call``, ``check_weights_call``) and hands the rest to ``mix(x, call)`` as one ``MixerCall``;
    a subclass writes only ``mix``: its projections and gates around ``call.run(op, ...)``, returning (out,
    weights or None). rope_ok: it takes rotary tables (``call.rope``); noncausal_ok: without a cache it may run
    non-causally (``call.causal``)."""

    rope_ok = False
    noncausal_ok = False

    @property
    def layer_name(self) -> str:
        """The name errors give the layer."""
        return type(self).__name__

    def new_cache(self, max_len: int | None = None, *, static: bool = False) -> RecurrentCache:
        return RecurrentCache(static=static)

    def forward(self, x, context=None, *, mask=None, causal: bool = True, cache: RecurrentCache | None = None,
                return_weights: bool = False, rope=None, bias=None, window=None, token_mask=None, **extra):
        """x: (B, T, d_model) -> (B, T, d_model) [, weights (B, H, T, T)]; with ``cache`` the tokens continue the
        cached sequence. ``extra`` goes to ``mix`` (RWKV-7's ``shared``)."""
        check_mixer_call(self.layer_name, context=context, mask=mask, bias=bias, window=window, rope=rope,
                         causal=causal, rope_ok=self.rope_ok, noncausal_ok=self.noncausal_ok and cache is None,
                         cache=cache, token_mask=token_mask)
        check_weights_call(self.layer_name, cache, return_weights)
        out, weights = self.mix(x, MixerCall(cache, token_mask, return_weights, rope, causal, x.shape[1]), **extra)
        return (out, weights) if return_weights else out

    def mix(self, x: torch.Tensor, call: MixerCall):
        raise NotImplementedError(f"{type(self).__name__} does not define mix")


def check_mixer_call(layer: str, *, context=None, mask=None, bias=None, window=None, rope=None, causal=True,
                     rope_ok: bool = False, noncausal_ok: bool = False, cache=None, token_mask=None) -> None:
    """Raise on the MultiHeadAttention arguments a recurrent layer cannot honour (shared by every mixer here). Beside
    ``token_mask`` (which a model always passes with them), ``mask`` and ``causal`` are the stack's arguments for its
    attention layers (key padding, or a static cache's mask holding causality): this layer reads ``token_mask``."""
    if context is not None:
        raise ValueError(f"{layer} is a self-attention mixer: context must be None, got a tensor of shape "
                         f"{tuple(context.shape)} (use MultiHeadAttention for cross-attention)")
    if mask is not None and token_mask is None:
        raise NotImplementedError(f"{layer} takes no padding mask (got one): its state has no keys to mask; pass "
                                  "the padding as token_mask (B, T), True at real tokens")
    if bias is not None:
        raise ValueError(f"{layer} takes no logits bias (ALiBi / T5 relative positions); got one: use "
                         "position='none', 'learned' or (retention) 'rope'")
    if window is not None:
        raise ValueError(f"{layer} has no sliding window; got window={window!r}, expected None")
    if rope is not None and not rope_ok:
        raise ValueError(f"{layer} takes no rotary tables; got rope tables: use position='none' or 'learned'")
    if not causal and not noncausal_ok and token_mask is None:
        raise ValueError(f"{layer} is causal by construction; got causal=False")
    if cache is not None and not isinstance(cache, RecurrentCache):
        raise TypeError(f"{layer} needs a RecurrentCache from its new_cache(), got {type(cache).__name__}")


def check_weights_call(layer: str, cache, return_weights: bool) -> None:
    """Weights are the parallel form's matrix over the tokens of one call: refuse them after earlier tokens."""
    if return_weights and cache is not None and cache.length:
        raise ValueError(f"{layer}: return_weights=True needs no cache or an empty one (the state holds "
                         f"{cache.length} earlier tokens only as a sum, so they have no weights)")


def real_tokens(x: torch.Tensor, token_mask: torch.Tensor | None, fill: float = 0.0) -> torch.Tensor:
    """x (B, T, ...) with every entry of a padded token (``token_mask`` (B, T) False) set to ``fill``."""
    if token_mask is None:
        return x
    keep = token_mask.view(*token_mask.shape, *[1] * (x.dim() - 2))
    return torch.where(keep, x, torch.full((), fill, dtype=x.dtype, device=x.device))


def real_heads(x: torch.Tensor, token_mask: torch.Tensor | None, fill: float = 0.0) -> torch.Tensor:
    """x (B, H, T, D) with every entry of a padded token set to ``fill``."""
    if token_mask is None:
        return x
    return torch.where(token_mask[:, None, :, None], x, torch.full((), fill, dtype=x.dtype, device=x.device))


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


class LinearAttention(RecurrentMixer):
    """Causal linear attention (Katharopoulos et al. 2020): out_t = phi(q_t)^T S_t / (phi(q_t) . z_t), with
    S_t = sum_{s<=t} phi(k_s) v_s^T and z_t = sum_{s<=t} phi(k_s) as the whole decoding state (Sec. 3.4).

    Parameters: ``qkv`` (d_model -> 3 H D, [W_Q; W_K; W_V]) and ``out`` (H D -> d_model, W_O).
    Args: feature_map: "elu1" (the paper's elu(x) + 1), "relu", "identity". chunk_size: block length of the
    training form. causal=False (no cache) gives the non-causal form over global sums. The state is (S, z).

    Example:

        >>> import torch
        >>> from qkv.nn import LinearAttention
        >>> layer = LinearAttention(16, 2, feature_map="elu1").double()
        >>> x = torch.randn(2, 6, 16, dtype=torch.float64)                    # (B, T, d_model)
        >>> cache = layer.new_cache()                                          # a RecurrentCache: its size never grows
        >>> steps = torch.cat([layer(x[:, t:t + 1], cache=cache) for t in range(6)], dim=1)
        >>> layer(x).shape, torch.allclose(steps, layer(x))                    # token by token = one pass
        (torch.Size([2, 6, 16]), True)
        >>> _, w = layer(x, return_weights=True)                              # the implicit map (B, H, T, T)
        >>> w.shape, torch.allclose(w.sum(-1), torch.ones(2, 2, 6, dtype=torch.float64))   # rows sum to 1
        (torch.Size([2, 2, 6, 6]), True)
    """

    noncausal_ok = True

    def __init__(self, d_model: int, n_heads: int, *, feature_map: str = "elu1", head_dim: int | None = None,
                 bias: bool = False, chunk_size: int = 64, eps: float = 1e-6):
        super().__init__()
        feature_map_fn(feature_map)  # validate early
        self.n_heads, self.head_dim = n_heads, _head_dim(d_model, n_heads, head_dim)
        self.feature_map, self.chunk_size, self.eps = feature_map, chunk_size, eps
        self.qkv = Linear(d_model, 3 * n_heads * self.head_dim, bias=bias)
        self.out = Linear(n_heads * self.head_dim, d_model, bias=bias)

    def mix(self, x, call: MixerCall):
        H, D = self.n_heads, self.head_dim
        q, k, v = (_split_heads(t, H, D) for t in self.qkv(x).chunk(3, dim=-1))  # (B, H, T, D) each
        feature_map = self.feature_map
        if call.token_mask is not None:  # phi(k) = 0 at padding: neither S nor z sees it
            phi = feature_map_fn(feature_map)
            cdt = torch.promote_types(torch.promote_types(q.dtype, v.dtype), torch.float32)
            q, k, feature_map = phi(q.to(cdt)), call.real_heads(phi(k.to(cdt))), None
        causal = call.causal or call.cache is not None  # a cached forward continues a sequence (a static stack: False)
        y, weights = call.run(linear_attention, q, k, v, state_type=LinearAttentionState, causal=causal,
                              feature_map=feature_map, chunk_size=self.chunk_size, eps=self.eps)
        return self.out(call.real(_merge_heads(y))), weights


def retention_decays(n_heads: int, *, device=None) -> torch.Tensor:
    """RetNet's multi-scale decays gamma_h = 1 - 2^(-5 - h), h = 0 .. H-1 (Sun et al. 2023, Sec. 2.2), float64:
    head 0 forgets fastest (effective span ~32 tokens), each next head remembers twice as long.

    Example:

        >>> from qkv.nn import retention_decays
        >>> retention_decays(3).tolist()                    # 1 - 2^(-5 - h): head 0 forgets fastest
        [0.96875, 0.984375, 0.9921875]
    """
    h = torch.arange(n_heads, device=device, dtype=torch.float64)
    return 1.0 - 2.0 ** (-5.0 - h)


class MultiScaleRetention(RecurrentMixer):
    """Multi-scale retention, RetNet's mixer (Sun et al. 2023, Sec. 2.2, eq. 8):

        Y = GroupNorm_h(Retention(X, gamma_h)),   out = W_O (swish(W_G X) * Y)

    with one decay gamma_h per head (``retention_decays``), a GroupNorm per head over the retention output (the
    heads' scales differ with their decays) and a swish gate. Relative position: rotary tables passed as ``rope``
    (the model's RoPE; RetNet's xPos is RoPE with an extra per-feature decay, left out here).

    Parameters: ``qkv`` (d_model -> 2 H D + H Dv), ``gate`` (d_model -> H Dv), ``norm`` (GroupNorm, H groups),
    ``out`` (H Dv -> d_model). value_factor: Dv = value_factor * D (RetNet uses 2 and a smaller FFN). The state is
    S (B, H, D, Dv).

    Example:

        >>> import torch
        >>> from qkv.nn import MultiScaleRetention
        >>> layer = MultiScaleRetention(16, 2).double()
        >>> x = torch.randn(2, 6, 16, dtype=torch.float64)                    # (B, T, d_model)
        >>> cache = layer.new_cache()                                          # a RecurrentCache: its size never grows
        >>> steps = torch.cat([layer(x[:, t:t + 1], cache=cache) for t in range(6)], dim=1)
        >>> layer(x).shape, torch.allclose(steps, layer(x))                    # token by token = one pass
        (torch.Size([2, 6, 16]), True)
    """

    rope_ok = True

    def __init__(self, d_model: int, n_heads: int, *, head_dim: int | None = None, value_factor: int = 2,
                 bias: bool = False, chunk_size: int = 64, norm_eps: float = 1e-5):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, _head_dim(d_model, n_heads, head_dim)
        self.value_dim = value_factor * self.head_dim
        self.chunk_size = chunk_size
        H, D, Dv = n_heads, self.head_dim, self.value_dim
        self.qkv = Linear(d_model, 2 * H * D + H * Dv, bias=bias)
        self.gate = Linear(d_model, H * Dv, bias=bias)
        self.norm = nn.GroupNorm(H, H * Dv, eps=norm_eps)
        self.out = Linear(H * Dv, d_model, bias=bias)
        # The gammas, made once per device: not a buffer, so that model.to(bfloat16) cannot round 1 - 2^-9 to 1.
        self._decays: dict[torch.device, torch.Tensor] = {}

    def decays(self, device) -> torch.Tensor:
        """The per-head gammas (H,) in float64 on ``device``, built on first use there."""
        device = torch.device(device)
        if device not in self._decays:
            self._decays[device] = retention_decays(self.n_heads, device=device)
        return self._decays[device]

    def mix(self, x, call: MixerCall):
        """call.rope: (cos, sin) tables for the new tokens' positions, or None."""
        B, T, _ = x.shape
        H, D, Dv = self.n_heads, self.head_dim, self.value_dim
        q, k, v = self.qkv(x).split([H * D, H * D, H * Dv], dim=-1)
        q, k, v = _split_heads(q, H, D), _split_heads(k, H, D), _split_heads(v, H, Dv)  # (B, H, T, D|Dv)
        if call.rope is not None:
            q, k = apply_rope(q, *call.rope), apply_rope(k, *call.rope)
        k = call.real_heads(k)  # padding writes nothing into S
        y, weights = call.run(retention, q, k, v, self.decays(x.device), state_type=RetentionState,
                              chunk_size=self.chunk_size)  # (B, H, T, Dv)
        # GroupNorm per head, per token, in float32 (Sec. 2.2: the heads' variances differ).
        ndt = torch.promote_types(x.dtype, torch.float32)
        y = _merge_heads(y).reshape(B * T, H * Dv).to(ndt)
        y = F.group_norm(y, H, self.norm.weight.to(ndt), self.norm.bias.to(ndt), self.norm.eps)
        y = y.to(x.dtype).view(B, T, H * Dv)
        return self.out(call.real(F.silu(self.gate(x)) * y)), weights


class MemoryAttention(RecurrentMixer):
    """Softmax attention within a segment plus a compressive linear-attention memory of all earlier segments:
    Infini-attention (Munkhdalai et al. 2024, Sec. 2.1), the hybrid in which attention writes to a recurrent state.

    For a token in segment s (segments of ``segment`` tokens) and sigma = elu + 1:

        A_local = softmax attention over the tokens of segment s up to itself (causal)
        A_mem   = sigma(q) M_{s-1} / (sigma(q) . z_{s-1})       (retrieval, eq. 3)
        out     = W_O (g_h A_mem + (1 - g_h) A_local),  g_h = sigmoid(beta_h) learned per head (eq. 6)

    and at the end of each segment the memory absorbs its keys and values: M_s = M_{s-1} + sigma(K_s)^T V_s,
    z_s = z_{s-1} + sum_t sigma(k_t) (the linear update, eq. 4). The full pass runs all segments at once (local
    attention batched over segments, memory by an exclusive cumulative sum); decoding keeps (M, z) plus the current
    segment's keys and values in a preallocated (segment)-long buffer: O(1) state in the sequence length. The
    cache holds memory M (B, H, D, D), z (B, H, D), segment buffers (B, H, segment, D), and each row's count of real
    tokens ``pos`` (B,) (rows of a left-padded batch sit at different places in their segments).

    Example:

        >>> import torch
        >>> from qkv.nn import MemoryAttention
        >>> layer = MemoryAttention(16, 2, segment=2).double()
        >>> x = torch.randn(2, 5, 16, dtype=torch.float64)                    # (B, T, d_model)
        >>> cache = layer.new_cache()                                          # a RecurrentCache: its size never grows
        >>> steps = torch.cat([layer(x[:, t:t + 1], cache=cache) for t in range(5)], dim=1)
        >>> layer(x).shape, torch.allclose(steps, layer(x))                    # token by token = one pass
        (torch.Size([2, 5, 16]), True)
    """

    def __init__(self, d_model: int, n_heads: int, *, segment: int = 64, head_dim: int | None = None,
                 bias: bool = False, eps: float = 1e-6):
        super().__init__()
        if isinstance(segment, bool) or not isinstance(segment, int) or segment < 1:
            raise ValueError(f"segment={segment!r} is invalid; expected an int >= 1 (tokens per local segment)")
        self.n_heads, self.head_dim = n_heads, _head_dim(d_model, n_heads, head_dim)
        self.segment, self.eps = segment, eps
        self.qkv = Linear(d_model, 3 * n_heads * self.head_dim, bias=bias)
        self.out = Linear(n_heads * self.head_dim, d_model, bias=bias)
        self.beta = nn.Parameter(torch.zeros(n_heads))  # sigmoid(0) = 1/2: local and memory mixed evenly

    def _retrieve(self, fq, M, z):
        """sigma(q) M / (sigma(q) . z + eps); an empty memory (first segment) reads 0."""
        return (fq @ M) / ((fq * z.unsqueeze(-2)).sum(-1, keepdim=True) + self.eps)

    def _mix(self, mem, local, dtype):
        g = torch.sigmoid(self.beta).to(mem.dtype).view(-1, *[1] * (mem.dim() - 2))  # (H, 1, ..)
        return (g * mem + (1 - g) * local.to(mem.dtype)).to(dtype)

    def mix(self, x, call: MixerCall):
        """Its own state protocol: local attention needs the open segment's keys, not only a sum (``_continue``)."""
        H, D = self.n_heads, self.head_dim
        q, k, v = (_split_heads(t, H, D) for t in self.qkv(x).chunk(3, dim=-1))  # (B, H, T, D) each
        if call.cache is None and call.token_mask is None:
            y = self._parallel(q, k, v)
        else:
            y = self._continue(q, k, v, RecurrentCache() if call.cache is None else call.cache, call.token_mask)
        out = self.out(call.real(_merge_heads(y)))
        return out, (self.weights(q, k) if call.return_weights else None)

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

    def _continue(self, q, k, v, cache: RecurrentCache, token_mask=None):
        """Tokens after the cached ones (or the first ones, padded), in pieces of at most ``segment`` tokens, so that
        no piece crosses more than one segment boundary of any row. Per row: its real tokens' places ``r`` count
        from its own first real token (``pos``), which fixes its segments; padding takes none."""
        B, H, T, D = q.shape
        C = self.segment
        cdt = torch.promote_types(q.dtype, torch.float32)
        if "M" not in cache:
            cache["M"] = q.new_zeros(B, H, D, D, dtype=cdt)
            cache["z"] = q.new_zeros(B, H, D, dtype=cdt)
            cache["k"], cache["v"] = q.new_zeros(B, H, C, D), v.new_zeros(B, H, C, D)  # preallocated segment
            cache["pos"] = torch.zeros(B, dtype=torch.long, device=q.device)
        valid = torch.ones(B, T, dtype=torch.bool, device=q.device) if token_mask is None else token_mask.bool()
        outs = [self._piece(*(t[:, :, i:i + C] for t in (q, k, v)), valid[:, i:i + C], cache)
                for i in range(0, T, C)]
        cache.commit(T)
        return torch.cat(outs, 2) if outs else q.new_zeros(B, H, 0, D)

    def _piece(self, q, k, v, valid, cache: RecurrentCache):
        """P <= segment new tokens of every row against the state: local attention over the current segment's keys
        (buffered ones, then new ones), retrieval from the memory of the completed segments (M, z, plus the keys of
        this piece whose segment a later query of the piece has left), and the state after. Tensor ops only (no
        host read, no branch on values): the decode step and the compiled step. q, k, v (B, H, P, D); valid (B, P)."""
        C, P = self.segment, q.shape[2]
        cdt = torch.promote_types(q.dtype, torch.float32)
        pos, M, z, bk, bv = cache["pos"], cache["M"], cache["z"], cache["k"], cache["v"]
        r = pos[:, None] + valid.long().cumsum(1) - 1  # (B, P): each new real token's place in its row
        seg0 = pos // C  # (B,): the segment the buffer holds
        slot = torch.arange(C, device=q.device)
        k_pos = torch.cat([seg0[:, None] * C + slot, r], 1)  # (B, C + P): positions of buffered and new keys
        k_ok = torch.cat([slot < (pos % C)[:, None], valid], 1)  # buffered slots written, new keys real
        k_seg, q_seg = k_pos // C, r // C
        keys, vals = torch.cat([bk, k], 2), torch.cat([bv, v], 2)  # (B, H, C + P, D)
        local_ok = k_ok[:, None, :] & (k_seg[:, None, :] == q_seg[:, :, None]) & (k_pos[:, None, :] <= r[:, :, None])
        local = attention(q, keys, vals, mask=local_ok[:, None])  # (B, H, P, D); a query with no key gets 0
        fq, fk = F.elu(q.to(cdt)) + 1, F.elu(keys.to(cdt)) + 1  # sigma = elu + 1
        in_memory = k_ok[:, None, :] & (k_seg[:, None, :] < q_seg[:, :, None])  # (B, P, C + P): completed, not in M
        A = (fq @ fk.transpose(-1, -2)) * in_memory[:, None]  # (B, H, P, C + P)
        num = fq @ M + A @ vals.to(cdt)
        den = (fq * z.unsqueeze(-2)).sum(-1) + A.sum(-1)
        mem = num / (den + self.eps).unsqueeze(-1)  # retrieval (eq. 3) from every completed segment
        out = self._mix(mem, local, q.dtype)
        # The state after the piece: completed segments folded into the memory (eq. 4), the current one buffered.
        pos1 = pos + valid.sum(1)
        seg1 = pos1 // C
        fold = (k_ok & (k_seg < seg1[:, None])).to(cdt)[:, None, :, None]  # (B, 1, C + P, 1)
        cache["M"] = M + (fk * fold).transpose(-1, -2) @ vals.to(cdt)
        cache["z"] = z + (fk * fold).sum(-2)
        keep = (valid & (q_seg == seg1[:, None])).to(k.dtype)  # new keys of the segment still open
        into = (r % C)[:, :, None] == slot  # (B, P, C): the slot each new key goes to
        place = into.to(k.dtype) * keep[:, :, None]
        written = place.sum(1) > 0  # (B, C)
        cache["k"] = torch.where(written[:, None, :, None], torch.einsum("bpc,bhpd->bhcd", place, k), bk)
        cache["v"] = torch.where(written[:, None, :, None], torch.einsum("bpc,bhpd->bhcd", place, v), bv)
        cache["pos"] = pos1
        return out
