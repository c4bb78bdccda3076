"""The values of a trainer state read from a run folder, checked before any of them is loaded.

A run folder is data: whoever hands one over can edit ``trainer_state.json`` and recompute its manifest. So no value
in it may override what the user asked for: each field is compared with what this run's config (the flags that must
match the checkpoint's ``train_config.json``, and that file's own ``max_steps``), its model and its fresh optimizer,
schedule and data stream say it must be, or, where only a range is known (RNG words, moments), with its type and
range. A mismatch is one line: the file, the field, the value found and what was expected.

Fields (``trainer_state.json`` -> what it must be):
  step                     an int >= 0, the number in the checkpoint folder's name
  optimizer.param_groups   as a fresh AdamW of this config: same groups and parameters, betas, eps, weight decay,
                           initial_lr; lr the schedule's value after ``step`` steps
  optimizer.state          per parameter: step an integer in [0, step]; exp_avg (finite) and exp_avg_sq (finite,
                           >= 0) of the parameter's shape and dtype
  scheduler                LambdaLR after ``step`` steps: base_lrs = lr, last_epoch = step, _last_lr = the lr above
  scaler                   empty unless the run trained in fp16; then a finite scale > 0, the default growth settings
  data                     the fresh stream's structure and seeds; counters in [0, step x grad_accum] (``step``:
                           exactly that, one batch drawn per micro-step)
  rng                      one entry per process (world_size of them): Python, numpy and torch generator states of
                           their own shapes and ranges (CUDA's where the machine has it)
  tokens, best_val_loss    an int >= 0; None or a finite number >= 0
  history                  a list of {"step": int in [0, step], "changed": {field: [before, after]}}
"""
from __future__ import annotations

import math
import random

import numpy as np
import torch

from .optim import learning_rate

TOP = ("step", "optimizer", "scheduler", "scaler", "data", "rng", "best_val_loss", "tokens", "world_size", "history")
# AdamW group keys that say how the update is computed, not what it computes: a run on another device or sharding
# chooses its own (they are checked for their type, then the fresh optimizer's are kept)
IMPLEMENTATION = ("foreach", "fused", "capturable", "differentiable")


class Said(str):
    """A value described in words ("absent", "a list of 3"), shown without quotes."""


def _show(value) -> str:
    if isinstance(value, Said):
        return str(value)
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _same(value, expected) -> bool:
    """Equal and of the same JSON kind, all the way down (True is not 1; a float may be written as an int)."""
    if isinstance(expected, float) and not isinstance(value, bool) and isinstance(value, (int, float)):
        return math.isclose(value, expected, rel_tol=1e-9, abs_tol=0.0)
    if type(value) is not type(expected):
        return False
    if isinstance(expected, (list, tuple)):
        return len(value) == len(expected) and all(_same(a, b) for a, b in zip(value, expected))
    if isinstance(expected, dict):
        return value.keys() == expected.keys() and all(_same(value[k], expected[k]) for k in expected)
    return value == expected


