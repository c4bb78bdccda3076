"""What a run reports: metrics.jsonl (one JSON record per logged step), TensorBoard when it is installed, the
progress bar, and the loss plot at the end. Only the main process writes; the others keep nothing."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from .. import checkpoint as ckpt
from .. import files
from ..viz import plot_curves

log = logging.getLogger("qkv.train")


class MetricsLog:
    def __init__(self, cfg, main: bool, step: int, tokens: int):
        out = Path(cfg.out_dir)
        self.path, self.png, self.label_smoothing = out / ckpt.METRICS, out / "loss.png", cfg.label_smoothing
        self.main, self.writer, self.bar = main, None, None
        if main:
            truncate(self.path, step)
            self.writer = _tensorboard(out)
            if cfg.progress:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=cfg.max_steps, initial=step, file=sys.stderr, unit="step", dynamic_ncols=True,
                                desc="train")
        self.t_start = self.t_last = time.perf_counter()
        self.tokens_last = tokens

    def train_record(self, step: int, tokens: int, **values) -> dict:
        """The record of a logged step: ``values`` (train_loss, lr, grad_norm...), the tokens per second since the
        last logged step and the seconds since the start."""
        now = time.perf_counter()
        record = {"step": step, **values, "tokens_per_s": (tokens - self.tokens_last) / max(now - self.t_last, 1e-9),
                  "elapsed_s": now - self.t_start}
        self.t_last, self.tokens_last = now, tokens
        return record

    def write(self, record: dict, train_loss: float, last_eval: dict) -> None:
        """Append ``record`` (when not empty) and move the progress bar one step."""
        if record and self.main:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.writer is not None:
                for k, v in record.items():
                    if k != "step":
                        self.writer.add_scalar(k, v, record["step"])
        if self.bar is not None:
            self.bar.update(1)
            if record:
                self.bar.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{record.get('tokens_per_s', 0):.0f}",
                                     **({"val": f"{last_eval['val_loss']:.4f}"} if "val_loss" in last_eval else {}))

    def close(self) -> float:
        """Close the bar and TensorBoard; returns the seconds since the start. (``plot`` draws the curves after.)"""
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        return time.perf_counter() - self.t_start

    def plot(self) -> None:
        if self.main and self.path.is_file():
            _plot(self.path, self.png, self.label_smoothing)


def opening_line(name: str | None, model, cfg, task, device, world: int) -> str:
    """What a run is about to do, in one line: the model, its size, the precision it computes in, the batch and
    the tokens one optimizer step trains on, where it runs and where it writes. ``cfg`` is resolved (no "auto")."""
    family = model.config.family
    accum = f" x {cfg.grad_accum} accumulated" if cfg.grad_accum > 1 else ""
    if task.uses_block_size and task.fixed_shapes:  # windows: every step trains on the same number of tokens
        tokens = cfg.block_size * cfg.batch_size * cfg.grad_accum
        batch = f"block {cfg.block_size} x batch {cfg.batch_size}{accum} = {tokens:,} tokens per step"
    elif task.uses_block_size:
        batch = f"batch {cfg.batch_size}{accum} of texts cut to block {cfg.block_size} tokens"
    elif not task.row_batches:
        batch = f"up to {cfg.max_tokens:,} padded tokens per batch{accum}"
    else:
        batch = f"batch {cfg.batch_size}{accum} per step"
    where = str(device) if world == 1 else f"{world} processes ({'FSDP' if cfg.fsdp else 'DDP'}, {device.type})"
    return (f"qkv train: {name or family} ({family}, task {task.name}), {readable(model.num_parameters())} "
            f"parameters, precision {cfg.precision}{', compiled blocks' if cfg.compile else ''}, {batch}, "
            f"{cfg.max_steps:,} steps, on {where}, into {cfg.out_dir}")


def readable(n: int) -> str:
    """A count for people: 124,160; 1.24 M; 6.74 B."""
    return f"{n:,}" if n < 10 ** 6 else f"{n / 1e6:.2f} M" if n < 10 ** 9 else f"{n / 1e9:.2f} B"


def truncate(path: Path, step: int) -> None:
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
    files.write_atomic(path, "".join(ln + "\n" for ln in keep))


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _plot(metrics: Path, png: Path, label_smoothing: float | None = None) -> None:
    try:
        plot_curves(metrics, png, label_smoothing=label_smoothing)
    except ImportError:  # matplotlib is optional
        log.info("matplotlib is not installed: no loss plot")
