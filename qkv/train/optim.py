"""AdamW and the learning-rate schedules."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..config import TrainConfig


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """The learning rate of optimizer step ``step`` (1-based).

    Warmup rises linearly to ``lr`` at ``warmup_steps``. Then ``cosine`` falls to ``min_lr`` at ``max_steps``;
    ``inverse_sqrt`` falls as step^-0.5: lr * min(sqrt(w / s), s / w), which is the original Transformer's
    d_model^-0.5 * min(s^-0.5, s * w^-1.5) (``transformer_lr``) when lr = (d_model * w)^-0.5; ``constant`` stays."""
    w = cfg.warmup_steps
    if cfg.schedule == "inverse_sqrt":
        return cfg.lr * min(math.sqrt(w / step), step / w)
    if w and step < w:
        return cfg.lr * step / w
    if cfg.schedule == "constant":
        return cfg.lr
    progress = min(1.0, max(0.0, (step - w) / max(1, cfg.max_steps - w)))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def transformer_lr(step: int, d_model: int, warmup_steps: int) -> float:
    """Vaswani et al. 2017, eq. 3: d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5)."""
    return d_model ** -0.5 * min(step ** -0.5, step * warmup_steps ** -1.5)


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device, *, sharded: bool = False):
    """AdamW and its schedule; weight decay on tensors of 2+ dims only (matrices, embeddings), as in nanoGPT.

    PyTorch's fused AdamW (one kernel over every parameter instead of a loop of small ones; same update) on CUDA,
    and on CPU unless the parameters are FSDP shards (``sharded``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device.type == "cuda" or (device.type == "cpu" and not sharded)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused)
    # LambdaLR's counter starts at 0 before the first update, which is step 1
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: learning_rate(e + 1, cfg) / cfg.lr)
    return opt, sched
