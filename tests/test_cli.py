"""The qkv command and the demo, end to end on tiny runs: every subcommand explains itself, errors are one line,
and the demo writes everything it promises."""
import json
import re

import pytest
import torch

from qkv.cli import COMMANDS, main

EXPECTED = {"train", "generate", "translate", "eval", "convert", "plot", "bench", "info", "demo", "explore", "tokenize"}


def test_every_subcommand_is_listed_and_explains_itself_with_an_example(capsys):
    assert EXPECTED <= set(COMMANDS)
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    top = capsys.readouterr().out
    for name in COMMANDS:  # a new command is checked as soon as it is in the table
        assert name in top
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert "example:" in text and f"qkv {name}" in text


def test_an_error_is_one_line_with_a_nonzero_status(capsys):
    assert main(["info", "--preset", "no-such-model"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("qkv info: error:") and "no-such-model" in err and "gpt2" in err
    assert "Traceback" not in err


def test_debug_shows_the_traceback():
    with pytest.raises(ValueError, match="unknown preset"):
        main(["info", "--preset", "no-such-model", "--debug"])


def test_info_counts_gpt2_parameters(capsys):
    assert main(["info", "--preset", "gpt2"]) == 0
    # GPT-2 small: 124,439,808 parameters with the output layer tied to the token embeddings
    assert "124,439,808" in capsys.readouterr().out


def test_convert_round_trip_through_hugging_face(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=32)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "qkv")]) == 0
    assert main(["convert", "--checkpoint", str(tmp_path / "qkv"), "--to-hf", "--out", str(tmp_path / "back")]) == 0
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, hf(ids).logits, rtol=0, atol=1e-5)


