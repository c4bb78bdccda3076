"""`qkv plot attention` on every small preset: softmax, linear-time, hybrid and memory models all give one (T, T)
map per layer and head (their implicit attention), drawn on the colour scale the figure names."""
import numpy as np
import pytest
import torch

import qkv
from qkv.cli import main
from qkv.data import CharTokenizer
from qkv.presets import PRESETS

SMALL = sorted(name for name, fields in PRESETS.items() if name.endswith("-tiny") and fields["family"] != "vit")


def _folder(tmp_path, name):
    torch.manual_seed(0)
    folder = tmp_path / name
    qkv.build(qkv.preset(name)).save(folder)
    CharTokenizer.train(iter(["to be, or not to be"])).save(folder / "tokenizer")
    return folder


@pytest.mark.parametrize("name", SMALL)
def test_plot_attention_draws_every_preset(name, tmp_path, capsys):
    """--out names the one PNG written (every kind of attention in it), --html the page beside it: nothing else."""
    folder = _folder(tmp_path, name)
    png = tmp_path / "out" / "attn.png"
    translates = qkv.models.family_of(qkv.preset(name)).has_source  # the record says, not the family's name
    text = ["--src", "to be", "--tgt", "or not"] if translates else ["--text", "to be, or"]
    assert main(["plot", "attention", "--checkpoint", str(folder), *text, "--out", str(png), "--html"]) == 0
    out = capsys.readouterr().out
    softmax_only = all(kind == "attention" for kind, _ in qkv.load(folder).layer_mixers())
    assert f"({'linear' if softmax_only else 'log'} colour scale)" in out
    assert sorted(p.name for p in png.parent.iterdir()) == ["attn.html", "attn.png"]


