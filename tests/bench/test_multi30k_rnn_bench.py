"""bench/multi30k.py --rnn, smoke-tested tiny on a made-up parallel corpus: the recurrent model with attention trains
beside the Transformer for the same two steps, decodes the test side with beams, and gets its own BLEU entry."""
import json

import pytest

from . import load_bench, word_corpus
from .test_multi30k_bench import DE, EN, tiny_multi30k


def test_the_rnn_trains_beside_the_transformer_and_is_scored_the_same_way(tmp_path, capsys):
    data = tiny_multi30k(tmp_path / "multi30k")
    out = tmp_path / "out"
    assert load_bench("multi30k").main(["--data", str(data), "--max-steps", "2", "--d-model", "32", "--layers", "1",
                                        "--heads", "2", "--vocab", "300", "--max-tokens", "256", "--beams", "2",
                                        "--rnn", "rnnsearch-50", "--rnn-d-model", "16", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    rnn = result["rnn"]
    assert rnn["preset"] == "rnnsearch-50" and rnn["steps"] == result["steps"] == 2
    assert "bahdanau attention" in rnn["stack"] and rnn["params"] > 0
    assert rnn["bleu"] is None or 0.0 <= rnn["bleu"] <= 100.0
    assert "rnnsearch-50:" in capsys.readouterr().out  # its translations printed beside the Transformer's


def test_rnn_only_skips_the_transformer_and_needs_a_preset(tmp_path, capsys):
    data = tmp_path / "multi30k"
    data.mkdir()
    for split, lines in (("train", 40), ("val", 6), ("test_2016_flickr", 4)):
        word_corpus(data / f"{split}.de", DE, lines=lines, per_line=5, seed=len(split))
        word_corpus(data / f"{split}.en", EN, lines=lines, per_line=4, seed=len(split) + 100)
    out = tmp_path / "out"
    bench = load_bench("multi30k")
    assert bench.main(["--data", str(data), "--max-steps", "2", "--vocab", "300", "--max-tokens", "256",
                       "--beams", "2", "--rnn", "luong-global", "--rnn-d-model", "16", "--rnn-only",
                       "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert "steps" not in result and "bleu" not in result  # no Transformer row
    assert result["rnn"]["preset"] == "luong-global" and result["rnn"]["steps"] == 2
    assert not (out / "run").exists() and (out / "rnn").is_dir()
    assert "qkv:" not in capsys.readouterr().out  # only the RNN's translations printed
    with pytest.raises(SystemExit):
        bench.main(["--data", str(data), "--rnn-only"])
    assert "--rnn-only needs --rnn PRESET" in capsys.readouterr().err
