"""Multi-head attention: project to heads, attend (qkv.ops.attention), concatenate, project back with W_O."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..ops.attention import SCORES, attention
from ..ops.hard_attention import DECODES, ESTIMATORS, KINDS, Selection, moving_average, reinforce_surrogate
from ..ops.linear import linear
from ..ops.rope import apply_rope
from .cache import CrossKVCache, KVCache
from .layers import Linear


SELECTIONS = ("soft",) + KINDS  # how a query picks keys: soft weights, one key (hard), a window (local)


class Reinforce(nn.Module):
    """REINFORCE for a layer's stochastic picks (Xu et al. 2015, sec. 4.1, eq. 12): the moving-average baseline of
    the reward (a buffer: saved with the weights, so a resumed run goes on with it) and the last training forward's
    log-probabilities and entropies of the picks, summed per batch row.

    The layer calls ``record`` in its forward; the training task calls ``reinforce_loss(model, reward)`` with each
    row's reward (the log-likelihood of its target), which adds -(R - b) log p(picks) - entropy_weight * H for every
    layer that recorded (as a term worth 0 whose gradient is the estimator's), then moves the baseline:
    b <- decay * b + (1 - decay) * mean(R). The first reward sets b.

    Example:

        >>> import torch
        >>> from qkv.nn import Reinforce
        >>> r = Reinforce(decay=0.9)
        >>> log_p = torch.log(torch.tensor([[0.5], [0.25]])).requires_grad_()   # (B, picks) of one forward
        >>> r.record(log_p, entropy=torch.zeros(2, 1))
        >>> term = r.loss(torch.tensor([1.0, 3.0]))         # reward (B,); the first one sets the baseline (2.0)
        >>> term.detach().item(), r.baseline.item()         # worth 0: only its gradient counts
        (0.0, 2.0)
        >>> term.backward(); log_p.grad.flatten().tolist()  # -(R - b): the better row's pick is pushed up
        [1.0, -1.0]
    """

    def __init__(self, decay: float | None = 0.9, entropy_weight: float = 0.0):
        super().__init__()
        if decay is None:
            raise ValueError("baseline_decay=None: REINFORCE needs a baseline (a moving average of the reward, Xu et "
                             "al. 2015 sec. 4.1); give a decay in [0, 1), e.g. 0.9")
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ValueError(f"baseline_decay must be in [0, 1), got {decay!r}")
        if isinstance(entropy_weight, bool) or not isinstance(entropy_weight, (int, float)) or \
                not 0.0 <= entropy_weight < float("inf"):
            raise ValueError(f"entropy_weight must be a finite number >= 0, got {entropy_weight!r}")
        self.decay, self.entropy_weight = float(decay), float(entropy_weight)
        self.register_buffer("baseline", torch.zeros(()))
        self.register_buffer("started", torch.zeros((), dtype=torch.bool))
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def record(self, log_prob: torch.Tensor, entropy: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """log_prob, entropy: (B, ...) of this forward's picks; mask: (B, ...) 1 where a pick counts (or None).
        Replaces what an earlier forward recorded."""
        if mask is not None:
            log_prob, entropy = log_prob * mask, entropy * mask
        self.pending = (log_prob.flatten(1).sum(1), entropy.flatten(1).sum(1))  # (B,), (B,)

    def loss(self, reward: torch.Tensor) -> torch.Tensor:
        """reward (B,) -> the surrogate term for the recorded picks (0 when none); updates the baseline."""
        if self.pending is None:
            return reward.new_zeros(())
        log_prob, ent = self.pending
        self.pending = None
        if log_prob.shape != reward.shape:
            raise ValueError(f"reward must have one value per batch row, shape {tuple(log_prob.shape)}; got "
                             f"{tuple(reward.shape)}")
        reward = reward.detach().to(self.baseline.dtype)
        with torch.no_grad():
            if not bool(self.started):
                self.baseline.copy_(reward.mean())
                self.started.fill_(True)
        out = reinforce_surrogate(log_prob, reward, self.baseline.clone(), entropy=ent,
                                  entropy_weight=self.entropy_weight)
        with torch.no_grad():
            self.baseline.copy_(moving_average(self.baseline, reward, self.decay))
        # the surrogate's value means nothing (only its gradient does): add it as 0, so a logged loss stays the NLL
        return out - out.detach()


def reinforce_loss(model: nn.Module, reward: torch.Tensor) -> torch.Tensor | None:
    """The REINFORCE terms of every layer of ``model`` that recorded picks in its last training forward, given each
    batch row's reward (B,) (e.g. the log-likelihood of its target); None when none did.

    Example:

        >>> import torch
        >>> from qkv.nn import MultiHeadAttention, reinforce_loss
        >>> mha = MultiHeadAttention(8, 2, select="hard", estimator="reinforce").train()
        >>> out = mha(torch.randn(3, 4, 8))                  # the forward records its picks
        >>> term = reinforce_loss(mha, torch.randn(3))       # reward (B,)
        >>> term.shape, term.detach().item(), reinforce_loss(mha, torch.randn(3))   # worth 0; then none pending
        (torch.Size([]), 0.0, None)
    """
    terms = [m.loss(reward) for m in model.modules() if isinstance(m, Reinforce) and m.pending is not None]
    return sum(terms[1:], terms[0]) if terms else None


def needs_reward(model: nn.Module) -> bool:
    """Whether ``model`` holds a layer whose picks learn by REINFORCE (a training loss must call
    ``reinforce_loss``; without it the scores behind the picks get no gradient).

    Example:

        >>> from qkv.nn import MultiHeadAttention, needs_reward
        >>> hard = MultiHeadAttention(8, 2, select="hard", estimator="reinforce")   # picks one key, learns by REINFORCE
        >>> needs_reward(MultiHeadAttention(8, 2)), needs_reward(hard)
        (False, True)
    """
    return any(isinstance(m, Reinforce) for m in model.modules())


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
        select: "soft" (default), "hard" (each query picks one key) or "local" (a window of ``local_window`` keys
            around a pick, soft inside; ``local_window`` x ``local_window`` cells when ``grid`` is set):
            ``qkv/ops/hard_attention.py``. estimator: how the pick learns while training, "gumbel" (straight-
            through) or "reinforce" (then ``reinforce_loss`` must be given each row's reward; the baseline decays
            by ``baseline_decay``, the entropy bonus weighs ``entropy_weight``). decode: the pick at evaluation,
            "argmax" or "sample". tau: the Gumbel-softmax temperature.

    ``grid`` (attribute, default None): (rows, cols) when the keys are an image's cells, row-major; local windows
    are then square patches of cells.

    Example:

        >>> import torch
        >>> from qkv.nn import MultiHeadAttention
        >>> mha = MultiHeadAttention(16, 4, n_kv_heads=2)            # d_model 16, H = 4, G = 2 (grouped-query), D = 4
        >>> x, memory = torch.randn(2, 5, 16), torch.randn(2, 7, 16)   # (B, T, d_model), (B, S, d_model)
        >>> out, w = mha(x, causal=True, return_weights=True)
        >>> out.shape, w.shape, torch.allclose(w.sum(-1), torch.ones(2, 4, 5))
        (torch.Size([2, 5, 16]), torch.Size([2, 4, 5, 5]), True)
        >>> mha(x, memory, return_weights=True)[1].shape            # cross-attention: (B, H, T, S)
        torch.Size([2, 4, 5, 7])
    """

    def __init__(self, d_model: int, n_heads: int, *, n_kv_heads: int | None = None, head_dim: int | None = None,
                 score: str = "scaled_dot", bias: bool = True, out_bias: bool | None = None, dropout: float = 0.0,
                 scale: float | None = None, q_norm: nn.Module | None = None, k_norm: nn.Module | None = None,
                 softcap: float | None = None, select: str = "soft", estimator: str = "gumbel",
                 decode: str = "argmax", local_window: int = 3, tau: float = 1.0, entropy_weight: float = 0.0,
                 baseline_decay: float | None = 0.9):
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
        for name, value, known in (("select", select, SELECTIONS), ("estimator", estimator, ESTIMATORS),
                                   ("decode", decode, DECODES)):
            if value not in known:
                raise ValueError(f"{name} must be one of {known}, got {value!r}")
        self.select, self.estimator, self.decode, self.grid = select, estimator, decode, None
        if select != "soft":
            Selection(kind=select, how=estimator, window=local_window, tau=tau)  # checks window and tau
        self.local_window, self.tau = local_window, tau
        # the REINFORCE baseline (a buffer) exists only where it is used: every other model's weights stay as they are
        self.reinforce = Reinforce(baseline_decay, entropy_weight) if select != "soft" and estimator == "reinforce" \
            else None
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

    def selection(self) -> Selection | None:
        """The pick this layer makes now: the estimator while training, ``decode`` at evaluation; None when soft."""
        if self.select == "soft":
            return None
        return Selection(kind=self.select, how=self.estimator if self.training else self.decode,
                         window=self.local_window, grid=self.grid, tau=self.tau)

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
        hard = self.selection()
        records = hard is not None and self.training and self.reinforce is not None
        result = attention(q, k, v, score=self.score, mask=mask, causal=causal, window=window, bias=bias,
                           scale=self.scale, dropout_p=self.dropout if self.training else 0.0,
                           return_weights=return_weights, params=self._score_params(), softcap=self.softcap,
                           hard=hard, return_choice=records)
        if records:
            *result, choice = result
            self.reinforce.record(choice.log_prob, choice.entropy)  # (B, H, T) each
            result = tuple(result) if return_weights else result[0]
        out, weights = result if return_weights else (result, None)
        B, _, T, _ = out.shape
        out = self.out(out.transpose(1, 2).reshape(B, T, H * D))  # concatenate heads, then W_O
        return (out, weights) if return_weights else out