def _png_size(path) -> tuple[int, int]:
    """(width, height) in pixels, from the PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_an_encoder_decoder_writes_its_three_kinds_into_the_one_file_out_names(tmp_path, capsys):
    """Self, masked and cross attention of a translation model stacked in --out (three grids: about three times
    the height of one), and no attn_self.png / attn_masked.png / attn_cross.png beside it."""
    folder = _folder(tmp_path, "transformer-tiny")
    out = tmp_path / "out"
    assert main(["plot", "attention", "--checkpoint", str(folder), "--src", "to be", "--tgt", "to be",
                 "--out", str(out / "attn.png")]) == 0
    assert ": self, masked, cross attention (linear colour scale)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["attn.png"]
    assert main(["plot", "attention", "--checkpoint", str(folder), "--text", "to be", "--out",
                 str(tmp_path / "lm.png")]) == 2  # a translation model wants --src: refused, nothing written
    assert not (tmp_path / "lm.png").exists()
    lm = _folder(tmp_path, "llama-tiny")  # 2 layers, 4 heads, as transformer-tiny's stacks
    assert main(["plot", "attention", "--checkpoint", str(lm), "--text", "to be", "--out", str(out / "one.png")]) == 0
    (_, h3), (_, h1) = _png_size(out / "attn.png"), _png_size(out / "one.png")
    assert h3 > 2 * h1  # three grids stacked, against one


def test_the_default_out_is_what_help_says_and_the_only_file_written(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit):
        main(["plot", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "(default: attention.png)" in shown and "OUT with .html" in shown
    folder = _folder(tmp_path, "transformer-tiny")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["plot", "attention", "--checkpoint", str(folder), "--src", "to be", "--tgt", "be"]) == 0
    assert sorted(p.name for p in work.iterdir()) == ["attention.png"]


def test_a_recurrent_model_without_attention_says_so_in_one_line(tmp_path, capsys):
    """rnnsearch-tiny with rnn_attention 'none' (Sutskever et al.'s fixed vector): no map to draw, so an error
    naming why, status 2, and no file (not a crash, not an empty figure)."""
    folder = tmp_path / "rnn"
    qkv.build(qkv.preset("rnnsearch-tiny", rnn_attention="none")).save(folder)
    CharTokenizer.train(iter(["to be, or not to be"])).save(folder / "tokenizer")
    out = tmp_path / "out"
    out.mkdir()
    assert main(["plot", "attention", "--checkpoint", str(folder), "--src", "to be", "--tgt", "or",
                 "--out", str(out / "attn.png"), "--html"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qkv plot: error: ") and err.count("\n") == 1
    assert "no attention maps" in err and "rnn_attention 'none'" in err
    assert list(out.iterdir()) == []


def test_plot_attention_scale_can_be_chosen_and_vit_is_refused(tmp_path, capsys):
    folder = _folder(tmp_path, "retnet-tiny")
    assert main(["plot", "attention", "--checkpoint", str(folder), "--text", "to be", "--scale", "linear",
                 "--out", str(tmp_path / "a.png")]) == 0
    assert "(linear colour scale)" in capsys.readouterr().out
    vit = tmp_path / "vit"
    qkv.build(qkv.preset("vit-tiny")).save(vit)
    CharTokenizer.train(iter(["x"])).save(vit / "tokenizer")
    assert main(["plot", "attention", "--checkpoint", str(vit), "--text", "x", "--out", str(tmp_path / "v.png")]) == 2
    assert "ViT" in capsys.readouterr().err


def test_log_scale_shows_weights_a_linear_scale_loses():
    """A row decaying by 10x per token: linearly, the three older keys share the bottom 1% of the colours; the log
    scale spreads them over most of the range."""
    from qkv.viz import _colours, scale_note
    row = np.array([[1e-3, 1e-2, 1e-1, 1.0]])
    spread = {}
    for scale in ("linear", "log"):
        norm, cmap = _colours(row, scale, "Blues")
        levels = np.asarray(norm(row))[0]
        spread[scale] = levels[2] - levels[0]  # colour distance between 1e-3 and 1e-1 of the largest
        assert cmap == "Blues"
    assert spread["linear"] < 0.1 and spread["log"] > 0.5
    norm, cmap = _colours(-row, "log", "Blues")  # signed maps: a diverging map about 0
    assert cmap == "RdBu_r" and norm.vmin == -1.0 and norm.vmax == 1.0
    assert "log scale" in scale_note("log") and "red > 0" in scale_note("linear", signed=True)


def test_info_prints_the_stack_and_flat_flops_for_linear_time_models(capsys):
    assert main(["info", "--preset", "gated-deltanet-h1-tiny", "--seq-len", "1024"]) == 0
    short = capsys.readouterr().out
    assert "stack:            EWEW (E gated_deltanet, W sliding-window attention), window 64" in short
    assert main(["info", "--preset", "gated-deltanet-h1-tiny", "--seq-len", "65536"]) == 0
    long = capsys.readouterr().out
    flops = [line for line in (short + long).splitlines() if "FLOPs per token" in line]
    assert flops[0].split("(")[0] == flops[1].split("(")[0]  # the same count at 1k and 64k





def test_info_on_a_checkpoint_reads_its_config_not_its_weights(tmp_path, capsys, recwarn):
    folder = _folder(tmp_path, "rwkv7-tiny")
    (folder / "model.safetensors").write_bytes(b"not read")  # info needs only config.json
    assert main(["info", "--checkpoint", str(folder)]) == 0
    assert "stack:            77 (7 rwkv7)" in capsys.readouterr().out and not recwarn.list


@pytest.mark.parametrize("what", ["attention", "curves"])
def test_out_must_be_a_file_matplotlib_writes(tmp_path, capsys, what):
    # checked before anything is loaded: a folder was written as "<folder>.png" beside it, a .txt failed in matplotlib
    for out, said in ((tmp_path, "is a folder"), (tmp_path / "a.txt", "expected a file name ending in .png")):
        assert main(["plot", what, "--checkpoint", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"qkv plot: error: --out {out}: {said}") and "\n" not in err
    assert sorted(tmp_path.parent.glob(tmp_path.name + "*")) == [tmp_path] and not any(tmp_path.iterdir())
