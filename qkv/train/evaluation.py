"""Evaluation: one pass over the validation batches (each process its rows), sums added over batches and processes,
the task's metrics from them; then any extra metrics of the eval callback (translation: BLEU)."""
from __future__ import annotations

import logging

import torch

from ..tasks import shard_rows, to_device
from .compiling import eager

log = logging.getLogger("qkv.train")


def evaluate(run) -> dict:
    """The task's validation metrics (val_loss, val_ppl, val_acc for token tasks) and the callback's; {} without
    validation data (never a made-up 0.0)."""
    metrics = _validation(run)
    if run.eval_callback is not None:
        metrics.update(run.eval_callback(run.model, run.step) or {})
    return metrics


def _validation(run) -> dict:
    if run.data.val is None or run.cfg.eval_steps == 0:
        return {}
    procs = run.procs
    totals: dict[str, torch.Tensor] = {}
    run.task_loss.eval()
    with torch.no_grad(), eager():  # compiled blocks run eagerly here: a no-grad graph would be another compile
        for batch in run.data.val():
            local, weight = shard_rows(batch, procs.rank, procs.world)
            with run.autocast():
                s = run.runner(to_device(local, run.device), weight)
            for name, value in {"nll": s.nll, "correct": s.correct, "count": s.count, **s.extra}.items():
                totals[name] = totals.get(name, 0) + value.double()
    run.task_loss.train()
    if not totals:  # no batch at all
        totals = {name: torch.zeros((), dtype=torch.float64, device=run.device) for name in ("nll", "correct", "count")}
    names = sorted(totals)
    flat = procs.sum(torch.cat([totals[n].reshape(-1) for n in names]))  # one collective for every sum
    sums, at = {}, 0
    for n in names:
        size = totals[n].numel()
        sums[n] = flat[at].item() if totals[n].dim() == 0 else flat[at:at + size].view_as(totals[n]).cpu()
        at += size
    if sums["count"] == 0:
        log.warning("validation held no targets: no validation metrics at this evaluation")
        return {}
    return run.data.task.metrics(sums)
