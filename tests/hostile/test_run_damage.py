"""Damage a training run could do to itself: weights that went non-finite (stopped before they are saved, the last
good checkpoint kept), a crash between a checkpoint and its metrics line (no line lost), a dead process's lock
taken over (twice: the lock file names its new owner, nothing else)."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

import qkv
from qkv import checkpoint as ckpt
from qkv.config import TrainConfig
from qkv.train import NonFiniteWeightError, train

from .conftest import refused, tiny_model, train_argv


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def config(corpus, run, **kw):
    return TrainConfig(**{**dict(data=str(corpus), out_dir=str(run), max_steps=6, eval_every=2, eval_steps=1,
                                 block_size=8, batch_size=2, keep_last=0, log_every=1, progress=False, seed=3,
                                 precision="fp32"), **kw})


# -- 6. a non-finite weight stops the run before it is saved ------------------------------------------------------

def test_eps_0_makes_nan_weights_and_the_run_stops_naming_them_before_saving(world, corpus, capsys):
    """AdamW with eps=0 divides 0 by 0 in the position rows a block of 8 never reaches (the model has 16): the loss
    stays finite, the weights do not. Nothing non-finite is saved or evaluated."""
    run = world.root / "run"
    line = refused(capsys, train_argv(corpus, run, "--eps", "0"), "embed.positions", "NaN", "after step 2",
                   "No checkpoint was written yet", "eps > 0")
    assert "without saving" in line
    assert not ckpt.list_checkpoints(run) and not (run / "latest").exists() and not (run / ckpt.LOCK).exists()
    assert not any("val_loss" in r for r in metrics(run))


def test_a_weight_gone_nan_later_keeps_the_last_good_checkpoint(world, corpus):
    mc = tiny_model().replace(vocab_size=len(set(corpus.read_text())))  # the characters of the corpus
    torch.manual_seed(3)  # the run's seed: the weights train() would build
    model, calls = qkv.build(mc), {"n": 0}
    weight = dict(model.named_parameters())["embed.positions.weight"]

    def poison(module, args):  # in step 3 a position row that blocks of 8 never reach becomes infinite: the loss
        calls["n"] += module.training  # stays finite
        if calls["n"] == 3:
            with torch.no_grad():
                weight[15, 0] = float("inf")
    model.register_forward_pre_hook(poison)
    run = world.root / "run"
    named = r"'embed.positions.weight' holds 1 .*after step 4.*step-0000002 \(step 2\)"
    with pytest.raises(NonFiniteWeightError, match=named):
        train(mc, config(corpus, run), model=model)
    good = ckpt.latest_checkpoint(run)
    assert good.name == "step-0000002" and [p.name for p in ckpt.list_checkpoints(run)] == ["step-0000002"]
    assert all(torch.isfinite(p).all() for p in qkv.load(good).parameters())
    assert not (run / ckpt.LOCK).exists()


# -- 7. a crash between a checkpoint and its metrics line ----------------------------------------------------------

@pytest.fixture(scope="module")
def whole_run(tmp_path_factory, corpus):
    """An uninterrupted run of 6 steps."""
    run = tmp_path_factory.mktemp("whole") / "run"
    train(tiny_model(), config(corpus, run))
    return run


@pytest.mark.parametrize("when", ["after the checkpoint", "before the checkpoint"])
def test_a_crash_next_to_a_checkpoint_loses_no_metrics_line(world, corpus, whole_run, monkeypatch, when):
    """kill -9 simulated right after step 4's checkpoint is written (before, the loop saved first and appended the
    line after, so a crash there lost the line for good), and right before it; resumed, the log holds every step
    once, with the values of an uninterrupted run."""
    real = ckpt.save_checkpoint

    def crash(out, step, **kw):
        if step == 4 and when == "before the checkpoint":
            raise SystemExit(9)
        path = real(out, step, **kw)
        if step == 4:
            raise SystemExit(9)
        return path
    monkeypatch.setattr(ckpt, "save_checkpoint", crash)
    cut = world.root / "cut"
    with pytest.raises(SystemExit):
        train(tiny_model(), config(corpus, cut))
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(cut).name == ("step-0000004" if when == "after the checkpoint" else "step-0000002")
    assert [r["step"] for r in metrics(cut)] == [1, 2, 3, 4]  # the line is written before the checkpoint
    train(tiny_model(), config(corpus, cut, resume=True))
    drop = ("tokens_per_s", "elapsed_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in metrics(cut)] == \
        [{k: v for k, v in r.items() if k not in drop} for r in metrics(whole_run)]


# -- 8. a dead process's lock, taken over twice ----------------------------------------------------------------------

def test_a_lock_taken_over_twice_names_its_new_owner(world, caplog):
    """Before, taking over a lock wrote the new owner after a run of NUL bytes, so the next run was refused naming
    "process ? on ?"."""
    run = world.root / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / ckpt.LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "note": "x" * 200}))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time; from qkv.checkpoint import RunLock\n"
        f"with RunLock({str(run)!r}):\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:  # the first take-over; then that process dies holding the lock (kill -9), its own lock file left behind
        assert holder.stdout.readline().strip() == "locked"
        text = (run / ckpt.LOCK).read_bytes()
        assert json.loads(text) == {"pid": holder.pid, "host": socket.gethostname()}
    finally:
        holder.kill()
        holder.wait()
    with ckpt.RunLock(run):  # the second take-over, by this process
        assert json.loads((run / ckpt.LOCK).read_bytes()) == {"pid": os.getpid(), "host": socket.gethostname()}
        with pytest.raises(ValueError, match=f"process {os.getpid()} on {socket.gethostname()}"):
            ckpt.RunLock(run).__enter__()
    assert "no longer running" in caplog.text and not (run / ckpt.LOCK).exists()


def test_a_lock_file_an_older_qkv_padded_with_nuls_still_names_its_owner(world, corpus, capsys):
    run = world.root / "run"
    run.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ckpt.LOCK).write_bytes(b"\0" * 60 + json.dumps({"pid": sleeper.pid,
                                                               "host": socket.gethostname()}).encode())
        refused(capsys, train_argv(corpus, run), f"process {sleeper.pid} on {socket.gethostname()}")
    finally:
        sleeper.kill()
        sleeper.wait()
