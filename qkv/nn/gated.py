"""Gated linear-time mixers with MultiHeadAttention's forward contract: gated linear attention (GLA), DeltaNet /
Gated DeltaNet, the most used layers of flash-linear-attention, HGRN2 and Mamba-2, over qkv.ops.gla and qkv.ops.delta_rule.

GatedLinearAttention (Yang et al. 2024, Sec. 4.4): per head,

    q, k, v = x W_q, x W_k, x W_v;   alpha = sigmoid(x W_a1 W_a2 + b)^(1/16)   (a low-rank gate, Sec. 4.4)
    out = W_o (RMSNorm(GLA(q, k, v, log alpha)) * swish(x W_r))

DeltaNet (Yang et al. 2024, Sec. 3-4) and Gated DeltaNet (Yang et al. 2025, Sec. 3.3): per head,

    q, k, v = silu(conv(x W)), q and k L2-normalised;  beta = sigmoid(x W_b)
    Gated: alpha = exp(-e^A softplus(x W_alpha + dt_bias))        (Mamba-2's gate, one per head and token)
    o = delta_rule(q, k, v, beta[, log alpha]);  out = W_o (RMSNorm(o) [* silu(x W_g)])

HGRN2 (Qin et al. 2024, "HGRN2: Gated Linear RNNs with State Expansion", Sec. 3): the forget gate's complement is
the key, so what the state forgets in a channel is what the token writes there; per head,

    f = lower + (1 - lower) sigmoid(x W_f);   q = silu(x W_q);   i = x W_i
    S_t = diag(f_t) S_{t-1} + (1 - f_t)^T i_t;   o_t = q_t S_t;   out = W_o RMSNorm(o)   (GLA with k = 1 - f, scale 1)

The paper's lower bound grows with depth through a softmax shared by the layers; here ``lower`` is one number per
layer (0 by default: the plain gate), so a layer stays a module of its own.

Mamba2 (Dao & Gu 2024, "Transformers are SSMs", Sec. 7.1, the parallel Mamba block): one input projection gives
z, x, B, C and dt; x, B, C pass a short convolution and silu; y = SSD(x, dt, A, B, C) + D x (qkv.ops.ssd: GLA with
one decay exp(dt A) per head); out = W_o RMSNorm(y * silu(z)). B and C are shared by the heads (one group).

``conv`` is the short causal depthwise convolution both papers put on q, k, v (kernel 4; conv_size=0 drops it);
its last conv_size - 1 inputs are part of the decoding state. Each layer's cache (a RecurrentCache) holds ``S``
(B, H, D, Dv) and, with the convolution, ``conv`` (B, conv_size - 1, 3 H D): fixed sizes, whatever the length.
A forward with a cache continues the cached sequence (chunk form for a prompt, the recurrent step for one token);
return_weights gives the implicit attention map (B, H, T, T) of the call (no cache, or an empty one).

Shapes: B batch, T tokens, H heads, D head size (keys and values alike here), d_model the residual width.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.delta_rule import DeltaRuleState, delta_rule
from ..ops.gla import GLAState, gla, ssd
from .cache import RecurrentCache
from .layers import Linear, RMSNorm
from .mixers import MixerCall, RecurrentMixer
from .rwkv6 import at_least_float32, to_heads


def short_conv(x: torch.Tensor, weight: torch.Tensor, cache: RecurrentCache | None, name: str) -> torch.Tensor:
    """Causal depthwise convolution over time: out_t = sum_j weight[:, j] x_{t - K + 1 + j}, (B, T, C) -> (B, T, C),
    with weight (C, K). Inputs before the first token are zeros, or the last K - 1 inputs stored in ``cache[name]``
    by the previous call (which this call replaces by its own).

    Example:

        >>> import torch
        >>> from qkv.nn import RecurrentCache, short_conv
        >>> x, w = torch.randn(1, 5, 3), torch.randn(3, 4)      # (B, T, C), (C, K)
        >>> cache = RecurrentCache()
        >>> steps = torch.cat([short_conv(x[:, t:t + 1], w, cache, "conv") for t in range(5)], dim=1)
        >>> short_conv(x, w, None, "conv").shape, torch.allclose(steps, short_conv(x, w, None, "conv"), atol=1e-6)
        (torch.Size([1, 5, 3]), True)
    """
    B, T, C = x.shape
    K = weight.shape[1]
    if cache is not None and name in cache:
        past = cache[name].to(x.dtype)  # (B, K - 1, C)
    else:
        past = x.new_zeros(B, K - 1, C)
    xs = torch.cat([past, x], 1)  # (B, K - 1 + T, C)
    if cache is not None:
        cache[name] = xs[:, xs.shape[1] - (K - 1):]
    return F.conv1d(xs.transpose(1, 2), weight.unsqueeze(1), groups=C).transpose(1, 2)  # (B, T, C)


def _head_rms_norm(y: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
    """RMSNorm over each head's D features (one norm shared by the heads, as in flash-linear-attention)."""
    return norm(y)  # y (B, T, H, D): RMSNorm acts on the last dimension


