"""Hard and local attention: a query picks keys instead of averaging them, and the estimators that train the pick.

Soft attention (``qkv.ops.attention``) returns sum_i alpha_i v_i with alpha = softmax(e). Hard attention draws one
key s ~ Multinoulli(alpha) and returns v_s (Xu et al. 2015, sec. 4.1, "stochastic hard attention"); local attention
draws the centre of a window of keys the same way and is soft inside the window (a hard choice of a small region,
soft attention within it; Luong et al. 2015's local attention with its centre picked rather than predicted). The
pick has no gradient, so two estimators train it:

- REINFORCE (Williams 1992; Xu et al. 2015, eq. 11-12): the loss adds -(R - b) log p(s) - lambda_e H(alpha), where R
  is the log-likelihood of the target given the pick, b a moving average of R (the baseline: it lowers the
  variance, not the mean) and H the entropy of alpha. Its gradient, (R - b) (onehot(s) - alpha) per query, is an
  unbiased estimate of the gradient of E_s[R] (tests/ops/test_hard_attention.py measures it).
- Gumbel-softmax straight-through (Jang et al. 2017, sec. 2 and 3.1): s = argmax(e + g) with g ~ Gumbel(0, 1) is an
  exact sample of alpha (the Gumbel-max trick); the forward uses onehot(s), the backward the gradient of
  softmax((e + g) / tau), a biased but low-variance estimate.

At evaluation and decoding the pick is the argmax ("argmax") or a sample ("sample").

Glossary: B batch, H heads, T queries, S keys (R x C grid cells for an image, row-major), k window side.
Reference and fast forms sit side by side, each tested against the other: ``sample_reference`` (inverse CDF) /
Gumbel-max, ``gumbel_straight_through_reference`` (the softmax Jacobian written out) / the detach trick,
``reinforce_gradient_reference`` (the score-function formula) / ``reinforce_surrogate`` (autograd),
``window_mask_reference`` (loops) / ``window_mask``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

KINDS = ("hard", "local")
ESTIMATORS = ("reinforce", "gumbel")  # how a pick learns while training
DECODES = ("argmax", "sample")  # how it is made at evaluation and decoding


@dataclass(frozen=True)
class Selection:
    """How each query picks keys: ``qkv.ops.attention(..., hard=Selection(...))``.

    kind: "hard" (one key) or "local" (a window of ``window`` keys centred on the pick, cut at a sequence's ends, or
    ``window`` x ``window`` cells over a ``grid``, moved inward at its edges; soft inside). how: "reinforce" or "gumbel" (training: a sample;
    REINFORCE's gradient comes from ``reinforce_surrogate`` on the returned ``Choice``), "argmax" or "sample"
    (evaluation, decoding). grid: (R, C) when the S keys are an image's cells, row-major (R * C == S). tau: the
    Gumbel-softmax temperature. noise: Gumbel noise (B, H, T, S) to use instead of drawing it (tests);
    generator: draws it reproducibly."""
    kind: str = "hard"
    how: str = "gumbel"
    window: int = 3
    grid: tuple[int, int] | None = None
    tau: float = 1.0
    noise: torch.Tensor | None = None
    generator: torch.Generator | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.how not in ESTIMATORS + DECODES:
            raise ValueError(f"how must be one of {ESTIMATORS + DECODES}, got {self.how!r}")
        if not isinstance(self.window, int) or isinstance(self.window, bool) or self.window < 1:
            raise ValueError(f"window must be an int >= 1 (the local window's side), got {self.window!r}")
        if self.grid is not None and (len(self.grid) != 2 or not all(isinstance(n, int) and n >= 1
                                                                     for n in self.grid)):
            raise ValueError(f"grid must be None or (rows, cols) of ints >= 1, got {self.grid!r}")
        if self.grid is not None and self.kind == "local" and self.window > min(self.grid):
            raise ValueError(f"window={self.window} is larger than the {self.grid[0]} x {self.grid[1]} grid of "
                             f"keys; expected window <= {min(self.grid)}")
        if isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)) or not 0 < self.tau < float("inf"):
            raise ValueError(f"tau must be a finite number > 0 (the Gumbel-softmax temperature), got {self.tau!r}")


@dataclass
class Choice:
    """What a pick was: index (B, H, T) the key (local: the window's centre); log_prob (B, H, T) its log-probability
    under alpha (differentiable: REINFORCE's score); entropy (B, H, T) of alpha (differentiable); probs (B, H, T, S)
    alpha itself. Queries with no key to attend have index 0 and zero log_prob and entropy."""
    index: torch.Tensor
    log_prob: torch.Tensor
    entropy: torch.Tensor
    probs: torch.Tensor


# ----------------------------------------------------------------------------------------------------------------
# Sampling: the Gumbel-max trick (fast) and the inverse CDF (reference)

def gumbel_noise(shape, *, dtype=torch.float32, device=None, generator=None) -> torch.Tensor:
    """Standard Gumbel noise -log(-log U), U ~ Uniform(0, 1) kept away from 0 and 1."""
    u = torch.rand(shape, dtype=dtype, device=device, generator=generator)
    tiny = torch.finfo(dtype).tiny
    return -torch.log(-torch.log(u.clamp(tiny, 1.0 - torch.finfo(dtype).eps)))


def sample(logits: torch.Tensor, noise: torch.Tensor | None = None, *, generator=None) -> torch.Tensor:
    """(..., S) logits (-inf = excluded) -> (...) an index drawn from softmax(logits): argmax(logits + g), g ~ Gumbel
    (Gumbel 1954; the max of perturbed logits lands on i with probability softmax(logits)_i)."""
    if noise is None:
        noise = gumbel_noise(logits.shape, dtype=logits.dtype, device=logits.device, generator=generator)
    return (logits + noise).argmax(-1)


def sample_reference(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """(..., S) probabilities, (...) uniforms in [0, 1) -> (...) the first index whose cumulative probability
    exceeds the uniform (the inverse-CDF definition of a categorical sample)."""
    cdf = probs.cumsum(-1)
    index = (cdf <= uniform.unsqueeze(-1)).sum(-1)
    return index.clamp(max=probs.shape[-1] - 1)


# ----------------------------------------------------------------------------------------------------------------
# Gumbel-softmax straight-through: forward one-hot, backward softmax((logits + g) / tau)

def gumbel_straight_through(logits: torch.Tensor, noise: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """(..., S) -> (..., S) onehot(argmax(logits + noise)) whose gradient is that of softmax((logits + noise) / tau)
    (Jang et al. 2017, sec. 3.1): y_hard + (y_soft - stop_gradient(y_soft)), the bracket exactly 0 forward."""
    soft = torch.softmax((logits + noise) / tau, dim=-1)
    hard = F.one_hot(soft.argmax(-1), logits.shape[-1]).to(soft.dtype)
    return hard + (soft - soft.detach())


class _GumbelReference(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, noise, tau):
        y = torch.exp((logits + noise) / tau - torch.logsumexp((logits + noise) / tau, -1, keepdim=True))
        ctx.save_for_backward(y)
        ctx.tau = tau
        index = (logits + noise).argmax(-1, keepdim=True)
        return torch.zeros_like(y).scatter_(-1, index, 1.0)

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        # d softmax(x / tau)_j / d x_i = y_j (delta_ij - y_i) / tau, so the vector-Jacobian product is
        # y_i (g_i - sum_j g_j y_j) / tau
        return y * (grad - (grad * y).sum(-1, keepdim=True)) / ctx.tau, None, None


def gumbel_straight_through_reference(logits: torch.Tensor, noise: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """The same estimator with the softmax's Jacobian written out by hand (an autograd.Function)."""
    return _GumbelReference.apply(logits, noise, tau)


# ----------------------------------------------------------------------------------------------------------------
# REINFORCE: the surrogate whose gradient is the score-function estimator, and its formula

def reinforce_surrogate(log_prob: torch.Tensor, reward: torch.Tensor, baseline, *, entropy: torch.Tensor | None = None,
                        entropy_weight: float = 0.0) -> torch.Tensor:
    """A scalar to add to a loss being minimised: -sum((reward - baseline) * log_prob) - entropy_weight * sum(entropy).

    log_prob: (N, ...) log-probabilities of the picks (differentiable). reward: broadcastable to it, e.g. (N, 1) the
    log-likelihood of each row's target given its picks (treated as a constant). baseline: a number or tensor
    broadcastable to reward (Xu et al.'s moving average of the reward); REINFORCE without one is refused: its
    variance grows with the reward's magnitude. entropy: (N, ...) entropies of the distributions picked from.
    Its gradient is the REINFORCE estimate of -grad E[reward] (plus the entropy term; Xu et al. 2015, eq. 12)."""
    if baseline is None:
        raise ValueError("baseline=None: REINFORCE needs a baseline (a moving average of the reward, Xu et al. 2015 "
                         "sec. 4.1); pass one, e.g. 0.0 to opt out on purpose")
    advantage = (reward - baseline).detach()
    loss = -(advantage * log_prob).sum()
    if entropy is not None and entropy_weight:
        loss = loss - entropy_weight * entropy.sum()
    return loss


def reinforce_gradient_reference(logits: torch.Tensor, index: torch.Tensor, reward: torch.Tensor, baseline: float,
                                 entropy_weight: float = 0.0) -> torch.Tensor:
    """The gradient of ``reinforce_surrogate`` with respect to the logits, written out: for each row,
    -(R - b) (onehot(s) - p) - lambda_e dH/de, where dH/de_j = -p_j (log p_j + H). logits (N, S), index (N,),
    reward (N,) -> (N, S)."""
    p = torch.softmax(logits, -1)
    logp = torch.log_softmax(logits, -1)
    onehot = F.one_hot(index, logits.shape[-1]).to(p.dtype)
    H = -(p * logp).sum(-1, keepdim=True)
    grad = -(reward - baseline).unsqueeze(-1) * (onehot - p)
    return grad - entropy_weight * (-p * (logp + H))


def moving_average(baseline: torch.Tensor, reward: torch.Tensor, decay: float) -> torch.Tensor:
    """b <- decay * b + (1 - decay) * mean(reward) (Xu et al. 2015, sec. 4.1: decay 0.9)."""
    return decay * baseline + (1.0 - decay) * reward.detach().mean()


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """(..., S) logits (-inf = excluded) -> (...) the entropy of their softmax, 0 log 0 taken as 0."""
    logp = torch.log_softmax(logits, -1)
    # excluded keys have log p = -inf: fill them before the product, so no inf * 0 reaches the gradient either
    return -(logp.exp() * logp.masked_fill(torch.isneginf(logp), 0.0)).sum(-1)


# ----------------------------------------------------------------------------------------------------------------
# Local windows: k keys (or k x k cells of a grid) around a centre, moved inward at the edges

def _starts(center: torch.Tensor, size: int, window: int) -> torch.Tensor:
    return (center - window // 2).clamp(min=0).clamp(max=max(size - window, 0))


def window_mask(center: torch.Tensor, S: int, window: int, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """(...) centres -> (..., S) bool. A sequence: True on keys centre - window // 2 .. centre - window // 2 +
    window - 1 that exist (cut at the ends, never moved: a key's window does not depend on how many keys follow, so
    cached decoding sees the windows a full pass sees). A (R, C) grid: the window x window cells around the centre
    cell, moved inward at the image's edges so every window holds window^2 cells. No host read: a decoding step
    stays on the device."""
    positions = torch.arange(S, device=center.device)
    if grid is None:
        start = (center - window // 2).unsqueeze(-1)
        return (positions >= start) & (positions < start + window)
    R, C = grid
    if R * C != S:
        raise ValueError(f"grid {R} x {C} has {R * C} cells but there are S={S} keys")
    if window > min(R, C):
        raise ValueError(f"window={window} is larger than the {R} x {C} grid of keys; expected window <= "
                         f"{min(R, C)}")
    r0, c0 = _starts(center // C, R, window).unsqueeze(-1), _starts(center % C, C, window).unsqueeze(-1)
    rows, cols = positions // C, positions % C
    return (rows >= r0) & (rows < r0 + window) & (cols >= c0) & (cols < c0 + window)


def window_mask_reference(center: torch.Tensor, S: int, window: int, grid: tuple[int, int] | None = None):
    """``window_mask`` by loops over every centre and key, from the definition."""
    out = torch.zeros(*center.shape, S, dtype=torch.bool)
    R, C = grid if grid is not None else (1, S)
    for idx in torch.cartesian_prod(*(torch.arange(n) for n in center.shape)).reshape(-1, center.dim()):
        c = int(center[tuple(idx)])
        r, col = divmod(c, C)
        if grid is None:
            keys = [j for j in range(c - window // 2, c - window // 2 + window) if 0 <= j < S]
        else:
            r0 = min(max(r - window // 2, 0), R - window)
            c0 = min(max(col - window // 2, 0), C - window)
            keys = [i * C + j for i in range(r0, r0 + window) for j in range(c0, c0 + window)]
        for j in keys:
            out[tuple(idx) + (j,)] = True
    return out


# ----------------------------------------------------------------------------------------------------------------
# The pick, as ``qkv.ops.attention`` makes it

def select(logits: torch.Tensor, selection: Selection) -> tuple[torch.Tensor, Choice]:
    """(B, H, T, S) float logits, -inf where a key may not be attended (at least one key allowed per row) ->
    (weights (B, H, T, S), Choice).

    hard: weights are onehot(pick) (plus, for "gumbel", the straight-through gradient of softmax((e + g) / tau)).
    local: weights are the softmax of the logits inside the window around the pick (differentiable as soft
    attention is; "gumbel" adds the same straight-through term for the centre). "reinforce" and "sample" draw the
    pick, "gumbel" too (the same Gumbel-max draw), "argmax" takes the best key."""
    S = logits.shape[-1]
    s = selection
    if s.grid is not None and s.grid[0] * s.grid[1] != S:
        raise ValueError(f"grid {s.grid[0]} x {s.grid[1]} has {s.grid[0] * s.grid[1]} cells but there are S={S} "
                         f"keys")
    noise = None
    if s.how != "argmax":
        noise = s.noise if s.noise is not None else gumbel_noise(logits.shape, dtype=logits.dtype,
                                                                 device=logits.device, generator=s.generator)
        index = (logits + noise.to(logits.dtype)).argmax(-1)
    else:
        index = logits.argmax(-1)  # (B, H, T)
    logp = torch.log_softmax(logits, -1)
    probs = logp.exp()
    choice = Choice(index, logp.gather(-1, index.unsqueeze(-1)).squeeze(-1), entropy(logits), probs)
    if s.kind == "hard":
        weights = F.one_hot(index, S).to(logits.dtype)
    else:
        inside = window_mask(index, S, s.window, s.grid)
        weights = torch.softmax(logits.masked_fill(~inside, float("-inf")), -1)
    if s.how == "gumbel":
        soft = torch.softmax((logits + noise.to(logits.dtype)) / s.tau, -1)
        weights = weights + (soft - soft.detach())  # exactly 0 forward; straight-through: the pick's gradient is the relaxed sample's
    return weights, choice
