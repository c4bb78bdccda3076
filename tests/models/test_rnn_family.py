"""The recurrent family is a family like the others: one registry record, presets, a config that refuses to
contradict itself in one line, save / load, `qkv train` on the seq2seq task, `qkv translate`, `qkv plot attention`
and the explorer, none of which asks for the family by name."""
import json
import re

import pytest
import torch

import qkv
from qkv.cli import main
from qkv.config import ModelConfig
from qkv.data import CharTokenizer
from qkv.models import decoding_of, family_of
from qkv.models.rnn import RecurrentSeq2Seq


def _rnn(**fields):
    return qkv.preset("luong-tiny", **fields)


@pytest.mark.parametrize("fields, message", [
    (dict(rnn_attention="none", rnn_local_window=3), "rnn_local_window=3 is the window of local attention"),
    (dict(rnn_attention="global", rnn_local_window=2), "but rnn_attention='global'; expected local_m or local_p"),
    (dict(rnn_attention="local_m", rnn_local_window=-1), "rnn_local_window must be an int >= 0"),
    (dict(rnn_attention="local_p", rnn_local_window=0), "rnn_local_window must be an int >= 1"),
    (dict(rnn_bidirectional="decoder"), "a decoder writes left to right"),
    (dict(rnn_bidirectional="both"), "a decoder writes left to right"),
    (dict(rnn_bidirectional="sideways"), "rnn_bidirectional must be one of"),
    (dict(rnn_cell="rnn"), "rnn_cell must be one of ('gru', 'lstm'), got 'rnn'"),
    (dict(rnn_attention="luong"), "rnn_attention must be one of"),
    (dict(rnn_attention="bahdanau", rnn_input_feeding=True), "rnn_input_feeding=True feeds Luong's"),
    (dict(rnn_attention="none", rnn_input_feeding=True), "rnn_attention='none' has none"),
    (dict(rnn_attention="bahdanau", d_ff=63), "d_ff=63: Bahdanau's deep output"),
    (dict(tie_embeddings=True, rnn_embed_dim=32), "tie_embeddings=True shares the target embeddings"),
    (dict(rnn_embed_dim=0), "rnn_embed_dim must be a positive int"),
])
def test_a_config_contradicting_itself_is_one_line(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        _rnn(**fields)
    assert "\n" not in str(err.value)



@pytest.mark.parametrize("model, status, named", [
    (dict(rnn_attention="none", rnn_local_window=3), 2, "rnn_local_window=3 is the window of local attention"),
    (dict(rnn_attention="local_p", rnn_local_window=-1), 2, "rnn_local_window must be an int >= 1"),
    (dict(rnn_bidirectional="decoder"), 2, "rnn_bidirectional='decoder': a decoder writes left to right"),
    (dict(score="location"), 1, "score must be one of ('additive', 'bilinear', 'dot', 'scaled_dot', 'cosine'), "
                                "got 'location'"),  # a score's name is checked where scores live, at build
])
def test_qkv_train_refuses_a_contradicting_rnn_config_in_one_line(tmp_path, capsys, model, status, named):
    """`qkv train` has no flag per model field: a --config file's "model" section over the preset reaches them."""
    config = tmp_path / "rnn.json"
    config.write_text(json.dumps({"preset": "rnnsearch-tiny", "model": model}))
    code = main(["train", "--config", str(config), "--data", str(_pairs(tmp_path, n=20)), "--out-dir",
                 str(tmp_path / "run"), "--max-steps", "1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == status and err.startswith("qkv train: error: ") and named in err and "\n" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()

def test_rnn_fields_on_another_family_and_mismatched_scores_are_refused():
    with pytest.raises(ValueError, match=r"rnn_cell='gru': the rnn_\* fields configure family='rnn'"):
        qkv.preset("transformer-tiny", rnn_cell="gru")
    with pytest.raises(ValueError, match="score='dot' compares the decoder state"):  # 64 against 2 x 64
        qkv.build(_rnn(score="dot", rnn_bidirectional="encoder"))
    with pytest.raises(ValueError, match="score must be one of"):
        qkv.build(_rnn(score="location"))


def test_defaults_are_derived_and_survive_save_and_load(tmp_path):
    cfg = ModelConfig(family="rnn", d_model=16, n_heads=1, n_layers=1, vocab_size=30, position="none",
                      rnn_attention="local_p", decoder_start_token_id=1)
    assert (cfg.rnn_cell, cfg.rnn_bidirectional, cfg.rnn_input_feeding, cfg.rnn_local_window, cfg.rnn_embed_dim) == \
        ("lstm", "none", True, 10, 16)
    model = qkv.build(cfg).eval()
    model.save(tmp_path / "m")
    again = qkv.load(tmp_path / "m")
    src, tgt = torch.randint(3, 30, (2, 5)), torch.randint(3, 30, (2, 4))
    with torch.no_grad():
        assert torch.equal(model(src, tgt), again(src, tgt))
    (tmp_path / "m" / "manifest.json").unlink()  # a hand-edited folder: no hashes to check, the shapes still are
    bad = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**bad, "n_decoder_layers": 3}))
    with pytest.raises(ValueError, match="n_decoder_layers=3"):  # more layers than the weights hold
        qkv.load(tmp_path / "m")


