"""The training loop: teacher forcing, cross-entropy with label smoothing, AdamW with warmup and decay, gradient
clipping and accumulation, mixed precision, DDP / FSDP2, evaluation, atomic checkpoints and exact resume.

    summary = qkv.train.train(qkv.preset("gpt-char-tiny"), TrainConfig(data="input.txt", max_steps=2000))

The same entry runs on several processes under ``torchrun --nproc_per_node N -m qkv.train ...``: every process
draws the same global batch and keeps its share of the rows, and the loss of a step is the sum over all its
targets divided by their number, so N processes follow one process's loss curve.

One optimizer step (step s = 1 .. max_steps):
  batches = grad_accum global micro-batches;  N = targets in all of them
  for each: loss_sum = sum of per-target losses of this process's rows; backward(loss_sum * world / N)
            (DDP and FSDP average gradients over processes; * world turns that average into the sum)
  clip the gradient norm, AdamW step at lr(s), scheduler step
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from . import checkpoint as ckpt
from . import safety
from .config import ModelConfig, TrainConfig
from .tasks import (LOSSES, TASKS, EndlessBatches, ImageBatches, LMBatches, LossSums, MLMBatches, count_targets,
                    perplexity, shard_rows, to_device)

log = logging.getLogger("qkv.train")

# TrainConfig fields a resumed run must share with the checkpoint for its batches and updates to be the same
RESUME_MUST_MATCH = ("batch_size", "max_tokens", "block_size", "grad_accum", "seed", "lr", "min_lr", "weight_decay",
                     "betas", "eps", "warmup_steps", "schedule", "label_smoothing", "val_fraction", "mlm_probability")


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


# -- learning-rate schedules -----------------------------------------------------------------------------------

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


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device):
    """AdamW; weight decay on tensors of 2+ dims only (matrices, embeddings), as in nanoGPT; fused on GPU."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=device.type == "cuda")
    # LambdaLR's counter starts at 0 before the first update, which is step 1
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: learning_rate(e + 1, cfg) / cfg.lr)
    return opt, sched


# -- processes -------------------------------------------------------------------------------------------------

@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(cfg: TrainConfig) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device:
        device = check_device(cfg.device)
    else:
        device = torch.device(f"cuda:{local}" if world > 1 else "cuda") if torch.cuda.is_available() \
            else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world == 1 and not (dist.is_available() and dist.is_initialized()):
        return _Dist(), device
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owns = True
    return _Dist(dist.get_rank(), dist.get_world_size(), local, owns), device


