"""RWKV-4 (Peng et al. 2023, "RWKV: Reinventing RNNs for the Transformer Era", Sec. 3): a block of time mixing
(the WKV operator, qkv.ops.wkv4) and channel mixing, each fed a "token shift": a per-channel interpolation between
the current token's x and the previous token's x (Sec. 3.1.1, eq. 11-13).

Because the channel mix (RWKV's FFN) also reads the previous token, the decoding state spans the whole block, so
RWKV-4 gets its own block rather than a mixer inside ``Block`` (whose FFN is stateless). One RecurrentCache per
block holds everything (all of size (B, C), whatever the length):

    att_shift   ln1(x) of the previous token (time mix)       a, b, p   the WKV state (qkv.ops.WKVState)
    ffn_shift   ln2(x) of the previous token (channel mix)

Parameter names follow RWKV-LM's checkpoints (time_decay, time_first, time_mix_k, key, receptance, ...), so the
converter in qkv/hub/rwkv.py is a plain rename. Official checkpoints store time_decay = log w (w > 0 the decay
rate): the layer uses w = exp(time_decay), u = time_first.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..ops.wkv import WKVState, wkv4
from .block import BlockWeights
from .cache import RecurrentCache
from .layers import LayerNorm, Linear
from .mixers import MixerCall, RecurrentMixer, real_tokens


def token_shift(x: torch.Tensor, cache: RecurrentCache | None, name: str, token_mask=None) -> torch.Tensor:
    """The previous token's x at each position, (B, T, C): zeros before the first token (RWKV's ZeroPad2d shift),
    or the cached last token of the earlier call; stores this call's last token under ``name``. Padding
    (``token_mask`` (B, T) False) counts as zeros, so a row's first real token sees zeros before it."""
    x = real_tokens(x, token_mask)
    if cache is not None and name in cache:
        prev = cache[name].unsqueeze(1).to(x.dtype)  # (B, 1, C)
    else:
        prev = x.new_zeros(x.shape[0], 1, x.shape[2])
    shifted = torch.cat([prev, x[:, :-1]], 1)  # before the write: a static cache is written in place
    if cache is not None and x.shape[1]:
        cache[name] = x[:, -1]
    return shifted


def _mix(x, prev, mu):
    """mu * x + (1 - mu) * prev: how much of each channel comes from the current token (eq. 11-13)."""
    return x * mu + prev * (1 - mu)


