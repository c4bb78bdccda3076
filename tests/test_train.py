"""The training loop: loss definitions, schedules, config and flags, checkpoints, exact resume, bad input,
the seq2seq path, and several processes (gloo, 2 CPU processes) following one process's loss curve."""
import argparse
import json
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

import qkv
from qkv import checkpoint as ckpt
from qkv.config import (ModelConfig, TrainConfig, add_dataclass_arguments, dataclass_from_args, field_help,
                        load_config_file)
from qkv.models.common import QKVModel
from qkv.tasks import ImageLoss, MaskedLMLoss, label_smoothed_nll, shard_rows
from qkv.train import NonFiniteLossError, learning_rate, train, transformer_lr

# A small play-shaped corpus of our own (speaker lines, blank lines, punctuation), repeated.
TEXT = ("Second Keeper:\nBring the lamps in before the rain comes down.\n\nAll:\nThe rain, the rain.\n\n"
        "Second Keeper:\nAre the boats all tied and the doors all shut?\n\n") * 12


def tiny(**kw):
    kw.setdefault("vocab_size", len(set(TEXT)))  # the character tokenizer trained on TEXT
    return qkv.preset("gpt-char-tiny", n_layers=1, d_model=32, n_heads=2, max_positions=16, **kw)


def cfg_for(tmp_path, data, **kw):
    # float32 unless a test says otherwise: exact comparisons across runs, processes and compilation
    base = dict(data=str(data), out_dir=str(tmp_path / "run"), max_steps=6, batch_size=4, block_size=16,
                warmup_steps=2, eval_every=3, eval_steps=2, log_every=1, progress=False, seed=7, precision="fp32")
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "input.txt"
    p.write_text(TEXT)
    return p


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# -- the loss ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_equals_torch_cross_entropy(eps):
    logits = torch.randn(3, 7, 11, dtype=torch.float64)
    targets = torch.randint(11, (3, 7))
    targets[0, :3] = -100
    ours = label_smoothed_nll(logits, targets, eps)
    ref = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), label_smoothing=eps, ignore_index=-100)
    torch.testing.assert_close(ours, ref.float(), rtol=1e-6, atol=1e-6)
    assert label_smoothed_nll(logits, targets, eps, reduction="none")[0, :3].eq(0).all()


def test_label_smoothing_is_kl_to_smoothed_targets_plus_their_entropy():
    V, eps = 13, 0.2
    logits = torch.randn(5, V, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(V, (5,))
    q = torch.full((5, V), eps / V, dtype=torch.float64)
    q[torch.arange(5), targets] += 1 - eps
    logp = F.log_softmax(logits, -1)
    kl = (q * (q.log() - logp)).sum(-1)  # KL(q || p) per target
    entropy = -(q * q.log()).sum(-1)  # H(q): the same constant for every target
    ours = label_smoothed_nll(logits, targets, eps, reduction="none")
    torch.testing.assert_close(ours.double(), kl + entropy)
    # the constant has no gradient: the smoothed loss and the KL pull the logits the same way
    g1, = torch.autograd.grad(ours.sum(), logits)
    g2, = torch.autograd.grad(kl.sum(), logits)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6)


def test_mlm_and_image_losses_count_only_their_targets():
    class StandInEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.out = nn.Embedding(10, 8), nn.Linear(8, 10)

        def forward(self, ids, mask):
            return self.emb(ids)

        def mlm_logits(self, h):
            return self.out(h)
    from qkv.data import MLMBatch
    ids = torch.randint(10, (2, 5))
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[1, 3] = 4, 7
    s = MaskedLMLoss(StandInEncoder())(MLMBatch(ids, torch.ones(2, 5, dtype=torch.bool), labels))
    assert int(s.count) == 2
    vit = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    s = ImageLoss(vit)((torch.randn(6, 3, 4, 4), torch.randint(5, (6,))))
    assert int(s.count) == 6 and torch.isfinite(s.loss)


def test_shard_rows_splits_the_global_batch_in_order():
    x, y = torch.arange(10).reshape(5, 2), torch.arange(10).reshape(5, 2)
    parts = [shard_rows((x, y), r, 2) for r in range(2)]
    assert torch.equal(torch.cat([p[0][0] for p in parts]), x) and all(w == 1.0 for _, w in parts)
    one_row = [shard_rows((x[:1], y[:1]), r, 2) for r in range(2)]  # a rank left without rows gets a placeholder
    assert sorted(w for _, w in one_row) == [0.0, 1.0] and all(b[0].shape[0] == 1 for b, _ in one_row)


