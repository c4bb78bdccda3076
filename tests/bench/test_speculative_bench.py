"""bench/speculative.py, smoke-tested tiny on a made-up corpus: it trains a pair, saves and reads it back with its
recipe, decodes by every method with the identical-output assertion, and prints the table; a prompt and
continuation longer than the training window (untrained positions) are refused. No timing is asserted."""
import json

import pytest

from . import load_bench, word_corpus


@pytest.fixture
def bench():
    return load_bench("speculative")


@pytest.fixture
def corpus(tmp_path):
    words = "to be or not that is the question whether tis nobler in mind suffer"
    return word_corpus(tmp_path / "input.txt", words, lines=400, per_line=9, seed=5)


TINY = ["--target-layers", "1", "--target-width", "32", "--draft-layers", "1", "--draft-width", "16", "--steps", "4",
        "--block", "32", "--batch", "2", "--prompts", "2", "--prompt-length", "8", "--new", "12", "--threads", "1"]


def test_the_bench_trains_saves_reloads_and_checks_every_method(bench, corpus, tmp_path, capsys):
    weights = tmp_path / "pair"
    assert bench.main(["--data", str(corpus), "--weights", str(weights), "--skip-hf", *TINY]) == 0
    out = capsys.readouterr().out
    for row in ("qkv greedy", "qkv draft (K=4)", "qkv draft (adaptive K from 4)", "qkv prompt lookup (8)"):
        assert row in out
    assert "printed the target's greedy tokens (asserted)" in out
    recipe = json.loads((weights / "recipe.json").read_text())
    assert recipe["block"] == 32 and recipe["draft_width"] == 16
    assert bench.main(["--data", str(corpus), "--weights", str(weights), "--skip-hf", *TINY]) == 0  # read back
    assert "pair read from" in capsys.readouterr().err


def test_a_decode_longer_than_the_training_window_is_refused(bench, corpus, capsys):
    with pytest.raises(SystemExit) as e:
        bench.parse_args(["--data", str(corpus), "--block", "64", "--prompt-length", "40", "--new", "30"])
    assert e.value.code == 2
    assert "--prompt-length 40 + --new 30 = 70 positions; expected at most --block 64" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [(["--prompts", "0"], "--prompts 0: expected an int >= 1"),
                                           (["--steps", "-1"], "--steps -1: expected an int >= 0"),
                                           (["--quick", "--repeats", "0"], "--repeats 0: expected an int >= 1")])
def test_counts_out_of_range_are_refused_by_name(bench, corpus, argv, message, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--data", str(corpus), *argv])
    assert message in capsys.readouterr().err


def test_unusable_data_and_weights_end_in_one_line(bench, corpus, tmp_path, capsys):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9 " * 400)
    assert bench.main(["--data", str(bad), *TINY]) == 2
    assert "cannot be read as UTF-8 text" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("to be")
    assert bench.main(["--data", str(short), *TINY]) == 2
    assert "expected enough for training windows of --block 32" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "vocab.json").write_text('["a"]')
    with pytest.raises(SystemExit, match="holds vocab.json but no target/ model"):
        bench.main(["--data", str(corpus), "--weights", str(other), *TINY])


def test_quick_keeps_a_repeats_the_user_gave(bench, corpus):
    assert bench.parse_args(["--data", str(corpus), "--quick"]).repeats == 1
    assert bench.parse_args(["--data", str(corpus), "--quick", "--repeats", "4"]).repeats == 4
    assert bench.parse_args(["--data", str(corpus)]).repeats == 3
