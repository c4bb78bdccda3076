"""bench/multi30k.py, smoke-tested tiny on a made-up parallel corpus: it trains its BPE vocabulary and a one-layer
Transformer for two steps, decodes the test side with beams, and writes result.json with a BLEU score."""
import json

from . import load_bench, word_corpus

DE = "der die das ein eine mann frau hund katze spielt läuft auf dem im park"
EN = "the a man woman dog cat plays runs on in park street"


def tiny_multi30k(folder):
    """A made-up Multi30k folder: {train,val,test_2016_flickr}.{de,en} of 60, 8 and 6 aligned lines."""
    folder.mkdir()
    for split, lines in (("train", 60), ("val", 8), ("test_2016_flickr", 6)):
        word_corpus(folder / f"{split}.de", DE, lines=lines, per_line=6, seed=len(split))
        word_corpus(folder / f"{split}.en", EN, lines=lines, per_line=5, seed=len(split) + 100)
    return folder


def test_the_bench_trains_decodes_and_scores_a_tiny_run(tmp_path, capsys):
    data = tiny_multi30k(tmp_path / "multi30k")
    out = tmp_path / "out"
    assert load_bench("multi30k").main(["--data", str(data), "--max-steps", "2", "--d-model", "32", "--layers", "1",
                                        "--heads", "2", "--vocab", "300", "--max-tokens", "256", "--beams", "2",
                                        "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 2 and result["test_sentences"] == 6 and result["beams"] == 2
    assert result["bleu"] is None or 0.0 <= result["bleu"] <= 100.0
    assert "command: python bench/multi30k.py" in capsys.readouterr().out