class Checker:
    """Raises the one-line refusal for a field of ``source`` (the trainer_state.json being read)."""

    def __init__(self, source):
        self.source = source

    def fail(self, field: str, value, expected: str):
        raise ValueError(f"{self.source}: {field} is {_show(value)}; expected {expected}")

    def kind(self, field, value, kinds, expected: str):
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            self.fail(field, value, expected)
        return value

    def count(self, field, value, low: int = 0, high: int | None = None) -> int:
        span = f"an int in [{low}, {high}]" if high is not None else f"an int >= {low}"
        if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
            self.fail(field, value, span)
        return value

    def number(self, field, value, low: float | None = 0.0) -> float:
        if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
                or (low is not None and value < low)):
            self.fail(field, value, "a finite number" + (f" >= {low}" if low is not None else ""))
        return float(value)

    def equal(self, field, value, expected, shown: str | None = None):
        if not _same(value, expected):
            self.fail(field, value, shown or repr(expected))

    def keys(self, field, value, expected: set, optional: set = frozenset()) -> dict:
        self.kind(field or "the state", value, dict, "an object")
        missing, extra = expected - set(value), set(value) - expected - optional
        prefix = f"{field}." if field else ""
        if missing:
            self.fail(prefix + str(sorted(missing, key=str)[0]), Said("absent"), "present (every saved state has it)")
        if extra:
            self.fail(prefix + str(sorted(extra, key=str)[0]), Said("present"),
                      f"absent: not a field qkv writes (it writes {', '.join(sorted(map(str, expected)))})")
        return value

    def tensor(self, field, value, shape, dtype, *, finite=False, low=None) -> torch.Tensor:
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(shape) or value.dtype != dtype:
            self.fail(field, value, f"a {str(dtype).removeprefix('torch.')} tensor of shape {tuple(shape)}")
        if finite and not bool(torch.isfinite(value).all()):
            self.fail(field, Said(f"{_show(value)} holding NaN or infinity"), "finite values")
        if low is not None and value.numel() and bool((value < low).any()):
            self.fail(field, Said(f"{_show(value)} holding values below {low}"), f"values >= {low}")
        return value


def check_trainer_state(state: dict, *, source, folder_step: int, run, saved_config: dict, fresh: dict) -> None:
    """Refuse (ValueError, one line) any value of ``state`` this run would not have written itself at its step.

    run: the run being resumed, its optimizer, schedule, scaler and data stream still fresh; saved_config: the
    checkpoint's train_config.json (its max_steps set the schedule so far); fresh: the fresh optimizer's
    "param_groups" (as its saved state names them: ``processes.optimizer_groups``) and the state dicts of the fresh
    "scheduler" and "data" stream."""
    c = Checker(source)
    c.keys("", state, set(TOP))
    step = c.count("step", state["step"])
    c.equal("step", step, folder_step, f"{folder_step}, the step in the checkpoint folder's name")
    world = c.count("world_size", state["world_size"], 1)
    c.kind("rng", state["rng"], list, f"a list of {world} generator states (world_size)")
    if len(state["rng"]) != world:
        c.fail("rng", Said(f"a list of {len(state['rng'])}"), f"one entry per process: world_size = {world}")
    for i, entry in enumerate(state["rng"]):
        check_rng(c, f"rng[{i}]", entry)
    c.count("tokens", state["tokens"])
    if state["best_val_loss"] is not None:
        c.number("best_val_loss", state["best_val_loss"])
    check_history(c, state["history"], step)
    schedule_cfg = run.cfg.replace(max_steps=saved_config["max_steps"])  # the schedule the saved steps ran on
    lrs = [base * (learning_rate(step + 1, schedule_cfg) / schedule_cfg.lr) for base in fresh["scheduler"]["base_lrs"]]
    check_scheduler(c, state["scheduler"], fresh["scheduler"], step, lrs)
    check_optimizer(c, state["optimizer"], fresh["param_groups"], run, step, lrs)
    check_scaler(c, state["scaler"], saved_config.get("precision"))
    check_data(c, "data", state["data"], fresh["data"], step * run.cfg.grad_accum)


def check_history(c: Checker, history, step: int) -> None:
    c.kind("history", history, list, "a list of {'step', 'changed'} records")
    for i, h in enumerate(history):
        c.keys(f"history[{i}]", h, {"step", "changed"})
        c.count(f"history[{i}].step", h["step"], 0, step)
        c.kind(f"history[{i}].changed", h["changed"], dict, "an object of field -> [before, after]")
        for k, v in h["changed"].items():
            if not (isinstance(v, list) and len(v) == 2):
                c.fail(f"history[{i}].changed.{k}", v, "[before, after]")


