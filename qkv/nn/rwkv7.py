"""RWKV-7 "Goose" (Peng et al. 2025, "RWKV-7 Goose with Expressive Dynamic State Evolution", Sec. 4): the
generalised delta rule (qkv.ops.wkv7) in the RWKV block of qkv/nn/rwkv.py.

Per head, with token-shifted inputs x_r, x_w, x_k, x_v, x_a, x_g (x + (prev - x) * x_*):

    r = W_r x_r,  k = W_k x_k,  v = W_v x_v
    w = exp(-e^-0.5 sigmoid(w0 + tanh(x_w W1) W2))         decay in (0.545, 1) per channel and token
    a = sigmoid(a0 + x_a A1 A2)                           the "in-context learning rate"
    kk = normalize(k * k_k)  per head;  k <- k * (1 + (a - 1) k_a)
    S_t = S_{t-1} (diag(w_t) - kk_t^T (a_t * kk_t)) + v_t^T k_t         (the state as value x key)
    y = GroupNorm_h(S_t r_t) + (sum_i r_i k_i r_k_i) v                  per head
    out = W_o (y * (sigmoid(x_g G1) G2))

Value residual: every layer after the first mixes its v with the first layer's, v <- v + (v_first - v)
sigmoid(v0 + x_v V1 V2); the first RWKV-7 block of a stack puts its v in the ``shared`` dict of the forward, and
later ones read it there. The FFN drops RWKV-4's receptance: W_v relu(W_k x_k)^2.

Parameter names follow RWKV-LM (x_r .. x_g, w0 w1 w2, a0 a1 a2, v0 v1 v2, g1 g2, k_k, k_a, r_k, receptance, key,
value, output, ln_x), so qkv/hub/rwkv.py is a rename. The cache holds ``att_shift`` / ``ffn_shift`` (B, d_model)
and ``S`` (B, H, N, N), keys by values (qkv.ops's layout: the transpose of RWKV-LM's).

Shapes: B batch, T tokens, C = d_model = H N (H heads of size N), F = d_ff.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.delta_rule import DeltaRuleState, wkv7
from .cache import RecurrentCache
from .mixers import MixerCall, RecurrentMixer
from .rwkv import token_shift
from .rwkv6 import at_least_float32, from_heads, head_group_norm, to_heads
from .layers import Linear

_MAX_LOG_DECAY = math.exp(-0.5)  # -log w <= e^-0.5: every step keeps at least 54.5% of the state


class RWKV7TimeMix(RecurrentMixer):
    """RWKV-7 time mixing (module docstring). first: this block's v is the stack's v_first (and it has no v0-v2).
    ranks: sizes of the low-rank maps, {"decay", "a", "v", "gate"} (RWKV-LM derives them from d_model).

    Example:

        >>> import torch
        >>> from qkv.nn import RWKV7TimeMix
        >>> layer = RWKV7TimeMix(16, 2, first=True).double()
        >>> x = torch.randn(2, 5, 16, dtype=torch.float64)                    # (B, T, d_model)
        >>> cache = layer.new_cache()                                          # a RecurrentCache: its size never grows
        >>> steps = torch.cat([layer(x[:, t:t + 1], cache=cache) for t in range(5)], dim=1)
        >>> layer(x).shape, torch.allclose(steps, layer(x))                    # token by token = one pass
        (torch.Size([2, 5, 16]), True)
    """

    takes_shared = True

    def __init__(self, d_model: int, n_heads: int, *, first: bool = True, ranks: dict | None = None,
                 layer: int = 0, n_layers: int = 1, chunk_size: int = 32):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"n_heads ({n_heads}) must divide d_model ({d_model}): RWKV-7's heads span d_model")
        C, H = d_model, n_heads
        N = C // H
        ranks = {**default_ranks(C), **(ranks or {})}
        self.n_heads, self.head_size, self.first, self.chunk_size = H, N, first, chunk_size
        depth = layer / max(n_layers - 1, 1)
        ramp = torch.linspace(0, 1, C)
        # Initialisation (ours, after the paper's appendix): shifts mostly from the previous token in early layers.
        for name, power in (("x_r", 0.2), ("x_w", 0.9), ("x_k", 0.7), ("x_v", 0.7), ("x_a", 0.9), ("x_g", 0.2)):
            setattr(self, name, nn.Parameter(1 - ramp ** (power * (1 - depth + 1 / max(n_layers, 1)))))
        self.w0 = nn.Parameter(-6 + 6 * ramp ** (1 + depth ** 0.3) + 0.5)
        self.w1, self.w2 = self._lora(C, ranks["decay"])
        self.a0 = nn.Parameter(torch.zeros(C) - 0.19 + 0.4 * (ramp - 0.5))
        self.a1, self.a2 = self._lora(C, ranks["a"])
        if not first:
            self.v0 = nn.Parameter(torch.zeros(C) + 0.73 - 0.4 * (ramp - 0.5))
            self.v1, self.v2 = self._lora(C, ranks["v"])
        self.g1, self.g2 = self._lora(C, ranks["gate"])
        self.k_k = nn.Parameter(torch.zeros(C) + 0.71 - 0.1 * (ramp - 0.5))
        self.k_a = nn.Parameter(torch.zeros(C) + 1.02)
        self.r_k = nn.Parameter(torch.zeros(H, N) - 0.04)
        self.receptance = Linear(C, C, bias=False)
        self.key = Linear(C, C, bias=False)
        self.value = Linear(C, C, bias=False)
        self.output = Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=64e-5)

    @staticmethod
    def _lora(C: int, rank: int):
        return nn.Parameter(torch.randn(C, rank) * 0.02), nn.Parameter(torch.randn(rank, C) * 0.1 / rank ** 0.5)

    def mix(self, x, call: MixerCall, shared: dict | None = None):
        """x: ln1 of the residual stream, (B, T, d_model). shared: this forward's dict across blocks; holds
        "v_first" (B, T, C) once the first block has run. The state S is (B, H, N, N)."""
        shared = {} if shared is None else shared
        H = self.n_heads
        xx = token_shift(x, call.cache, "att_shift", call.token_mask) - x  # (B, T, C)
        r = self.receptance(x + xx * self.x_r)
        k = self.key(x + xx * self.x_k)
        xv = x + xx * self.x_v
        v = self.value(xv)
        if self.first:
            shared["v_first"] = v
        elif "v_first" not in shared:
            raise ValueError("RWKV7TimeMix(first=False) needs the v of the stack's first RWKV-7 block in shared"
                             "['v_first']; run the blocks in order through one forward")
        else:
            v = v + (shared["v_first"] - v) * torch.sigmoid(self.v0 + xv @ self.v1 @ self.v2)
        a = torch.sigmoid(self.a0 + (x + xx * self.x_a) @ self.a1 @ self.a2)  # (B, T, C)
        gate = torch.sigmoid((x + xx * self.x_g) @ self.g1) @ self.g2
        z = self.w0 + torch.tanh((x + xx * self.x_w) @ self.w1) @ self.w2
        log_w = -_MAX_LOG_DECAY * torch.sigmoid(at_least_float32(z))  # (B, T, C), in (-0.607, 0)
        kk = F.normalize(to_heads(k * self.k_k, H), dim=-1)  # (B, H, T, N), unit length per head
        k = call.real(k * (1 + (a - 1) * self.k_a))  # padding adds nothing to S
        ah = to_heads(a, H)
        rh, kh, vh = to_heads(r, H), to_heads(k, H), to_heads(v, H)
        y, weights = call.run(wkv7, rh, kh, vh, to_heads(log_w, H), -kk, kk * ah, state_type=DeltaRuleState,
                              chunk_size=self.chunk_size)
        y = head_group_norm(from_heads(y), self.ln_x)
        y = y + from_heads((rh * kh * self.r_k.unsqueeze(1)).sum(-1, keepdim=True) * vh)  # the current token's bonus
        return self.output(call.real(y * gate)), weights


def default_ranks(d_model: int) -> dict:
    """RWKV-LM's low-rank sizes for width C: max(32, round(f sqrt(C) / 32) * 32) with f = 2.5 (decay, a), 1.7 (v),
    5 (gate)."""
    size = lambda f: max(32, int(round(f * d_model ** 0.5 / 32)) * 32)  # noqa: E731
    return {"decay": size(2.5), "a": size(2.5), "v": size(1.7), "gate": size(5.0)}


class RWKV7ChannelMix(nn.Module):
    """RWKV-7's FFN: W_v relu(W_k (x + (prev - x) x_k))^2, no receptance.

    Example:

        >>> import torch
        >>> from qkv.nn import RecurrentCache, RWKV7ChannelMix
        >>> ffn = RWKV7ChannelMix(16, 64).double()
        >>> x, cache = torch.randn(1, 4, 16, dtype=torch.float64), RecurrentCache()   # (B, T, d_model)
        >>> steps = torch.cat([ffn(x[:, t:t + 1], cache) for t in range(4)], dim=1)
        >>> ffn(x).shape, torch.allclose(steps, ffn(x))
        (torch.Size([1, 4, 16]), True)
    """

    def __init__(self, d_model: int, d_ff: int, *, layer: int = 0, n_layers: int = 1):
        super().__init__()
        self.x_k = nn.Parameter(1 - torch.linspace(0, 1, d_model) ** (1 - 0.5 * layer / max(n_layers - 1, 1)))
        self.key = Linear(d_model, d_ff, bias=False)
        self.value = Linear(d_ff, d_model, bias=False)

    def forward(self, x, cache: RecurrentCache | None = None, token_mask=None):
        """x: ln2 of the residual stream, (B, T, d_model) -> (B, T, d_model)."""
        xx = token_shift(x, cache, "ffn_shift", token_mask) - x
        return self.value(torch.relu(self.key(x + xx * self.x_k)) ** 2)
