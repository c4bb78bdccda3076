"""RWKV-5.2 "Eagle" and RWKV-6 "Finch" (Peng et al. 2024, "Eagle and Finch: RWKV with Matrix-Valued States and
Dynamic Recurrence", Sec. 4-5): RWKV with a matrix state per head, computed by qkv.ops.gla's bonus variant
(``wkv5`` / ``wkv6``), in the block of qkv/nn/rwkv.py (token shift, ln0 / ln1 / ln2, one RecurrentCache).

RWKV-5.2 time mixing (Sec. 4): token-shifted inputs mixed per channel as in RWKV-4, then per head h

    r, k, v, g = W_r x_r, W_k x_k, W_v x_v, silu(W_g x_g)
    wkv_t = r_t (S_{t-1} + diag(u) k_t^T v_t),   S_t = diag(w) S_{t-1} + k_t^T v_t,   w = exp(-exp(time_decay))
    out = W_o (GroupNorm_h(wkv) * g)

RWKV-6 (Sec. 5) makes the token shift and the decay depend on the data: the mixing amounts get a low-rank ("LoRA")
correction from the shifted input itself, and w_t = exp(-exp(time_decay + tanh(x_w W_1) W_2)) per token.

The GroupNorm has one group per head and eps = 64e-5: RWKV-LM divides wkv by head_size_divisor = 8 before a
GroupNorm with eps 1e-5, which is the same function. Parameter names follow RWKV-LM's checkpoints (time_mix_*,
time_maa_*, time_decay, time_faaaa, receptance, key, value, gate, output, ln_x), so qkv/hub/rwkv.py is a rename.
The cache holds ``att_shift`` / ``ffn_shift`` (B, d_model) and the state ``S`` (B, H, N, N).

Shapes: B batch, T tokens, C = d_model, A = d_att = H N (H heads of size N), F = d_ff.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.gla import GLAState, gla
from .cache import RecurrentCache
from .mixers import MixerCall, RecurrentMixer
from .rwkv import token_shift
from .layers import Linear


def to_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, T, H N) -> (B, H, T, N)."""
    B, T, A = x.shape
    return x.view(B, T, n_heads, A // n_heads).transpose(1, 2)


def from_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, N) -> (B, T, H N)."""
    B, H, T, N = x.shape
    return x.transpose(1, 2).reshape(B, T, H * N)


def head_group_norm(y: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """GroupNorm with one group per head over each token's (B, T, A) output, in float32 at least (RWKV-LM's ln_x)."""
    B, T, A = y.shape
    ndt = torch.promote_types(y.dtype, torch.float32)
    out = F.group_norm(y.reshape(B * T, A).to(ndt), norm.num_groups, norm.weight.to(ndt), norm.bias.to(ndt),
                       norm.eps)
    return out.view(B, T, A).to(y.dtype)


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """x in float32, or float64 if it is: decays are exponentials of exponentials (RWKV-LM computes them in fp32)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _add_projections(mix: nn.Module, d_model: int, n_heads: int, A: int) -> None:
    """The projections RWKV-5 and RWKV-6 time mixing share, under RWKV-LM's names: receptance, key, value and gate
    (d_model -> A), output (A -> d_model), and ln_x, the per-head GroupNorm of the read-out."""
    for name in ("receptance", "key", "value", "gate"):
        setattr(mix, name, Linear(d_model, A, bias=False))
    mix.output = Linear(A, d_model, bias=False)
    mix.ln_x = nn.GroupNorm(n_heads, A, eps=64e-5)


def _ramp(n: int, power: float) -> torch.Tensor:
    """0 .. 1 over n channels, bent by ``power``: the initial share of each channel taken from the current token."""
    return torch.linspace(0, 1, n) ** power


def _wkv(module, call: MixerCall, r, k, v, log_w):
    """The matrix-state WKV shared by v5 and v6: GLA with RWKV's bonus and scale 1 over heads, state S (B, H, N, N).
    r, k, v (B, T, A); log_w (B|1, H, T|1, N). Returns (B, T, A) and weights or None."""
    H = module.n_heads
    y, weights = call.run(gla, to_heads(r, H), to_heads(k, H), to_heads(v, H), log_w, state_type=GLAState,
                          bonus=module.time_faaaa, scale=1.0, chunk_size=module.chunk_size)
    return from_heads(y), weights


