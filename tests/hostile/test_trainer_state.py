"""A handed run folder whose trainer_state.json was edited and its manifest recomputed (as anyone can): no value in
it overrides the user's flags. Every field is checked against train_config.json, the model and the fresh optimizer,
schedule and data stream, or its type and range; a mismatch is one line naming the file, the field, the value and
what was expected, and nothing in the run folder changes."""
import json

import pytest

from qkv import checkpoint as ckpt
from qkv import files

from .conftest import copy, refused, snapshot, train_argv


def _items(obj):  # the optimizer's {id: state}, as trainer_state.json writes it
    return dict((k, v) for k, v in obj["__items__"])


def _set(path, value):
    def edit(state):
        *parents, last = path
        target = state
        for p in parents:
            target = target[p]
        target[last] = value
    return edit


def _deep(n):
    nest = []
    for _ in range(n):
        nest = [nest]
    return nest


# (the field the refusal must name, the edit of the "state" object)
EDITS = {
    # the two reported: a handed schedule or learning rate overrode --lr
    "scheduler.base_lrs[0]": _set(["scheduler", "base_lrs"], [0, 0]),
    "optimizer.param_groups[0].lr": _set(["optimizer", "param_groups", 0, "lr"], 1e9),
    # the reported ugly ones
    "data.step": _set(["data", "step"], -100),
    "data.seed": _set(["data", "seed"], "x"),
    "rng[0].python": _set(["rng", 0, "python"], 5),
    "scheduler.last_epoch": _set(["scheduler", "last_epoch"], "abc"),
    "step is True": _set(["step"], True),
    "step is -5": _set(["step"], -5),
    # fresh variants of each class
    "step is 3": _set(["step"], 3),  # the folder says 4
    "step is 4.0": _set(["step"], 4.0),
    "data.step is 3": _set(["data", "step"], 3),
    "data.step is 1e12": _set(["data", "step"], 10 ** 12),
    "data.extra": _set(["data", "extra"], 1),
    "scheduler._last_lr[1]": _set(["scheduler", "_last_lr"], [5e-05, 1.0]),
    "scheduler._step_count": _set(["scheduler", "_step_count"], 1),
    "scheduler.lr_lambdas[0]": _set(["scheduler", "lr_lambdas"], [{"x": 1}, None]),
    "optimizer.param_groups[0].lr is NaN": _set(["optimizer", "param_groups", 0, "lr"], float("nan")),
    "optimizer.param_groups[0].betas": _set(["optimizer", "param_groups", 0, "betas"], {"__tuple__": [0.0, 0.0]}),
    "optimizer.param_groups[0].eps": _set(["optimizer", "param_groups", 0, "eps"], 1.0),
    "optimizer.param_groups[1].weight_decay": _set(["optimizer", "param_groups", 1, "weight_decay"], 10.0),
    "optimizer.param_groups[0].maximize": _set(["optimizer", "param_groups", 0, "maximize"], True),
    "optimizer.param_groups[0].initial_lr": _set(["optimizer", "param_groups", 0, "initial_lr"], 1e9),
    "optimizer.param_groups[0].params": _set(["optimizer", "param_groups", 0, "params"], [0]),
    "optimizer.param_groups[0].fused": _set(["optimizer", "param_groups", 0, "fused"], "yes"),
    "optimizer.param_groups": _set(["optimizer", "param_groups"], []),
    "optimizer.state.0.exp_avg": lambda s: _items(s["optimizer"]["state"])[0].update(
        exp_avg=_items(s["optimizer"]["state"])[1]["exp_avg"]),  # another parameter's moment: the wrong shape
    "optimizer.state.0.secret": lambda s: _items(s["optimizer"]["state"])[0].update(secret=1),
    "optimizer.state": lambda s: s["optimizer"]["state"]["__items__"].append([999, {}]),
    "scaler": _set(["scaler"], {"scale": 1e30, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                                "_growth_tracker": 0}),  # an fp32 run has no loss scaling
    "rng[0].python[1][0]": lambda s: s["rng"][0]["python"]["__tuple__"][1]["__tuple__"].__setitem__(0, -1),
    "rng[0].python[1][624]": lambda s: s["rng"][0]["python"]["__tuple__"][1]["__tuple__"].__setitem__(624, 10 ** 6),
    "rng[0].numpy[2]": lambda s: s["rng"][0]["numpy"]["__tuple__"].__setitem__(2, 10 ** 9),
    "rng[0].numpy ndarray dtype": lambda s: s["rng"][0]["numpy"]["__tuple__"][1].update(dtype="V1000000000"),
    "rng[0].torch": lambda s: s["rng"][0].update(torch=s["optimizer"]["state"]["__items__"][0][1]["exp_avg"]),
    "rng": _set(["rng"], []),
    "world_size": _set(["world_size"], 0),
    "tokens": _set(["tokens"], -1),
    "best_val_loss": _set(["best_val_loss"], float("inf")),
    "history": _set(["history"], "everything"),
    "history[0].step": _set(["history"], [{"step": 99, "changed": {}}]),
    "absent optimizer": lambda s: s.pop("optimizer"),
    "unknown field": _set(["evil"], 1),
    "deep nesting": _set(["history"], _deep(200)),  # past the JSON reader's bound (qkv.files: 64 levels)
    "nesting past the state's bound": _set(["history"], _deep(40)),  # within the reader's, past the state's (32)
    "items that are not pairs": _set(["optimizer", "state"], {"__items__": [[[1], {}]]}),
}
NAMED = {"step is True": "step", "step is -5": "step", "step is 3": "step", "step is 4.0": "step",
         "data.step is 3": "data.step", "data.step is 1e12": "data.step",
         "optimizer.param_groups[0].lr is NaN": "optimizer.param_groups[0].lr",
         "rng[0].numpy ndarray dtype": "rng[0].numpy[1]", "absent optimizer": "optimizer", "unknown field": "evil",
         "items that are not pairs": "optimizer.state"}


