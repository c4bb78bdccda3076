"""Masked-language-model batches for BERT (Devlin et al. 2019, section 3.1, "Task #1: Masked LM").

Of the positions that hold ordinary tokens, each is selected with probability `mlm_probability` (15%).
A selected token is replaced by MASK 80% of the time, by a random ordinary token 10% of the time, and kept
10% of the time; the random and kept cases stop the model from learning that only MASK needs predicting.
Labels hold the original id at selected positions and -100 elsewhere. Specials and padding are never selected.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import torch

from qkv.data.parallel import IGNORE_INDEX
from qkv.data.tokenizer import Tokenizer


def mask_tokens(input_ids: torch.Tensor, maskable: torch.Tensor, *, mask_id: int, random_ids: torch.Tensor,
                mlm_probability: float = 0.15, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply BERT's 80/10/10 masking.

    input_ids: (B, T) int64; maskable: (B, T) bool, True where a token may be selected;
    random_ids: (K,) ids a "random token" is drawn from (the ordinary, non-special ids).
    Returns (inputs, labels), both (B, T) int64; labels are IGNORE_INDEX where nothing was selected.
    """
    gen = dict(generator=generator, device=input_ids.device)
    selected = (torch.rand(input_ids.shape, **gen) < mlm_probability) & maskable
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    action = torch.rand(input_ids.shape, **gen)  # one draw decides MASK (< .8), random (< .9) or keep
    to_mask = selected & (action < 0.8)
    to_random = selected & (action >= 0.8) & (action < 0.9)
    random_tokens = random_ids.to(input_ids.device)[
        torch.randint(len(random_ids), input_ids.shape, **gen)]
    inputs = torch.where(to_mask, torch.full_like(input_ids, mask_id), input_ids)
    inputs = torch.where(to_random, random_tokens, inputs)
    return inputs, labels


@dataclass
class MLMBatch:
    """input_ids (B, T) with masking applied, attention_mask (B, T) bool (True = real token), labels (B, T)."""
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "MLMBatch":
        return MLMBatch(*(getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)))


class MLMCollator:
    """Pads id sequences and masks them; batch `step` draws from a generator seeded by (seed, step).

    Call it on a list of 1-D id sequences (lists, arrays or tensors, e.g. `tokenizer.encode(t, True)`) to
    get an MLMBatch. `state_dict()`/`load_state_dict()` carry (seed, step) for exact resume.
    """

    def __init__(self, tokenizer: Tokenizer, *, mlm_probability: float = 0.15, seed: int = 0):
        if tokenizer.mask_id is None or tokenizer.pad_id is None:
            raise ValueError(f"tokenizer: {tokenizer!r} needs mask and pad tokens for masked-LM batches")
        if not 0.0 < mlm_probability < 1.0:
            raise ValueError(f"mlm_probability={mlm_probability!r}: expected a number in (0, 1)")
        self.mask_id, self.pad_id, self.mlm_probability = tokenizer.mask_id, tokenizer.pad_id, mlm_probability
        self.special_ids = torch.tensor(tokenizer.special_ids, dtype=torch.long)
        ordinary = np.setdiff1d(np.arange(tokenizer.vocab_size), tokenizer.special_ids)
        if len(ordinary) == 0:
            raise ValueError(f"tokenizer: {tokenizer!r} has no ordinary tokens to draw random replacements from")
        self.random_ids = torch.from_numpy(ordinary).long()
        self.seed, self.step = int(seed), 0

    def __call__(self, sequences: Sequence[Sequence[int]]) -> MLMBatch:
        if len(sequences) == 0:
            raise ValueError("sequences: empty; expected at least one id sequence")
        lengths = torch.tensor([len(s) for s in sequences])
        ids = torch.full((len(sequences), int(lengths.max())), self.pad_id, dtype=torch.long)  # (B, T)
        for row, s in zip(ids, sequences):
            row[:len(s)] = torch.as_tensor(s, dtype=torch.long)
        attention_mask = torch.arange(ids.shape[1]) < lengths[:, None]
        maskable = attention_mask & ~torch.isin(ids, self.special_ids)
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.step]).generate_state(1)[0]))
        self.step += 1
        inputs, labels = mask_tokens(ids, maskable, mask_id=self.mask_id, random_ids=self.random_ids,
                                     mlm_probability=self.mlm_probability, generator=g)
        return MLMBatch(inputs, attention_mask, labels)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.step = int(state["seed"]), int(state["step"])
