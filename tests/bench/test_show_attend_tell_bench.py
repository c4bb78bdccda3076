"""bench/show_attend_tell.py, smoke-tested tiny: it trains two variants for a few steps on generated scenes, prints
the table (exact match, alignment per variant) and writes result.json and the soft-vs-hard figure."""
import json

from . import load_bench


def test_the_bench_trains_scores_and_draws_soft_and_hard(tmp_path, capsys):
    out, figure = tmp_path / "out", tmp_path / "fig.png"
    assert load_bench("show_attend_tell").main(["--quick", "--steps", "4", "--variants", "sat-soft,sat-hard-reinforce",
                                                "--d-model", "16", "--images", "1", "--out", str(out),
                                                "--figure", str(figure)]) == 0
    results = json.loads((out / "result.json").read_text())
    assert [r["variant"] for r in results] == ["sat-soft", "sat-hard-reinforce"]
    for r in results:
        assert r["steps"] == 4 and 0 <= r["exact"] <= 1 and 0 <= r["align"] <= 1 and r["images"] >= 1
    text = capsys.readouterr().out
    assert "| soft | 4 |" in text and "| hard, REINFORCE | 4 |" in text and "command: python bench/show_attend_tell.py" in text
    assert figure.stat().st_size > 0