# -- schedules and config ----------------------------------------------------------------------------------------

def test_schedules_warm_up_then_decay():
    c = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    assert learning_rate(5, c) == pytest.approx(5e-4)
    assert learning_rate(10, c) == pytest.approx(1e-3)
    assert learning_rate(60, c) == pytest.approx(5.5e-4)  # half way down the cosine
    assert learning_rate(110, c) == pytest.approx(1e-4)
    assert learning_rate(5, c.replace(schedule="constant")) == pytest.approx(5e-4)
    assert learning_rate(99, c.replace(schedule="constant")) == pytest.approx(1e-3)


def test_inverse_sqrt_is_the_original_transformer_schedule():
    d, w = 512, 4000
    c = TrainConfig(schedule="inverse_sqrt", warmup_steps=w, lr=(d * w) ** -0.5, min_lr=0.0, max_steps=100000)
    for step in (1, 100, 3999, 4000, 4001, 20000, 100000):
        assert learning_rate(step, c) == pytest.approx(transformer_lr(step, d, w), rel=1e-12)


@pytest.mark.parametrize("field,value,words", [("schedule", "linear", "schedule must be one of"),
                                               ("precision", "fp8", "precision must be one of"),
                                               ("betas", (0.9,), "betas must be two numbers"),
                                               ("max_steps", 0, "max_steps must be a positive int"),
                                               ("label_smoothing", 1.0, "label_smoothing must be in")])
def test_train_config_rejects_bad_values_by_name(field, value, words):
    with pytest.raises(ValueError, match=words):
        TrainConfig(**{field: value})


def test_flags_come_from_the_dataclass_comments(tmp_path):
    p = argparse.ArgumentParser()
    add_dataclass_arguments(p, TrainConfig, defaults_to_none=True)
    assert "optimizer steps to train for" in p.format_help()
    assert field_help(TrainConfig)["max_steps"] == "optimizer steps to train for"
    args = p.parse_args(["--max-steps", "5", "--betas", "0.8", "0.9", "--no-progress", "--lr", "3e-4"])
    file = tmp_path / "c.yaml"
    file.write_text("train:\n  max_steps: 100\n  batch_size: 3\n")
    c = dataclass_from_args(TrainConfig, args, load_config_file(file)["train"])
    assert (c.max_steps, c.batch_size, c.betas, c.progress, c.lr) == (5, 3, (0.8, 0.9), False, 3e-4)
    (tmp_path / "c.json").write_text(json.dumps({"max_steps": 4}))
    assert TrainConfig.from_dict(load_config_file(tmp_path / "c.json")).max_steps == 4
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"max_step": 3})


# -- the LM loop, checkpoints, exact resume --------------------------------------------------------------------

def test_lm_training_lowers_the_loss_and_writes_its_outputs(tmp_path, corpus):
    s = train(tiny(), cfg_for(tmp_path, corpus, max_steps=12, eval_every=6, lr=3e-3))
    out = tmp_path / "run"
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.3
    assert {"val_loss", "val_ppl", "val_acc", "lr", "tokens_per_s"} <= set(rows[5])
    assert s.val_ppl == pytest.approx(math.exp(s.val_loss))
    assert (out / "loss.png").stat().st_size > 0
    assert ckpt.latest_checkpoint(out).name == "step-0000012"
    model = qkv.load(s.checkpoint)  # a checkpoint is a plain qkv model folder with its tokenizer
    from qkv.data import Tokenizer
    tok = Tokenizer.load(out / "checkpoints/step-0000012/tokenizer")
    assert model.config.vocab_size == tok.vocab_size == len(set(TEXT))
    assert ckpt.read_best(out)["val_loss"] == pytest.approx(s.best_val_loss)


