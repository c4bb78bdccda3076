"""Atomic checkpoints, exact resume, and the rules of a run folder.

A checkpoint is one folder, ``OUT/checkpoints/step-0001000/``:
  config.json, model.safetensors   the model, as ``model.save`` writes it (``qkv.load`` reads it)
  trainer_state.json               step, scheduler, grad scaler, data sampler position, Python / numpy RNG states
  trainer_state.safetensors        the tensors among them: optimizer moments, torch / CUDA RNG states
  train_config.json                the TrainConfig of the run (checked on resume)
  tokenizer/                       the tokenizer, so the folder decodes on its own
  manifest.json                    the sha256 of every file above, checked before the folder is trusted
Nothing is pickled: a run folder from elsewhere can be resumed without running any of its code. The folder is
written under a temporary name and renamed into place, and only then does ``OUT/latest`` (a one-line text file
naming it) move to it, itself by an atomic rename: a crash or a full disk at any moment leaves the last good
checkpoint whole and ``latest`` pointing at it. ``OUT/best.json`` names the checkpoint of lowest validation loss;
pruning keeps it and the last ``keep_last`` others.

A run folder is locked while a run writes into it (``RunLock``); a new run refuses a folder that holds an earlier
run unless asked to resume it or to overwrite it (``earlier_run``, ``clear_run``).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import torch

from . import files
from .models.common import CONFIG_FILE, TRAINER_STATE_FILE, WEIGHTS_FILE

STATE_FILE, STATE_TENSORS, TRAIN_CONFIG_FILE, TOKENIZER_DIR = (TRAINER_STATE_FILE, "trainer_state.safetensors",
                                                               "train_config.json", "tokenizer")
OLD_STATE_FILE = "trainer_state.pt"  # pickled by earlier qkv versions: never read
LATEST, BEST, LOCK = "latest", "best.json", ".qkv-lock"
METRICS = "metrics.jsonl"
_PREFIX = "step-"
_NAME = re.compile(r"^step-(\d{7,})$")
_STATE_FORMAT = "qkv-trainer-state/1"
log = logging.getLogger("qkv.checkpoint")


def checkpoint_name(step: int) -> str:
    return f"{_PREFIX}{step:07d}"


# -- trainer state: JSON for numbers and structure, safetensors for tensors ------------------------------------

def _encode(obj, path: str, tensors: dict, seen: set):
    """Nested dicts / lists / tuples of numbers, strings and tensors -> JSON, tensors moved to ``tensors``."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        if t.data_ptr() in seen and t.numel():
            t = t.clone()  # safetensors stores each storage once
        seen.add(t.data_ptr())
        key = f"{len(tensors)}:{path}"
        tensors[key] = t.contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}.{i}", tensors, seen) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}.{i}", tensors, seen) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, f"{path}.{k}", tensors, seen) for k, v in obj.items()}
        return {"__items__": [[_encode(k, path, tensors, seen), _encode(v, f"{path}.{k}", tensors, seen)]
                              for k, v in obj.items()]}  # int keys (optimizer state), kept as ints
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"trainer state: cannot store {type(obj).__name__} at {path!r} (expected numbers, strings, "
                    f"tensors, arrays and containers of them)")


# numpy arrays in a trainer state hold RNG words and counters: plain numbers, never objects or sized byte strings
_ARRAY_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32",
                 "float64")
_MAX_DEPTH = 32  # qkv's own states nest 6 deep (optimizer.state.N.exp_avg); deeper is not a trainer state


