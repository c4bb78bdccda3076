"""The training loop, and the run it trains: ``train`` sets a run up from its named units (processes, the task's
data, the model and its optimizer, the run folder and its checkpoints, the log), ``_loop`` trains it."""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .. import checkpoint as ckpt
from ..config import ModelConfig, TrainConfig
from ..files import check_fits
from ..models import build
from ..models.sizing import model_bytes, model_sizes
from ..tasks import TaskData, count_targets, shard_rows, task_for, to_device
from . import checkpointing, compiling, processes, stopping
from .evaluation import evaluate
from .init import check_config, load_into, pretrained
from .log import MetricsLog, opening_line
from .optim import make_optimizer
from .precision import autocast, resolve_precision

log = logging.getLogger("qkv.train")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the weights were not updated with it."""


@dataclass
class TrainSummary:
    """What a run did. Losses are per target token (per image for ViT); val_* are None without validation data."""
    steps: int
    train_loss: float | None
    val_loss: float | None
    val_ppl: float | None
    val_acc: float | None
    best_val_loss: float | None
    tokens: int  # targets trained on (over all processes)
    wall_s: float
    tokens_per_s: float
    out_dir: str
    checkpoint: str | None  # the last checkpoint written
    metrics: str  # path of metrics.jsonl


@dataclass
class Run:
    """A run being trained: its settings and parts, and how far it has come."""
    cfg: TrainConfig
    procs: processes.Processes
    device: torch.device
    data: TaskData
    model: nn.Module  # the qkv model: checkpoints hold its weights
    task_loss: nn.Module  # the model with its task's loss (batch -> sums); DDP / FSDP wrap or shard this
    runner: nn.Module  # what a micro-step calls: task_loss, or task_loss under DDP
    shadow: nn.Module | None  # FSDP: an unsharded CPU copy of the model to save through
    opt: torch.optim.Optimizer
    sched: object
    scaler: torch.amp.GradScaler
    autocast: Callable
    log: MetricsLog | None = None
    eval_callback: Callable | None = None
    step: int = 0
    tokens: int = 0  # targets trained on so far
    best_val: float | None = None
    history: list = field(default_factory=list)  # config changes at each resume
    checkpoint: Path | None = None  # the last one written
    compile_untried: bool = False  # blocks compiled and not yet run: the first step falls back to eager on failure
    stop: stopping.StopRequests = field(default_factory=stopping.StopRequests)  # SIGINT / SIGTERM received


def _loop(run: Run) -> TrainSummary:
    """Optimizer steps until max_steps. One step: grad_accum global micro-batches forward and backward, one update;
    then a log record, an evaluation and a checkpoint when each is due, or a checkpoint and the end when a stop was
    requested (SIGINT, SIGTERM: ``stopping``)."""
    cfg, procs = run.cfg, run.procs
    train_loss, last_eval, tokens_start = None, {}, run.tokens
    run.stop.in_loop = True
    while run.step < cfg.max_steps:
        batches = [next(run.data.train) for _ in range(cfg.grad_accum)]
        n = sum(count_targets(b) for b in batches)  # every process sees the whole global batch
        loss_sum, nll_sum = _first_compiled_step(run, batches, n) if run.compile_untried else \
            _forward_backward(run, batches, n)
        # every process learns whether any was asked to stop, in the reduce the loss makes anyway
        train_loss, stop = procs.mean_per_and_any(loss_sum, n, run.stop.requested is not None)
        if not math.isfinite(train_loss):
            raise _non_finite(run, train_loss)
        lr, grad_norm = _update(run)
        run.step += 1
        run.tokens += n

        record, at_end = {}, run.step == cfg.max_steps
        stop = (stop if procs.world > 1 else run.stop.requested is not None) and not at_end
        due_eval = (cfg.eval_every and run.step % cfg.eval_every == 0) or at_end
        due_save = due_eval or (cfg.save_every and run.step % cfg.save_every == 0) or stop
        if due_save:  # weights that went NaN are neither evaluated nor saved
            checkpointing.check_weights_finite(run)
        if run.step % cfg.log_every == 0 or at_end:
            record = run.log.train_record(run.step, run.tokens, train_loss=train_loss, lr=lr,
                                          grad_norm=float(grad_norm))
            if cfg.label_smoothing:  # train_loss is the smoothed objective; this one compares with val_loss
                record["train_nll"] = procs.mean_per(nll_sum, n)
        if due_eval:
            last_eval = evaluate(run)
            record = {"step": run.step, "train_loss": train_loss, "lr": lr, **record, **last_eval}
        val_loss = last_eval.get("val_loss") if due_eval else None
        if val_loss is not None and (run.best_val is None or val_loss < run.best_val):
            run.best_val = val_loss
        # the record before the checkpoint: a crash between the two leaves a line past the last checkpoint, which
        # a resume drops and writes again, never a checkpoint whose line is lost
        run.log.write(record, train_loss, last_eval)
        if due_save:
            run.checkpoint = checkpointing.save(run, val_loss)
        if stop:
            run.log.close()
            raise run.stop.stopped(run.step, run.checkpoint, procs)
    wall = run.log.close()
    run.log.plot()
    procs.barrier()
    return TrainSummary(
        steps=run.step, train_loss=train_loss, val_loss=last_eval.get("val_loss"), val_ppl=last_eval.get("val_ppl"),
        val_acc=last_eval.get("val_acc"), best_val_loss=run.best_val, tokens=run.tokens, wall_s=wall,
        tokens_per_s=(run.tokens - tokens_start) / max(wall, 1e-9), out_dir=cfg.out_dir,
        checkpoint=str(run.checkpoint) if run.checkpoint else None, metrics=str(run.log.path))


def _forward_backward(run: Run, batches: list, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each micro-batch: this process's rows forward, its loss sum times world / n backward (DDP and FSDP average
    gradients over processes; * world turns that average into the sum), the gradient all-reduce only on the last.
    Returns this process's sums of the loss and of the plain NLL (float64)."""
    procs = run.procs
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    nll_sum = torch.zeros((), dtype=torch.float64, device=run.device)  # without label smoothing: val_loss's measure
    for i, batch in enumerate(batches):
        local, weight = shard_rows(batch, procs.rank, procs.world)
        with processes.no_sync(run.runner, run.task_loss, procs, enabled=i < len(batches) - 1):
            with run.autocast():
                s = run.runner(to_device(local, run.device), weight)
            run.scaler.scale(s.loss * (procs.world / max(n, 1))).backward()
        loss_sum += s.loss.detach().double()
        nll_sum += s.nll.double()
    return loss_sum, nll_sum


