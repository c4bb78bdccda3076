"""bench/shakespeare.py, smoke-tested tiny: it runs the default `qkv train` command, the bare loop over the same
model and batches, transformers' GPT-2 and (a stand-in for) nanoGPT, and prints one table. No timing is asserted."""
import importlib.util

import pytest

from . import load_bench, word_corpus

WORDS = ("the of and to in is was he that it for on with as his by at be this had not are but from or have an they "
         "which one you were her all she there would their we him been has when who will more no if out so")


@pytest.fixture
def bench():
    return load_bench("shakespeare")


@pytest.fixture
def corpus(tmp_path):
    return word_corpus(tmp_path / "corpus.txt", WORDS, lines=300, per_line=11, seed=3)


@pytest.fixture
def fake_nanogpt(tmp_path):
    """A folder whose train.py prints nanoGPT's evaluation lines for the steps it is given."""
    folder = tmp_path / "nanogpt"
    folder.mkdir()
    (folder / "train.py").write_text(
        "import sys\n"
        "steps = int(next(a for a in sys.argv if a.startswith('--max_iters=')).split('=')[1])\n"
        "print(f'step 0: train loss 4.2000, val loss 4.1900')\n"
        "print(f'step {steps}: train loss 2.5000, val loss 2.6123')\n")
    return folder


@pytest.mark.slow  # a real `qkv train` subprocess and three 20-step runs: ~15-30 s on 2 quiet cores
def test_the_bench_prints_every_row_and_the_floor_matches_the_run(bench, corpus, fake_nanogpt, tmp_path, capsys):
    results = bench.main(["--data", str(corpus), "--steps", "20", "--out", str(tmp_path / "out"),
                          "--nanogpt", str(fake_nanogpt)])
    printed = capsys.readouterr().out
    rows = ["qkv train", "bare loop", "nanoGPT"] + (["transformers"] if importlib.util.find_spec("transformers") else [])
    for row in rows:
        assert any(line.startswith(row) for line in printed.splitlines()), (row, printed)
    assert set(results) == set(rows)
    assert results["nanoGPT"]["val_loss"] == 2.6123  # the last evaluation line nanoGPT printed
    # the floor trains the very model, batches and settings of the command: the same validation loss
    assert results["bare loop"]["val_loss"] == pytest.approx(results["qkv train"]["val_loss"], abs=1e-4)
    assert "reproduce: python bench/shakespeare.py --steps 20" in printed