def _decode(obj, tensors: dict, where, path: str = "", depth: int = 0):
    """The inverse of ``_encode``; a marker that does not hold what it should is named by its place (``path``)."""
    def bad(expected):
        text = json.dumps(obj)
        return ValueError(f"{where}: {path} is {text if len(text) <= 60 else text[:57] + '...'}; expected {expected}")
    if depth > _MAX_DEPTH:
        raise ValueError(f"{where}: {path} nests deeper than {_MAX_DEPTH} levels; expected a qkv trainer state")
    if isinstance(obj, list):
        return [_decode(v, tensors, where, f"{path}[{i}]", depth + 1) for i, v in enumerate(obj)]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        if not isinstance(obj["__tensor__"], str) or obj["__tensor__"] not in tensors:
            raise bad(f"the name of a tensor that {STATE_TENSORS} holds")
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        if obj.get("dtype", "float64") not in _ARRAY_DTYPES:
            raise bad(f"an array of one of {', '.join(_ARRAY_DTYPES)}")
        try:
            return np.asarray(obj["__ndarray__"], dtype=np.dtype(obj.get("dtype", "float64")))
        except (TypeError, ValueError, OverflowError):
            raise bad("a rectangular list of numbers") from None
    if "__tuple__" in obj:
        if not isinstance(obj["__tuple__"], list):
            raise bad("a list of the tuple's items")
        return tuple(_decode(v, tensors, where, f"{path}[{i}]", depth + 1) for i, v in enumerate(obj["__tuple__"]))
    if "__items__" in obj:
        items = obj["__items__"]
        if not (isinstance(items, list) and all(isinstance(kv, list) and len(kv) == 2
                                                and isinstance(kv[0], (int, str)) for kv in items)):
            raise bad("a list of [key, value] pairs with number or string keys")
        return {k: _decode(v, tensors, where, f"{path}.{k}".lstrip("."), depth + 1) for k, v in items}
    return {k: _decode(v, tensors, where, f"{path}.{k}".lstrip("."), depth + 1) for k, v in obj.items()}


def save_trainer_state(folder, state: dict) -> None:
    """Write ``state`` (optimizer, scheduler, RNG ... state dicts) as trainer_state.json + .safetensors."""
    from safetensors.torch import save_file
    folder = Path(folder)
    tensors: dict = {}
    encoded = _encode(state, "state", tensors, set())
    save_file(tensors, str(folder / STATE_TENSORS), metadata={"format": _STATE_FORMAT})
    (folder / STATE_FILE).write_text(json.dumps({"format": _STATE_FORMAT, "state": encoded}) + "\n")


def load_trainer_state(path) -> dict:
    """The trainer state of checkpoint ``path`` as it was saved (tensors on the CPU). Reads JSON and safetensors
    only; a pickled ``trainer_state.pt`` of an older qkv is refused."""
    path = Path(path)
    if not (path / STATE_FILE).is_file() and (path / OLD_STATE_FILE).exists():
        raise ValueError(f"{path / OLD_STATE_FILE}: a pickled trainer state from an older qkv; qkv no longer "
                         f"unpickles trainer state (a pickle can run code). Its weights still load with qkv.load("
                         f"{str(path)!r}); start a new run from them")
    meta = files.read_json(files.inside(path, path / STATE_FILE, what=STATE_FILE))
    if meta.get("format") != _STATE_FORMAT or "state" not in meta:
        raise ValueError(f"{path / STATE_FILE}: format {meta.get('format')!r}; expected {_STATE_FORMAT!r}")
    tensors = files.load_safetensors(files.inside(path, path / STATE_TENSORS, what=STATE_TENSORS))
    state = _decode(meta["state"], tensors, path / STATE_FILE)
    if not isinstance(state, dict) or not _is_count(state.get("step")):
        raise ValueError(f"{path / STATE_FILE}: has no 'step' that is an int >= 0; not a qkv trainer state")
    return state


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def folder_step(path) -> int:
    """The step a checkpoint folder's name says (``step-0000004`` -> 4)."""
    m = _NAME.match(Path(path).name)
    if m is None:
        raise ValueError(f"{path}: not a checkpoint folder name; expected {_PREFIX}NNNNNNN")
    return int(m.group(1))


def checkpoint_step(path) -> int:
    """The step of checkpoint ``path``, read from its JSON alone."""
    meta = files.read_json(Path(path) / STATE_FILE)
    step = meta.get("state", {}).get("step") if isinstance(meta.get("state"), dict) else None
    if not _is_count(step):
        raise ValueError(f"{Path(path) / STATE_FILE}: step is {json.dumps(step)[:40]}; expected an int >= 0")
    return step


# -- writing ---------------------------------------------------------------------------------------------------