def _first_compiled_step(run: Run, batches: list, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first step of a run with compiled blocks: where compiling fails (no C++ compiler, an op the compiler
    does not take), the blocks go back to eager and the step runs again from clean gradients."""
    run.compile_untried = False
    try:
        return _forward_backward(run, batches, n)
    except Exception as e:  # noqa: BLE001 - a real error in the model shows again in the eager step
        log.warning("compiling the blocks failed (%s: %s); training eagerly", type(e).__name__,
                    str(e).splitlines()[0] if str(e) else "")
        compiling.uncompile_blocks(run.model)
        run.opt.zero_grad(set_to_none=True)
        return _forward_backward(run, batches, n)


def _update(run: Run) -> tuple[float, torch.Tensor]:
    """Unscale (fp16), clip the global gradient norm, AdamW step at this step's learning rate, next schedule step.
    Returns (the learning rate used, the gradient norm before clipping)."""
    run.scaler.unscale_(run.opt)
    grad_norm = torch.nn.utils.clip_grad_norm_(run.task_loss.parameters(), run.cfg.grad_clip or float("inf"))
    lr = run.opt.param_groups[0]["lr"]
    run.scaler.step(run.opt)
    run.scaler.update()
    run.opt.zero_grad(set_to_none=True)
    run.sched.step()
    return lr, grad_norm


def _non_finite(run: Run, train_loss: float) -> NonFiniteLossError:
    run.opt.zero_grad(set_to_none=True)
    return NonFiniteLossError(f"training loss is {train_loss} at step {run.step + 1}; stopped before updating the "
                              f"weights. {checkpointing.after_divergence(run)}")


# -- setting a run up ------------------------------------------------------------------------------------------

def train(model_config: ModelConfig | None, train_config: TrainConfig, *, model: nn.Module | None = None,
          tokenizer=None, data: TaskData | None = None,
          eval_callback: Callable[[nn.Module, int], dict] | None = None, name: str | None = None) -> TrainSummary:
    """Train a model of ``model_config`` as ``train_config`` says; returns a TrainSummary.

    With ``train_config.init`` (fine-tuning) ``model_config`` is None: the config, weights and tokenizer are the
    checkpoint's (``qkv.train.init``), the task may add its head.

    model: an already built qkv model to train instead of ``qkv.build(model_config)`` (its config is the one checked
    on resume). tokenizer: instead of ``train_config.tokenizer`` or one trained on the data (the task's
    default kind). data: a prepared TaskData (``qkv.tasks.prepare_data``) instead of reading ``train_config.data``.
    eval_callback(model, step) -> dict of extra metrics (e.g. ``bleu_callback``), called on every process at each
    evaluation; rank 0's dict is logged. Without one, the task's own (translation: greedy BLEU on the held-out
    pairs). name: what the opening line calls the model (its preset; default its family).

    Writes into ``out_dir``: metrics.jsonl, checkpoints/ with ``latest`` and ``best.json``, tokenizer/,
    config.json, train_config.json (with "auto" fields resolved), loss.png. Raises NonFiniteLossError if the loss
    becomes NaN/inf and NonFiniteWeightError if a weight does (the last good checkpoint stays),
    ValueError for bad data or an incompatible resume, before anything in out_dir changes, and TrainingInterrupted
    (a KeyboardInterrupt) after SIGINT or SIGTERM, with the checkpoint saved at the step it stopped after.
    """
    pre = None
    if train_config.init:  # fine-tuning: the checkpoint's config and tokenizer (qkv.train.init)
        if model is not None or model_config is not None:
            raise ValueError(f"init={train_config.init!r}: the model and its config come from the checkpoint; pass "
                             f"model_config=None and no model")
        pre = pretrained(train_config.init, tokenizer=train_config.tokenizer,
                         tokenizer_type=train_config.tokenizer_type, src_lang=train_config.src_lang,
                         tgt_lang=train_config.tgt_lang)
        model_config, tokenizer = pre.config, tokenizer if tokenizer is not None else pre.tokenizer
    family = (model_config if model is None else model.config).family
    task = data.task if data is not None else task_for(family, train_config.task)
    out = Path(train_config.out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir={str(out)!r} (--out-dir): is a file; expected a folder for the run's checkpoints "
                         f"and logs")
    procs, device = processes.setup(train_config.device, train_config.fsdp)
    max_positions = (model_config if model is None else model.config).max_positions
    cfg = resolve(train_config, task, device, procs.world, max_positions)
    stop = stopping.StopRequests(procs.main, procs.world)
    try:
        with stop, checkpointing.run_lock(out, procs, device):
            return _loop(_start(model_config, cfg, procs, device, task, model, tokenizer, data, eval_callback, pre,
                                stop=stop, name=name))
    except stopping.TrainingInterrupted as e:
        if e.step is None and stop.in_loop:  # stopped at once, without saving: say what is left
            raise stopping.TrainingInterrupted(f"{e}; {_what_is_left(out)}", signum=e.signum) from None
        raise
    finally:
        procs.close()


def _what_is_left(out: Path) -> str:
    try:
        good = ckpt.latest_checkpoint(out)
    except (OSError, ValueError):
        good = None
    if good is None:
        return "no checkpoint was written: the steps trained are lost"
    return f"the last checkpoint is {good} (step {ckpt.checkpoint_step(good)}): continue from it with resume=True " \
           f"(--resume)"


# The block size when none is given: the model's context, up to GPT-2's 1024 (also where Hugging Face's causal-LM
# example script caps it). Linear-time presets declare 4096 or more positions; windows that long make a CPU step
# several times slower and are rarely what a first run wants. --block-size takes any length up to max_positions.
DEFAULT_BLOCK_CAP = 1024


def resolve(cfg: TrainConfig, task, device: torch.device, world: int = 1,
            max_positions: int | None = None) -> TrainConfig:
    """``cfg`` with its "auto" fields made concrete, so the run's saved config says what ran: the tokenizer type the
    task trains (when it trains one), the precision for ``device``, whether the blocks are compiled, and for tasks
    that cut text to a block the block size: min(``max_positions``, DEFAULT_BLOCK_CAP) unless one was given."""
    compile = compiling.resolve_compile(cfg.compile, max_steps=cfg.max_steps, fixed_shapes=task.fixed_shapes,
                                        device=device, world=world)
    changes = {"precision": resolve_precision(cfg.precision, device), "compile": compile}
    if cfg.block_size is None and task.uses_block_size and max_positions:
        changes["block_size"] = min(max_positions, DEFAULT_BLOCK_CAP)
    if cfg.tokenizer_type == "auto" and not cfg.tokenizer and not cfg.init and task.tokenizer is not None:
        changes["tokenizer_type"] = task.tokenizer
    return dataclasses.replace(cfg, **changes)


def _start(model_config, cfg, procs, device, task, model, tokenizer, data, eval_callback, pre=None, *,
           stop: stopping.StopRequests, name: str | None = None) -> Run:
    """Everything before the first step, in the order that keeps a refused run from changing anything: the run
    folder's checks, the data, the memory check, the model (and its checkpoint's weights), the optimizer and the
    rest of the checkpoint's state, then the run folder's files, the opening line and the log."""
    max_positions = (model_config if model is None else model.config).max_positions
    resume_from, tokenizer, changes = checkpointing.check_run_folder(cfg, tokenizer, data, max_positions)
    if data is None:
        data = task.prepare(model_config if model is None else model.config, cfg, tokenizer)
    model_config = data.model_config
    if pre is not None:  # the task may add a head, nothing else; the run's config.json says where it started
        check_config(pre, model_config)
        model_config = data.model_config = model_config.replace(extra={**model_config.extra, "init": pre.record()})
    if model is not None and model.config.vocab_size != model_config.vocab_size:
        raise ValueError(f"model: its vocab_size is {model.config.vocab_size} but the tokenizer has "
                         f"{model_config.vocab_size} tokens; build the model with vocab_size={model_config.vocab_size}")
    if task.row_batches and cfg.batch_size % procs.world:
        raise ValueError(f"batch_size={cfg.batch_size} must be a multiple of the number of processes ({procs.world}): "
                         f"it is the global batch, split across them")
    check_memory(model_config, cfg, task, device, procs.world)

    checkpointing.seed_all(cfg.seed)  # the same initial weights on every process
    if model is None:
        model = build(model_config)
        if pre is not None and resume_from is None:
            load_into(model, pre)
    model.to(device)
    if resume_from is not None:
        ckpt.check_model_config(resume_from, model.config)
        ckpt.load_weights(resume_from, model)
    task_loss = task.loss(model, cfg.label_smoothing)
    runner, shadow = processes.wrap(task_loss, procs, device)
    if cfg.compile:
        compiling.compile_blocks(model)
    opt, sched = make_optimizer(task_loss, cfg, device, sharded=shadow is not None)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    run = Run(cfg, procs, device, data, model, task_loss, runner, shadow, opt, sched, scaler,
              autocast(cfg.precision, device), eval_callback=eval_callback or task.eval_callback(cfg, data.tokenizer),
              stop=stop)
    if resume_from is not None:
        checkpointing.restore(run, resume_from, changes)
    else:
        checkpointing.seed_all(cfg.seed + procs.rank)  # dropout differs across processes
    if procs.main:
        checkpointing.write_run_files(cfg, model_config, data.tokenizer, resumed=resume_from is not None)
        log.info(opening_line(name, model, cfg, task, device, procs.world))
        if resume_from is not None:
            log.info("resumed from %s at step %d", resume_from, run.step)
    if run.step >= cfg.max_steps:
        log.info("the run is already at max_steps=%d (checkpoint %s): nothing to train", cfg.max_steps, resume_from)
    run.checkpoint, run.compile_untried = resume_from, cfg.compile
    run.log = MetricsLog(cfg, procs.main, run.step, run.tokens)
    run.task_loss.train()
    return run


def check_memory(model_config: ModelConfig, cfg: TrainConfig, task, device, world: int) -> None:
    """Refuse a run whose smallest possible footprint cannot fit on ``device``: fp32 weights, gradients and the two
    AdamW moments; the grad_accum global micro-batches drawn per step; this process's share of one micro-batch's
    logits and their gradient. A lower bound: activations come on top."""
    params, _ = model_bytes(model_config)
    check_fits(16 * params, device=device, what=f"training a model of {params:,} parameters "
               f"({model_sizes(model_config)}: fp32 weights, gradients and two AdamW moments)")
    fp = task.footprint(model_config, cfg)
    logits = 2 * (4 if cfg.precision == "fp32" else 2) * fp.width * fp.tokens // world
    check_fits(16 * params + fp.input_bytes * cfg.grad_accum + logits, device=device,
               what=f"training ({params:,} parameters; {fp.what}, grad_accum={cfg.grad_accum}, "
                    f"{fp.width_name}={fp.width})")
