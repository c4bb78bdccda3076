"""Batches the loop draws: every process draws the same global batch and keeps its rows; streams are endless and
resumable (``state_dict`` / ``load_state_dict``), so a resumed run sees the very batches an uninterrupted one would."""
from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from ..data import MLMCollator, WindowSampler
from .loss import IGNORE_INDEX


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


def take(it, n: int) -> Iterator:
    """Up to n batches, one at a time (never all held at once): a small held-out set may have fewer than n."""
    for _ in range(n):
        try:
            yield next(it)
        except StopIteration:
            return


@dataclass
class TaskData:
    """A task's data: an endless resumable train stream of global batches, and a fresh iterator of validation
    batches per evaluation (``val()``, or None); the tokenizer (None for images) and the model config that follows
    it (vocabulary size, special ids)."""
    task: object  # the qkv.tasks.Task record
    train: object
    val: Callable[[], Iterator] | None
    tokenizer: object
    model_config: object


class LMBatches:
    """Causal LM: random windows from a token stream (``qkv.data.WindowSampler``), resumable."""

    def __init__(self, tokens, block_size: int, batch_size: int, *, seed: int):
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
        raise ValueError("the training data yields no batches")

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