def check_device(name: str) -> torch.device:
    """``name`` as a torch.device after checking this machine has it; ValueError naming the flag otherwise."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={name!r} (--device): not a device name; expected cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} (--device): no CUDA GPU is available on this machine "
                         f"(torch.cuda.is_available() is False); use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device={name!r} (--device): this machine has {torch.cuda.device_count()} CUDA GPU(s); "
                         f"expected cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={name!r} (--device): MPS is not available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={name!r} (--device): qkv trains on cpu, cuda or mps")
    return device


def _all_sum(t: torch.Tensor, d: _Dist) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


# -- data ------------------------------------------------------------------------------------------------------

@dataclass
class TaskData:
    """A task's data: an endless resumable train stream of global batches, and a fresh list of validation
    batches per evaluation (``val()``, or None)."""
    task: str
    train: object
    val: Callable[[], list] | None
    tokenizer: object
    model_config: ModelConfig


def prepare_data(model_config: ModelConfig, cfg: TrainConfig, tokenizer=None) -> TaskData:
    """Read, tokenize and batch ``cfg.data`` for the task of ``model_config.family``; the vocabulary size (and
    special ids) of the model config follow the tokenizer's. Raises ValueError / FileNotFoundError with the
    file and what was expected."""
    from . import data as qd
    task = TASKS[model_config.family]
    if cfg.data is None:
        raise ValueError("data: no training data given; pass data= (a text file for language models)")
    for name in ("data", "data_tgt", "val_data", "val_data_tgt"):
        path = getattr(cfg, name)
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"{name}={str(path)!r}: no such file or folder (--{name.replace('_', '-')})")
        if path is not None and task != "image" and not Path(path).is_file():
            raise ValueError(f"{name}={str(path)!r} (--{name.replace('_', '-')}): is a folder; expected a text file")
    if task == "seq2seq" and cfg.data_tgt is not None and cfg.val_data is not None and cfg.val_data_tgt is None:
        raise ValueError(f"val_data={cfg.val_data!r} (--val-data): the training data are two aligned files (--data, "
                         f"--data-tgt), so the validation data need their target side too: pass --val-data-tgt")
    if cfg.val_data_tgt is not None and cfg.val_data is None:
        raise ValueError(f"val_data_tgt={cfg.val_data_tgt!r} (--val-data-tgt) was given without --val-data, its "
                         f"source side")
    if task == "image":
        return _prepare_images(model_config, cfg)
    if tokenizer is None:
        if cfg.tokenizer:
            tokenizer = qd.Tokenizer.load(cfg.tokenizer)
        else:
            tokenizer = train_tokenizer(cfg, task)
    changes = {}
    if tokenizer.vocab_size != model_config.vocab_size:
        changes["vocab_size"] = tokenizer.vocab_size
    for field, role in (("pad_token_id", "pad"), ("bos_token_id", "bos"), ("eos_token_id", "eos")):
        i = getattr(tokenizer, f"{role}_id")
        if i is not None and task != "lm" and getattr(model_config, field) != i:
            changes[field] = i
    if task == "seq2seq" and tokenizer.bos_id is not None and model_config.decoder_start_token_id != tokenizer.bos_id:
        changes["decoder_start_token_id"] = tokenizer.bos_id
    if changes:
        log.info("model config follows the tokenizer: %s", changes)
        model_config = model_config.replace(**changes)

    if task in ("lm", "mlm"):
        block = cfg.block_size or model_config.max_positions
        if block > model_config.max_positions:
            raise ValueError(f"block_size={block} exceeds the model's max_positions={model_config.max_positions}")
        cache = Path(cfg.out_dir) / "data"
        splits = qd.load_lm_data(cfg.data, tokenizer, cache, block_size=block, val_files=cfg.val_data,
                                 val_fraction=cfg.val_fraction)
        if task == "lm":
            train = LMBatches(splits.train, block, cfg.batch_size, seed=cfg.seed)
            val = lambda: _take(LMBatches(splits.val, block, cfg.batch_size, seed=cfg.seed + 1),  # noqa: E731
                                cfg.eval_steps)
        else:
            kw = dict(tokenizer=tokenizer, mlm_probability=cfg.mlm_probability)
            train = MLMBatches(splits.train, block, cfg.batch_size, seed=cfg.seed, **kw)
            val = lambda: _take(MLMBatches(splits.val, block, cfg.batch_size, seed=cfg.seed + 1, **kw),  # noqa: E731
                                cfg.eval_steps)
        return TaskData(task, train, val, tokenizer, model_config)

    # seq2seq
    max_len = model_config.max_positions - 1  # room for the BOS / EOS the dataset adds
    ds = qd.load_parallel(cfg.data, cfg.data_tgt, tokenizer, max_len=max_len)
    train = EndlessBatches(qd.ParallelBatches(ds, cfg.max_tokens, seed=cfg.seed))
    val = None
    if cfg.val_data:
        vds = qd.load_parallel(cfg.val_data, cfg.val_data_tgt, tokenizer, max_len=max_len)
        val = lambda: _take(iter(qd.ParallelBatches(vds, cfg.max_tokens, shuffle=False)), cfg.eval_steps)  # noqa: E731
    return TaskData(task, train, val, tokenizer, model_config)


def default_tokenizer_type(task: str) -> str:
    """The tokenizer a task trains when none is given: a byte-level BPE vocabulary shared by source and target
    for translation (Vaswani et al. 2017, sec. 5.1 share one BPE vocabulary; byte-level, so every text encodes
    and decodes back exactly), characters for language models (nanoGPT's) and masked LMs."""
    return "bpe" if task == "seq2seq" else "char"


def train_tokenizer(cfg: TrainConfig, task: str):
    """Train ``cfg.tokenizer_type`` ("auto": ``default_tokenizer_type``) on ``cfg.data`` (both sides for
    translation). BPE: at most 8000 tokens, digits split one by one, a space before every sentence (so a word is
    the same token at its start), for translation; language models keep text as it flows."""
    from . import data as qd
    kind = default_tokenizer_type(task) if cfg.tokenizer_type == "auto" else cfg.tokenizer_type
    files = [cfg.data] if task != "seq2seq" or cfg.data_tgt is None else [cfg.data, cfg.data_tgt]
    if task == "seq2seq" and cfg.data_tgt is None:  # a .tsv/.jsonl of pairs: both sides
        files = iter([t for pair in qd.read_pairs(cfg.data) for t in pair])
    if kind == "bpe":
        return qd.train_bpe(files, vocab_size=8000, individual_digits=True, prefix_space=task == "seq2seq",
                            specials=() if task == "lm" else None)
    if kind == "wordpiece":
        if task != "mlm":
            raise ValueError(f"tokenizer_type='wordpiece' is for masked LMs (it lowercases and does not give the "
                             f"text back); for a {task} model use 'bpe' or 'char'")
        return qd.train_wordpiece(files, vocab_size=8000, lowercase=True)
    # nanoGPT's character vocabulary for language models (no specials); translation and MLM need some
    if task == "seq2seq" and cfg.data_tgt is None:
        files = iter([s + t for s, t in qd.read_pairs(cfg.data)])
    return qd.CharTokenizer.train(files, specials=() if task == "lm" else None)


def resolve_tokenizer_type(cfg: TrainConfig, family: str) -> TrainConfig:
    """``cfg`` with tokenizer_type "auto" replaced by the type the task trains, so the run's config says which."""
    task = TASKS.get(family)
    if cfg.tokenizer_type != "auto" or cfg.tokenizer or task is None or task == "image":
        return cfg
    return dataclasses.replace(cfg, tokenizer_type=default_tokenizer_type(task))


def _take(it, n):
    """Up to n batches, one at a time (never all held at once): a small held-out set may have fewer than eval_steps."""
    for _ in range(n):
        try:
            yield next(it)
        except StopIteration:
            return


def _prepare_images(model_config, cfg):
    from . import data as qd
    def dataset(path):
        p = Path(path)
        return qd.ImageFolder(p, model_config.image_size) if p.is_dir() else qd.ArrayImages(p, model_config.image_size)
    train = ImageBatches(dataset(cfg.data), cfg.batch_size, seed=cfg.seed)
    val = None
    if cfg.val_data:
        vds = dataset(cfg.val_data)
        val = lambda: _take(ImageBatches(vds, cfg.batch_size, seed=cfg.seed + 1), cfg.eval_steps)  # noqa: E731
    return TaskData("image", train, val, None, model_config)


# -- RNG state -------------------------------------------------------------------------------------------------

def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- the loop --------------------------------------------------------------------------------------------------

def train(model_config: ModelConfig, train_config: TrainConfig, *, model: nn.Module | None = None,
          tokenizer=None, data: TaskData | None = None,
          eval_callback: Callable[[nn.Module, int], dict] | None = None) -> TrainSummary:
    """Train a model of ``model_config`` as ``train_config`` says; returns a TrainSummary.

    model: an already built qkv model to train instead of ``qkv.build(model_config)`` (its config is the one
    checked on resume). tokenizer: instead of ``train_config.tokenizer`` or a character tokenizer trained on the
    data. data: a prepared TaskData instead of reading ``train_config.data``. eval_callback(model, step) -> dict of
    extra metrics (e.g. ``bleu_callback``), called on every process at each evaluation; rank 0's dict is logged.

    Writes into ``out_dir``: metrics.jsonl, checkpoints/ with ``latest`` and ``best.json``, tokenizer/,
    config.json, train_config.json, loss.png. Raises NonFiniteLossError if the loss becomes NaN/inf (the last good
    checkpoint stays), ValueError for bad data or an incompatible resume, before anything in out_dir changes.
    """
    cfg = resolve_tokenizer_type(train_config, (model_config if model is None else model.config).family)
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir={str(out)!r} (--out-dir): is a file; expected a folder for the run's checkpoints "
                         f"and logs")
    d, device = _setup_distributed(cfg)
    try:
        with _run_lock(out, d, device):
            return _train(model_config, cfg, d, device, model, tokenizer, data, eval_callback)
    finally:
        if d.owns_group:
            dist.destroy_process_group()