def test_train_then_generate_eval_and_plot_a_language_model(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("to be, or not to be, that is the question.\n" * 40)
    run = tmp_path / "run"
    assert main(["train", "--preset", "gpt-char-tiny", "--data", str(text), "--max-steps", "3", "--eval-every", "3",
                 "--eval-steps", "1", "--block-size", "16", "--batch-size", "2", "--out-dir", str(run),
                 "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3 and (run / "metrics.jsonl").is_file()
    assert main(["generate", "--checkpoint", str(run), "--prompt", "to be", "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("to be") and len(out.rstrip("\n")) == len("to be") + 5
    assert main(["generate", "--checkpoint", str(run), "--prompt", "to be", "--max-new-tokens", "5",
                 "--compile"]) == 0
    assert capsys.readouterr().out == out  # compiled decoding prints the same text
    # past the 64 learned positions the context slides, said on stderr (tests/test_sliding_context.py: exact)
    assert main(["generate", "--checkpoint", str(run), "--prompt", "to be", "--max-new-tokens", "70"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.rstrip("\n")) == len("to be") + 70
    assert "qkv generate: the context slides past the model's 64 learned positions: new tokens from the 61st on " \
           "are predicted from the last 64 tokens" in captured.err
    # speculative decoding (the model as its own draft) says what it did and, with --show-scores, how it compares
    assert main(["generate", "--checkpoint", str(run), "--prompt", "to be", "--max-new-tokens", "70", "--draft",
                 str(run), "--num-draft-tokens", "4", "--show-scores"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(out.rstrip("\n")) and captured.out.count("\t") == 1
    assert re.search(r"speculative decoding accepted (\d+) of \1 guessed tokens \(100\.0%\): 70 tokens in \d+ "
                     r"passes .*; the last 10 past its learned positions", captured.err), captured.err
    assert re.search(r"tokens/s speculative vs [\d.]+ tokens/s plain decoding of the same prompt \([\d.]+x\); the "
                     r"same tokens: yes", captured.err), captured.err
    # an error once the prompt is echoed: the echoed line is ended, so the error line on stderr stands alone
    assert main(["generate", "--checkpoint", str(run), "--prompt", "to be", "--max-new-tokens", "10000000000"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "to be\n" and "max_new_tokens=10000000000" in captured.err
    assert main(["eval", "--checkpoint", str(run), "--data", str(text), "--block-size", "16",
                 "--max-batches", "1"]) == 0
    assert "perplexity" in capsys.readouterr().out
    png = tmp_path / "attn.png"
    assert main(["plot", "attention", "--checkpoint", str(run), "--text", "to be", "--out", str(png), "--html"]) == 0
    assert png.stat().st_size > 0 and png.with_suffix(".html").is_file()
    assert main(["plot", "curves", "--checkpoint", str(run), "--out", str(tmp_path / "curve.png")]) == 0


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from qkv.demo import run_demo
    out = tmp_path_factory.mktemp("demo")
    lines = []
    result = run_demo(out, n_train=300, n_test=12, n_fresh=6, n_examples=3, max_steps=4, progress=False, show=2,
                      echo=lines.append)
    return out, result, lines


def test_the_demo_writes_checkpoint_curve_heatmaps_explorer_and_results(demo_run):
    out, result, lines = demo_run
    for name in ("train/latest", "train/loss.png", "cross_attention.png", "cross_attention_heads.png",
                 "explorer.html", "results.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["n_test"] == result.n_test == 12
    assert 0.0 <= saved["exact_greedy"] <= 1.0 and 0.0 <= saved["exact_beam"] <= 1.0
    # per kind, accented references apart, and numbers drawn afresh: every group counted once
    kinds = saved["by_kind"]
    assert sum(kinds[k]["n"] for k in ("number", "date", "phrase") if k in kinds) == 12
    assert kinds.get("accented", {"n": 0})["n"] + kinds["plain"]["n"] == 12
    assert saved["fresh"]["numbers"]["n"] == saved["fresh"]["numbers_uniform"]["n"] == 6
    records = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert any("val_bleu" in r and "val_exact" in r for r in records), "the quality curves' points"
    assert all("train_nll" not in r for r in records)  # no label smoothing: train_loss is val_loss's measure
    train_config = json.loads((out / "train" / "train_config.json").read_text())
    assert train_config["tokenizer_type"] == "bpe"  # the run's config says which tokenizer it trained
    report = "\n".join(lines)
    assert "reference:" in report and "greedy:" in report and "beam 4:" in report and "BLEU" in report
    assert "plain:" in report and "fresh numbers never seen in training" in report
    html = (out / "explorer.html").read_text()
    assert '"cross"' in html and '"masked"' in html and "http://" not in html and "https://" not in html
    data = json.loads(re.search(r'id="qkv-data">(.*?)</script>', html, re.S).group(1))
    assert len(data["examples"]) >= 3 and all(e["beam"]["steps"] for e in data["examples"])
    assert {e["label"].split(":")[0] for e in data["examples"]} >= {"number", "date", "phrase"}


def test_running_the_demo_again_on_a_finished_run_reuses_it(demo_run, monkeypatch):
    from qkv import data as qd
    from qkv import train as qtrain
    from qkv.demo import run_demo
    out, first, _ = demo_run
    weights = sorted((out / "train").rglob("model.safetensors"))
    stamps = [(p, p.stat().st_mtime_ns) for p in weights]
    monkeypatch.setattr(qd, "train_bpe", lambda *a, **k: pytest.fail("a finished run's tokenizer was retrained"))
    monkeypatch.setattr(qtrain, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    lines = []
    again = run_demo(out, n_train=300, n_test=12, n_fresh=6, n_examples=3, max_steps=4, progress=False, show=2,
                     echo=lines.append)
    assert again.reused and "evaluating it again, no training" in "\n".join(lines)
    assert (again.exact_greedy, again.exact_beam, again.by_kind) == (first.exact_greedy, first.exact_beam,
                                                                    first.by_kind)
    assert [(p, p.stat().st_mtime_ns) for p in weights] == stamps


def test_an_interrupted_demo_resumes_with_the_tokenizer_saved_in_its_checkpoint(tmp_path, monkeypatch):
    from qkv import checkpoint as ckpt
    from qkv import data as qd
    from qkv.demo import run_demo
    kw = dict(n_train=200, n_test=6, n_fresh=4, n_examples=1, progress=False, show=0, echo=lambda *a: None)
    run_demo(tmp_path, max_steps=3, **kw)
    saved = qd.Tokenizer.load(ckpt.latest_checkpoint(tmp_path / "train") / "tokenizer")
    monkeypatch.setattr(qd, "train_bpe", lambda *a, **k: pytest.fail("a resumed run retrained its tokenizer"))
    lines = []
    result = run_demo(tmp_path, max_steps=6, **{**kw, "echo": lines.append})
    assert result.steps == 6 and not result.reused and "resuming the interrupted run" in "\n".join(lines)
    latest = ckpt.latest_checkpoint(tmp_path / "train")
    assert latest.name == ckpt.checkpoint_name(6)
    assert qd.Tokenizer.load(latest / "tokenizer").fingerprint() == saved.fingerprint()
    # a finished run made with other settings (an older demo) is evaluated as it is, and the report says so
    import qkv.demo
    monkeypatch.setattr(qkv.demo, "DEMO_TRAIN", {**qkv.demo.DEMO_TRAIN, "label_smoothing": 0.1})
    lines.clear()
    assert run_demo(tmp_path, max_steps=6, **{**kw, "echo": lines.append}).reused
    assert "trained with other settings" in "\n".join(lines) and "label_smoothing" in "\n".join(lines)


def test_the_readme_demo_on_own_files_without_validation_holds_out_trains_and_reports(tmp_path, capsys):
    from qkv.data import generate_pairs, write_pairs
    write_pairs(generate_pairs(160, seed=3), tmp_path / "my.en", tmp_path / "my.es")
    args = ["demo", "--out", str(tmp_path / "run"), "--src", str(tmp_path / "my.en"), "--tgt",
            str(tmp_path / "my.es"), "--max-steps", "3", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "held out" in out and "exact match greedy" in out and "BLEU" in out
    held = (tmp_path / "run" / "data" / "test.en").read_text().splitlines()
    trained = set((tmp_path / "run" / "data" / "train.en").read_text().splitlines())
    assert held and not set(held) & trained  # held out, never trained on
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["n_test"] == len(held) and saved["bleu_greedy"] is not None and saved["fresh"] == {}
    assert main(args) == 0  # again, on the finished run: the results again, no crash, no training
    again = capsys.readouterr().out
    assert "evaluating it again, no training" in again and "exact match greedy" in again
    assert "training a" not in again


def test_the_demo_refuses_half_given_files_in_one_line(tmp_path, capsys):
    (tmp_path / "a.en").write_text("one\n")
    assert main(["demo", "--out", str(tmp_path / "r"), "--src", str(tmp_path / "a.en")]) == 1
    assert "both --src and --tgt" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "r"), "--src", str(tmp_path / "a.en"), "--tgt",
                 str(tmp_path / "missing.es")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing.es" in err


def test_the_demo_checkpoint_translates_evaluates_and_plots(demo_run, tmp_path, capsys):
    out, _, _ = demo_run
    assert main(["translate", "--checkpoint", str(out), "--text", "three", "--text", "forty-two",
                 "--max-new-tokens", "5"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["translate", "--checkpoint", str(out), "--text", "three", "--num-beams", "1",
                 "--max-new-tokens", "5"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    data = out / "data"
    assert main(["eval", "--checkpoint", str(out), "--data", str(data / "test.en"), "--tgt",
                 str(data / "test.es")]) == 0
    assert "exact match" in capsys.readouterr().out
    png = tmp_path / "a.png"
    assert main(["plot", "attention", "--checkpoint", str(out), "--src", "three hundred", "--out", str(png)]) == 0
    names = capsys.readouterr().out
    assert png.is_file() and not list(tmp_path.glob("a_*"))  # the one file --out names holds every kind
    for kind in ("self", "masked", "cross"):
        assert kind in names


def test_translate_refuses_a_language_model(tmp_path, capsys):
    import qkv
    from qkv.data import CharTokenizer
    model = qkv.build(qkv.preset("gpt2-tiny"))
    model.save(tmp_path / "m")
    CharTokenizer.train(iter(["abc"]), specials=()).save(tmp_path / "m" / "tokenizer")
    assert main(["translate", "--checkpoint", str(tmp_path / "m"), "--text", "a"]) == 2
    assert "encoder-decoder" in capsys.readouterr().err


def test_a_value_that_is_not_utf8_is_one_line_naming_its_flag(capsys):
    # bytes that are not UTF-8 reach Python's argv as lone surrogates ("caf\xe9" in Latin-1 -> "caf\udce9")
    assert main(["info", "--preset", "caf\udce9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "qkv info: error: --preset: byte e9 at character 3 is not valid UTF-8; expected UTF-8 text"
