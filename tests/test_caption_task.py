"""The caption task (qkv/tasks/caption.py): resumable batches, the loss with Show, Attend and Tell's penalty and
REINFORCE terms, a tiny soft model that learns to look at what it names in seconds, and `qkv train` / `qkv plot
attention` from the command line, with bad data refused in one line."""
import json

import numpy as np
import pytest
import torch

import qkv
from qkv.cli import main
from qkv.data import shapes, train_bpe
from qkv.models.show_attend_tell import doubly_stochastic_penalty
from qkv.tasks.caption import CaptionBatches, CaptionLoss, caption_metrics, collate, token_words
from qkv.tasks.loss import token_sums


def _tokenizer(scenes):
    return train_bpe(iter([s.caption for s in scenes]), vocab_size=8000, individual_digits=True, prefix_space=True)


def _model(tok, name="sat-soft", **overrides):
    fields = dict(d_model=32, image_size=32, max_positions=3072, vocab_size=tok.vocab_size, pad_token_id=tok.pad_id,
                  bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, decoder_start_token_id=tok.bos_id)
    return qkv.build(qkv.preset(name, **{**fields, **overrides}))


@pytest.fixture(scope="module")
def scenes():
    return shapes.make_scenes(600, seed=0, size=32, max_objects=2)


def test_batches_resume_where_they_stopped(scenes):
    data = shapes.scenes_as_set(scenes[:50])
    tok = _tokenizer(scenes)
    ids = [tok.encode(c) for c in data.captions]
    specials = dict(pad=tok.pad_id, bos=tok.bos_id, eos=tok.eos_id)
    a = CaptionBatches(data.pixels, ids, 4, seed=1, specials=specials)
    first = next(a)
    assert first.pixels.shape == (4, 3, 32, 32) and first.pixels.dtype == torch.uint8
    assert (first.decoder_input_ids[:, 0] == tok.bos_id).all()
    state = a.state_dict()
    b = CaptionBatches(data.pixels, ids, 4, seed=1, specials=specials)
    b.load_state_dict(state)
    x, y = next(a), next(b)
    assert torch.equal(x.labels, y.labels) and torch.equal(x.pixels, y.pixels)
    row = x.labels[0][x.labels[0] != -100].tolist()
    assert row[-1] == tok.eos_id and x.decoder_input_ids[0, 1:len(row)].tolist() == row[:-1]


def test_cells_inside_a_box_by_their_centres():
    from qkv.tasks.caption import cell_inside
    # 4 x 4 cells of 8 pixels: centres at 4, 12, 20, 28; the box covers the plane's [8, 20] x [0, 8]
    assert [cell_inside(c, (4, 4), 32, (8, 0, 20, 8)) for c in range(4)] == [False, True, True, False]
    assert not cell_inside(5, (4, 4), 32, (8, 0, 20, 8))  # the row below


def test_the_loss_adds_lambda_times_the_doubly_stochastic_penalty(scenes):
    tok = _tokenizer(scenes)
    torch.manual_seed(0)
    model = _model(tok, attn_doubly_stochastic=0.7)
    data = shapes.scenes_as_set(scenes[:6])
    batch = collate(data.pixels, [tok.encode(c) for c in data.captions], pad=tok.pad_id, bos=tok.bos_id,
                    eos=tok.eos_id)
    s = CaptionLoss(model).train()(batch)
    logits, weights = model(batch.pixels, batch.decoder_input_ids, return_weights=True)
    mask = batch.labels != -100
    want = token_sums(logits, batch.labels, 0.0).loss + 0.7 * doubly_stochastic_penalty(weights.alpha, mask).sum()
    torch.testing.assert_close(s.loss, want)


def test_reinforce_terms_enter_the_loss_and_move_the_baseline(scenes):
    tok = _tokenizer(scenes)
    torch.manual_seed(0)
    model = _model(tok, name="sat-hard-reinforce", attn_doubly_stochastic=0.0, attn_expectation=0.0)
    data = shapes.scenes_as_set(scenes[:8])
    batch = collate(data.pixels, [tok.encode(c) for c in data.captions], pad=tok.pad_id, bos=tok.bos_id,
                    eos=tok.eos_id)
    loss = CaptionLoss(model).train()
    s = loss(batch)
    s.loss.backward()
    assert model.decoder.attention.W_h.grad.abs().sum() > 0  # the pick's score learns only through REINFORCE
    b0 = model.decoder.reinforce.baseline.item()
    loss(batch)
    assert model.decoder.reinforce.baseline.item() != b0