class RWKV5TimeMix(RecurrentMixer):
    """RWKV-5.2 time mixing (module docstring). d_att = n_heads * head_size (RWKV-LM: head_size 64).

    Example:

        >>> import torch
        >>> from qkv.nn import RWKV5TimeMix
        >>> layer = RWKV5TimeMix(16, 2, 8).double()
        >>> x = torch.randn(2, 5, 16, dtype=torch.float64)                    # (B, T, d_model)
        >>> cache = layer.new_cache()                                          # a RecurrentCache: its size never grows
        >>> steps = torch.cat([layer(x[:, t:t + 1], cache=cache) for t in range(5)], dim=1)
        >>> layer(x).shape, torch.allclose(steps, layer(x))                    # token by token = one pass
        (torch.Size([2, 5, 16]), True)
    """

    def __init__(self, d_model: int, n_heads: int, head_size: int, *, layer: int = 0, n_layers: int = 1,
                 chunk_size: int = 32):
        super().__init__()
        A = n_heads * head_size
        self.n_heads, self.head_size, self.chunk_size = n_heads, head_size, chunk_size
        depth = layer / max(n_layers - 1, 1)  # 0 .. 1
        # Initialisation (ours, after the paper's Sec. 4 description): channels decay from slow to fast, deeper
        # layers remember longer; the bonus shades from large to small across each head.
        c = torch.linspace(0, 1, A)
        self.time_decay = nn.Parameter((-6 + 5 * c ** (0.7 + 1.3 * depth)).view(n_heads, head_size))
        self.time_faaaa = nn.Parameter((depth * (1 - c) + 0.1 * torch.cos(7 * c)).view(n_heads, head_size))
        ramp = _ramp(d_model, 1 - 0.5 * depth)
        self.time_mix_k = nn.Parameter(ramp.clone())
        self.time_mix_v = nn.Parameter((ramp + 0.1 * depth).clamp(max=1))
        self.time_mix_r = nn.Parameter(ramp.sqrt())
        self.time_mix_g = nn.Parameter(ramp.sqrt())
        _add_projections(self, d_model, n_heads, A)

    def mix(self, x, call: MixerCall):
        """x: ln1 of the residual stream, (B, T, d_model)."""
        prev = token_shift(x, call.cache, "att_shift", call.token_mask)
        mix = lambda mu: x * mu + prev * (1 - mu)  # noqa: E731  (RWKV-4's interpolation)
        r, k = self.receptance(mix(self.time_mix_r)), call.real(self.key(mix(self.time_mix_k)))
        v = self.value(mix(self.time_mix_v))
        g = F.silu(self.gate(mix(self.time_mix_g)))
        log_w = -torch.exp(at_least_float32(self.time_decay)).view(1, self.n_heads, 1, self.head_size)  # (1, H, 1, N)
        y, weights = _wkv(self, call, r, k, v, log_w)
        return self.output(call.real(head_group_norm(y, self.ln_x) * g)), weights


