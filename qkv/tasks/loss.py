"""Batch -> loss: one small module per task wraps the model and returns *sums* over the targets of its (local)
batch plus their count, so the loop can normalise by the number of targets of the whole global step: a run on N
processes, or with gradient accumulation, then optimises exactly the same objective as one process with one big
batch.

Glossary: B batch, T (target) length, S source length, V vocabulary (or classes).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import needs_reward, reinforce_loss

IGNORE_INDEX = -100  # targets at padding (and unmasked MLM positions): counted nowhere


def label_smoothed_nll(logits: torch.Tensor, targets: torch.Tensor, eps: float = 0.0, *,
                       ignore_index: int = IGNORE_INDEX, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy against label-smoothed targets (Szegedy et al. 2016, sec. 7; Vaswani et al. 2017, sec. 5.4).

    logits (..., V), targets (...) int. The smoothed target distribution is the one PyTorch uses:
        q = (1 - eps) * onehot(y) + eps / V   (eps spread uniformly over *all* V classes, the gold one included)
    and the loss per target is the cross-entropy H(q, p) = -sum_v q_v log p_v
        = (1 - eps) * (-log p_y) + eps * mean_v(-log p_v),
    which equals KL(q || p) + H(q): the KL form, shifted by the constant entropy of q (no gradient), and equals
    ``F.cross_entropy(logits, targets, label_smoothing=eps)``. (fairseq instead spreads eps over the V - 1 wrong
    classes; that is a different q.) Targets equal to ``ignore_index`` contribute nothing; "mean" divides by
    the number of the others. Computed in float32 whatever the logits' dtype.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    logp = F.log_softmax(logits.float(), dim=-1)  # (..., V)
    keep = targets != ignore_index
    safe = torch.where(keep, targets, torch.zeros_like(targets))
    nll = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (...)
    loss = (1.0 - eps) * nll - eps * logp.mean(-1) if eps else nll
    loss = torch.where(keep, loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / keep.sum().clamp(min=1)


@dataclass
class LossSums:
    """Sums over the targets of one local batch: the loss optimised (smoothed), the plain NLL, how many targets
    there were, and (at evaluation) how many the argmax got right. ``extra``: further sums a task's metrics read
    (e.g. per-class counts), added over batches and processes like the others."""
    loss: torch.Tensor
    nll: torch.Tensor
    count: torch.Tensor
    correct: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def scaled(self, weight: float) -> "LossSums":
        """Every sum times ``weight`` (0 turns a placeholder batch into nothing)."""
        w = int(weight)
        return LossSums(self.loss * weight, self.nll * weight, self.count * w,
                        None if self.correct is None else self.correct * w, {k: v * w for k, v in self.extra.items()})


def token_sums(logits: torch.Tensor, targets: torch.Tensor, eps: float, *, accuracy: bool = True) -> LossSums:
    """logits (..., V), targets (...) with IGNORE_INDEX where nothing is predicted.

    The same quantities as ``label_smoothed_nll(..., reduction="sum")`` (with eps, and without for the NLL), from
    one log-softmax in float32; the argmax for ``correct`` only when ``accuracy`` (evaluation)."""
    logits, targets = logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)  # (N, V), (N,)
    keep = targets != IGNORE_INDEX
    if eps:
        logp = F.log_softmax(logits, dim=-1)
        nll = F.nll_loss(logp, targets, ignore_index=IGNORE_INDEX, reduction="sum")
        uniform = -(logp.mean(-1) * keep).sum()  # eps's share: the cross-entropy against 1/V everywhere
        loss = (1.0 - eps) * nll + eps * uniform
    else:
        nll = loss = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
    correct = ((logits.argmax(-1) == targets) & keep).sum() if accuracy else None
    return LossSums(loss, nll.detach(), keep.sum(), correct)


class TaskLoss(nn.Module):
    """Wraps a model; forward(batch) -> LossSums (nn.Modules, so DDP / FSDP see every parameter used inside
    forward). ``weight`` 0 turns a placeholder batch (a process with no rows this step, which must still run
    forward for the collectives) into a zero loss. Out of training mode the sums include ``correct``.

    A task implements ``logits(batch) -> (logits (..., V), targets (...))``; one that needs more than token sums
    overrides ``sums``."""

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0):
        super().__init__()
        self.model, self.eps = model, label_smoothing
        self.rewards = needs_reward(model)  # hard / local attention trained by REINFORCE (qkv.nn.Reinforce)

    def forward(self, batch, weight: float = 1.0) -> LossSums:
        s = self.sums(batch)
        return s if weight == 1.0 else s.scaled(weight)

    def sums(self, batch) -> LossSums:
        logits, targets = self.logits(batch)
        s = token_sums(logits, targets, self.eps, accuracy=not self.training)
        if self.rewards and self.training:
            s.loss = s.loss + self.reinforce_terms(logits, targets)
        return s

    def reinforce_terms(self, logits: torch.Tensor, targets: torch.Tensor, *, per_token: bool = False) -> torch.Tensor:
        """The REINFORCE terms of the model's sampled attention picks (``qkv.nn.reinforce_loss``), each batch row
        rewarded with the log-likelihood of its targets given its picks (Xu et al. 2015, eq. 12); per_token: divided
        by the row's number of targets, so rows of different lengths share one baseline (a long row's lower total
        is not read as a worse pick)."""
        nll = label_smoothed_nll(logits.detach(), targets, reduction="none").reshape(len(targets), -1)  # (B, T)
        reward = -nll.sum(-1)
        if per_token:
            reward = reward / (targets != IGNORE_INDEX).reshape(len(targets), -1).sum(-1).clamp(min=1)
        terms = reinforce_loss(self.model, reward)
        return logits.new_zeros(()) if terms is None else terms

    def logits(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError
