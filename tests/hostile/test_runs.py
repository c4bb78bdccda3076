"""Hostile and mistaken training runs: nothing logged that was not computed, no earlier run overwritten, one run
per folder, resume only from intact checkpoints with the tokenizer they were trained with, a full disk losing
nothing, and every refusal one line naming the flag or file."""
import errno
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
from qkv.train import train

from .conftest import copy, flip_byte, ok, refused, snapshot, tiny_model, train_argv


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# -- 5. lost or mixed output ---------------------------------------------------------------------------------------

def test_eval_steps_0_logs_no_validation_metric(world, corpus, capsys):
    run = world.root / "run"
    ok(capsys, train_argv(corpus, run, "--eval-steps", "0"))
    assert not any("val_loss" in r for r in metrics(run))
    assert not (run / "best.json").exists()


@pytest.mark.parametrize("gone", ["latest", "latest+best", "nothing"])
def test_a_new_run_over_checkpoints_is_refused_even_without_latest(world, lm_run, corpus, capsys, gone):
    run = copy(lm_run, world.root / "run")
    for name in gone.split("+") if gone != "nothing" else []:
        (run / {"latest": "latest", "best": "best.json"}[name]).unlink()
    before = snapshot(run)
    refused(capsys, train_argv(corpus, run), "already holds a run", "--overwrite")
    assert snapshot(run) == before


def test_a_new_run_over_logged_metrics_is_refused(world, corpus, capsys):
    run = world.root / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "train_loss": 3.0}\n')
    refused(capsys, train_argv(corpus, run), "metrics.jsonl")


def test_a_folder_with_a_foreign_config_json_is_not_written_over(world, corpus, capsys):
    run = world.root / "project"
    run.mkdir()
    (run / "config.json").write_text('{"mine": true}')
    refused(capsys, train_argv(corpus, run), "config.json")
    assert (run / "config.json").read_text() == '{"mine": true}'


def test_overwrite_replaces_the_earlier_run(world, lm_run, corpus, capsys):
    run = copy(lm_run, world.root / "run")
    (run / "notes.txt").write_text("mine")
    ok(capsys, train_argv(corpus, run, "--overwrite", "--max-steps", "2"))
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-0000002"]
    assert [r["step"] for r in metrics(run)] == [1, 2] and (run / "notes.txt").read_text() == "mine"


def test_resume_and_overwrite_together_are_refused(world, lm_run, corpus, capsys):
    run = copy(lm_run, world.root / "run")
    refused(capsys, train_argv(corpus, run, "--resume", "--overwrite"), "resume", "overwrite")


def _sleeper():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_second_run_is_refused_naming_the_first_ones_pid(world, corpus, capsys):
    run = world.root / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from qkv.checkpoint import RunLock\n"
        f"with RunLock({str(run)!r}):\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused(capsys, train_argv(corpus, run), "in use by another qkv run", str(holder.pid))
        with pytest.raises(ValueError, match=str(holder.pid)):
            train(tiny_model(), TrainConfig(data=str(corpus), out_dir=str(run), progress=False))
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_file_naming_a_live_process_is_respected(world, corpus, capsys):
    run = world.root / "run"
    run.mkdir()
    sleeper = _sleeper()
    try:
        (run / ".qkv-lock").write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        refused(capsys, train_argv(corpus, run), str(sleeper.pid))
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_stale_lock_of_a_dead_process_is_taken_over(world, corpus, capsys, caplog):
    run = world.root / "run"
    run.mkdir()
    dead = _sleeper()
    dead.kill()
    dead.wait()
    (run / ".qkv-lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    ok(capsys, train_argv(corpus, run, "--max-steps", "2"))
    assert "no longer running" in caplog.text and not (run / ".qkv-lock").exists()


@pytest.mark.parametrize("link", ["checkpoints", "metrics.jsonl", "data", "tokenizer"])
def test_a_run_folder_with_links_out_is_refused_before_writing_through_them(world, lm_run, corpus, capsys, link):
    run = copy(lm_run, world.root / "run")
    target = world.outside / "sub"
    p = run / link
    if p.is_dir():
        import shutil
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()
    os.symlink(target if link != "metrics.jsonl" else world.outside / "secret.txt", p)
    refused(capsys, train_argv(corpus, run, "--resume", "--max-steps", "6"), "symbolic link", link)


# -- 4. resume from intact checkpoints only ------------------------------------------------------------------------

@pytest.mark.parametrize("broken", ["model.safetensors", "trainer_state.safetensors", "trainer_state.json",
                                    "tokenizer/qkv_tokenizer.json"])
def test_resume_falls_back_to_the_last_intact_checkpoint_naming_the_broken_file(world, lm_run, corpus, capsys, caplog,
                                                                               broken):
    run = copy(lm_run, world.root / "run")
    flip_byte(run / "checkpoints" / "step-0000004" / broken)
    ok(capsys, train_argv(corpus, run, "--resume", "--max-steps", "6"))
    assert broken in caplog.text and "step-0000002" in caplog.text
    assert ckpt.latest_checkpoint(run).name == "step-0000006"
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4, 5, 6]


