"""Show, Attend and Tell's decoder (Xu et al. 2015, sec. 3.1.2 and 4): an LSTM that attends over the image's
annotation vectors a_1 .. a_L while it writes, one word per step.

At step t, from the previous word y_{t-1} and the top layer's previous state h_{t-1}:

    e_ti    = f_att(a_i, h_{t-1}) = v^T tanh(W_h h_{t-1} + W_a a_i + b)     the additive score (qkv.ops.scores)
    alpha_t = softmax(e_t)                                                  weights over the L cells (eq. 4-5)
    pick    soft: w_t = alpha_t; hard: w_t = onehot(s_t), s_t ~ alpha_t; local: a window around s_t, soft inside
    beta_t  = sigmoid(f_beta(h_{t-1}))                                      the gating scalar (sec. 4.2.1)
    z_t     = beta_t sum_i w_ti a_i                                         the context
    h_t, c_t = LSTM([E y_{t-1}; z_t], (h_{t-1}, c_{t-1}))                   (eq. 1-3; stacked layers feed h upward)
    logits  = L_o(E y_{t-1} + L_h h_t + L_z z_t)                            the deep output layer (eq. 7)

The state starts from the mean annotation: h_0 = tanh(f_init_h(mean_i a_i)), c_0 = tanh(f_init_c(mean_i a_i))
(sec. 3.1.2). Training adds the doubly stochastic penalty lambda sum_i (1 - sum_t alpha_ti)^2 (eq. 14; its
``doubly_stochastic_penalty`` here) and, for REINFORCE picks, the terms of ``qkv.nn.reinforce_loss``.

Glossary: B batch, T words, L cells, D annotation size, n LSTM size, m embedding size, A attention size, V vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..nn import Linear, Reinforce
from ..ops.attention import scores
from ..ops.hard_attention import Selection, select


@dataclass
class AttentionStep:
    """One step's attention: alpha (B, L) the distribution over cells; weights (B, L) those used (alpha when soft);
    beta (B,) the gate; pick (B,) the attended cell (argmax of alpha when soft; the pick, or the window's centre);
    log_prob, entropy (B,) of the pick under alpha (None when soft)."""
    alpha: torch.Tensor
    weights: torch.Tensor
    beta: torch.Tensor
    pick: torch.Tensor
    log_prob: torch.Tensor | None = None
    entropy: torch.Tensor | None = None


class AnnotationAttention(nn.Module):
    """f_att, the pick and the gate: (h (B, n), a (B, L, D)) -> (z (B, D), AttentionStep).

    select / estimator / decode / window / tau / grid: as ``qkv.nn.MultiHeadAttention``'s (``qkv/ops/hard_attention.py``).
    The score is ``qkv.ops.scores(score="additive")`` with q = h, k = a and params W_q = W_h (A, n), W_k = W_a (A, D),
    v (A,), b (A,)."""

    def __init__(self, d_hidden: int, d_annotation: int, d_attention: int, *, select: str = "soft",
                 estimator: str = "gumbel", decode: str = "argmax", window: int = 3, tau: float = 1.0,
                 grid: tuple[int, int] | None = None):
        super().__init__()
        self.W_h = nn.Parameter(torch.randn(d_attention, d_hidden) * d_hidden ** -0.5)
        self.W_a = nn.Parameter(torch.randn(d_attention, d_annotation) * d_annotation ** -0.5)
        self.v = nn.Parameter(torch.randn(d_attention) * d_attention ** -0.5)
        self.b = nn.Parameter(torch.zeros(d_attention))
        self.gate = Linear(d_hidden, 1)  # f_beta
        self.select, self.estimator, self.decode = select, estimator, decode
        self.window, self.tau, self.grid = window, tau, grid
        if select != "soft":
            Selection(kind=select, how=estimator, window=window, grid=grid, tau=tau)  # checks them now

    def project(self, a: torch.Tensor) -> torch.Tensor:
        """W_a a_i for every cell, (B, L, A): the same at every step, so a decoder computes it once per image."""
        return a @ self.W_a.transpose(0, 1)

    def logits(self, h: torch.Tensor, a: torch.Tensor, a_proj: torch.Tensor | None = None) -> torch.Tensor:
        """e (B, L): v^T tanh(W_h h + W_a a_i + b) for every cell i (a_proj: ``project(a)``, if already made)."""
        params = {"W_q": self.W_h, "W_k": self.W_a, "v": self.v, "b": self.b,
                  "k_proj": None if a_proj is None else a_proj[:, None]}
        return scores(h[:, None, None, :], a[:, None], score="additive", params=params)[:, 0, 0]  # (B, L)

    def forward(self, h: torch.Tensor, a: torch.Tensor, a_proj: torch.Tensor | None = None,
                expected: torch.Tensor | None = None):
        """(h (B, n), a (B, L, D)[, a_proj (B, L, A)]) -> (z (B, D), AttentionStep). expected: (B,) bool, rows whose
        pick is replaced by its expectation alpha (soft attention; Xu et al. 2015 sec. 4.1)."""
        e = self.logits(h, a, a_proj)  # (B, L)
        e32 = e.to(torch.promote_types(e.dtype, torch.float32))  # the softmax in float32 at least
        alpha = torch.softmax(e32, -1).to(e.dtype)
        if self.select == "soft":
            weights, step = alpha, AttentionStep(alpha, alpha, None, alpha.argmax(-1))
        else:
            how = self.estimator if self.training else self.decode
            sel = Selection(kind=self.select, how=how, window=self.window, grid=self.grid, tau=self.tau)
            w, choice = select(e32[:, None, None], sel)  # (B, 1, 1, L)
            weights = w[:, 0, 0].to(e.dtype)
            if expected is not None:
                weights = torch.where(expected[:, None], alpha, weights)
            step = AttentionStep(alpha, weights, None, choice.index[:, 0, 0], choice.log_prob[:, 0, 0],
                                 choice.entropy[:, 0, 0])
        beta = torch.sigmoid(self.gate(h)).squeeze(-1)  # (B,)
        step.beta = beta
        z = beta[:, None] * torch.einsum("bl,bld->bd", weights, a)  # (B, D)
        return z, step


@dataclass
class StepsTaken:
    """Every step of a forward, stacked: alpha, weights (B, T, L); beta, pick (B, T); log_prob, entropy (B, T) or
    None when soft."""
    alpha: torch.Tensor
    weights: torch.Tensor
    beta: torch.Tensor
    pick: torch.Tensor
    log_prob: torch.Tensor | None
    entropy: torch.Tensor | None


class LSTMDecoder(nn.Module):
    """Show, Attend and Tell's decoder (module docstring), from primitives.

    vocab_size V, d_embed m, d_hidden n, d_annotation D, d_attention A; n_layers stacked LSTM cells (the paper: 1);
    attention: AnnotationAttention's keywords; tie: L_o shares E's matrix (needs m x V both ways, as here); dropout
    before the deep output (sec. 5.2). reinforce: a ``qkv.nn.Reinforce`` (baseline_decay, entropy_weight) when the
    picks learn by REINFORCE. expectation: while training by REINFORCE, the share of images whose picks are all
    replaced by their expectation alpha (soft attention, trained by backpropagation; Xu et al. 2015 sec. 4.1 use
    0.5 "to further reduce the estimator variance"); their picks get no REINFORCE term."""

    def __init__(self, vocab_size: int, d_embed: int, d_hidden: int, d_annotation: int, d_attention: int, *,
                 n_layers: int = 1, attention: dict | None = None, tie: bool = False, dropout: float = 0.0,
                 reinforce: tuple[float | None, float] | None = None, expectation: float = 0.0):
        super().__init__()
        self.expectation = expectation
        self.embed = nn.Embedding(vocab_size, d_embed)  # E
        self.attention = AnnotationAttention(d_hidden, d_annotation, d_attention, **(attention or {}))
        self.init_h = nn.ModuleList(Linear(d_annotation, d_hidden) for _ in range(n_layers))  # f_init_h
        self.init_c = nn.ModuleList(Linear(d_annotation, d_hidden) for _ in range(n_layers))  # f_init_c
        self.cells = nn.ModuleList(nn.LSTMCell(d_embed + d_annotation if i == 0 else d_hidden, d_hidden)
                                   for i in range(n_layers))
        self.L_h, self.L_z = Linear(d_hidden, d_embed), Linear(d_annotation, d_embed)
        self.L_o = Linear(d_embed, vocab_size)
        if tie:
            self.L_o.weight = self.embed.weight
        self.dropout = nn.Dropout(dropout)
        self.reinforce = Reinforce(*reinforce) if reinforce is not None else None

    def initial_state(self, a: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(h_0, c_0) of every layer from the mean annotation vector: lists of (B, n)."""
        mean = a.mean(1)  # (B, D)
        return [torch.tanh(f(mean)) for f in self.init_h], [torch.tanh(f(mean)) for f in self.init_c]

    def step(self, y_prev: torch.Tensor, h: list, c: list, a: torch.Tensor, a_proj: torch.Tensor | None = None,
             expected: torch.Tensor | None = None):
        """One word: y_prev (B,) ids -> (logits (B, V), h, c, AttentionStep). a_proj: the attention's ``project(a)``
        when already made (it does not change from step to step); expected: AnnotationAttention's."""
        emb = self.embed(y_prev)  # (B, m)
        z, att = self.attention(h[-1], a, a_proj, expected)  # attends from the top layer's h_{t-1}
        x, h, c = torch.cat([emb, z], -1), list(h), list(c)
        for i, cell in enumerate(self.cells):
            h[i], c[i] = cell(x, (h[i], c[i]))
            x = h[i]
        logits = self.L_o(self.dropout(emb + self.L_h(h[-1]) + self.L_z(z)))  # eq. 7
        return logits, h, c, att

    def forward(self, ids: torch.Tensor, a: torch.Tensor, state=None, *, mask: torch.Tensor | None = None):
        """ids (B, T) previous words (teacher forcing: BOS + target[:-1]); a (B, L, D) annotations; state: (h, c) to
        continue from (None: the initial state). mask (B, T): 1 where a step is a real word (REINFORCE counts only
        those picks). Returns logits (B, T, V), the new (h, c), and StepsTaken."""
        h, c = self.initial_state(a) if state is None else state
        a_proj = self.attention.project(a) if ids.shape[1] > 1 else None  # (B, L, A), once for every step
        sampling = self.reinforce is not None and self.training
        expected = None
        if sampling and self.expectation:
            expected = torch.rand(ids.shape[0], device=ids.device) < self.expectation  # (B,) whole captions
        logits, steps = [], []
        for t in range(ids.shape[1]):
            out, h, c, att = self.step(ids[:, t], h, c, a, a_proj, expected)
            logits.append(out)
            steps.append(att)
        taken = StepsTaken(*(torch.stack([getattr(s, name) for s in steps], 1) for name in
                             ("alpha", "weights", "beta", "pick")),
                           *(None if steps[0].log_prob is None else torch.stack([getattr(s, name) for s in steps], 1)
                             for name in ("log_prob", "entropy")))
        if sampling:
            if expected is not None:  # no pick was made in these rows
                keep = (~expected)[:, None].to(taken.log_prob.dtype)
                mask = keep if mask is None else mask * keep
            self.reinforce.record(taken.log_prob, taken.entropy, mask)
        return torch.stack(logits, 1), (h, c), taken


def doubly_stochastic_penalty(alpha: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """sum_i (1 - sum_t alpha_ti)^2 per row (Xu et al. 2015, eq. 14, without lambda): alpha (B, T, L), mask (B, T)
    1 on the real steps (padding steps do not count) -> (B,). Zero when every cell gets total weight 1 over the
    caption: it asks the decoder to look at every part of the image once."""
    if mask is not None:
        alpha = alpha * mask[..., None].to(alpha.dtype)
    return ((1.0 - alpha.sum(1)) ** 2).sum(-1)