def _weights(path):
    from safetensors.torch import load_file
    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_resume_gives_bit_identical_weights(tmp_path, corpus, precision):
    # dropout on, so the restored RNG state matters; accumulation, so the data position matters; fp16, so the
    # gradient scaler's state (scale and growth tracker; a resume that dropped it would end with tracker 4, not 8)
    mc = tiny(dropout=0.1)
    kw = dict(max_steps=8, eval_every=4, grad_accum=2, precision=precision)
    full = train(mc, cfg_for(tmp_path / "a", corpus, **kw))
    torch.manual_seed(7)  # the seed train() builds with, so both runs start from the same weights
    model, calls = qkv.build(mc), {"n": 0}

    def kill_at_step_6(module, args):  # the process dies mid-run, after the step-4 checkpoint
        calls["n"] += module.training
        if calls["n"] > 10:
            raise KeyboardInterrupt
    model.register_forward_pre_hook(kill_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        train(mc, cfg_for(tmp_path / "b", corpus, **kw), model=model)
    assert ckpt.latest_checkpoint(tmp_path / "b/run").name == "step-0000004"
    resumed = train(mc, cfg_for(tmp_path / "b", corpus, **kw, resume=True))
    a, b = _weights(tmp_path / "a/run/checkpoints/step-0000008"), _weights(tmp_path / "b/run/checkpoints/step-0000008")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa = ckpt.load_trainer_state(tmp_path / "a/run/checkpoints/step-0000008")["optimizer"]["state"]
    sb = ckpt.load_trainer_state(tmp_path / "b/run/checkpoints/step-0000008")["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    scaler = [ckpt.load_trainer_state(tmp_path / f"{r}/run/checkpoints/step-0000008")["scaler"] for r in "ab"]
    assert scaler[0] == scaler[1]
    assert (precision == "fp16") == bool(scaler[0])  # a disabled scaler saves an empty state
    assert resumed.train_loss == full.train_loss
    assert [r["step"] for r in metrics(tmp_path / "b/run")] == list(range(1, 9))


def test_compiled_training_follows_the_eager_loss_curve(tmp_path, corpus):
    kw = dict(max_steps=3, eval_every=3, log_every=1)
    eager = train(tiny(), cfg_for(tmp_path / "eager", corpus, **kw))
    compiled = train(tiny(), cfg_for(tmp_path / "compiled", corpus, compile=True, **kw))
    a, b = metrics(tmp_path / "eager/run"), metrics(tmp_path / "compiled/run")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):  # fused kernels reorder float32 sums: close, not equal
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], abs=1e-4)
    assert compiled.val_loss == pytest.approx(eager.val_loss, abs=1e-4)


def test_blocks_that_fail_to_compile_train_eagerly_with_the_eager_losses(tmp_path, corpus, monkeypatch):
    import qkv.train.compiling as compiling

    def broken_compile(fn, **kw):
        def call(*a, **k):
            raise RuntimeError("no C++ compiler")
        return call
    kw = dict(max_steps=3, eval_every=3, log_every=1)
    eager = train(tiny(), cfg_for(tmp_path / "eager", corpus, **kw))
    monkeypatch.setattr(compiling.torch, "compile", broken_compile)
    fell_back = train(tiny(), cfg_for(tmp_path / "broken", corpus, compile=True, **kw))
    assert [r["train_loss"] for r in metrics(tmp_path / "broken/run")] == \
        [r["train_loss"] for r in metrics(tmp_path / "eager/run")]
    assert fell_back.val_loss == eager.val_loss


def test_auto_compile_only_for_long_fixed_shape_runs_on_one_process():
    from qkv.train.compiling import COMPILE_MIN_STEPS, compiler_available, resolve_compile
    cpu = torch.device("cpu")
    kw = dict(fixed_shapes=True, device=cpu, world=1)
    assert resolve_compile(None, max_steps=COMPILE_MIN_STEPS - 1, **kw) is False
    assert resolve_compile(None, max_steps=COMPILE_MIN_STEPS, **kw) is compiler_available(cpu)
    assert resolve_compile(None, max_steps=10 ** 6, fixed_shapes=False, device=cpu, world=1) is False
    assert resolve_compile(None, max_steps=10 ** 6, fixed_shapes=True, device=cpu, world=2) is False
    assert resolve_compile(True, max_steps=1, fixed_shapes=False, device=cpu, world=2) is True
    assert resolve_compile(False, max_steps=10 ** 6, **kw) is False