def test_token_words_maps_tokens_to_words(scenes):
    tok = _tokenizer(scenes)
    caption = "un círculo rojo, un ocho azul"
    ids = tok.encode(caption)
    words = token_words(tok, ids)
    pieces = [tok.decode([i]).strip() for i in ids]
    assert [w for w, p in zip(words, pieces) if p == "ocho"] == [4] and words[pieces.index(",")] is None


def test_a_tiny_soft_model_learns_to_caption_and_to_look_at_what_it_names():
    """Two shapes in two colours, at most two objects on a 24 x 24 canvas (6 x 6 cells), 300 steps (about 5 CPU
    seconds): it must read them in order, and when it names one, its attention's argmax must sit in that object's
    box far more often than chance (about 4 cells in 36)."""
    torch.manual_seed(0)
    scenes = shapes.make_scenes(600, seed=0, size=24, max_objects=2, names=("círculo", "cuadrado"),
                                colours=("rojo", "azul"))
    tok = _tokenizer(scenes)
    data, held = shapes.scenes_as_set(scenes[:500]), shapes.scenes_as_set(scenes[500:])
    ids = [tok.encode(c) for c in data.captions]
    model = _model(tok, image_size=24, max_positions=3 * 24 * 24)
    loss = CaptionLoss(model).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = np.random.default_rng(0)
    for _ in range(300):
        idx = g.integers(len(ids), size=32)
        batch = collate(data.pixels[idx], [ids[i] for i in idx], pad=tok.pad_id, bos=tok.bos_id, eos=tok.eos_id)
        s = loss(batch)
        (s.loss / (batch.labels != -100).sum()).backward()
        opt.step()
        opt.zero_grad()
    metrics = caption_metrics(model.eval(), tok, held)
    assert metrics["exact"] >= 0.5 and metrics["align"] >= 0.4, metrics


def test_train_and_plot_from_the_command_line(tmp_path, capsys):
    config = tmp_path / "sat.json"
    config.write_text(json.dumps({"preset": "sat-soft", "model": {"d_model": 16}}))
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--task", "caption", "--data", "generated:40", "--max-steps", "3",
                 "--eval-every", "3", "--eval-steps", "1", "--batch-size", "4", "--out-dir", str(run),
                 "--precision", "fp32", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0.0 <= last["val_exact"] <= 1.0 and 0.0 <= last["val_align"] <= 1.0
    png = tmp_path / "words.png"
    assert main(["plot", "attention", "--checkpoint", str(run), "--out", str(png)]) == 0
    assert png.stat().st_size > 0 and f"wrote {png}" in capsys.readouterr().out
    scene = tmp_path / "scene.png"
    from PIL import Image
    Image.fromarray(shapes.make_scenes(1, seed=5)[0].pixels).save(scene)
    assert main(["plot", "attention", "--checkpoint", str(run), "--image", str(scene), "--out", str(png)]) == 0
    # --html: the explorer's page of the same image, the paper's figure inline and each word's weights over the cells
    assert main(["plot", "attention", "--checkpoint", str(run), "--image", str(scene), "--out", str(png),
                 "--html"]) == 0
    page = png.with_suffix(".html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in page and '"cross"' in page and scene.name in page
    capsys.readouterr()
    # the explorer's input for an image model is a scene's number: anything else is one line
    assert main(["explore", "--checkpoint", str(run), "--text", "un gato", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--text 'un gato'" in err and "type its number" in err and "\n" not in err
    # a user's image of the wrong size: one line naming it
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    assert main(["plot", "attention", "--checkpoint", str(run), "--image", str(tmp_path / "small.png"),
                 "--out", str(png)]) == 1
    err = capsys.readouterr().err.strip()
    assert "small.png: the image is 20 x 20 pixels; expected 48 x 48 (image_size)" in err and "\n" not in err


def test_a_folder_with_a_wrong_image_is_refused_in_one_line(tmp_path, capsys):
    shapes.write_scenes(tmp_path / "data", shapes.make_scenes(4, seed=0, size=32))
    assert main(["train", "--preset", "sat-soft", "--task", "caption", "--data", str(tmp_path / "data"),
                 "--max-steps", "1", "--out-dir", str(tmp_path / "run"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert "000000.png: the image is 32 x 32 pixels; expected 48 x 48 (image_size)" in err and "\n" not in err
