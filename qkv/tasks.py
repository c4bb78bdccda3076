"""What the training loop trains on: one small "batch -> loss" function per task, and the data each task reads.

Tasks, chosen by ``config.family``:
  causal LM (decoder)              x (B, T) -> logits (B, T, V) vs the next tokens y (B, T)
  seq2seq (encoder_decoder)        teacher forcing: (source, BOS + target) -> logits vs target + EOS
  masked LM (encoder)              BERT's 15% masked tokens -> MLM-head logits vs the original ids
  image classification (vit)       pixels (B, C, H, W) -> logits (B, classes) vs labels (B,)

Every loss function returns *sums* over the targets of its (local) batch plus their count, so the loop can
normalise by the number of targets of the whole global step: a run on N processes, or with gradient
accumulation, then optimises exactly the same objective as one process with one big batch.

Glossary: B batch, T (target) length, S source length, V vocabulary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, is_dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = -100  # targets at padding (and unmasked MLM positions): counted nowhere

TASKS = {"decoder": "lm", "encoder_decoder": "seq2seq", "encoder": "mlm", "vit": "image"}


# -- the loss --------------------------------------------------------------------------------------------------

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
    """Sums over the targets of one local batch: the loss optimised (smoothed), the plain NLL, correct argmaxes,
    and how many targets there were."""
    loss: torch.Tensor
    nll: torch.Tensor
    correct: torch.Tensor
    count: torch.Tensor


def token_sums(logits: torch.Tensor, targets: torch.Tensor, eps: float) -> LossSums:
    """logits (..., V), targets (...) with IGNORE_INDEX where nothing is predicted."""
    logits, targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    keep = targets != IGNORE_INDEX
    nll = label_smoothed_nll(logits, targets, 0.0, reduction="sum")
    loss = label_smoothed_nll(logits, targets, eps, reduction="sum") if eps else nll
    correct = ((logits.argmax(-1) == targets) & keep).sum()
    return LossSums(loss, nll.detach(), correct, keep.sum())


# -- batch -> loss, per task (nn.Modules, so DDP / FSDP see every parameter used inside forward) -------------

class TaskLoss(nn.Module):
    """Wraps a model; forward(batch) -> LossSums. ``weight`` 0 turns a placeholder batch (a process with no
    rows this step, which must still run forward for the collectives) into a zero loss."""

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0):
        super().__init__()
        self.model, self.eps = model, label_smoothing

    def forward(self, batch, weight: float = 1.0) -> LossSums:
        s = self.sums(batch)
        if weight != 1.0:
            s = LossSums(s.loss * weight, s.nll * weight, s.correct * int(weight), s.count * int(weight))
        return s

    def sums(self, batch) -> LossSums:
        raise NotImplementedError


class CausalLMLoss(TaskLoss):
    def sums(self, batch):
        x, y = batch  # (B, T), (B, T): y[:, t] is the token after x[:, t]
        return token_sums(self.model(x), y, self.eps)


class Seq2SeqLoss(TaskLoss):
    def sums(self, batch):
        logits = self.model(batch.input_ids, batch.decoder_input_ids, attention_mask=batch.attention_mask,
                            decoder_attention_mask=batch.decoder_attention_mask)  # (B, T, V)
        return token_sums(logits, batch.labels, self.eps)


class MaskedLMLoss(TaskLoss):
    def sums(self, batch):
        hidden = self.model(batch.input_ids, batch.attention_mask)  # (B, T, d)
        return token_sums(self.model.mlm_logits(hidden), batch.labels, self.eps)


class ImageLoss(TaskLoss):
    def sums(self, batch):
        pixels, labels = batch  # (B, C, H, W), (B,)
        return token_sums(self.model(pixels), labels, self.eps)


LOSSES = {"lm": CausalLMLoss, "seq2seq": Seq2SeqLoss, "mlm": MaskedLMLoss, "image": ImageLoss}


# -- batches: every process draws the same global batch and keeps its rows -----------------------------------

def batch_rows(batch) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else getattr(batch, fields(batch)[0].name)
    return first.shape[0]


def _map(batch, fn):
    if isinstance(batch, (tuple, list)):
        return type(batch)(fn(t) for t in batch)
    return type(batch)(*(fn(getattr(batch, f.name)) for f in fields(batch)))


def shard_rows(batch, rank: int, world: int):
    """This process's contiguous share of the batch's rows, and its weight: 0.0 for a process left without rows
    (it then gets row 0 as a placeholder, so forward and its collectives still run)."""
    if world == 1:
        return batch, 1.0
    n = batch_rows(batch)
    lo, hi = n * rank // world, n * (rank + 1) // world
    if hi > lo:
        return _map(batch, lambda t: t[lo:hi]), 1.0
    return _map(batch, lambda t: t[:1]), 0.0


def to_device(batch, device):
    return _map(batch, lambda t: t.to(device, non_blocking=True))


def count_targets(batch) -> int:
    """Targets in a whole global batch: the denominator of the step's loss."""
    if isinstance(batch, (tuple, list)):
        y = batch[1]
    elif is_dataclass(batch):
        y = batch.labels
    else:
        raise TypeError(f"cannot count targets of a {type(batch).__name__}")
    return int((y != IGNORE_INDEX).sum())


