"""Stopping and starting a run: what `qkv train` says it will do (its opening line, the block size it chose), SIGINT
and SIGTERM saving a checkpoint at the next step and exiting 130 / 143 with the lock released (resumed, the weights
equal an uninterrupted run's), processes agreeing on the step to stop after, a second Ctrl-C stopping at once
without damaging any checkpoint, and the resume / overwrite hints leading somewhere that works."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import qkv
from qkv import checkpoint as ckpt
from qkv.config import ModelConfig, TrainConfig
from qkv.train import DEFAULT_BLOCK_CAP, TrainingInterrupted, train

from .test_train import TEXT, _free_port, cfg_for, metrics, tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "input.txt"
    p.write_text(TEXT)
    return p


def _weights(path):
    from safetensors.torch import load_file
    return load_file(str(path / "model.safetensors"))


# -- the opening line and the block size ---------------------------------------------------------------------------

def test_the_opening_line_says_model_size_precision_batch_device_and_folder(tmp_path, corpus, caplog):
    caplog.set_level("INFO", logger="qkv.train")
    train(tiny(), cfg_for(tmp_path, corpus, max_steps=2, grad_accum=2), name="my-model")
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("qkv train: "))
    n = qkv.build(tiny()).num_parameters()
    for part in ("my-model (decoder, task lm)", f"{n:,} parameters", "precision fp32",
                 "block 16 x batch 4 x 2 accumulated = 128 tokens per step", "2 steps", "on cpu",
                 f"into {tmp_path / 'run'}"):
        assert part in line, (part, line)


def test_a_long_context_model_trains_on_capped_blocks_and_says_so(tmp_path, caplog):
    """retnet-tiny declares 4096 positions; without --block-size a run takes 1024-token windows, says so in its
    opening line and records it, and an explicit --block-size still goes up to max_positions."""
    from qkv.tasks import TASKS
    from qkv.train.loop import resolve
    cpu, lm = torch.device("cpu"), TASKS["lm"]
    assert resolve(TrainConfig(), lm, cpu, 1, 4096).block_size == DEFAULT_BLOCK_CAP == 1024
    assert resolve(TrainConfig(), lm, cpu, 1, 64).block_size == 64
    assert resolve(TrainConfig(block_size=4096), lm, cpu, 1, 4096).block_size == 4096
    assert resolve(TrainConfig(), TASKS["seq2seq"], cpu, 1, 4096).block_size is None  # no blocks to cut
    data = tmp_path / "long.txt"
    data.write_text(TEXT * 8)
    caplog.set_level("INFO", logger="qkv.train")
    mc = tiny().replace(max_positions=2048)
    train(mc, cfg_for(tmp_path, data, max_steps=1, batch_size=1, block_size=None, eval_steps=1))
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["block_size"] == 1024
    assert any("block 1024 x batch 1 = 1,024 tokens per step" in r.getMessage() for r in caplog.records)


def test_train_help_says_the_block_size_default(capsys):
    from qkv.cli import main
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "up to 1024" in " ".join(capsys.readouterr().out.split())


def test_a_run_of_an_older_qkv_with_a_null_block_size_resumes_on_its_max_positions(tmp_path, corpus):
    from qkv import files
    c = cfg_for(tmp_path, corpus, max_steps=2, eval_every=2)  # block_size 16 = max_positions
    train(tiny(), c)
    last = ckpt.latest_checkpoint(tmp_path / "run")
    for f in (last / ckpt.TRAIN_CONFIG_FILE, tmp_path / "run" / ckpt.TRAIN_CONFIG_FILE):
        f.write_text(json.dumps({**json.loads(f.read_text()), "block_size": None}))  # as older runs recorded it
    files.write_manifest(last)
    assert train(tiny(), c.replace(block_size=None, resume=True, max_steps=3)).steps == 3


# -- SIGINT / SIGTERM from outside: a subprocess, signalled once its metrics show a step ---------------------------

def _spawn(out: Path, data: Path, *flags, entry=("qkv", "train")) -> subprocess.Popen:
    """`qkv train` (or torchrun's entry, ``python -m qkv.train``) of a tiny model with dropout (the RNG states
    matter) at a constant lr (the schedule does not depend on max_steps), logging every step, one thread (the same
    sums in every process)."""
    cfg = out.parent / "model.json"
    cfg.write_text(json.dumps({"model": tiny(dropout=0.1).to_dict()}))
    argv = [sys.executable, "-m", *entry, "--config", cfg, "--data", data, "--out-dir", out, "--batch-size",
            "4", "--block-size", "16", "--schedule", "constant", "--warmup-steps", "0", "--eval-every", "0",
            "--eval-steps", "1", "--log-every", "1", "--seed", "7", "--precision", "fp32", "--no-compile",
            "--no-progress", *flags]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def _signal_after_step(proc: subprocess.Popen, out: Path, step: int, signum: int) -> tuple[int, str]:
    """Send ``signum`` once metrics.jsonl shows ``step`` (polling the file: the order of events is fixed, not
    their timing); returns (exit status, stderr)."""
    import time
    deadline = time.monotonic() + 300
    def logged():  # whole lines only: the run may be appending one
        text = (out / ckpt.METRICS).read_text() if (out / ckpt.METRICS).is_file() else ""
        return text.count("\n")
    while logged() < step:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the run never reached the step"
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def test_ctrl_c_saves_the_step_releases_the_lock_and_resumes_to_the_uninterrupted_weights(tmp_path, corpus):
    cut = tmp_path / "cut" / "run"
    cut.parent.mkdir()
    rc, err = _signal_after_step(_spawn(cut, corpus, "--max-steps", "100000"), cut, 3, signal.SIGINT)
    assert rc == 130, err
    saved = ckpt.latest_checkpoint(cut)
    k = ckpt.checkpoint_step(saved)
    assert k >= 3 and [r["step"] for r in metrics(cut)] == list(range(1, k + 1))
    assert f"stopped by SIGINT after step {k}: saved checkpoint {saved}" in err and "--resume" in err
    assert "stopping at the end of this step" in err and "Traceback" not in err
    assert not (cut / ckpt.LOCK).exists()
    # resumed to k + 2 steps, against one run of k + 2 steps: the same weights, bit for bit
    end = str(k + 2)
    whole = tmp_path / "whole" / "run"
    whole.parent.mkdir()
    for proc in (_spawn(cut, corpus, "--max-steps", end, "--resume"), _spawn(whole, corpus, "--max-steps", end)):
        assert proc.wait(timeout=300) == 0, proc.communicate()[1]
    a, b = _weights(ckpt.latest_checkpoint(whole)), _weights(ckpt.latest_checkpoint(cut))
    assert ckpt.latest_checkpoint(cut).name == f"step-{k + 2:07d}" and a.keys() == b.keys()
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert [r["train_loss"] for r in metrics(cut)] == [r["train_loss"] for r in metrics(whole)]


@pytest.mark.parametrize("entry", [("qkv", "train"), ("qkv.train",)], ids=["qkv train", "python -m qkv.train"])
def test_sigterm_saves_the_step_and_exits_143(tmp_path, corpus, entry):
    out = tmp_path / "run"
    rc, err = _signal_after_step(_spawn(out, corpus, "--max-steps", "100000", entry=entry), out, 2, signal.SIGTERM)
    assert rc == 143, err
    k = ckpt.checkpoint_step(ckpt.latest_checkpoint(out))
    assert k >= 2 and f"stopped by SIGTERM after step {k}: saved checkpoint" in err
    assert "Ctrl-C again" not in err and not (out / ckpt.LOCK).exists()


# -- in-process: signals sent from inside a step, at a known point -------------------------------------------------

def _signal_at_forward(model, n: int, *signums):
    """Send ``signums`` to this process at the n-th training forward (step n with grad_accum 1)."""
    calls = {"n": 0}

    def hook(module, args):
        calls["n"] += module.training
        if calls["n"] == n:
            for s in signums:
                os.kill(os.getpid(), s)
    model.register_forward_pre_hook(hook)
    return model


def test_a_second_ctrl_c_stops_at_once_and_names_the_last_checkpoint(tmp_path, corpus):
    before = signal.getsignal(signal.SIGINT)
    torch.manual_seed(7)
    model = _signal_at_forward(qkv.build(tiny()), 3, signal.SIGINT, signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as e:
        train(tiny(), cfg_for(tmp_path, corpus, max_steps=6, eval_every=2), model=model)
    out = tmp_path / "run"
    assert e.value.exit_status == 130 and e.value.checkpoint is None
    assert "second SIGINT, without saving" in str(e.value) and "step-0000002 (step 2)" in str(e.value)
    assert ckpt.latest_checkpoint(out).name == "step-0000002" and not (out / ckpt.LOCK).exists()
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are the caller's again


def test_a_signal_before_the_first_step_stops_at_once(tmp_path, corpus, monkeypatch):
    from qkv.tasks import TASKS
    real = TASKS["lm"].prepare

    def prepare(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)
    monkeypatch.setattr(TASKS["lm"], "prepare", prepare)
    with pytest.raises(TrainingInterrupted, match="before training began") as e:
        train(tiny(), cfg_for(tmp_path, corpus))
    assert e.value.exit_status == 143 and not (tmp_path / "run" / ckpt.LOCK).exists()


def _stop_worker(rank, world, port, cfg_dict, mc_dict, report):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    mc = ModelConfig.from_dict(mc_dict)
    torch.manual_seed(TrainConfig.from_dict(cfg_dict).seed)
    model = qkv.build(mc)
    if rank == 1:  # only one process is told to stop, in the middle of step 3
        _signal_at_forward(model, 3, signal.SIGTERM)
    try:
        train(mc, TrainConfig.from_dict(cfg_dict), model=model)
    except TrainingInterrupted as e:
        Path(report, f"rank{rank}").write_text(json.dumps([e.step, e.signum]))


def test_processes_agree_on_the_step_to_stop_after(tmp_path, corpus):
    c = cfg_for(tmp_path, corpus, max_steps=8, eval_every=0)
    mp.spawn(_stop_worker, args=(2, _free_port(), c.to_dict(), tiny().to_dict(), str(tmp_path)), nprocs=2, join=True)
    reports = [json.loads((tmp_path / f"rank{r}").read_text()) for r in (0, 1)]
    assert reports == [[3, signal.SIGTERM]] * 2  # rank 0 was never signalled, and stopped with rank 1
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "step-0000003"
    assert [r["step"] for r in metrics(tmp_path / "run")] == [1, 2, 3]


# -- a second Ctrl-C during a save leaves every checkpoint whole ----------------------------------------------------

@pytest.mark.parametrize("at", [0, 1, 2], ids=["old-aside", "new-in-place", "latest"])
def test_an_interrupt_at_any_rename_of_a_save_leaves_an_intact_checkpoint(tmp_path, corpus, monkeypatch, at):
    """Saving step 2 again (as a resumed run does) renames the old folder aside, the new one in, then `latest`; a
    KeyboardInterrupt at any of the three leaves step 2 whole, `latest` naming it, no temporary folder behind."""
    from qkv import files
    train(tiny(), cfg_for(tmp_path, corpus, max_steps=2, eval_every=2))
    out, model, real = tmp_path / "run", qkv.build(tiny()), os.replace
    stop_at = [lambda a, b: Path(a).name == "step-0000002", lambda a, b: Path(a).name.startswith(".tmp-step"),
               lambda a, b: Path(b).name == "latest"][at]

    def replace(a, b):
        if stop_at(a, b):
            raise KeyboardInterrupt
        return real(a, b)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(out, 2, model=model, trainer_state={"step": 2})
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(out).name == "step-0000002"
    assert files.verify_manifest(out / "checkpoints" / "step-0000002", required=True)
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