def check_scheduler(c: Checker, found, fresh: dict, step: int, lrs: list[float]) -> None:
    """LambdaLR's state after ``step`` steps: every field as the fresh schedule's, counters and rates moved on."""
    expected = {**fresh, "last_epoch": step, "_step_count": step + 1, "_last_lr": lrs}
    why = {"base_lrs": "lr in train_config.json", "_last_lr": f"lr of train_config.json, scheduled to step {step}"}
    c.keys("scheduler", found, set(expected))
    for k, want in expected.items():
        because = f"({why.get(k, f'the schedule after step {step}')})"
        if isinstance(want, list):
            c.kind(f"scheduler.{k}", found[k], list, f"a list of {len(want)}")
            if len(found[k]) != len(want):
                c.fail(f"scheduler.{k}", found[k], f"{want!r} {because}")
            for i, (a, b) in enumerate(zip(found[k], want)):
                c.equal(f"scheduler.{k}[{i}]", a, b, f"{b!r} {because}")
        else:
            c.equal(f"scheduler.{k}", found[k], want, f"{want!r} {because}")


def check_optimizer(c: Checker, found, fresh_groups: list, run, step: int, lrs: list[float]) -> None:
    c.keys("optimizer", found, {"state", "param_groups"})
    groups = c.kind("optimizer.param_groups", found["param_groups"], list, "a list of parameter groups")
    if len(groups) != len(fresh_groups):
        c.fail("optimizer.param_groups", Said(f"a list of {len(groups)}"),
               f"{len(fresh_groups)} groups (decay, no decay)")
    for g, (group, want) in enumerate(zip(groups, fresh_groups)):
        field = f"optimizer.param_groups[{g}]"
        c.keys(field, group, set(want))
        for k, v in want.items():
            if k == "lr":
                c.equal(f"{field}.lr", group[k], lrs[g], f"{lrs[g]!r} (lr of train_config.json, scheduled to step "
                                                         f"{step})")
            elif k in IMPLEMENTATION:
                c.kind(f"{field}.{k}", group[k], (bool, type(None)), "true, false or null")
            elif k == "params":
                c.equal(f"{field}.params", group[k], v, f"the ids of this model's parameters, {_show(v)}")
            else:
                c.equal(f"{field}.{k}", group[k], v, f"{v!r} (train_config.json)")
    shapes = _parameter_shapes(fresh_groups, run)
    moments = {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if fresh_groups[0].get("amsgrad") else set())
    state = c.kind("optimizer.state", found["state"], dict, "an object of parameter id -> moments")
    for key, s in state.items():
        field = f"optimizer.state.{key}"
        if key not in shapes:
            c.fail("optimizer.state", Said(f"an object with an entry for {key!r}"),
                   "entries for this model's parameters only")
        shape, dtype = shapes[key]
        c.keys(field, s, moments)
        t = c.kind(f"{field}.step", s["step"], torch.Tensor, "a one-value tensor")
        if t.numel() != 1 or not (t.dtype.is_floating_point or t.dtype in (torch.int32, torch.int64)):
            c.fail(f"{field}.step", t, "a one-value float or int tensor")
        n = float(t.reshape(()))
        if not (math.isfinite(n) and n == int(n) and 0 <= n <= step):
            c.fail(f"{field}.step", n, f"a whole number in [0, {step}] (updates so far)")
        for m in sorted(moments - {"step"}):
            c.tensor(f"{field}.{m}", s[m], shape, dtype, finite=True, low=0.0 if m != "exp_avg" else None)


def _parameter_shapes(fresh_groups: list, run) -> dict:
    """Optimizer state key (a parameter's id or, FSDP, name) -> (shape, dtype) of its parameter (DTensors report
    the whole parameter's shape)."""
    params = [p for group in run.opt.param_groups for p in group["params"]]
    keys = [k for group in fresh_groups for k in group["params"]]
    return {k: (tuple(p.shape), p.dtype) for k, p in zip(keys, params)}