def test_the_record_says_what_the_family_does():
    cfg = qkv.preset("rnnsearch-tiny")
    record = family_of(cfg)
    assert record.model is RecurrentSeq2Seq and record.tasks == ("seq2seq",)
    assert (record.continues, record.has_source, record.text) == (False, True, True)
    assert record.layer_counts(cfg) == {"n_layers": 1, "n_decoder_layers": 1}
    model = qkv.build(cfg)
    assert decoding_of(model).has_source
    from qkv.explore import view_of
    assert view_of(model).name == "translate"
    assert "1 bidirectional gru | 1 gru, bahdanau attention (additive)" in dict(model.describe())["stack"]
    assert model.flops_per_token(30) > 2 * model.num_parameters(exclude_embeddings=True)


def test_paper_presets_have_the_papers_sizes():
    """RNNsearch-50: 620-wide embeddings, 1000 units per direction, maxout of 500 (Bahdanau et al. 2015, A.2);
    Luong et al.: 4 x 1000 LSTMs, 50k words. Built on the meta device: the sizes without the memory."""
    with torch.device("meta"):
        search = RecurrentSeq2Seq(qkv.preset("rnnsearch-50"))
        luong = RecurrentSeq2Seq(qkv.preset("luong-local-p"))
    assert search.encoder.layers[0].weight_ih_l0_reverse.shape == (3 * 1000, 620)
    assert search.decoder.cells[0].weight_ih.shape == (3 * 1000, 620 + 2000)  # [E y; c], c = 2 x 1000
    assert search.decoder.head.weight.shape == (30000, 500)  # W_o t, t the maxout of 2l = 1000
    assert len(luong.encoder.layers) == 4 and luong.decoder.cells[3].weight_hh.shape == (4 * 1000, 1000)
    assert luong.decoder.attention.half_width == 10 and luong.config.rnn_input_feeding


def _pairs(tmp_path, n=80):
    from qkv.data.alignment_task import make_pairs
    path = tmp_path / "pairs.tsv"
    path.write_text("".join(f"{s}\t{t}\n" for s, t in make_pairs(n, min_len=2, max_len=6, letters="abcdef")))
    return path