def test_resume_with_every_checkpoint_damaged_is_refused(world, lm_run, corpus, capsys):
    run = copy(lm_run, world.root / "run")
    for c in ckpt.list_checkpoints(run):
        flip_byte(c / "model.safetensors")
    refused(capsys, train_argv(corpus, run, "--resume", "--max-steps", "6"), "no intact checkpoint",
            "model.safetensors")


def test_resume_without_latest_uses_the_newest_checkpoint(world, lm_run, corpus, capsys, caplog):
    run = copy(lm_run, world.root / "run")
    (run / "latest").unlink()
    ok(capsys, train_argv(corpus, run, "--resume", "--max-steps", "6"))
    assert "step-0000004" in caplog.text and ckpt.latest_checkpoint(run).name == "step-0000006"


def test_resume_with_no_checkpoint_is_refused(world, corpus, capsys):
    refused(capsys, train_argv(corpus, world.root / "run", "--resume"), "--resume", "no checkpoint")


def test_resume_below_the_checkpoint_step_is_refused(world, lm_run, corpus, capsys):
    run = copy(lm_run, world.root / "run")
    refused(capsys, train_argv(corpus, run, "--resume", "--max-steps", "3"), "max_steps=3", "4")


def test_resume_of_a_finished_run_trains_nothing_and_returns_its_checkpoint(world, lm_run, corpus):
    run = copy(lm_run, world.root / "run")
    c = TrainConfig(data=str(corpus), out_dir=str(run), max_steps=4, eval_every=2, eval_steps=1, block_size=8,
                    batch_size=2, keep_last=0, log_every=1, progress=False, resume=True)
    s = train(tiny_model(), c)
    assert s.steps == 4 and s.checkpoint.endswith("step-0000004")


# fp16: never what the run's default precision ("auto": bf16 or fp32 by machine) resolved to, so always a change
@pytest.mark.parametrize("flag,value", [("--precision", "fp16"), ("--grad-clip", "0.5")])
def test_a_changed_precision_or_clip_on_resume_is_warned_and_recorded(world, lm_run, corpus, capsys, caplog, flag,
                                                                      value):
    run = copy(lm_run, world.root / "run")
    ok(capsys, train_argv(corpus, run, "--resume", "--max-steps", "6", flag, value))
    field = flag[2:].replace("-", "_")
    assert f"resuming with {field}=" in caplog.text
    history = ckpt.load_trainer_state(run / "checkpoints" / "step-0000006")["history"]
    assert history[-1]["step"] == 4 and field in history[-1]["changed"]