def handed(run, edit):
    """Edit the latest checkpoint's trainer_state.json and recompute its manifest, as whoever hands a folder can."""
    folder = ckpt.latest_checkpoint(run)
    path = folder / ckpt.STATE_FILE
    meta = json.loads(path.read_text())
    edit(meta["state"])
    path.write_text(json.dumps(meta))
    files.write_manifest(folder)
    return path


@pytest.mark.parametrize("case", EDITS)
def test_a_handed_trainer_state_value_is_refused_naming_file_and_field(world, lm_run, corpus, capsys, case):
    run = copy(lm_run, world.root / "run")
    handed(run, EDITS[case])
    kept = {p: snapshot(run / p) for p in ("checkpoints",)}, (run / "metrics.jsonl").read_bytes()
    named = {"deep nesting": "trainer_state.json: objects and lists nested more than 64 levels deep",
             "nesting past the state's bound": "trainer_state.json: history[0][0]"}.get(
        case, f"trainer_state.json: {NAMED.get(case, case)} is ")
    line = refused(capsys, train_argv(corpus, run, "--resume", "--max-steps", "6"), named)
    assert "expected" in line
    assert ({p: snapshot(run / p) for p in ("checkpoints",)}, (run / "metrics.jsonl").read_bytes()) == kept
    assert ckpt.latest_checkpoint(run).name == "step-0000004"


def test_an_untouched_state_with_its_manifest_recomputed_resumes(world, lm_run, corpus, capsys):
    from .conftest import ok
    run = copy(lm_run, world.root / "run")
    handed(run, lambda s: None)
    ok(capsys, train_argv(corpus, run, "--resume", "--max-steps", "6"))
    assert ckpt.latest_checkpoint(run).name == "step-0000006"


@pytest.mark.parametrize("field,value", [("max_steps", 2), ("max_steps", "4"), ("lr", "x"), ("eps", -1)])
def test_a_handed_train_config_json_is_checked_as_a_train_config(world, lm_run, corpus, capsys, field, value):
    run = copy(lm_run, world.root / "run")
    folder = ckpt.latest_checkpoint(run)
    cfg = json.loads((folder / ckpt.TRAIN_CONFIG_FILE).read_text())
    (folder / ckpt.TRAIN_CONFIG_FILE).write_text(json.dumps({**cfg, field: value}))
    files.write_manifest(folder)
    refused(capsys, train_argv(corpus, run, "--resume", "--max-steps", "6"), ckpt.TRAIN_CONFIG_FILE, field)


def test_non_finite_weights_in_a_handed_checkpoint_are_refused_on_resume(world, lm_run, corpus, capsys):
    from safetensors.torch import load_file, save_file
    run = copy(lm_run, world.root / "run")
    folder = ckpt.latest_checkpoint(run)
    weights = load_file(str(folder / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name][0] = float("nan")
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    files.write_manifest(folder)
    refused(capsys, train_argv(corpus, run, "--resume", "--max-steps", "6"), "model.safetensors", name, "NaN")
