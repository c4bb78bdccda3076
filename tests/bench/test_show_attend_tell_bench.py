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


def test_from_soft_starts_hard_attention_from_the_soft_weights(tmp_path, capsys):
    """--from-soft: the hard variants train --warm-steps more from the soft model of the same run (every weight
    copied, the REINFORCE baseline fresh); the table says both step counts; soft must come first."""
    import pytest
    import torch

    import qkv
    bench = load_bench("show_attend_tell")
    soft = qkv.build(qkv.preset("sat-soft", d_model=16))
    hard = bench.warm_model(qkv.preset("sat-hard-reinforce", d_model=16), soft)
    theirs = soft.state_dict()
    assert all(torch.equal(w, theirs[k]) for k, w in hard.state_dict().items() if ".reinforce." not in k)
    assert not bool(hard.decoder.reinforce.started)  # the baseline starts from the first reward, as from scratch
    with pytest.raises(ValueError, match="cannot start hard attention from the soft model"):
        bench.warm_model(qkv.preset("sat-hard-reinforce", d_model=32), soft)
    out = tmp_path / "out"
    assert bench.main(["--quick", "--steps", "4", "--warm-steps", "3", "--from-soft", "--variants",
                       "sat-soft,sat-hard-gumbel", "--d-model", "16", "--images", "1", "--out", str(out),
                       "--figure", str(tmp_path / "fig.png")]) == 0
    results = json.loads((out / "result.json").read_text())
    assert [(r["steps"], r["soft_steps"]) for r in results] == [(4, 0), (7, 4)]
    assert "| hard, Gumbel ST from soft | 4 + 3 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--from-soft", "--variants", "sat-hard-gumbel", "--out", str(out)])