def test_a_half_written_last_metrics_line_does_not_block_resume(world, lm_run, corpus, capsys, caplog):
    run = copy(lm_run, world.root / "run")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "train_lo')
    ok(capsys, train_argv(corpus, run, "--resume", "--max-steps", "6"))
    assert "not whole JSON" in caplog.text
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_a_tokenizer_other_than_the_saved_one(world, lm_run, corpus):
    from qkv.data import CharTokenizer
    run = copy(lm_run, world.root / "run")
    other = CharTokenizer.train(iter(["abcdefghijklmnopqrstuvwxyz .,?\nTAI"]), specials=())
    c = TrainConfig(data=str(corpus), out_dir=str(run), max_steps=6, eval_every=2, eval_steps=1, block_size=8,
                    batch_size=2, keep_last=0, log_every=1, progress=False, resume=True)
    with pytest.raises(ValueError, match="fingerprint.*tokenizer saved with the checkpoint.*fingerprint"):
        train(tiny_model(), c, tokenizer=other)
    saved = qkv.data.Tokenizer.load(run / "checkpoints" / "step-0000004" / "tokenizer")
    assert train(tiny_model(), c, tokenizer=saved).steps == 6  # the saved one is welcome


def test_resume_refuses_a_tokenizer_flag_other_than_the_saved_one(world, lm_run, corpus, capsys):
    from qkv.data import CharTokenizer
    run = copy(lm_run, world.root / "run")
    CharTokenizer.train(iter(["xyz"]), specials=()).save(world.root / "tok")
    refused(capsys, train_argv(corpus, run, "--resume", "--max-steps", "6", "--tokenizer", world.root / "tok"),
            "--tokenizer", "fingerprint")


# -- disk full: nothing lost --------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["weights", "trainer state", "manifest", "latest", "rename", "library error"])
def test_a_full_disk_mid_save_is_one_line_and_loses_nothing(world, lm_run, corpus, capsys, monkeypatch, where):
    import safetensors.torch
    from qkv import files as safety
    run = copy(lm_run, world.root / "run")
    before = {"checkpoints": snapshot(run / "checkpoints"), "latest": (run / "latest").read_bytes()}

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    if where == "weights":
        monkeypatch.setattr(safetensors.torch, "save_model", full)
    elif where == "trainer state":
        monkeypatch.setattr(ckpt, "save_trainer_state", full)
    elif where == "manifest":
        monkeypatch.setattr(safety, "write_manifest", full)
    elif where == "rename":  # the checkpoint folder's own rename into place
        real_replace = os.replace
        monkeypatch.setattr(os, "replace", lambda a, b: full() if "/.tmp-step" in str(a) else real_replace(a, b))
    elif where == "library error":  # safetensors reports a failed write with its own error type, not OSError
        def library(*a, **k):
            raise RuntimeError("Error while serializing: IoError(No space left on device)")
        monkeypatch.setattr(safetensors.torch, "save_file", library)
    else:
        real = safety.write_atomic
        monkeypatch.setattr(safety, "write_atomic", lambda p, t: full() if p.name == "latest" else real(p, t))
    refused(capsys, train_argv(corpus, run, "--resume", "--max-steps", "6"), "No space left", "untouched")
    monkeypatch.undo()
    assert snapshot(run / "checkpoints") == before["checkpoints"] or where == "latest"
    assert (run / "latest").read_bytes() == before["latest"]
    assert qkv.load(ckpt.latest_checkpoint(run)) is not None
    ok(capsys, train_argv(corpus, run, "--resume", "--max-steps", "6"))  # and the run goes on from there


# -- 7. training flags: one line naming the flag, the value and what is expected ----------------------------------

@pytest.mark.parametrize("flags,culprits", [
    (["--lr", "inf"], ["lr", "inf"]), (["--lr", "nan"], ["lr", "nan"]), (["--lr", "-1e-3"], ["lr=-0.001"]),
    (["--lr", "-.5"], ["lr=-0.5"]), (["--min-lr", "-1"], ["min_lr"]), (["--log-every", "0"], ["log_every", "0"]),
    (["--block-size", "0"], ["block_size", "0"]), (["--batch-size", "0"], ["batch_size"]),
    (["--batch-size", "1e9"], ["--batch-size", "1e9"]), (["--max-steps", "-5"], ["max_steps", "-5"]),
    (["--grad-clip", "-1"], ["grad_clip"]), (["--label-smoothing", "1.5"], ["label_smoothing"]),
    (["--betas", "0.9", "1.5"], ["betas"]), (["--precision", "fp8"], ["precision"]),
    (["--device", "cuda:99"], ["device", "cuda:99"]), (["--device", "gpu"], ["device", "gpu"]),
    (["--weight-decay", "inf"], ["weight_decay"]), (["--warmup-steps", "-1"], ["warmup_steps"]),
    (["--eval-every", "-2"], ["eval_every"])])
