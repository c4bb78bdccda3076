"""The qkv command and the demo, end to end on tiny runs: every subcommand explains itself, errors are one line,
and the demo writes everything it promises."""
import json

import pytest
import torch

from qkv.cli import COMMANDS, main

EXPECTED = {"train", "generate", "translate", "eval", "convert", "plot", "bench", "info", "demo", "explore"}


def test_every_subcommand_is_listed_and_explains_itself_with_an_example(capsys):
    assert EXPECTED <= set(COMMANDS)
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    top = capsys.readouterr().out
    for name in EXPECTED:
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
    result = run_demo(out, n_train=300, n_test=12, max_steps=4, progress=False, show=2, echo=lines.append)
    return out, result, lines


def test_the_demo_writes_checkpoint_curve_heatmaps_explorer_and_results(demo_run):
    out, result, lines = demo_run
    for name in ("train/latest", "train/loss.png", "cross_attention.png", "cross_attention_heads.png",
                 "explorer.html", "results.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    assert saved["n_test"] == result.n_test == 12
    assert 0.0 <= saved["exact_greedy"] <= 1.0 and 0.0 <= saved["exact_beam"] <= 1.0
    records = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert any("val_bleu" in r for r in records), "translation runs report BLEU at evaluations"
    report = "\n".join(lines)
    assert "reference:" in report and "greedy:" in report and "beam 4:" in report and "BLEU" in report
    html = (out / "explorer.html").read_text()
    assert '"cross"' in html and '"masked"' in html and "http://" not in html and "https://" not in html


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
    for kind in ("self", "masked", "cross"):
        assert (tmp_path / f"a_{kind}.png").is_file() and kind in names


def test_translate_refuses_a_language_model(tmp_path, capsys):
    import qkv
    from qkv.data import CharTokenizer
    model = qkv.build(qkv.preset("gpt2-tiny"))
    model.save(tmp_path / "m")
    CharTokenizer.train(iter(["abc"]), specials=()).save(tmp_path / "m" / "tokenizer")
    assert main(["translate", "--checkpoint", str(tmp_path / "m"), "--text", "a"]) == 2
    assert "encoder-decoder" in capsys.readouterr().err