class RWKV6TimeMix(RecurrentMixer):
    """RWKV-6 time mixing (module docstring): data-dependent token shift ("ddlerp") and decay, both through
    low-rank maps of sizes mix_rank (RWKV-LM: 32) and decay_rank (64).

    Example:

        >>> import torch
        >>> from qkv.nn import RWKV6TimeMix
        >>> layer = RWKV6TimeMix(16, 2, 8, mix_rank=4, decay_rank=4).double()
        >>> x = torch.randn(2, 5, 16, dtype=torch.float64)                    # (B, T, d_model)
        >>> cache = layer.new_cache()                                          # a RecurrentCache: its size never grows
        >>> steps = torch.cat([layer(x[:, t:t + 1], cache=cache) for t in range(5)], dim=1)
        >>> layer(x).shape, torch.allclose(steps, layer(x))                    # token by token = one pass
        (torch.Size([2, 5, 16]), True)
    """

    def __init__(self, d_model: int, n_heads: int, head_size: int, *, mix_rank: int = 32, decay_rank: int = 64,
                 layer: int = 0, n_layers: int = 1, chunk_size: int = 32):
        super().__init__()
        A = n_heads * head_size
        self.n_heads, self.head_size, self.chunk_size = n_heads, head_size, chunk_size
        depth = layer / max(n_layers - 1, 1)
        ramp = _ramp(d_model, 1 - 0.5 * depth)
        # time_maa_*: how far each channel moves from the current token towards the previous one (1 - RWKV-4's mix)
        self.time_maa_x = nn.Parameter(1 - ramp)
        self.time_maa_w = nn.Parameter(1 - ramp)
        self.time_maa_k = nn.Parameter(1 - ramp)
        self.time_maa_v = nn.Parameter((1 - ramp - 0.1 * depth).clamp(min=0))
        self.time_maa_r = nn.Parameter(1 - ramp.sqrt())
        self.time_maa_g = nn.Parameter(1 - ramp.sqrt())
        # the five low-rank corrections (w, k, v, r, g, in RWKV-LM's order): small, so training starts near RWKV-5
        self.time_maa_w1 = nn.Parameter(torch.randn(d_model, 5 * mix_rank) * 0.01)
        self.time_maa_w2 = nn.Parameter(torch.randn(5, mix_rank, d_model) * 0.01)
        c = torch.linspace(0, 1, A)
        self.time_decay = nn.Parameter(-6 + 5 * c ** (0.7 + 1.3 * depth))  # (A,)
        self.time_decay_w1 = nn.Parameter(torch.randn(d_model, decay_rank) * 0.01)
        self.time_decay_w2 = nn.Parameter(torch.randn(decay_rank, A) * 0.01)
        self.time_faaaa = nn.Parameter((depth * (1 - c) + 0.1 * torch.cos(7 * c)).view(n_heads, head_size))
        _add_projections(self, d_model, n_heads, A)

    def mix(self, x, call: MixerCall):
        """x: ln1 of the residual stream, (B, T, d_model)."""
        B, T, C = x.shape
        xx = token_shift(x, call.cache, "att_shift", call.token_mask) - x  # (B, T, C): towards the previous token
        low = torch.tanh((x + xx * self.time_maa_x) @ self.time_maa_w1).view(B, T, 5, -1)  # (B, T, 5, R)
        mw, mk, mv, mr, mg = torch.einsum("btfr,frc->fbtc", low, self.time_maa_w2)  # 5 x (B, T, C)
        r = self.receptance(x + xx * (self.time_maa_r + mr))
        k = call.real(self.key(x + xx * (self.time_maa_k + mk)))  # padding adds nothing to S
        v = self.value(x + xx * (self.time_maa_v + mv))
        g = F.silu(self.gate(x + xx * (self.time_maa_g + mg)))
        xw = x + xx * (self.time_maa_w + mw)
        d = self.time_decay + torch.tanh(xw @ self.time_decay_w1) @ self.time_decay_w2  # (B, T, A)
        log_w = to_heads(-torch.exp(at_least_float32(d)), self.n_heads)  # (B, H, T, N): log of exp(-exp(d)), <= 0
        y, weights = _wkv(self, call, r, k, v, log_w)
        return self.output(call.real(head_group_norm(y, self.ln_x) * g)), weights


class RWKV6ChannelMix(nn.Module):
    """RWKV-6's FFN: RWKV-4's (squared ReLU gated by a receptance) with the shift written as x + (prev - x) maa.

    Example:

        >>> import torch
        >>> from qkv.nn import RecurrentCache, RWKV6ChannelMix
        >>> ffn = RWKV6ChannelMix(16, 56).double()
        >>> x, cache = torch.randn(1, 4, 16, dtype=torch.float64), RecurrentCache()   # (B, T, d_model)
        >>> steps = torch.cat([ffn(x[:, t:t + 1], cache) for t in range(4)], dim=1)
        >>> ffn(x).shape, torch.allclose(steps, ffn(x))
        (torch.Size([1, 4, 16]), True)
    """

    def __init__(self, d_model: int, d_ff: int, *, layer: int = 0, n_layers: int = 1):
        super().__init__()
        ramp = _ramp(d_model, 1 - 0.5 * layer / max(n_layers - 1, 1))
        self.time_maa_k = nn.Parameter(1 - ramp)
        self.time_maa_r = nn.Parameter(1 - ramp)
        self.key = Linear(d_model, d_ff, bias=False)
        self.receptance = Linear(d_model, d_model, bias=False)
        self.value = Linear(d_ff, d_model, bias=False)

    def forward(self, x, cache: RecurrentCache | None = None, token_mask=None):
        """x: ln2 of the residual stream, (B, T, d_model) -> (B, T, d_model)."""
        xx = token_shift(x, cache, "ffn_shift", token_mask) - x
        k = torch.relu(self.key(x + xx * self.time_maa_k)) ** 2  # (B, T, d_ff)
        return torch.sigmoid(self.receptance(x + xx * self.time_maa_r)) * self.value(k)