def test_bad_training_flags_are_one_line(world, corpus, capsys, flags, culprits):
    refused(capsys, train_argv(corpus, world.root / "run", *flags), *culprits)
    assert not (world.root / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_one_line(world, corpus, capsys):
    refused(capsys, train_argv(corpus, world.root / "run", "--device", "cuda"), "device='cuda'", "no CUDA GPU")


def test_batch_size_beyond_memory_is_refused_by_the_api_and_the_cli(world, corpus, capsys):
    refused(capsys, train_argv(corpus, world.root / "run", "--batch-size", "1000000000"), "batch_size=1000000000")
    c = TrainConfig(data=str(corpus), out_dir=str(world.root / "run"), batch_size=10**9, block_size=8,
                    progress=False)
    with pytest.raises(ValueError, match="batch_size=1000000000"):
        train(tiny_model(), c)


def test_max_tokens_beyond_memory_is_refused_for_translation(world, pairs, capsys):
    src, tgt = pairs
    refused(capsys, ["train", "--preset", "transformer-tiny", "--data", src, "--data-tgt", tgt, "--out-dir",
                     world.root / "run", "--max-tokens", "1000000000000", "--no-progress"], "max_tokens=1000000000000")


def test_a_config_file_claiming_a_million_layers_is_refused_before_building(world, corpus, capsys):
    cfg = world.root / "c.yaml"
    cfg.write_text("preset: gpt-char-tiny\nmodel:\n  n_layers: 1000000\n")
    refused(capsys, ["train", "--config", cfg, "--data", corpus, "--out-dir", world.root / "run", "--no-progress"],
            "n_layers=1000000")


def test_out_dir_that_is_a_file_is_one_line(world, corpus, capsys):
    f = world.root / "run.txt"
    f.write_text("not a folder")
    refused(capsys, train_argv(corpus, f), "out_dir", "is a file")


@pytest.mark.parametrize("which", ["--data", "--val-data"])
def test_data_that_is_a_folder_is_one_line(world, corpus, capsys, which):
    folder = world.root / "texts"
    folder.mkdir()
    argv = train_argv(corpus, world.root / "run")
    argv[argv.index("--data") + 1] = folder if which == "--data" else corpus
    if which == "--val-data":
        argv += ["--val-data", folder]
    refused(capsys, argv, str(folder))


@pytest.mark.parametrize("which", ["--data", "--val-data"])
def test_data_that_is_missing_is_one_line(world, corpus, capsys, which):
    argv = train_argv(corpus, world.root / "run") + ([which, world.root / "nope.txt"] if which != "--data" else [])
    if which == "--data":
        argv[argv.index("--data") + 1] = world.root / "nope.txt"
    refused(capsys, argv, "nope.txt")


def test_non_utf8_training_data_names_the_file_and_the_byte(world, capsys):
    bad = world.root / "latin1.txt"
    bad.write_bytes(("hello there, general kenobi\n" * 10).encode() + "caf\xe9\n".encode("latin-1"))
    line = refused(capsys, train_argv(bad, world.root / "run"), "latin1.txt", "byte offset 283")
    assert "UTF-8" in line


def test_val_data_without_its_target_side_names_the_right_flag(world, pairs, capsys):
    src, tgt = pairs
    line = refused(capsys, ["train", "--preset", "transformer-tiny", "--data", src, "--data-tgt", tgt, "--val-data",
                            src, "--out-dir", world.root / "run", "--no-progress"], "--val-data-tgt")
    assert "src=" not in line


def test_val_data_tgt_without_val_data_is_one_line(world, pairs, capsys):
    src, tgt = pairs
    refused(capsys, ["train", "--preset", "transformer-tiny", "--data", src, "--data-tgt", tgt, "--val-data-tgt",
                     tgt, "--out-dir", world.root / "run", "--no-progress"], "--val-data-tgt", "--val-data")


@pytest.mark.parametrize("content,suffix,words", [("{bad", ".json", "not valid JSON"), ("- a\n- b\n", ".yaml", "list"),
                                                  ("model: [1, 2]\n", ".yaml", "'model'"),
                                                  (b"train:\n  lr: \xff\n", ".yaml", "UTF-8"),
                                                  ("nope: 1\n", ".yaml", "unknown sections")])
def test_a_bad_config_file_is_named(world, corpus, capsys, content, suffix, words):
    cfg = world.root / f"c{suffix}"
    cfg.write_bytes(content if isinstance(content, bytes) else content.encode())
    refused(capsys, ["train", "--preset", "gpt-char-tiny", "--config", cfg, "--data", corpus, "--out-dir",
                     world.root / "run"], str(cfg), words)


def test_nan_in_a_query_gives_nan_on_the_fast_path_as_on_the_reference_path():
    from qkv.ops import attention
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g, dtype=torch.float64) for _ in range(3))
    q[1, 2, 4, 5] = float("nan")
    for causal in (False, True):
        fast = attention(q, k, v, causal=causal)
        ref, _ = attention(q, k, v, causal=causal, return_weights=True)
        assert torch.equal(fast.isnan(), ref.isnan()) and fast[1, 2, 4].isnan().all()
        torch.testing.assert_close(fast.nan_to_num(), ref.nan_to_num())