def test_a_crash_while_saving_keeps_the_last_good_checkpoint(tmp_path, corpus, monkeypatch):
    import errno
    import safetensors.torch
    c = cfg_for(tmp_path, corpus, max_steps=6, eval_every=3)
    real_save, calls = safetensors.torch.save_file, []

    def failing_save(tensors, f, *a, **k):  # the second checkpoint's trainer state, written after its weights
        if str(f).endswith(ckpt.STATE_TENSORS):
            calls.append(f)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")
        return real_save(tensors, f, *a, **k)
    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(OSError, match="No space left"):
        train(tiny(), c)
    out = tmp_path / "run"
    good = ckpt.latest_checkpoint(out)
    assert good.name == "step-0000003"
    assert ckpt.load_trainer_state(good)["step"] == 3 and qkv.load(good) is not None
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)
    s = train(tiny(), c.replace(resume=True))  # the half-written folder is cleaned up and the run finishes
    assert s.steps == 6 and not list((out / "checkpoints").glob(".tmp-*"))


def test_a_non_finite_loss_stops_and_names_the_step(tmp_path, corpus):
    model = qkv.build(tiny())
    calls = {"n": 0}

    def poison(module, args, output):
        if module.training:
            calls["n"] += 1
            if calls["n"] >= 5:
                return output * float("nan")
    model.register_forward_hook(poison)
    with pytest.raises(NonFiniteLossError, match="at step 5.*step-0000003"):
        train(tiny(), cfg_for(tmp_path, corpus, max_steps=8, eval_every=3), model=model)
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "step-0000003"


# -- bad input --------------------------------------------------------------------------------------------------