def save_checkpoint(out_dir, step: int, *, model, trainer_state: dict, train_config=None, tokenizer=None,
                    val_loss: float | None = None, keep_last: int = 0) -> Path:
    """Write the checkpoint of ``step`` atomically and point ``OUT/latest`` at it; returns its folder.

    model: an unwrapped qkv model (``model.save`` writes the weights); trainer_state: nested dicts / lists of
    numbers, strings, tensors and numpy arrays. val_loss, when given and lowest so far, makes this the best
    checkpoint. keep_last > 0 prunes older checkpoints (never the best, never the latest). Any failure while
    writing (a full disk) removes the half-written folder and leaves the earlier checkpoints and ``latest`` as
    they were; the OSError says so."""
    out = Path(out_dir)
    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp, trash = root / f".tmp-{final.name}-{os.getpid()}", root / f".old-{final.name}-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        model.save(tmp)
        save_trainer_state(tmp, trainer_state)
        if train_config is not None:
            (tmp / TRAIN_CONFIG_FILE).write_text(json.dumps(train_config.to_dict(), indent=2, sort_keys=True))
        if tokenizer is not None:
            tokenizer.save(tmp / TOKENIZER_DIR)
        files.write_manifest(tmp)
        if final.exists():  # the same step saved again (e.g. after a resume): swap, then drop the old one
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        files.write_atomic(out / LATEST, f"checkpoints/{final.name}\n")
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if trash.is_dir() and not final.exists():  # stopped between the two renames: the old folder goes back
            os.replace(trash, final)
        if isinstance(e, (ValueError, TypeError)) or not isinstance(e, Exception):
            raise
        # a full disk, a write error from a library (safetensors' own error type): the earlier checkpoints stand
        why = f"could not write checkpoint {final} ({getattr(e, 'strerror', None) or e}); the earlier checkpoints " \
              f"and {out / LATEST} are untouched"
        raise (OSError(e.errno, why) if getattr(e, "errno", None) else OSError(why)) from None
    if val_loss is not None:
        best = read_best(out)
        if best is None or val_loss < best["val_loss"]:
            files.write_atomic(out / BEST, json.dumps({"checkpoint": f"checkpoints/{final.name}", "step": step,
                                                        "val_loss": float(val_loss)}))
    if keep_last:
        prune(out, keep_last)
    return final


# -- reading a run folder --------------------------------------------------------------------------------------

def read_best(out_dir) -> dict | None:
    p = Path(out_dir) / BEST
    if not p.is_file():
        return None
    best = files.read_json(p)
    if not (isinstance(best.get("checkpoint"), str) and _NAME.match(best["checkpoint"].removeprefix("checkpoints/"))
            and best["checkpoint"].startswith("checkpoints/") and isinstance(best.get("val_loss"), (int, float))):
        raise ValueError(f"{p}: expected {{'checkpoint': 'checkpoints/step-NNNNNNN', 'val_loss': number}}, got "
                         f"{json.dumps(best)[:120]}")
    return best


def _named_by_latest(out_dir) -> Path | None:
    p = Path(out_dir) / LATEST
    if not p.exists() and not p.is_symlink():
        return None
    if p.is_symlink() or not p.is_file():
        raise ValueError(f"{p}: expected a small text file naming a checkpoint, found a link or a folder")
    text = p.read_bytes()[:256].decode("utf-8", "replace").strip()
    m = re.fullmatch(r"checkpoints/(step-\d{7,})", text)
    if m is None:
        raise ValueError(f"{p} holds {text!r}; expected 'checkpoints/step-NNNNNNN' (a checkpoint inside the run "
                         f"folder)")
    return files.inside(out_dir, Path(out_dir) / "checkpoints" / m.group(1), what=str(p))


def latest_checkpoint(out_dir) -> Path | None:
    """The folder ``OUT/latest`` names, or None when the run has no ``latest`` yet. ``latest`` must name
    ``checkpoints/step-NNNNNNN`` inside the run folder; anything else (``../..``, an absolute path) is refused."""
    ckpt = _named_by_latest(out_dir)
    if ckpt is not None and not _complete(ckpt):
        raise FileNotFoundError(f"{Path(out_dir) / LATEST} names {ckpt}, which is not a complete checkpoint "
                                f"({STATE_FILE} missing)")
    return ckpt


def _complete(path: Path) -> bool:
    return path.is_dir() and ((path / STATE_FILE).is_file() or (path / OLD_STATE_FILE).is_file())


