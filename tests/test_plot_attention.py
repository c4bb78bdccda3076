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
    folder = _folder(tmp_path, name)
    png = tmp_path / "attn.png"
    translates = qkv.models.family_of(qkv.preset(name)).has_source  # the record says, not the family's name
    text = ["--src", "to be", "--tgt", "or not"] if translates else ["--text", "to be, or"]
    assert main(["plot", "attention", "--checkpoint", str(folder), *text, "--out", str(png), "--html"]) == 0
    out = capsys.readouterr().out
    softmax_only = all(kind == "attention" for kind, _ in qkv.load(folder).layer_mixers())
    assert f"({'linear' if softmax_only else 'log'} colour scale)" in out
    written = sorted(p.name for p in tmp_path.glob("attn*"))
    assert "attn.html" in written and any(p.endswith(".png") for p in written)


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