def test_qkv_train_translate_plot_and_explore_an_rnn(tmp_path, capsys):
    """The seq2seq task trains it (teacher forcing, label smoothing, checkpoints); the commands read the run."""
    from qkv.train import train
    tsv = _pairs(tmp_path)
    tok = CharTokenizer.train(iter(["abcdef"]))
    cfg = qkv.preset("rnnsearch-tiny", d_model=16, rnn_embed_dim=8, d_ff=16)
    summary = train(cfg, qkv.TrainConfig(data=str(tsv), val_data=str(tsv), out_dir=str(tmp_path / "run"), max_steps=6,
                                         eval_every=3, max_tokens=200, label_smoothing=0.1, progress=False,
                                         lr=1e-2), tokenizer=tok)
    assert summary.steps == 6 and summary.val_loss is not None
    model = qkv.load(summary.checkpoint)
    assert model.config.vocab_size == tok.vocab_size and model.config.decoder_start_token_id == tok.bos_id
    run = str(tmp_path / "run")
    assert main(["translate", "--checkpoint", run, "--text", "abc", "--num-beams", "2"]) == 0
    assert set(capsys.readouterr().out.strip()) <= set("abcdef")  # letters (or nothing, from a 6-step model)
    png = tmp_path / "attn.png"
    assert main(["plot", "attention", "--checkpoint", run, "--src", "abcd", "--tgt", "badc", "--out", str(png),
                 "--html"]) == 0
    assert "linear colour scale" in capsys.readouterr().out and png.is_file() and png.with_suffix(".html").is_file()
    from qkv.explore import Explorer
    example = Explorer(model, tok, num_beams=2, max_new_tokens=6).example("abcd")
    assert [k["kind"] for k in example["kinds"]] == ["cross"] and example["beam"]["steps"]
    assert len(example["kinds"][0]["keys"]) == 5  # a b c d </s>


def test_return_weights_gives_one_cross_map_the_viewers_read(tmp_path):
    from qkv import viz
    from qkv.explore import seq2seq_maps
    model = qkv.build(qkv.preset("luong-tiny", rnn_attention="local_m", rnn_local_window=1)).eval()
    maps = seq2seq_maps(model, [5, 6, 7, 2], [1, 9, 8], ["a", "b", "c", "</s>"], ["<s>", "x", "y"])
    assert [m.kind for m in maps] == ["cross"] and maps[0].layers[0].shape == (1, 3, 4)
    torch.testing.assert_close(maps[0].layers[0].sum(-1), torch.ones(1, 3))  # local-m's rows: a softmax
    assert maps[0].layers[0][0, 0, 3] == 0  # step 1's window [0, 2] leaves position 4 out
    cross = maps[0]  # the demo's figure: the last layer's map, mean of heads
    viz.plot_alignment(cross.mean_heads(-1), cross.queries, cross.keys, tmp_path / "cross.png")
    assert (tmp_path / "cross.png").stat().st_size > 5_000
    none = qkv.build(qkv.preset("luong-tiny", rnn_attention="none")).eval()
    assert seq2seq_maps(none, [5, 6, 2], [1, 9], ["a", "b", "</s>"], ["<s>", "x"]) == []  # nothing to align


def test_the_demos_figures_and_static_explorer_show_an_rnns_alignment(tmp_path):
    """The demo's views (its alignment PNGs and explorer.html) take the cross map by kind: an RNN has only that."""
    from qkv.demo import _write_views
    from qkv.explore import Explorer
    tok = CharTokenizer.train(iter(["abcdef"]))
    torch.manual_seed(0)
    model = qkv.build(qkv.preset("luong-tiny", d_model=16, rnn_embed_dim=8, vocab_size=tok.vocab_size,
                                 pad_token_id=tok.pad_id, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                                 decoder_start_token_id=tok.bos_id)).eval()
    _write_views(tmp_path, model, tok, ["abcd", "fedcba"], ["badc", "efcdab"], 1, [("x", "abcd"), ("y", "fed")],
                 6, "an rnn")
    for png in ("cross_attention.png", "cross_attention_heads.png"):
        assert (tmp_path / png).stat().st_size > 5_000
    from qkv.viz import explorer_page
    explorer = Explorer(model, tok, num_beams=4, max_new_tokens=6)
    shown = [explorer.example("abcd", label="x"), explorer.example("fed", label="y")]
    assert all([k["kind"] for k in ex["kinds"]] == ["cross"] and ex["beam"]["steps"] for ex in shown)
    assert (tmp_path / "explorer.html").read_text(encoding="utf-8") == explorer_page(shown, title="an rnn")
