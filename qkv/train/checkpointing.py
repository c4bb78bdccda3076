"""The run folder and its checkpoints, as the loop uses them: the lock, the checks a run makes before it trusts a
folder (no links out, no earlier run overwritten unless asked, resume only from an intact checkpoint with the same
batch-defining config and the tokenizer its weights were trained on), the files a run writes, and saving and
restoring everything an exact resume needs (weights, optimizer, schedule, scaler, data position, RNG states).
The file formats (safetensors + JSON, manifests, atomic renames) are ``qkv.checkpoint``'s."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .. import checkpoint as ckpt
from .. import files
from ..config import TrainConfig
from ..data import Tokenizer
from . import processes
from .state_checks import IMPLEMENTATION, check_trainer_state

log = logging.getLogger("qkv.train")

# TrainConfig fields a resumed run must share with the checkpoint for its batches and updates to be the same
RESUME_MUST_MATCH = ("batch_size", "max_tokens", "block_size", "grad_accum", "seed", "lr", "min_lr", "weight_decay",
                     "betas", "eps", "warmup_steps", "schedule", "label_smoothing", "val_fraction", "mlm_probability")
# Fields that may change on resume without changing the run's batches, only how it runs, and go unrecorded; a change
# of any other field is reported and recorded in the trainer state's history.
RESUME_IGNORED = ("resume", "overwrite", "progress", "max_steps")


@contextlib.contextmanager
def run_lock(out: Path, procs: processes.Processes, device):
    """Hold the run folder's lock (the main process takes it) while training; every process fails if it fails."""
    lock, error = (ckpt.RunLock(out) if procs.main else contextlib.nullcontext()), None
    try:
        lock.__enter__()
    except ValueError as e:
        error = e
    if procs.world > 1:
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


def check_run_folder(cfg: TrainConfig, tokenizer, data, max_positions: int | None = None):
    """The checks before any data is read: returns (the checkpoint to resume from or None, the tokenizer to use,
    the config changes to record). A resumed run always uses the tokenizer saved with its checkpoint.
    max_positions: the model's, the block size runs of an older qkv recorded as null."""
    out = Path(cfg.out_dir)
    files.check_no_links(out, ckpt.RUN_FILES + ("data", ckpt.LOCK), what="out_dir")  # writes would reach elsewhere
    if not cfg.resume:
        earlier = ckpt.earlier_run(out)
        if earlier and not cfg.overwrite and ckpt.resumable(out):
            raise ValueError(f"out_dir={str(out)!r} already holds a run ({', '.join(earlier)}); pass resume=True "
                             f"(--resume) to continue it, overwrite=True (--overwrite) to replace it, or choose "
                             f"another out_dir")
        if earlier and not cfg.overwrite:
            raise ValueError(f"out_dir={str(out)!r} already holds a run ({', '.join(earlier)}) with no checkpoint "
                             f"to resume; {ckpt.start_over(False)}")
        return None, tokenizer, {}
    resume_from = ckpt.resume_checkpoint(out)
    ckpt.read_best(out)  # a damaged best.json is named now, not at the first save
    tokenizer, changes = _check_resume(cfg, resume_from, tokenizer, data, max_positions)
    return resume_from, tokenizer, changes


def check_saved_config(resume_from: Path, max_positions: int | None, uses_block: bool = True) -> dict:
    """The checkpoint's train_config.json, checked as a TrainConfig (types and ranges of every field it knows) and
    against the checkpoint's step; for a run cut into blocks (``uses_block``), a block_size of null (qkv before
    block sizes were resolved) is the model's max_positions, the block those runs trained on."""
    path = resume_from / ckpt.TRAIN_CONFIG_FILE
    saved = files.read_json(path)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        TrainConfig.from_dict({k: v for k, v in saved.items() if k in known})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
    step = ckpt.checkpoint_step(resume_from)
    if not isinstance(saved.get("max_steps"), int) or saved["max_steps"] < step:
        raise ValueError(f"{path}: max_steps is {saved.get('max_steps')!r}; expected an int >= {step}, the step of "
                         f"its checkpoint")
    if uses_block and "block_size" in saved and saved["block_size"] is None and max_positions is not None:
        saved["block_size"] = max_positions
    return saved


def _check_resume(cfg: TrainConfig, resume_from: Path, tokenizer, data, max_positions: int | None):
    """The training config (fields that change the batches must match), the step, and the tokenizer."""
    saved = check_saved_config(resume_from, max_positions, uses_block=cfg.block_size is not None)
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
               if k not in RESUME_MUST_MATCH and k not in RESUME_IGNORED and saved.get(k) != now[k]}
    for k, (a, b) in changes.items():
        log.warning("resuming with %s=%r; the run so far used %r (recorded in the trainer state's history)", k, b, a)
    saved_dir = resume_from / ckpt.TOKENIZER_DIR
    if not saved_dir.is_dir():
        return tokenizer, changes
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