class GatedLinearAttention(RecurrentMixer):
    """GLA (module docstring). gate_rank: rank of the gate's low-rank map (the paper's 16); gate_temperature: the
    1/16 that keeps alpha near 1 at initialisation, so early training remembers long (Sec. 4.4).

    Example:

        >>> import torch
        >>> from qkv.nn import GatedLinearAttention
        >>> layer = GatedLinearAttention(16, 2, gate_rank=4).double()
        >>> x = torch.randn(2, 5, 16, dtype=torch.float64)                    # (B, T, d_model)
        >>> cache = layer.new_cache()                                          # a RecurrentCache: its size never grows
        >>> steps = torch.cat([layer(x[:, t:t + 1], cache=cache) for t in range(5)], dim=1)
        >>> layer(x).shape, torch.allclose(steps, layer(x))                    # token by token = one pass
        (torch.Size([2, 5, 16]), True)
    """

    def __init__(self, d_model: int, n_heads: int, *, head_dim: int | None = None, gate_rank: int = 16,
                 gate_temperature: float = 16.0, chunk_size: int = 32, norm_eps: float = 1e-5):
        super().__init__()
        D = head_dim or d_model // n_heads
        self.n_heads, self.head_dim, self.chunk_size, self.gate_temperature = n_heads, D, chunk_size, gate_temperature
        A = n_heads * D
        self.q, self.k, self.v = (Linear(d_model, A, bias=False) for _ in range(3))
        self.gate_down = Linear(d_model, gate_rank, bias=False)
        self.gate_up = Linear(gate_rank, A, bias=True)
        self.out_gate = Linear(d_model, A, bias=False)
        self.norm = RMSNorm(D, eps=norm_eps)
        self.out = Linear(A, d_model, bias=False)

    def mix(self, x, call: MixerCall):
        H = self.n_heads
        q, k, v = (to_heads(f(x), H) for f in (self.q, self.k, self.v))  # (B, H, T, D)
        k = call.real_heads(k)  # padding writes nothing into S
        log_alpha = F.logsigmoid(at_least_float32(self.gate_up(self.gate_down(x)))) / self.gate_temperature  # (B, T, A)
        y, weights = call.run(gla, q, k, v, to_heads(log_alpha, H), state_type=GLAState, chunk_size=self.chunk_size)
        B, _, T, D = y.shape
        y = _head_rms_norm(y.transpose(1, 2), self.norm).reshape(B, T, H * D)
        return self.out(call.real(y * F.silu(self.out_gate(x)))), weights