# -- resume / overwrite hints: each refusal's way out works, and no two refusals send the user in a circle ----------

def _follow_hints(capsys, argv: list) -> list[str]:
    """Run `qkv train ARGV`; while it is refused, do what its one line says (drop --resume, pass --resume, pass
    --overwrite instead of --resume) and run again. Returns the refusals met on the way to a run that trains."""
    from qkv.cli import main
    lines = []
    for _ in range(3):
        rc = main([str(a) for a in argv])
        err = capsys.readouterr().err
        if rc == 0:
            return lines
        line = next(ln for ln in err.splitlines() if ": error: " in ln)
        assert line not in lines, f"the hints go in a circle: {lines + [line]}"
        lines.append(line)
        if "drop --resume" in line:
            argv = [a for a in argv if a != "--resume"]
        elif "pass resume=True (--resume)" in line:
            argv = argv + ["--resume"]
        elif "pass overwrite=True (--overwrite" in line:
            assert "pass resume" not in line
            argv = [a for a in argv if a != "--resume"] + ["--overwrite"]
        else:
            pytest.fail(f"no way out named: {line}")
    pytest.fail(f"still refused after following {lines}")


@pytest.mark.parametrize("folder,flags,hints", [
    ("absent", ["--resume"], ["drop --resume"]),
    ("empty", ["--resume"], ["drop --resume"]),
    ("metrics only", [], ["no checkpoint to resume; pass overwrite=True (--overwrite) to start"]),
    ("metrics only", ["--resume"], ["instead of resume=True (--resume) to start a new run"]),
    ("checkpoints", [], ["pass resume=True (--resume) to continue it"]),
    ("damaged checkpoints", ["--resume"], ["no intact checkpoint"]),
    ("damaged checkpoints", [], ["pass resume=True (--resume)", "no intact checkpoint"]),  # hashes: on resume only
])
def test_every_resume_or_overwrite_refusal_names_a_way_that_works(world, lm_run, corpus, capsys, folder, flags,
                                                                 hints):
    """Before, `--resume` on a folder with no checkpoint said "drop --resume", and without it "pass --resume"."""
    run = world.root / "run"
    if folder in ("empty", "metrics only"):
        run.mkdir()
    if folder == "metrics only":  # a run stopped before its first checkpoint
        (run / "metrics.jsonl").write_text('{"step": 1, "train_loss": 3.0}\n')
    if "checkpoints" in folder:
        copy(lm_run, run)
    for c in ckpt.list_checkpoints(run) if folder == "damaged checkpoints" else []:
        flip_byte(c / "model.safetensors")
    lines = _follow_hints(capsys, train_argv(corpus, run, "--max-steps", "6", *flags))
    assert len(lines) == len(hints) and all(h in ln for h, ln in zip(hints, lines)), lines
    assert ckpt.latest_checkpoint(run).name == "step-0000006"
