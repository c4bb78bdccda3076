"""Atomic checkpoints and exact resume.

A checkpoint is one folder, ``OUT/checkpoints/step-0001000/``:
  config.json, model.safetensors   the model, as ``model.save`` writes it (``qkv.load`` reads it)
  trainer_state.pt                 optimizer, scheduler, grad scaler, step, data sampler position, RNG states
  train_config.json                the TrainConfig of the run (checked on resume)
  tokenizer/                       the tokenizer, so the folder decodes on its own
It is written under a temporary name and renamed into place, and only then does ``OUT/latest`` (a one-line
text file naming it) move to it, itself by an atomic rename: a crash at any moment leaves the last good
checkpoint whole and ``latest`` pointing at it. ``OUT/best.json`` names the checkpoint of lowest validation loss;
pruning keeps it and the last ``keep_last`` others.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

STATE_FILE, TRAIN_CONFIG_FILE, TOKENIZER_DIR = "trainer_state.pt", "train_config.json", "tokenizer"
LATEST, BEST = "latest", "best.json"
_PREFIX = "step-"


def checkpoint_name(step: int) -> str:
    return f"{_PREFIX}{step:07d}"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(out_dir, step: int, *, model, trainer_state: dict, train_config=None, tokenizer=None,
                    val_loss: float | None = None, keep_last: int = 0) -> Path:
    """Write the checkpoint of ``step`` atomically and point ``OUT/latest`` at it; returns its folder.

    model: an unwrapped qkv model (``model.save`` writes the weights); trainer_state: anything ``torch.save``
    takes. val_loss, when given and lowest so far, makes this the best checkpoint. keep_last > 0 prunes older
    checkpoints (never the best, never the latest)."""
    out = Path(out_dir)
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save(tmp)
    torch.save(trainer_state, tmp / STATE_FILE)
    if train_config is not None:
        (tmp / TRAIN_CONFIG_FILE).write_text(json.dumps(train_config.to_dict(), indent=2, sort_keys=True))
    if tokenizer is not None:
        tokenizer.save(tmp / TOKENIZER_DIR)
    if final.exists():  # the same step saved again (e.g. after a resume): swap, then drop the old one
        trash = root / f".old-{final.name}-{os.getpid()}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _write_atomic(out / LATEST, f"checkpoints/{final.name}\n")
    if val_loss is not None:
        best = read_best(out)
        if best is None or val_loss < best["val_loss"]:
            _write_atomic(out / BEST, json.dumps({"checkpoint": f"checkpoints/{final.name}", "step": step,
                                                  "val_loss": float(val_loss)}))
    if keep_last:
        prune(out, keep_last)
    return final


def read_best(out_dir) -> dict | None:
    p = Path(out_dir) / BEST
    return json.loads(p.read_text()) if p.is_file() else None


def latest_checkpoint(out_dir) -> Path | None:
    """The folder ``OUT/latest`` names, or None when the run has no checkpoint yet."""
    p = Path(out_dir) / LATEST
    if not p.is_file():
        return None
    ckpt = Path(out_dir) / p.read_text().strip()
    if not (ckpt / STATE_FILE).is_file():
        raise FileNotFoundError(f"{p} names {ckpt}, which is not a complete checkpoint ({STATE_FILE} missing)")
    return ckpt


def list_checkpoints(out_dir) -> list[Path]:
    root = Path(out_dir) / "checkpoints"
    return sorted(p for p in root.glob(f"{_PREFIX}*") if p.is_dir()) if root.is_dir() else []


def prune(out_dir, keep_last: int) -> None:
    out = Path(out_dir)
    keep = {p.resolve() for p in list_checkpoints(out)[-keep_last:]}
    latest = latest_checkpoint(out)
    best = read_best(out)
    keep |= {q.resolve() for q in (latest, out / best["checkpoint"] if best else None) if q is not None}
    for p in list_checkpoints(out):
        if p.resolve() not in keep:
            shutil.rmtree(p, ignore_errors=True)


def remove_stale_tmp(out_dir) -> None:
    """Drop half-written checkpoint folders a crashed run left behind (they were never pointed at)."""
    root = Path(out_dir) / "checkpoints"
    if root.is_dir():
        for p in list(root.glob(".tmp-*")) + list(root.glob(".old-*")):
            shutil.rmtree(p, ignore_errors=True)


def config_diff(expected: dict, found: dict, *, only=None) -> list[str]:
    """'field: a != b' for each field that differs (JSON-normalised, so tuples equal lists)."""
    a, b = json.loads(json.dumps(expected)), json.loads(json.dumps(found))
    keys = sorted(set(a) | set(b)) if only is None else list(only)
    return [f"{k}: {a.get(k, '<absent>')!r} (this run) != {b.get(k, '<absent>')!r} (checkpoint)"
            for k in keys if a.get(k, "<absent>") != b.get(k, "<absent>")]


def check_model_config(path, config) -> None:
    """Raise ValueError naming every field where the checkpoint's model config differs from ``config``."""
    from .models.common import CONFIG_FILE
    f = Path(path) / CONFIG_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint: {CONFIG_FILE} is missing")
    diff = config_diff(config.to_dict(), json.loads(f.read_text()))
    if diff:
        raise ValueError(f"checkpoint {path} was saved from another architecture; differing fields:\n  "
                         + "\n  ".join(diff))


def load_weights(path, model) -> None:
    """Load ``path/model.safetensors`` into ``model`` (an unwrapped qkv model) after checking its config."""
    from safetensors.torch import load_model
    from .models.common import WEIGHTS_FILE
    check_model_config(path, model.config)
    load_model(model, str(Path(path) / WEIGHTS_FILE), device=str(next(model.parameters()).device))


def load_trainer_state(path) -> dict:
    # weights_only=False: the state holds Python and numpy RNG states, written by this module, not downloaded
    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=False)