class HGRN2(RecurrentMixer):
    """HGRN2 (module docstring): GLA whose key is one minus its forget gate. lower: the forget gate's lower bound in
    [0, 1) (Sec. 3.1 of HGRN, carried into HGRN2): 0 lets a channel forget at once, near 1 makes it remember long.

    Example:

        >>> import torch
        >>> from qkv.nn import HGRN2
        >>> layer = HGRN2(16, 2, lower=0.5).double()
        >>> x = torch.randn(2, 5, 16, dtype=torch.float64)                    # (B, T, d_model)
        >>> cache = layer.new_cache()
        >>> steps = torch.cat([layer(x[:, t:t + 1], cache=cache) for t in range(5)], dim=1)
        >>> torch.allclose(steps, layer(x)), tuple(cache["S"].shape)          # one pass = token by token; S (B, H, D, D)
        (True, (2, 2, 8, 8))
    """

    def __init__(self, d_model: int, n_heads: int, *, head_dim: int | None = None, lower: float = 0.0,
                 chunk_size: int = 32, norm_eps: float = 1e-5):
        super().__init__()
        if not 0.0 <= lower < 1.0:
            raise ValueError(f"HGRN2: lower must be in [0, 1) (the forget gate's lower bound), got {lower!r}")
        D = head_dim or d_model // n_heads
        self.n_heads, self.head_dim, self.chunk_size, self.lower = n_heads, D, chunk_size, lower
        A = n_heads * D
        self.q, self.forget, self.input = (Linear(d_model, A, bias=False) for _ in range(3))
        self.norm = RMSNorm(D, eps=norm_eps)
        self.out = Linear(A, d_model, bias=False)

    def mix(self, x, call: MixerCall):
        H = self.n_heads
        z = at_least_float32(self.forget(x))  # (B, T, A)
        # log f = log(lower + (1 - lower) sigmoid z) and 1 - f = (1 - lower) sigmoid(-z), both without cancellation
        log_f = torch.logaddexp(torch.full_like(z, math.log(self.lower) if self.lower else -math.inf),
                                math.log1p(-self.lower) + F.logsigmoid(z))
        q = to_heads(F.silu(self.q(x)), H)  # (B, H, T, D)
        k = call.real_heads(to_heads(((1 - self.lower) * torch.sigmoid(-z)).to(x.dtype), H))  # padding writes nothing
        v = to_heads(self.input(x), H)
        y, weights = call.run(gla, q, k, v, to_heads(log_f, H), state_type=GLAState, scale=1.0,
                              chunk_size=self.chunk_size)
        B, _, T, D = y.shape
        return self.out(call.real(_head_rms_norm(y.transpose(1, 2), self.norm).reshape(B, T, H * D))), weights


class DeltaNet(RecurrentMixer):
    """DeltaNet, or Gated DeltaNet with ``gated=True`` (module docstring). conv_size: kernel of the short
    convolution on q, k, v (0: none).

    Example:

        >>> import torch
        >>> from qkv.nn import DeltaNet
        >>> layer = DeltaNet(16, 2, gated=True).double()
        >>> x = torch.randn(2, 5, 16, dtype=torch.float64)                    # (B, T, d_model)
        >>> cache = layer.new_cache()                                          # a RecurrentCache: its size never grows
        >>> steps = torch.cat([layer(x[:, t:t + 1], cache=cache) for t in range(5)], dim=1)
        >>> layer(x).shape, torch.allclose(steps, layer(x))                    # token by token = one pass
        (torch.Size([2, 5, 16]), True)
    """

    def __init__(self, d_model: int, n_heads: int, *, head_dim: int | None = None, gated: bool = False,
                 conv_size: int = 4, chunk_size: int = 32, norm_eps: float = 1e-5):
        super().__init__()
        D = head_dim or d_model // n_heads
        self.n_heads, self.head_dim, self.gated, self.chunk_size = n_heads, D, gated, chunk_size
        A = n_heads * D
        self.qkv = Linear(d_model, 3 * A, bias=False)
        self.conv = nn.Parameter(torch.randn(3 * A, conv_size) / conv_size ** 0.5) if conv_size else None
        self.beta = Linear(d_model, n_heads, bias=False)
        if gated:
            # Mamba-2's gate: log alpha = -e^A softplus(x W + dt_bias), A and dt_bias per head (Gated DeltaNet Sec. 3.3)
            self.alpha = Linear(d_model, n_heads, bias=False)
            self.A_log = nn.Parameter(torch.log(torch.linspace(1, 16, n_heads)))
            self.dt_bias = nn.Parameter(torch.log(torch.expm1(torch.linspace(1e-3, 0.1, n_heads))))
            self.out_gate = Linear(d_model, A, bias=False)
        self.norm = RMSNorm(D, eps=norm_eps)
        self.out = Linear(A, d_model, bias=False)

    @property
    def layer_name(self) -> str:
        return "GatedDeltaNet" if self.gated else "DeltaNet"

    def mix(self, x, call: MixerCall):
        H = self.n_heads
        qkv = call.real(self.qkv(x))  # (B, T, 3 A): padding is the convolution's zero history
        if self.conv is not None:
            qkv = short_conv(qkv, self.conv, call.cache, "conv")
        q, k, v = (to_heads(t, H) for t in F.silu(qkv).chunk(3, dim=-1))  # (B, H, T, D)
        q, k = F.normalize(q, dim=-1), call.real_heads(F.normalize(k, dim=-1))
        beta = torch.sigmoid(self.beta(x)).transpose(1, 2)  # (B, H, T)
        log_alpha = None
        if self.gated:
            dt = F.softplus(at_least_float32(self.alpha(x)) + self.dt_bias)  # (B, T, H)
            log_alpha = (-torch.exp(self.A_log) * dt).transpose(1, 2)  # (B, H, T)
        y, weights = call.run(delta_rule, q, k, v, beta, state_type=DeltaRuleState, g=log_alpha,
                              chunk_size=self.chunk_size)
        B, _, T, D = y.shape
        y = _head_rms_norm(y.transpose(1, 2), self.norm).reshape(B, T, H * D)
        if self.gated:
            y = y * F.silu(self.out_gate(x))
        return self.out(call.real(y)), weights


