"""bench/rnn_attention.py, smoke-tested tiny (--quick): every variant trains through `qkv train`'s loop for a few
steps, decodes the held-out pairs, and the script writes result.json with exact match per source-length bucket,
the alignment accuracy (none for the model without attention) and the figure. No quality is asserted."""
import json

import pytest

from . import load_bench


def test_the_bench_trains_every_variant_and_writes_table_and_figure(tmp_path, capsys):
    out, figure = tmp_path / "out", tmp_path / "length.png"
    assert load_bench("rnn_attention").main(["--quick", "--out", str(out), "--figure", str(figure)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert list(result) == ["none", "bahdanau", "global", "local_p", "transformer"]
    for variant, r in result.items():
        assert r["steps"] == 10 and 0.0 <= r["exact"] <= 1.0 and r["params"] > 0
        assert (r["alignment"] is None) == (variant == "none")
        assert set(r["buckets"]) == set(r["letters"]) == {"1-4", "5-8", "9-12"}
        assert 0.0 <= r["letters_right"] <= 1.0
        assert sum(n for _, n in r["buckets"].values()) == 40  # every held-out pair in one bucket
    assert figure.stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "| RNN + Bahdanau |" in printed and "command: python bench/rnn_attention.py --quick" in printed
    # --eval-only scores the models the run left behind again, without training them
    assert load_bench("rnn_attention").main(["--quick", "--out", str(out), "--figure", str(figure), "--eval-only",
                                             "--variants", "none,local_p"]) == 0
    again = json.loads((out / "result.json").read_text())
    assert again["local_p"]["exact"] == result["local_p"]["exact"] and again["none"]["steps"] == 10


def test_lengths_that_contradict_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        load_bench("rnn_attention").main(["--min-len", "5", "--max-len", "3", "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert "--min-len 5 --max-len 3: need 1 <= min-len <= max-len" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything is written