@contextlib.contextmanager
def _run_lock(out: Path, d: _Dist, device):
    """Hold the run folder's lock (the main process takes it) while training; every process fails if it fails."""
    lock, error = (ckpt.RunLock(out) if d.main else contextlib.nullcontext()), None
    try:
        lock.__enter__()
    except ValueError as e:
        error = e
    if d.world > 1:
        ok = torch.tensor([0.0 if error else 1.0], device=device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        if error is None and ok.item() == 0:
            error = ValueError(f"out_dir={str(out)!r}: the main process could not lock the run folder")
    if error is not None:
        raise error
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


# TrainConfig fields that may change on resume without changing the run's batches, only how it runs; a change is
# reported and recorded in the trainer state's history, as the resume's other fields that differ.
_RESUME_IGNORED = ("resume", "overwrite", "progress", "max_steps")


def _check_resume(cfg: TrainConfig, resume_from: Path, tokenizer, data):
    """Checks a resumed run makes before reading any data: the training config (fields that change the batches
    must match), the step, and the tokenizer. Returns (the tokenizer to use, the changes to record)."""
    saved = safety.read_json(resume_from / ckpt.TRAIN_CONFIG_FILE)
    diff = ckpt.config_diff(cfg.to_dict(), saved, only=RESUME_MUST_MATCH)
    if diff:
        raise ValueError(f"cannot resume from {resume_from}: the training config differs in fields that change "
                         f"the batches or updates:\n  " + "\n  ".join(diff))
    step = ckpt.checkpoint_step(resume_from)
    if cfg.max_steps < step:
        raise ValueError(f"max_steps={cfg.max_steps} (--max-steps) is below the step of the checkpoint to resume, "
                         f"{step} ({resume_from}); expected max_steps >= {step} (more steps to train further)")
    now = json.loads(json.dumps(cfg.to_dict()))
    changes = {k: [saved.get(k), now[k]] for k in sorted(now)
               if k not in RESUME_MUST_MATCH and k not in _RESUME_IGNORED and saved.get(k) != now[k]}
    for k, (a, b) in changes.items():
        log.warning("resuming with %s=%r; the run so far used %r (recorded in the trainer state's history)", k, b, a)
    saved_dir = resume_from / ckpt.TOKENIZER_DIR
    if not saved_dir.is_dir():
        return tokenizer, changes
    from .data import Tokenizer
    saved_tok = Tokenizer.load(saved_dir)
    given, what = tokenizer, "the tokenizer passed to train()"
    if given is None and data is not None:
        given, what = data.tokenizer, "the tokenizer of the data passed to train()"
    if given is None and cfg.tokenizer:
        given, what = Tokenizer.load(cfg.tokenizer), f"tokenizer={cfg.tokenizer!r} (--tokenizer)"
    if given is not None and given.fingerprint() != saved_tok.fingerprint():
        raise ValueError(f"cannot resume from {resume_from}: {what} (fingerprint {given.fingerprint()[:12]}) differs "
                         f"from the tokenizer saved with the checkpoint, {saved_dir} (fingerprint "
                         f"{saved_tok.fingerprint()[:12]}); the weights were trained on the saved tokenizer's ids: "
                         f"resume with that one (qkv.data.Tokenizer.load({str(saved_dir)!r})) or start a new run")
    return saved_tok, changes


def _train(model_config, cfg, d, device, model, tokenizer, data, eval_callback):
    out = Path(cfg.out_dir)
    # a write or a clean-up through a link would reach elsewhere
    safety.check_no_links(out, ckpt.RUN_FILES + ("data", ckpt.LOCK), what="out_dir")
    resume_from, changes = None, {}
    if cfg.resume:
        resume_from = ckpt.resume_checkpoint(out)
        ckpt.read_best(out)  # a damaged best.json is named now, not at the first save
        # a resumed run always uses the tokenizer saved with its checkpoint: the ids its weights were trained on
        tokenizer, changes = _check_resume(cfg, resume_from, tokenizer, data)
    else:
        earlier = ckpt.earlier_run(out)
        if earlier and not cfg.overwrite:
            raise ValueError(f"out_dir={str(out)!r} already holds a run ({', '.join(earlier)}); pass resume=True "
                             f"(--resume) to continue it, overwrite=True (--overwrite) to replace it, or choose "
                             f"another out_dir")

    if data is None:
        data = prepare_data(model_config if model is None else model.config, cfg, tokenizer)
    model_config = data.model_config
    if eval_callback is None and data.task == "seq2seq" and cfg.val_data and cfg.val_data_tgt:
        eval_callback = _default_bleu(cfg, data.tokenizer)
    if model is not None and model.config.vocab_size != model_config.vocab_size:
        raise ValueError(f"model: its vocab_size is {model.config.vocab_size} but the tokenizer has "
                         f"{model_config.vocab_size} tokens; build the model with vocab_size={model_config.vocab_size}")
    if cfg.batch_size % d.world and data.task != "seq2seq":
        raise ValueError(f"batch_size={cfg.batch_size} must be a multiple of the number of processes ({d.world}): "
                         f"it is the global batch, split across them")
    _check_memory(model_config, cfg, data.task, device, d.world)

    _seed_all(cfg.seed)  # the same initial weights on every process
    raw = model if model is not None else _build(model_config)
    raw.to(device)
    if resume_from is not None:
        ckpt.check_model_config(resume_from, raw.config)
        ckpt.load_weights(resume_from, raw)
    shadow = None
    task_loss = LOSSES[data.task](raw, cfg.label_smoothing)
    if d.world > 1 and cfg.fsdp:
        import copy
        from torch.distributed.fsdp import fully_shard
        from .nn.block import Block
        shadow = copy.deepcopy(raw).to("cpu")  # an unsharded copy to save / load full weights through
        for m in raw.modules():
            if isinstance(m, Block):
                fully_shard(m)
        fully_shard(task_loss)
    runner = task_loss
    if cfg.compile:
        runner = torch.compile(runner)
    if d.world > 1 and not cfg.fsdp:
        runner = nn.parallel.DistributedDataParallel(runner, device_ids=[device] if device.type == "cuda" else None)

    opt, sched = make_optimizer(task_loss, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    step, best_val, tokens_seen, history = 0, None, 0, []
    if resume_from is not None:
        state = ckpt.load_trainer_state(resume_from)
        _load_optimizer(task_loss, opt, state["optimizer"], d, cfg)
        sched.load_state_dict(state["scheduler"])
        if scaler.is_enabled() and state["scaler"]:
            scaler.load_state_dict(state["scaler"])  # (a precision change to or from fp16 starts a fresh scaler)
        history = list(state.get("history", []))
        if changes:
            history.append({"step": state["step"], "changed": changes})
        data.train.load_state_dict(state["data"])
        step, best_val, tokens_seen = state["step"], state.get("best_val_loss"), state.get("tokens", 0)
        if len(state["rng"]) == d.world:
            _set_rng_state(state["rng"][d.rank])
        else:
            log.warning("checkpoint has RNG states of %d processes, this run has %d: dropout will differ from an "
                        "uninterrupted run", len(state["rng"]), d.world)
    else:
        _seed_all(cfg.seed + d.rank)  # dropout differs across processes

    metrics_path = out / "metrics.jsonl"
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        if resume_from is None and cfg.overwrite and ckpt.earlier_run(out):
            log.warning("overwrite=True: removing the earlier run in %s (checkpoints, metrics, logs)", out)
            ckpt.clear_run(out)
        ckpt.remove_stale_tmp(out)
        safety.write_atomic(out / "config.json", model_config.to_json())
        safety.write_atomic(out / ckpt.TRAIN_CONFIG_FILE, json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        if data.tokenizer is not None:
            data.tokenizer.save(out / ckpt.TOKENIZER_DIR)
        _truncate_metrics(metrics_path, step)
        if resume_from is not None:
            log.info("resumed from %s at step %d", resume_from, step)
    writer = _tensorboard(out) if d.main else None

    autocast = contextlib.nullcontext
    if cfg.precision != "fp32":
        dtype = torch.bfloat16 if cfg.precision == "bf16" else torch.float16
        autocast = lambda: torch.autocast(device.type, dtype=dtype)  # noqa: E731

    def save(val_loss=None):
        if shadow is not None:
            task_loss.reshard()  # FSDP2 leaves the root unsharded after a forward; state dicts want the shards
        state = {"step": step, "optimizer": _optimizer_state(task_loss, opt, cfg, d), "scheduler": sched.state_dict(),
                 "scaler": scaler.state_dict(), "data": data.train.state_dict(), "rng": _gather_rng(d),
                 "best_val_loss": best_val, "tokens": tokens_seen, "world_size": d.world, "history": history}
        weights = raw
        if shadow is not None:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
            full = get_model_state_dict(raw, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if d.main:
                shadow.load_state_dict(full)
            weights = shadow
        path = None
        if d.main:
            path = ckpt.save_checkpoint(out, step, model=weights, trainer_state=state, train_config=cfg,
                                        tokenizer=data.tokenizer, val_loss=val_loss, keep_last=cfg.keep_last)
        if d.world > 1:
            dist.barrier()
        return path

    def evaluate():
        if data.val is None or cfg.eval_steps == 0:
            return {}  # no validation data: no validation metrics (never a made-up 0.0)
        task_loss.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        with torch.no_grad():
            for batch in data.val():
                local, weight = shard_rows(batch, d.rank, d.world)
                with autocast():
                    s = runner(to_device(local, device), weight)
                sums += torch.stack([s.nll.double(), s.correct.double(), s.count.double()])
        _all_sum(sums, d)
        task_loss.train()
        if sums[2].item() == 0:
            log.warning("validation held no targets: no validation metrics at this evaluation")
            return {}
        nll, correct, count = (sums / sums[2].clamp(min=1)).tolist()[0], sums[1].item(), sums[2].item()
        return {"val_loss": nll, "val_ppl": perplexity(nll), "val_acc": correct / max(count, 1)}

    bar = None
    if d.main and cfg.progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.max_steps, initial=step, file=sys.stderr, unit="step", dynamic_ncols=True, desc="train")
    task_loss.train()
    last_ckpt, train_loss, last_eval = resume_from, None, {}
    if step >= cfg.max_steps:
        log.info("the run is already at max_steps=%d (checkpoint %s): nothing to train", cfg.max_steps, resume_from)
    t_start = t_log = time.perf_counter()
    tokens_log = 0
    tokens_start = tokens_seen
    while step < cfg.max_steps:
        batches = [next(data.train) for _ in range(cfg.grad_accum)]
        n_total = sum(count_targets(b) for b in batches)  # every process sees the whole global batch
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        nll_sum = torch.zeros((), dtype=torch.float64, device=device)  # without label smoothing: val_loss's measure
        for i, batch in enumerate(batches):
            local, weight = shard_rows(batch, d.rank, d.world)
            last = i == len(batches) - 1
            with _no_sync(runner, task_loss, d, cfg, enabled=not last):
                with autocast():
                    s: LossSums = runner(to_device(local, device), weight)
                scaler.scale(s.loss * (d.world / max(n_total, 1))).backward()
            loss_sum += s.loss.detach().double()
            nll_sum += s.nll.detach().double()
        train_loss = (_all_sum(loss_sum, d) / max(n_total, 1)).item()
        if not math.isfinite(train_loss):
            opt.zero_grad(set_to_none=True)
            good = ckpt.latest_checkpoint(out) if d.main else None
            raise NonFiniteLossError(
                f"training loss is {train_loss} at step {step + 1}; stopped before updating the weights. "
                + (f"The last good checkpoint is {good} (step {ckpt.load_trainer_state(good)['step']}); lower lr or "
                   f"use precision='fp32'/'bf16', then resume." if good else "No checkpoint was written yet."))
        scaler.unscale_(opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(task_loss.parameters(), cfg.grad_clip if cfg.grad_clip else float("inf"))
        lr = opt.param_groups[0]["lr"]
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        sched.step()
        step += 1
        tokens_seen += n_total
        tokens_log += n_total

        record = {}
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            now = time.perf_counter()
            record = {"step": step, "train_loss": train_loss, "lr": lr, "grad_norm": float(grad_norm),
                      "tokens_per_s": tokens_log / max(now - t_log, 1e-9), "elapsed_s": now - t_start}
            if cfg.label_smoothing:  # train_loss is the smoothed objective; this one compares with val_loss
                record["train_nll"] = (_all_sum(nll_sum, d) / max(n_total, 1)).item()
            t_log, tokens_log = now, 0
        do_eval = (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps
        if do_eval:
            last_eval = evaluate()
            if eval_callback is not None:
                last_eval.update(eval_callback(raw, step) or {})
            record = {"step": step, "train_loss": train_loss, "lr": lr, **record, **last_eval}
        val_loss = last_eval.get("val_loss") if do_eval else None
        if val_loss is not None and (best_val is None or val_loss < best_val):
            best_val = val_loss
        if do_eval or (cfg.save_every and step % cfg.save_every == 0):
            last_ckpt = save(val_loss)
        if record and d.main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if writer is not None:
                for k, v in record.items():
                    if k != "step":
                        writer.add_scalar(k, v, step)
        if bar is not None:
            bar.update(1)
            if record:
                bar.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{record.get('tokens_per_s', 0):.0f}",
                                **({"val": f"{last_eval['val_loss']:.4f}"} if "val_loss" in last_eval else {}))
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    wall = time.perf_counter() - t_start
    if d.main and metrics_path.is_file():
        _plot(metrics_path, out / "loss.png", cfg.label_smoothing)
    if d.world > 1:
        dist.barrier()
    return TrainSummary(
        steps=step, train_loss=train_loss, val_loss=last_eval.get("val_loss"), val_ppl=last_eval.get("val_ppl"),
        val_acc=last_eval.get("val_acc"), best_val_loss=best_val, tokens=tokens_seen, wall_s=wall,
        tokens_per_s=(tokens_seen - tokens_start) / max(wall, 1e-9),
        out_dir=str(out), checkpoint=str(last_ckpt) if last_ckpt else None, metrics=str(metrics_path))


def _check_memory(model_config: ModelConfig, cfg: TrainConfig, task: str, device, world: int) -> None:
    """Refuse a run whose smallest possible footprint cannot fit on ``device``: fp32 weights, gradients and the two
    AdamW moments; the grad_accum global micro-batches drawn per step; this process's share of one micro-batch's
    logits and their gradient. A lower bound: activations come on top."""
    from .safety import check_fits, model_bytes, model_sizes
    params, _ = model_bytes(model_config)
    check_fits(16 * params, device=device, what=f"training a model of {params:,} parameters "
               f"({model_sizes(model_config)}: fp32 weights, gradients and two AdamW moments)")
    if task in ("lm", "mlm"):
        block = cfg.block_size or model_config.max_positions
        tokens, what = cfg.batch_size * block, f"batch_size={cfg.batch_size} x block_size={block}"
    elif task == "seq2seq":
        tokens, what = cfg.max_tokens, f"max_tokens={cfg.max_tokens}"
    else:
        tokens, what = cfg.batch_size, f"batch_size={cfg.batch_size}"
    width = model_config.num_labels if task == "image" else model_config.vocab_size
    inputs = 16 * tokens + (4 * cfg.batch_size * model_config.num_channels * model_config.image_size ** 2
                            if task == "image" else 0)  # ids and targets as int64, or float pixels
    logits = 2 * (4 if cfg.precision == "fp32" else 2) * width * tokens // world
    check_fits(16 * params + inputs * cfg.grad_accum + logits, device=device,
               what=f"training ({params:,} parameters; {what}, grad_accum={cfg.grad_accum}, "
                    f"{'num_labels' if task == 'image' else 'vocab_size'}={width})")


def _build(model_config):
    from .models import build
    return build(model_config)


def _no_sync(runner, task_loss, d, cfg, *, enabled: bool):
    """Skip the gradient all-reduce on accumulation micro-steps; the last micro-step syncs the sum."""
    if not enabled or d.world == 1:
        return contextlib.nullcontext()
    if cfg.fsdp:
        @contextlib.contextmanager
        def fsdp_no_sync():
            task_loss.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                task_loss.set_requires_gradient_sync(True)
        return fsdp_no_sync()
    return runner.no_sync()


def _optimizer_state(task_loss, opt, cfg, d):
    if d.world > 1 and cfg.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        return get_optimizer_state_dict(task_loss, opt, options=StateDictOptions(full_state_dict=True,
                                                                                 cpu_offload=True))
    return opt.state_dict()


def _load_optimizer(task_loss, opt, state, d, cfg):
    if d.world > 1 and cfg.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(task_loss, opt, state, options=StateDictOptions(full_state_dict=True))
    else:
        opt.load_state_dict(state)


def _gather_rng(d) -> list:
    if d.world == 1:
        return [_rng_state()]
    states = [None] * d.world
    dist.all_gather_object(states, _rng_state())
    return states


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop lines logged after the checkpoint (a crashed run's tail), so steps never repeat; a line cut
    short by the crash is dropped with a warning."""
    if not path.is_file():
        return
    keep, broken = [], 0
    for ln in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(ln)
        except ValueError:
            broken += bool(ln.strip())
            continue
        at = record.get("step", 0) if isinstance(record, dict) else None
        if isinstance(at, (int, float)) and at <= step:
            keep.append(ln)
    if broken:
        log.warning("%s: dropped %d line(s) that are not whole JSON records (cut short by a crash?)", path, broken)
    safety.write_atomic(path, "".join(ln + "\n" for ln in keep))


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _plot(metrics: Path, png: Path, label_smoothing: float | None = None) -> None:
    try:
        from .viz import plot_curves
    except ImportError:
        plot_curves = None
    try:
        if plot_curves is not None:
            plot_curves(metrics, png, label_smoothing=label_smoothing)
            return
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no loss plot")
        return
    records = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("train_loss", "val_loss"):
        pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        if pts:
            ax.plot(*zip(*pts), label=key, marker="o" if key == "val_loss" else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(png, dpi=100, bbox_inches="tight")
    plt.close(fig)


# -- translation metric hook -----------------------------------------------------------------------------------

def _default_bleu(cfg: TrainConfig, tokenizer, n: int = 200):
    """Translation runs report greedy BLEU on the first ``n`` held-out pairs at every evaluation."""
    from .data import read_pairs
    from .generate import translate
    pairs = read_pairs(cfg.val_data, cfg.val_data_tgt)[:n]
    return bleu_callback([s for s, _ in pairs], [t for _, t in pairs],
                         lambda model, sources: translate(model, tokenizer, sources))


def bleu_callback(sources: list[str], references: list[str], translate: Callable[[nn.Module, list[str]], list[str]]):
    """An eval_callback scoring corpus BLEU (sacrebleu) of ``translate(model, sources)`` against ``references``.

    translate decodes (e.g. greedy or beam search with ``qkv.generate``) and detokenizes; it runs with the model
    in eval mode and without gradients. Without sacrebleu installed the callback reports nothing."""
    if len(sources) != len(references):
        raise ValueError(f"sources has {len(sources)} lines but references has {len(references)}")
    try:
        import sacrebleu
    except ImportError:
        log.warning("sacrebleu is not installed: no BLEU during training (pip install 'qkv[extras]')")
        return lambda model, step: {}

    def callback(model, step):
        was_training = model.training
        model.eval()
        with torch.no_grad():
            hyps = translate(model, sources)
        model.train(was_training)
        return {"val_bleu": sacrebleu.corpus_bleu(hyps, [references]).score}
    return callback


# -- command line (``torchrun -m qkv.train``; the ``qkv train`` subcommand reuses these flags) ----------------

def build_parser():
    import argparse
    from .config import add_dataclass_arguments
    p = argparse.ArgumentParser(prog="qkv train", description="Train a qkv model.")
    p.add_argument("--preset", help="model preset name (qkv.PRESETS)")
    p.add_argument("--config", help="a YAML/JSON file with 'model' (or 'preset') and 'train' sections")
    add_dataclass_arguments(p.add_argument_group("training"), TrainConfig, defaults_to_none=True)
    return p


def configs_from_args(args) -> tuple[ModelConfig, TrainConfig]:
    from .config import dataclass_from_args, load_config_file
    from .presets import preset
    file = load_config_file(args.config) if args.config else {}
    unknown = sorted(set(file) - {"model", "preset", "train"})
    if unknown:
        raise ValueError(f"config file {args.config!r}: unknown sections {unknown}; expected model, preset, train")
    for section, kind in (("model", dict), ("train", dict), ("preset", str)):
        if section in file and not isinstance(file[section], kind):
            raise ValueError(f"config file {args.config!r}: section {section!r} is a {type(file[section]).__name__}; "
                             f"expected {'a mapping of field names to values' if kind is dict else 'a preset name'}")
    name = args.preset or file.get("preset")
    if name is None and "model" not in file:
        raise ValueError("no model given: pass --preset NAME or a config file with a 'model' or 'preset' section")
    model = preset(name, **file.get("model", {})) if name else ModelConfig.from_dict(file["model"])
    return model, dataclass_from_args(TrainConfig, args, file.get("train", {}))


def main(argv=None) -> TrainSummary:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    model_config, train_config = configs_from_args(args)
    summary = train(model_config, train_config)
    if int(os.environ.get("RANK", "0")) == 0:
        log.info(json.dumps(dataclasses.asdict(summary), indent=1))
    return summary


if __name__ == "__main__":
    main()