class Mamba2(RecurrentMixer):
    """Mamba-2 (module docstring): n_heads heads of expand * d_model / n_heads channels, a state of state_size x
    head channels per head. Parameters follow the paper's names (in_proj, conv, dt_bias, A_log, D, norm, out_proj).

    Example:

        >>> import torch
        >>> from qkv.nn import Mamba2
        >>> layer = Mamba2(16, 2, state_size=8).double()
        >>> x = torch.randn(2, 5, 16, dtype=torch.float64)                    # (B, T, d_model)
        >>> cache = layer.new_cache()                                          # a RecurrentCache: its size never grows
        >>> steps = torch.cat([layer(x[:, t:t + 1], cache=cache) for t in range(5)], dim=1)
        >>> layer(x).shape, torch.allclose(steps, layer(x))                    # token by token = one pass
        (torch.Size([2, 5, 16]), True)
    """

    def __init__(self, d_model: int, n_heads: int, *, state_size: int = 64, expand: int = 2, conv_size: int = 4,
                 chunk_size: int = 32, norm_eps: float = 1e-5):
        super().__init__()
        inner = expand * d_model
        if inner % n_heads:
            raise ValueError(f"n_heads ({n_heads}) must divide expand * d_model ({inner})")
        self.n_heads, self.state_size, self.inner, self.chunk_size = n_heads, state_size, inner, chunk_size
        N = state_size
        self.in_proj = Linear(d_model, 2 * inner + 2 * N + n_heads, bias=False)  # z, x, B, C, dt
        self.conv = nn.Parameter(torch.randn(inner + 2 * N, conv_size) / conv_size ** 0.5)
        self.conv_bias = nn.Parameter(torch.zeros(inner + 2 * N))
        # step sizes start log-uniform in [1e-3, 0.1] (the paper's initialisation), A in -[1, 16]
        dt = torch.exp(torch.linspace(math.log(1e-3), math.log(0.1), n_heads))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_log = nn.Parameter(torch.log(torch.linspace(1, 16, n_heads)))
        self.D = nn.Parameter(torch.ones(n_heads))
        self.norm = RMSNorm(inner, eps=norm_eps)
        self.out_proj = Linear(inner, d_model, bias=False)

    def mix(self, x, call: MixerCall):
        """Weights (B, H, T, T) include D on the diagonal. The state S is (B, H, N, inner / H)."""
        H, N, inner = self.n_heads, self.state_size, self.inner
        z, xbc, dt = self.in_proj(x).split([inner, inner + 2 * N, H], dim=-1)
        xbc = call.real(xbc)  # padding is the convolution's zero history
        xbc = F.silu(short_conv(xbc, self.conv, call.cache, "conv") + self.conv_bias)
        xs, Bm, Cm = xbc.split([inner, N, N], dim=-1)  # (B, T, inner), (B, T, N) x 2
        xs = call.real(xs)  # and writes nothing into the state
        dt = F.softplus(at_least_float32(dt) + self.dt_bias).transpose(1, 2)  # (B, H, T)
        Bh, Ch = (t.unsqueeze(1).expand(-1, H, -1, -1) for t in (Bm, Cm))  # (B, H, T, N): shared by the heads
        y, weights = call.run(ssd, to_heads(xs, H), dt, -torch.exp(self.A_log), Bh, Ch, state_type=GLAState, D=self.D,
                              chunk_size=self.chunk_size)
        B, _, T, P = y.shape
        y = y.transpose(1, 2).reshape(B, T, H * P)
        return self.out_proj(call.real(self.norm(y * F.silu(z)))), weights