class LMBatches:
    """Causal LM: random windows from a token stream (``qkv.data.WindowSampler``), resumable."""

    def __init__(self, tokens, block_size: int, batch_size: int, *, seed: int):
        from .data import WindowSampler
        self.sampler = WindowSampler(tokens, block_size, batch_size, seed=seed)

    def __next__(self):
        return next(self.sampler)

    def state_dict(self):
        return self.sampler.state_dict()

    def load_state_dict(self, state):
        self.sampler.load_state_dict(state)


class MLMBatches(LMBatches):
    """Masked LM: windows of the token stream, masked 80/10/10 by ``qkv.data.MLMCollator``."""

    def __init__(self, tokens, block_size, batch_size, *, seed, tokenizer, mlm_probability=0.15):
        super().__init__(tokens, block_size, batch_size, seed=seed)
        from .data import MLMCollator
        self.collator = MLMCollator(tokenizer, mlm_probability=mlm_probability, seed=seed)

    def __next__(self):
        x, _ = next(self.sampler)
        return self.collator(list(x))

    def state_dict(self):
        return {"windows": self.sampler.state_dict(), "masking": self.collator.state_dict()}

    def load_state_dict(self, state):
        self.sampler.load_state_dict(state["windows"])
        self.collator.load_state_dict(state["masking"])


class EndlessBatches:
    """Epoch after epoch of a resumable batch iterable (``qkv.data.ParallelBatches``)."""

    def __init__(self, batches):
        self.batches, self._it = batches, None

    def __next__(self):
        for _ in range(2):  # at an epoch's end the sampler moves to the next epoch and a new iterator starts
            if self._it is None:
                self._it = iter(self.batches)
            try:
                return next(self._it)
            except StopIteration:
                self._it = None
        raise ValueError("the translation data yields no batches")

    def state_dict(self):
        return self.batches.state_dict()

    def load_state_dict(self, state):
        self.batches.load_state_dict(state)
        self._it = None


class ImageBatches:
    """Image classification: batch ``step`` holds indices drawn from a generator seeded by (seed, step)."""

    def __init__(self, dataset, batch_size: int, *, seed: int):
        self.dataset, self.batch_size, self.seed, self.step = dataset, batch_size, seed, 0

    def __next__(self):
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.step]).generate_state(1)[0]))
        self.step += 1
        idx = torch.randint(len(self.dataset), (self.batch_size,), generator=g).tolist()
        items = [self.dataset[i] for i in idx]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])

    def state_dict(self):
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state):
        self.seed, self.step = int(state["seed"]), int(state["step"])


def perplexity(nll: float) -> float:
    return math.exp(nll) if nll < 700 else float("inf")