def write_run_files(cfg: TrainConfig, model_config, tokenizer, resumed: bool) -> None:
    """The main process's files at the top of the run folder: the model and training configs and the tokenizer
    (an earlier run removed first when overwriting; half-written checkpoints of a crash dropped)."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not resumed and cfg.overwrite and ckpt.earlier_run(out):
        log.warning("overwrite=True: removing the earlier run in %s (checkpoints, metrics, logs)", out)
        ckpt.clear_run(out)
    ckpt.remove_stale_tmp(out)
    files.write_atomic(out / "config.json", model_config.to_json())
    files.write_atomic(out / ckpt.TRAIN_CONFIG_FILE, json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    if tokenizer is not None:
        tokenizer.save(out / ckpt.TOKENIZER_DIR)


# -- RNG state -------------------------------------------------------------------------------------------------

def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- saving and restoring a run ----------------------------------------------------------------------------------

def restore(run, resume_from: Path, changes: dict) -> None:
    """Put ``run`` back where its checkpoint left it: optimizer, schedule, scaler (unless the precision changed to or
    from fp16: a fresh one), data position, counters, history (plus this resume's changes) and RNG states. Every
    value is checked first (``state_checks``): a handed trainer state never overrides this run's config."""
    state = ckpt.load_trainer_state(resume_from)
    fresh = {"param_groups": processes.optimizer_groups(run.task_loss, run.opt, run.procs),
             "scheduler": run.sched.state_dict(), "data": run.data.train.state_dict()}
    check_trainer_state(state, source=resume_from / ckpt.STATE_FILE, folder_step=ckpt.folder_step(resume_from),
                        run=run, saved_config=files.read_json(resume_from / ckpt.TRAIN_CONFIG_FILE), fresh=fresh)
    chosen = [{k: g[k] for k in IMPLEMENTATION if k in g} for g in run.opt.param_groups]
    processes.load_optimizer(run.task_loss, run.opt, state["optimizer"], run.procs)
    for group, keep in zip(run.opt.param_groups, chosen):  # how to compute the update is this run's choice
        group.update(keep)
    run.sched.load_state_dict(state["scheduler"])
    if run.scaler.is_enabled() and state["scaler"]:
        run.scaler.load_state_dict(state["scaler"])
    run.history = list(state.get("history", []))
    if changes:
        run.history.append({"step": state["step"], "changed": changes})
    run.data.train.load_state_dict(state["data"])
    run.step, run.best_val, run.tokens = state["step"], state.get("best_val_loss"), state.get("tokens", 0)
    if len(state["rng"]) == run.procs.world:
        set_rng_state(state["rng"][run.procs.rank])
    else:
        log.warning("checkpoint has RNG states of %d processes, this run has %d: dropout will differ from an "
                    "uninterrupted run", len(state["rng"]), run.procs.world)


class NonFiniteWeightError(FloatingPointError):
    """A weight became NaN or infinite while training; the run stopped without saving it."""


def check_weights_finite(run) -> None:
    """Stop a run whose weights went non-finite before they reach a checkpoint or an evaluation: one host read (all
    processes agree through one all-reduce), and only on the refusal path a search for the first such tensor.
    A loss can stay finite while weights go NaN: AdamW with eps=0 divides 0 by 0 in rows no batch reaches."""
    tensors = [(name, t) for name, t in run.model.state_dict(keep_vars=True).items() if t.is_floating_point()]
    local = [t.to_local() if hasattr(t, "to_local") else t for _, t in tensors]  # FSDP: this process's shards
    ok = bool(torch.stack([torch.isfinite(t.detach()).all() for t in local]).all()) if local else True
    if not run.procs.any(not ok, run.device):
        return
    first = next(((name, int((~torch.isfinite(t.detach())).sum()), t.numel()) for (name, _), t in zip(tensors, local)
                  if not bool(torch.isfinite(t.detach()).all())), None)
    name, bad, size = next(f for f in run.procs.gather(first) if f is not None)
    raise NonFiniteWeightError(f"weight {name!r} holds {bad} NaN/infinite value(s) of {size} after step {run.step}; "
                               f"stopped without saving it. {after_divergence(run)}")


def after_divergence(run) -> str:
    """What is left after a run diverged (a non-finite loss or weight) and what to change, said the way resume
    takes it: a resumed run keeps lr and eps (they must match), precision may change."""
    good = ckpt.latest_checkpoint(run.cfg.out_dir) if run.procs.main else None
    fix = ("eps > 0 (--eps; eps=0 divides 0 by 0 where a gradient stays 0)" if run.cfg.eps == 0 else
           "a lower lr (--lr)")
    if good is None:
        return f"No checkpoint was written yet: start again with {fix} (--overwrite)."
    return (f"The last good checkpoint is {good} (step {ckpt.checkpoint_step(good)}). A resumed run keeps lr and "
            f"eps: start a new run from its weights with {fix} (--init {good}, another --out-dir)"
            + (", or resume with --precision bf16 or fp32." if run.cfg.precision == "fp16" else "."))


def save(run, val_loss: float | None = None) -> Path | None:
    """Write the checkpoint of ``run.step`` (on the main process; every process takes part in gathering the
    weights, optimizer state and RNG states); returns its folder on the main process."""
    procs = run.procs
    if run.shadow is not None:
        run.task_loss.reshard()  # FSDP2 leaves the root unsharded after a forward; state dicts want the shards
    state = {"step": run.step, "optimizer": processes.optimizer_state(run.task_loss, run.opt, procs),
             "scheduler": run.sched.state_dict(), "scaler": run.scaler.state_dict(),
             "data": run.data.train.state_dict(), "rng": procs.gather(rng_state()), "best_val_loss": run.best_val,
             "tokens": run.tokens, "world_size": procs.world, "history": run.history}
    weights = processes.full_weights(run.model, run.shadow, procs)
    path = None
    if procs.main:
        path = ckpt.save_checkpoint(run.cfg.out_dir, run.step, model=weights, trainer_state=state, train_config=run.cfg,
                                    tokenizer=run.data.tokenizer, val_loss=val_loss, keep_last=run.cfg.keep_last)
    procs.barrier()
    return path