class RWKVTimeMix(RecurrentMixer):
    """r = sigmoid(W_r mix_r), k = W_k mix_k, v = W_v mix_v; out = W_o (r * wkv(k, v)) (Sec. 3.1, eq. 11-15).

    d_att: width of k, v, r (RWKV-LM's dim_att, d_model in every released RWKV-4). chunk_size: block length of
    the WKV chunk form used for training and prompts; one token at a time uses the recurrent step.
    n_heads: RWKV-4 has none (every channel decays on its own); its per-channel attention maps are averaged over
    n_heads groups of adjacent channels for ``return_weights`` (plots), (B, n_heads, T, T).

    Example:

        >>> import torch
        >>> from qkv.nn import RWKVTimeMix
        >>> layer = RWKVTimeMix(16).double()
        >>> x = torch.randn(2, 5, 16, dtype=torch.float64)                    # (B, T, d_model)
        >>> cache = layer.new_cache()                                          # a RecurrentCache: its size never grows
        >>> steps = torch.cat([layer(x[:, t:t + 1], cache=cache) for t in range(5)], dim=1)
        >>> layer(x).shape, torch.allclose(steps, layer(x))                    # token by token = one pass
        (torch.Size([2, 5, 16]), True)
    """

    def __init__(self, d_model: int, d_att: int | None = None, *, layer: int = 0, n_layers: int = 1,
                 chunk_size: int = 16, n_heads: int = 1):
        super().__init__()
        d_att = d_att or d_model
        if n_heads < 1 or d_att % n_heads:
            raise ValueError(f"n_heads={n_heads} must be >= 1 and divide d_att ({d_att}): the channels are grouped "
                             f"into heads for the attention maps")
        self.chunk_size, self.n_heads = chunk_size, n_heads
        # Initialisation (ours, after the paper's description in Sec. 3.5 / appendix D): channel c of layer l
        # decays at rate w_c from ~e^-5 (remembers hundreds of tokens) to ~e^1 (a few tokens), deeper layers
        # remembering longer; the mix coefficients shade from "mostly the previous token" to "mostly this one".
        depth = layer / max(n_layers - 1, 1)  # 0 .. 1
        c = torch.linspace(0, 1, d_att)
        self.time_decay = nn.Parameter(-5 + 6 * c ** (1 + depth))  # log w, (d_att,)
        self.time_first = nn.Parameter(torch.full((d_att,), 0.3).log() + 0.5 * (c - 0.5))  # u, (d_att,)
        ramp = torch.linspace(0, 1, d_model) ** (1 - 0.5 * depth)
        self.time_mix_k = nn.Parameter(ramp.clone())
        self.time_mix_v = nn.Parameter((ramp + 0.1 * depth).clamp(max=1))
        self.time_mix_r = nn.Parameter(ramp.sqrt())
        self.key = Linear(d_model, d_att, bias=False)
        self.value = Linear(d_model, d_att, bias=False)
        self.receptance = Linear(d_model, d_att, bias=False)
        self.output = Linear(d_att, d_model, bias=False)

    def mix(self, x, call: MixerCall):
        """x: ln1 of the residual stream, (B, T, d_model). Its cache is the whole block's state (the channel mix's
        token shift too); the WKV state is a, b, p (B, d_att) each."""
        prev = token_shift(x, call.cache, "att_shift", call.token_mask)
        r = torch.sigmoid(self.receptance(_mix(x, prev, self.time_mix_r)))
        k = self.key(_mix(x, prev, self.time_mix_k))  # (B, T, d_att)
        v = self.value(_mix(x, prev, self.time_mix_v))
        k = call.real(k, float("-inf"))  # weight e^k = 0: padding adds nothing to the sums
        wkv, weights = call.run(wkv4, torch.exp(self.time_decay), self.time_first, k, v, state_type=WKVState,
                                state_arg="state", chunk_size=self.chunk_size)
        out = self.output(call.real(r * wkv))  # a padded query sees no key: 0 / 0
        if weights is None:
            return out, None
        B, C, T, _ = weights.shape  # (B, C, T, T): one map per channel, averaged over groups of channels
        return out, weights.view(B, self.n_heads, C // self.n_heads, T, T).mean(2)


class RWKVChannelMix(nn.Module):
    """RWKV's FFN: out = sigmoid(W_r mix_r) * W_v relu(W_k mix_k)^2 (Sec. 3.1.2, eq. 17-19): squared ReLU, gated by
    a receptance, both inputs token-shifted.

    Example:

        >>> import torch
        >>> from qkv.nn import RecurrentCache, RWKVChannelMix
        >>> ffn = RWKVChannelMix(16, 64).double()
        >>> x, cache = torch.randn(1, 4, 16, dtype=torch.float64), RecurrentCache()   # (B, T, d_model)
        >>> steps = torch.cat([ffn(x[:, t:t + 1], cache) for t in range(4)], dim=1)   # the token shift carried
        >>> ffn(x).shape, torch.allclose(steps, ffn(x))
        (torch.Size([1, 4, 16]), True)
    """

    def __init__(self, d_model: int, d_ff: int, *, layer: int = 0, n_layers: int = 1):
        super().__init__()
        ramp = torch.linspace(0, 1, d_model) ** (1 - 0.5 * layer / max(n_layers - 1, 1))
        self.time_mix_k = nn.Parameter(ramp.clone())
        self.time_mix_r = nn.Parameter(ramp.clone())
        self.key = Linear(d_model, d_ff, bias=False)
        self.receptance = Linear(d_model, d_model, bias=False)
        self.value = Linear(d_ff, d_model, bias=False)

    def forward(self, x, cache: RecurrentCache | None = None, token_mask=None):
        """x: ln2 of the residual stream, (B, T, d_model) -> (B, T, d_model)."""
        prev = token_shift(x, cache, "ffn_shift", token_mask)
        k = torch.relu(self.key(_mix(x, prev, self.time_mix_k))) ** 2  # (B, T, d_ff)
        return torch.sigmoid(self.receptance(_mix(x, prev, self.time_mix_r))) * self.value(k)


class RWKVBlock(nn.Module):
    """One RWKV layer: x += TimeMix(ln1(x)); x += ChannelMix(ln2(x)). The first block also normalises the
    embeddings (``ln0``). Same forward signature as ``Block``; ``mixer`` (the time mix) makes the block's cache.

    RWKV-4 by default; the later versions pass their own ``mixer`` and ``ffn`` (qkv/nn/rwkv6.py, rwkv7.py), which
    share this block, its token-shift state and its norms.

    Args: d_model; d_ff (RWKV-4: 4 d_model); d_att (time-mix width, default d_model); first: has ln0;
    layer / n_layers: depth, for the initialisation; eps: of the LayerNorms (RWKV-LM: 1e-5); n_heads: channel
    groups of RWKV-4's attention maps; mixer / ffn: a time mix and a channel mix instead of RWKV-4's.

    Example:

        >>> import torch
        >>> from qkv.nn import LayerCache, RWKVBlock
        >>> block = RWKVBlock(16, first=True).double()       # RWKV-4 time mix + channel mix
        >>> x = torch.randn(1, 4, 16, dtype=torch.float64)   # (B, T, d_model)
        >>> cache = LayerCache(mixer=block.mixer.new_cache())
        >>> steps = torch.cat([block(x[:, t:t + 1], cache=cache) for t in range(4)], dim=1)
        >>> block(x).shape, torch.allclose(steps, block(x))   # the RNN mode = the parallel form
        (torch.Size([1, 4, 16]), True)
    """

    takes_shared = True  # run_blocks hands it the per-forward dict through which RWKV-7 shares its first values

    def __init__(self, d_model: int, d_ff: int | None = None, *, d_att: int | None = None, first: bool = False,
                 layer: int = 0, n_layers: int = 1, eps: float = 1e-5, chunk_size: int = 16, n_heads: int = 1,
                 mixer: nn.Module | None = None, ffn: nn.Module | None = None):
        super().__init__()
        self.ln0 = LayerNorm(d_model, eps=eps) if first else None
        self.ln1, self.ln2 = LayerNorm(d_model, eps=eps), LayerNorm(d_model, eps=eps)
        self.mixer = mixer if mixer is not None else RWKVTimeMix(d_model, d_att, layer=layer, n_layers=n_layers,
                                                                 chunk_size=chunk_size, n_heads=n_heads)
        self.ffn = ffn if ffn is not None else RWKVChannelMix(d_model, d_ff or 4 * d_model, layer=layer,
                                                              n_layers=n_layers)
        self.cross = None  # no cross-attention (QKVModel.new_cache looks)

    def forward(self, x: torch.Tensor, *, context=None, mask=None, causal: bool = True, context_mask=None,
                cache=None, rope=None, bias=None, context_bias=None, window=None, return_weights: bool = False,
                shared: dict | None = None, token_mask=None):
        """x: (B, T, d_model). cache: a ``qkv.nn.cache.LayerCache`` whose ``mixer`` entry is this block's state.
        shared: a dict that lives for one forward of the stack (RWKV-7's value residual reads it). token_mask:
        (B, T), True at real tokens: the state (token shifts included) skips padding.
        Returns x, or (x, BlockWeights) when ``return_weights`` (the time mix's implicit map, (B, H, T, T))."""
        if context is not None:
            raise ValueError("RWKVBlock has no cross-attention: context must be None")
        state = None if cache is None else cache.mixer
        if self.ln0 is not None:
            x = self.ln0(x)
        extra = {"shared": {} if shared is None else shared} if getattr(self.mixer, "takes_shared", False) else {}
        y = self.mixer(self.ln1(x), mask=mask, causal=causal, cache=state, rope=rope, bias=bias, window=window,
                       return_weights=return_weights, token_mask=token_mask, **extra)
        y, weights = y if return_weights else (y, None)
        x = x + y
        x = x + self.ffn(self.ln2(x), cache=state, token_mask=token_mask)
        return (x, BlockWeights(self_attn=weights)) if return_weights else x