def check_scaler(c: Checker, found, precision) -> None:
    """fp16 runs save the gradient scaler (a scale that doubled or halved from 2^16); others save nothing."""
    c.kind("scaler", found, dict, "an object")
    if precision != "fp16":
        if found:
            c.fail("scaler", found, f"{{}} (train_config.json: precision={precision!r} uses no loss scaling)")
        return
    want = torch.amp.GradScaler("cpu", enabled=True).state_dict()
    c.keys("scaler", found, set(want))
    c.number("scaler.scale", found["scale"])
    if not found["scale"] > 0:
        c.fail("scaler.scale", found["scale"], "a finite number > 0")
    for k in ("growth_factor", "backoff_factor", "growth_interval"):
        c.equal(f"scaler.{k}", found[k], want[k], f"{want[k]!r} (the GradScaler's default)")
    c.count("scaler._growth_tracker", found["_growth_tracker"], 0, want["growth_interval"] - 1)


def check_data(c: Checker, field: str, found, fresh, draws: int) -> None:
    """The data stream's position: the fresh stream's structure and seeds, counters no further than the batches
    drawn (``draws``: one per micro-step); a counter named step is exactly that."""
    if isinstance(fresh, dict):
        c.keys(field, found, set(fresh))
        for k in fresh:
            check_data(c, f"{field}.{k}", found[k], fresh[k], draws)
    elif field.rsplit(".", 1)[-1] == "seed" or not isinstance(fresh, int) or isinstance(fresh, bool):
        c.equal(field, found, fresh, f"{fresh!r} (this run's data stream)")
    elif field.rsplit(".", 1)[-1] == "step":
        c.equal(field, found, draws, f"{draws} (batches drawn: one per micro-step, step x grad_accum)")
    else:
        c.count(field, found, 0, draws)


def check_rng(c: Checker, field: str, entry) -> None:
    """One process's generator states, each of the form and range its library's ``setstate`` takes."""
    c.keys(field, entry, {"python", "numpy", "torch"}, optional={"cuda"})
    py, now = entry["python"], random.getstate()
    c.kind(f"{field}.python", py, tuple, "(version, 625 words, gauss) as random.getstate() gives")
    if len(py) != 3 or py[0] != now[0] or not isinstance(py[1], tuple) or len(py[1]) != len(now[1]):
        c.fail(f"{field}.python", py, f"(version {now[0]}, {len(now[1])} ints, gauss) as random.getstate() gives")
    for i, w in enumerate(py[1]):
        c.count(f"{field}.python[1][{i}]", w, 0, 2 ** 32 - 1 if i < len(now[1]) - 1 else len(now[1]) - 1)
    if py[2] is not None:
        c.number(f"{field}.python[2]", py[2], low=None)
    npy = entry["numpy"]
    c.kind(f"{field}.numpy", npy, tuple, "('MT19937', 624 words, position, has_gauss, gauss)")
    if len(npy) != 5 or npy[0] != "MT19937":
        c.fail(f"{field}.numpy", npy, "('MT19937', 624 words, position, has_gauss, gauss)")
    if not (isinstance(npy[1], np.ndarray) and npy[1].dtype == np.uint32 and npy[1].shape == (624,)):
        c.fail(f"{field}.numpy[1]", npy[1], "a uint32 array of shape (624,)")
    c.count(f"{field}.numpy[2]", npy[2], 0, 624)
    c.count(f"{field}.numpy[3]", npy[3], 0, 1)
    c.number(f"{field}.numpy[4]", npy[4], low=None)
    c.tensor(f"{field}.torch", entry["torch"], torch.get_rng_state().shape, torch.uint8)
    if "cuda" in entry:
        cuda = c.kind(f"{field}.cuda", entry["cuda"], list, "a list of CUDA generator states")
        for i, t in enumerate(cuda):
            shape = torch.cuda.get_rng_state(i).shape if i < torch.cuda.device_count() else t.shape
            c.tensor(f"{field}.cuda[{i}]", t, shape, torch.uint8)