def list_checkpoints(out_dir) -> list[Path]:
    """The run's checkpoint folders (``checkpoints/step-NNNNNNN``, real folders only), oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir() or root.is_symlink():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and p.is_dir() and not p.is_symlink()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def resume_checkpoint(out_dir) -> Path:
    """The checkpoint a resumed run starts from: the one ``latest`` names if it is intact (its manifest matches),
    else the newest intact one, with a warning naming the broken file. Raises ValueError when there is none."""
    out = Path(out_dir)
    named = _named_by_latest(out)
    candidates = ([named] if named is not None else []) + [p for p in reversed(list_checkpoints(out)) if p != named]
    if not candidates:
        earlier = earlier_run(out)
        if earlier:  # a run stopped before its first checkpoint: a new run there must replace it
            raise ValueError(f"out_dir={str(out)!r}: resume=True (--resume) but the folder holds no checkpoint to "
                             f"resume, only an earlier run's {', '.join(earlier)}; {start_over(True)}")
        raise ValueError(f"out_dir={str(out)!r}: resume=True (--resume) but the folder holds no run to resume (no "
                         f"'latest' file, no checkpoints/step-*); drop --resume to start a new run there")
    problems = []
    for c in candidates:
        try:
            if not _complete(c):
                raise ValueError(f"{c}: incomplete ({STATE_FILE} missing)")
            if not (c / STATE_FILE).is_file():
                load_trainer_state(c)  # the old pickled format: raises its one-line refusal
            files.verify_manifest(c, required=True, must_list=("config.json", "model.safetensors", STATE_FILE,
                                                                STATE_TENSORS))
        except ValueError as e:
            problems.append(str(e))
            continue
        if problems:
            log.warning("checkpoint damaged: %s; resuming from the last intact checkpoint, %s", problems[0], c)
        elif named is None:
            log.warning("%s is missing; resuming from the newest checkpoint, %s", out / LATEST, c)
        return c
    raise ValueError(f"out_dir={str(out)!r}: no intact checkpoint to resume from ({len(problems)} checked): "
                     f"{problems[0]}; {start_over(True)}")


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
    if root.is_dir() and not root.is_symlink():
        for p in list(root.glob(".tmp-*")) + list(root.glob(".old-*")):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)


# -- the run folder: earlier runs, overwriting, the lock ---------------------------------------------------------

# What a run writes at the top of its folder; --overwrite removes exactly these (the data cache stays valid).
RUN_FILES = (LATEST, BEST, METRICS, "checkpoints", "config.json", TRAIN_CONFIG_FILE, TOKENIZER_DIR, "loss.png",
             "tensorboard")


def start_over(resuming: bool) -> str:
    """The one way out when a folder holds a run that cannot be continued: the refusals with and without
    ``--resume`` say the same."""
    return (f"pass overwrite=True (--overwrite){' instead of resume=True (--resume)' if resuming else ''} to start a "
            f"new run in its place, or choose another out_dir")


def resumable(out_dir) -> bool:
    """Whether ``out_dir`` holds a checkpoint ``--resume`` could start from (complete, in the current format; its
    hashes are checked only when resuming)."""
    return any((c / STATE_FILE).is_file() for c in list_checkpoints(out_dir))


def earlier_run(out_dir) -> list[str]:
    """The signs of an earlier run in ``out_dir`` that a new run would overwrite: checkpoints (even with
    ``latest`` gone), ``latest``, ``best.json``, logged metrics, or a config.json no qkv run wrote."""
    out = Path(out_dir)
    signs = []
    if (out / LATEST).exists() or (out / LATEST).is_symlink():
        signs.append(LATEST)
    ckpts = out / "checkpoints"
    if ckpts.is_dir() and any(_NAME.match(p.name) for p in ckpts.iterdir()):
        signs.append(f"checkpoints/ ({len([p for p in ckpts.iterdir() if _NAME.match(p.name)])} checkpoints)")
    if (out / BEST).exists():
        signs.append(BEST)
    if (out / METRICS).is_file() and (out / METRICS).stat().st_size:
        signs.append(METRICS)
    if (out / "config.json").exists() and not (out / TRAIN_CONFIG_FILE).exists():
        signs.append("config.json (not written by a qkv run)")
    return signs


def clear_run(out_dir) -> None:
    """Remove what an earlier run wrote at the top of ``out_dir`` (``RUN_FILES``), nothing else."""
    out = Path(out_dir)
    for name in RUN_FILES:
        p = out / name
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)


class RunLock:
    """An exclusive lock on a run folder: ``OUT/.qkv-lock`` holds the owner's process id and host, and an OS lock
    (flock) on it lives as long as the owner. A second run is refused, naming the first one's process id; a lock
    left by a process that has died is taken over with a warning."""

    def __init__(self, out_dir):
        self.out = Path(out_dir)
        self.path = self.out / LOCK
        self._fd = None
        self._created_dir = False

    def __enter__(self) -> "RunLock":
        import fcntl
        if not self.out.exists():
            self.out.mkdir(parents=True)
            self._created_dir = True
        if self.path.is_symlink():
            raise ValueError(f"{self.path}: the run lock is a symbolic link; remove it")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = _read_owner(fd)
            os.close(fd)
            raise ValueError(f"out_dir={str(self.out)!r} is in use by another qkv run (process "
                             f"{owner.get('pid', '?')} on {owner.get('host', '?')}); wait for it to finish or choose "
                             f"another --out-dir") from None
        owner = _read_owner(fd)
        pid, host, here = owner.get("pid"), owner.get("host"), socket.gethostname()
        if isinstance(pid, int) and (pid, host) != (os.getpid(), here):
            if host != here or _alive(pid):  # another machine's run cannot be checked: assume it is alive
                os.close(fd)
                raise ValueError(f"out_dir={str(self.out)!r} is in use by another qkv run (process {pid} on {host}, "
                                 f"named in {self.path}); wait for it to finish, or delete {self.path} if no such run "
                                 f"is going on")
            log.warning("taking over %s: the run that held it (process %d) is no longer running", self.path, pid)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)  # _read_owner left the offset at the old owner's end: no hole of NUL bytes
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            try:
                self.path.unlink(missing_ok=True)
            finally:
                os.close(self._fd)
                self._fd = None
        if self._created_dir:
            try:
                self.out.rmdir()  # a run refused before writing anything leaves no empty folder behind
            except OSError:
                pass


def _read_owner(fd) -> dict:
    try:
        os.lseek(fd, 0, 0)
        owner = json.loads(os.read(fd, 4096).decode().strip("\0 \n") or "{}")  # NULs: an older qkv's take-over
        return owner if isinstance(owner, dict) else {}
    except (ValueError, OSError):
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- checks on resume ------------------------------------------------------------------------------------------

def config_diff(expected: dict, found: dict, *, only=None) -> list[str]:
    """'field: a != b' for each field that differs (JSON-normalised, so tuples equal lists)."""
    a, b = json.loads(json.dumps(expected)), json.loads(json.dumps(found))
    keys = sorted(set(a) | set(b)) if only is None else list(only)
    return [f"{k}: {a.get(k, '<absent>')!r} (this run) != {b.get(k, '<absent>')!r} (checkpoint)"
            for k in keys if a.get(k, "<absent>") != b.get(k, "<absent>")]


def check_model_config(path, config) -> None:
    """Raise ValueError naming every field where the checkpoint's model config differs from ``config``."""
    f = Path(path) / CONFIG_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint: {CONFIG_FILE} is missing")
    diff = config_diff(config.to_dict(), files.read_json(files.inside(path, f, what=CONFIG_FILE)))
    if diff:
        raise ValueError(f"checkpoint {path} was saved from another architecture; differing fields:\n  "
                         + "\n  ".join(diff))


def load_weights(path, model) -> None:
    """Load ``path/model.safetensors`` into ``model`` (an unwrapped qkv model) after checking its config and that
    each tensor is stored as the kind of number (floating point or integer) the model keeps; after loading, every
    weight must be finite (a diverged run's checkpoint is refused, naming the tensor)."""
    from safetensors.torch import load_model  # optional dependency: read only when weights are loaded
    check_model_config(path, model.config)
    weights = files.inside(path, Path(path) / WEIGHTS_FILE, what=WEIGHTS_FILE)
    header = files.safetensors_header(weights)
    files.check_dtypes({k: v.dtype for k, v in model.state_dict().items()}, {k: dt for k, (dt, _) in header.items()},
                       source=weights)
    load_model(model, str(weights), device=str(next(model.parameters()).device))
    files.check_finite(model.state_dict(), source=weights)  # a handed run folder is checked like a foreign one