def test_bad_data_is_reported_before_anything_is_written(tmp_path, corpus):
    with pytest.raises(FileNotFoundError, match="no such file"):
        train(tiny(), cfg_for(tmp_path, tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        train(tiny(), cfg_for(tmp_path, empty))
    short = tmp_path / "short.txt"
    short.write_text("hello there\n")
    with pytest.raises(ValueError, match="block_size=16"):
        train(tiny(), cfg_for(tmp_path, short))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resume_refuses_other_architectures_and_incompatible_configs(tmp_path, corpus):
    c = cfg_for(tmp_path, corpus, max_steps=3)
    train(tiny(), c)
    with pytest.raises(ValueError, match="already holds a run"):
        train(tiny(), c)
    with pytest.raises(ValueError, match=r"batch_size: 8 \(this run\) != 4"):
        train(tiny(), c.replace(resume=True, batch_size=8, max_steps=6))
    with pytest.raises(ValueError, match=r"another architecture(.|\n)*n_layers: 2 \(this run\) != 1"):
        train(qkv.preset("gpt-char-tiny", n_layers=2, d_model=32, n_heads=2, max_positions=16,
                         vocab_size=len(set(TEXT))),
              c.replace(resume=True, max_steps=6))
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "step-0000003"


# -- seq2seq -----------------------------------------------------------------------------------------------------

class StandInSeq2Seq(QKVModel):
    """A minimal encoder-decoder with the family's forward contract (mean-pooled source + causal GRU decoder),
    standing in until qkv's EncoderDecoder is merged."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.emb = nn.Embedding(config.vocab_size, config.d_model)
        self.rnn = nn.GRU(config.d_model, config.d_model, batch_first=True)
        self.out = nn.Linear(config.d_model, config.vocab_size)

    def forward(self, input_ids, decoder_input_ids, attention_mask=None, *, decoder_attention_mask=None):
        m = attention_mask.float()[..., None]
        memory = (self.emb(input_ids) * m).sum(1) / m.sum(1)  # (B, d)
        h, _ = self.rnn(self.emb(decoder_input_ids), memory[None].contiguous())
        return self.out(h)  # (B, T, V)


def _pairs(tmp_path):
    from qkv.data import generate_pairs, write_pairs
    pairs = list(generate_pairs(60, seed=0)) if "seed" in generate_pairs.__code__.co_varnames else None
    if pairs is None:
        pairs = [(f"{i} plus one", f"{i + 1} mas uno") for i in range(60)]
    p = tmp_path / "pairs.tsv"
    p.write_text("".join(f"{s}\t{t}\n" for s, t in pairs))
    return p


def test_seq2seq_path_trains_with_teacher_forcing(tmp_path):
    tsv = _pairs(tmp_path)
    mc = qkv.preset("transformer-tiny", d_model=32, n_heads=2, n_layers=1, d_ff=64, max_positions=64)
    c = cfg_for(tmp_path, tsv, val_data=str(tsv), max_steps=10, eval_every=5, max_tokens=400, lr=1e-2,
                label_smoothing=0.1)
    from qkv.models import FAMILIES
    model = None if "encoder_decoder" in FAMILIES else StandInSeq2Seq(
        mc.replace(vocab_size=len(set(tsv.read_text().replace("\t", "").replace("\n", ""))) + 7))
    from qkv.data import CharTokenizer, read_pairs
    tok = CharTokenizer.train(iter([s + t for s, t in read_pairs(tsv)]))
    if model is not None:
        model = StandInSeq2Seq(mc.replace(vocab_size=tok.vocab_size))
    s = train(mc, c, model=model, tokenizer=tok)
    rows = metrics(tmp_path / "run")
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert s.val_loss is not None and 0.0 <= s.val_acc <= 1.0
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "step-0000010"


# -- several processes ---------------------------------------------------------------------------------------------

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, cfg_dict, mc_dict, die_after=None):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    mc, model = ModelConfig.from_dict(mc_dict), None
    if die_after is not None:  # every process dies at the same training forward, as a killed job would
        torch.manual_seed(TrainConfig.from_dict(cfg_dict).seed)  # the weights train() would build
        model, calls = qkv.build(mc), {"n": 0}

        def die(module, args):
            calls["n"] += module.training
            if calls["n"] > die_after:
                raise SystemExit(3)
        model.register_forward_pre_hook(die)
    train(mc, TrainConfig.from_dict(cfg_dict), model=model)


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_two_processes_follow_the_one_process_loss_curve(tmp_path, corpus, fsdp):
    mc = tiny()
    kw = dict(max_steps=4, eval_every=4, grad_accum=2, keep_last=1)
    one = cfg_for(tmp_path / "one", corpus, **kw)
    train(mc, one)
    two = cfg_for(tmp_path / "two", corpus, fsdp=fsdp, **kw)
    mp.spawn(_worker, args=(2, _free_port(), two.to_dict(), mc.to_dict()), nprocs=2, join=True)
    a, b = metrics(tmp_path / "one/run"), metrics(tmp_path / "two/run")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], abs=1e-5)
    assert b[-1]["val_loss"] == pytest.approx(a[-1]["val_loss"], abs=1e-5)
    wa, wb = _weights(tmp_path / "one/run/checkpoints/step-0000004"), _weights(tmp_path / "two/run/checkpoints/step-0000004")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_fsdp_resume_gives_the_uninterrupted_weights(tmp_path, corpus):
    """Two FSDP processes killed after the step-2 checkpoint and resumed end where an uninterrupted run ends:
    the full weights gathered from the shards, and the sharded optimizer state, saved and loaded."""
    mc = tiny(dropout=0.1)
    kw = dict(max_steps=4, eval_every=2, grad_accum=2, fsdp=True)
    whole, cut = cfg_for(tmp_path / "whole", corpus, **kw), cfg_for(tmp_path / "cut", corpus, **kw)
    mp.spawn(_worker, args=(2, _free_port(), whole.to_dict(), mc.to_dict()), nprocs=2, join=True)
    with pytest.raises(mp.ProcessExitedException):
        mp.spawn(_worker, args=(2, _free_port(), cut.to_dict(), mc.to_dict(), 6), nprocs=2, join=True)
    assert ckpt.latest_checkpoint(tmp_path / "cut/run").name == "step-0000002"
    resumed = TrainConfig.from_dict({**cut.to_dict(), "resume": True})
    mp.spawn(_worker, args=(2, _free_port(), resumed.to_dict(), mc.to_dict()), nprocs=2, join=True)
    a = _weights(tmp_path / "whole/run/checkpoints/step-0000004")
    b = _weights(tmp_path / "cut/run/checkpoints/step-0000004")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la, lb = metrics(tmp_path / "whole/run"), metrics(tmp_path / "cut/run")
    assert [r["step"] for r in lb] == [1, 2, 3, 4] and lb[-1]["train_loss"] == la[-1]["train_loss"]


def test_the_torchrun_entry_builds_configs_from_flags(tmp_path, corpus):
    from qkv.train import main
    s = main(["--preset", "gpt-char-tiny", "--data", str(corpus), "--out-dir", str(tmp_path / "run"),
              "--max-steps", "2", "--batch-size", "2", "--block-size", "16", "--eval-steps", "1",
              "--precision", "bf16", "--no-progress"])
    assert s.steps == 2 and math.isfinite(s.val_loss)
    assert json.loads((tmp_path / "run/config.json").read_text())["vocab_size"] == len(set(TEXT))


@pytest.mark.parametrize("argv, status, named", [
    (["--lr", "-1e-3"], 2, "--lr -0.001: need lr > 0"),  # a bad value, its flag named
    (["--presett", "x"], 2, "unrecognized arguments: --presett x"),  # argparse's own errors are one line too
    (["--data", "no/such/file.txt"], 1, "data='no/such/file.txt': no such file"),  # the run refuses it
])
def test_the_torchrun_entry_reports_bad_input_in_one_line_like_qkv_train(tmp_path, capsys, argv, status, named):
    from qkv.train import main
    base = ["--preset", "gpt-char-tiny", "--data", str(tmp_path / "absent.txt"), "--out-dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exit_:
        main(base + argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == status and err.startswith("qkv train: error: ") and named in err
    assert "\n" not in err and "Traceback" not in err


# -- the tokenizer a run trains by default, and what its log compares ---------------------------------------------

def test_translation_trains_a_shared_bpe_by_default_and_the_run_config_says_so(tmp_path):
    pairs = [("él compró tres árboles", "he bought three trees"), ("¿Qué? ¡Sí!", "What? Yes!"),
             ("Mañana, 12 niños", "Tomorrow, 12 children")] * 8
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    mc = qkv.preset("transformer-tiny", d_model=32, n_heads=2, n_layers=1, d_ff=64, max_positions=64)
    c = cfg_for(tmp_path, tsv, max_steps=2, eval_every=0, max_tokens=400, label_smoothing=0.1)
    train(mc, c)
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["tokenizer_type"] == "bpe"
    tok = qkv.data.Tokenizer.load(tmp_path / "run" / "tokenizer")
    for s, t in pairs:  # text is data: every side comes back exactly, accents, ñ, ¿ ¡ and capitals included
        assert tok.decode(tok.encode(s)) == s and tok.decode(tok.encode(t)) == t
    rows = metrics(tmp_path / "run")
    # label smoothing: the optimised train_loss is not val_loss's measure, so the plain cross-entropy is logged too
    assert all(math.isfinite(r["train_nll"]) and r["train_nll"] != r["train_loss"] for r in rows)


def test_language_models_keep_the_character_vocabulary_and_log_no_train_nll_without_smoothing(tmp_path, corpus):
    train(tiny(), cfg_for(tmp_path, corpus, max_steps=2, eval_every=0))
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["tokenizer_type"] == "char"
    assert all("train_nll" not in r for r in metrics(tmp_path / "run"))
    with pytest.raises(ValueError, match="tokenizer_type"):
        TrainConfig(tokenizer_type="sentencepiece")


# -- start-up ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gpt-char-tiny", "transformer-tiny", "vit-tiny"])
def test_the_memory_check_counts_parameters_without_building_or_initialising(name):
    from qkv.models.sizing import model_bytes
    counted, _ = model_bytes(qkv.preset(name))  # parameters and buffers (position tables) alike
    model = qkv.build(qkv.preset(name))
    assert counted == sum({id(t): t.numel() for t in (*model.parameters(), *model.buffers())}.values())


@pytest.mark.parametrize("call", [
    "from qkv.models.sizing import model_bytes; model_bytes(qkv.preset('gpt-char-tiny'))",
    "m = qkv.build(qkv.preset('gpt-char-tiny')); m.save(sys.argv[1]); qkv.load(sys.argv[1])",
])
def test_the_memory_check_and_loading_do_not_import_the_compiler(call, tmp_path):
    # a random init on the meta device imports torch._dynamo (seconds at every `qkv train` or `qkv.load`), and
    # eager steps run slower once it is imported
    import subprocess
    import sys
    code = f"import sys, qkv; {call}; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "model")], capture_output=True, text=True,
                         check=True,
                         env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))})
    assert out.stdout.strip() == "False"
