"""The image-to-text family (qkv/models/caption.py, show_attend_tell.py, image_encoder.py): Show, Attend and Tell's
soft attention equals the paper's equations written here in float64 (weights, context, gate, LSTM, deep output, the
doubly stochastic penalty) and passes gradcheck; cached decoding equals the teacher-forced full pass for every
decoder and kind of attention; qkv.generate runs greedy and beam search over an image with no host read per step;
REINFORCE picks record what their loss needs; bad inputs are one line."""
import pytest
import torch

import qkv
from qkv.models.caption import CaptionDecoding
from qkv.models.image_encoder import image_bytes, pixels_from
from qkv.models.show_attend_tell import LSTMDecoder, doubly_stochastic_penalty
from qkv.nn import reinforce_loss

f64 = torch.float64
VARIANTS = ["sat-soft", "sat-hard-reinforce", "sat-hard-gumbel", "sat-local", "caption-transformer"]


def small(name, **overrides):
    torch.manual_seed(0)
    return qkv.build(qkv.preset(name, d_model=32, image_size=16, patch_size=4, max_positions=768, vocab_size=20,
                                d_ff=64, **overrides))


# ----------------------------------------------------------------------------------------------------------------
# The paper's equations, by hand, in float64

def paper(dec: LSTMDecoder, ids, a):
    """Xu et al. 2015, eq. 1-7 and sec. 4.2.1, written from the paper with the module's parameters."""
    att, cell = dec.attention, dec.cells[0]
    mean = a.mean(1)
    h = torch.tanh(mean @ dec.init_h[0].weight.T + dec.init_h[0].bias)
    c = torch.tanh(mean @ dec.init_c[0].weight.T + dec.init_c[0].bias)
    logits, alphas, betas, contexts = [], [], [], []
    for t in range(ids.shape[1]):
        Ey = dec.embed.weight[ids[:, t]]  # (B, m)
        e = torch.tanh((h @ att.W_h.T)[:, None, :] + a @ att.W_a.T + att.b) @ att.v  # f_att, (B, L)
        alpha = torch.exp(e) / torch.exp(e).sum(-1, keepdim=True)  # eq. 5
        beta = 1 / (1 + torch.exp(-(h @ att.gate.weight.T + att.gate.bias)))  # (B, 1), sec. 4.2.1
        z = beta * (alpha[:, :, None] * a).sum(1)  # eq. 6 with the gate
        gates = torch.cat([Ey, z], -1) @ cell.weight_ih.T + cell.bias_ih + h @ cell.weight_hh.T + cell.bias_hh
        i, f, g, o = gates.chunk(4, -1)  # eq. 1 (PyTorch's order of the four blocks)
        sig = lambda x: 1 / (1 + torch.exp(-x))  # noqa: E731
        c = sig(f) * c + sig(i) * torch.tanh(g)  # eq. 2
        h = sig(o) * torch.tanh(c)  # eq. 3
        logits.append((Ey + h @ dec.L_h.weight.T + dec.L_h.bias + z @ dec.L_z.weight.T + dec.L_z.bias)
                      @ dec.L_o.weight.T + dec.L_o.bias)  # eq. 7
        alphas.append(alpha), betas.append(beta[:, 0]), contexts.append(z)
    return torch.stack(logits, 1), torch.stack(alphas, 1), torch.stack(betas, 1)


def test_soft_attention_equals_the_papers_equations_in_float64():
    torch.manual_seed(0)
    dec = LSTMDecoder(11, 6, 5, 4, 7).to(f64)
    with torch.no_grad():
        for p in dec.parameters():
            p.normal_(0, 0.5)  # away from the small init, so every term matters
    a = torch.randn(3, 9, 4, dtype=f64)
    ids = torch.randint(0, 11, (3, 5))
    logits, _, steps = dec(ids, a)
    want_logits, want_alpha, want_beta = paper(dec, ids, a)
    torch.testing.assert_close(logits, want_logits, rtol=0, atol=1e-9)
    torch.testing.assert_close(steps.alpha, want_alpha, rtol=0, atol=1e-9)
    torch.testing.assert_close(steps.beta, want_beta, rtol=0, atol=1e-9)
    torch.testing.assert_close(steps.weights, want_alpha, rtol=0, atol=1e-9)  # soft: the weights are alpha
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=f64)
    penalty = ((1 - (want_alpha * mask[..., None]).sum(1)) ** 2).sum(-1)  # eq. 14, per image
    torch.testing.assert_close(doubly_stochastic_penalty(steps.alpha, mask), penalty, rtol=0, atol=1e-9)


def test_soft_attention_decoder_passes_gradcheck():
    torch.manual_seed(1)
    dec = LSTMDecoder(7, 3, 4, 3, 3).to(f64)
    ids = torch.randint(0, 7, (1, 3))
    a = torch.randn(1, 3, 3, dtype=f64, requires_grad=True)
    W_h, v, gate = (dec.get_parameter(n).detach().clone().requires_grad_(True)
                    for n in ("attention.W_h", "attention.v", "attention.gate.weight"))

    def f(a, W_h, v, gate):  # the annotations and the score's and gate's parameters as inputs
        params = {"attention.W_h": W_h, "attention.v": v, "attention.gate.weight": gate}
        logits, _, steps = torch.func.functional_call(dec, params, (ids, a))
        return logits, doubly_stochastic_penalty(steps.alpha), steps.beta
    assert torch.autograd.gradcheck(f, (a, W_h, v, gate))


# ----------------------------------------------------------------------------------------------------------------
# Cached decoding, qkv.generate

@pytest.mark.parametrize("name", VARIANTS + ["patches"])
def test_cached_decoding_equals_the_teacher_forced_full_pass(name):
    # "patches": ViT's patch embedding and encoder blocks instead of the CNN, local attention over its cells
    model = (small("sat-local", image_encoder="patches", n_heads=2, attn_local_window=2) if name == "patches"
             else small(name)).eval()
    pixels = torch.rand(3, 3, 16, 16)
    ids = torch.randint(0, 20, (3, 6))
    with torch.no_grad():
        full, weights = model(pixels, ids, return_weights=True)
        cache = model.new_cache(3)
        steps = [model(pixels, ids[:, t:t + 1], cache=cache) for t in range(6)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)
    assert weights.alpha.shape == (3, 6, 16) and weights.pick.shape == (3, 6)
    torch.testing.assert_close(weights.weights.sum(-1), torch.ones(3, 6))


@pytest.mark.parametrize("name", ["sat-soft", "sat-local", "caption-transformer"])
def test_generate_greedy_and_beam_over_an_image(name):
    model = small(name, eos_token_id=2, pad_token_id=0, decoder_start_token_id=1).eval()
    pixels = (torch.rand(2, 3, 16, 16) * 255).round() / 255
    src = image_bytes(pixels)
    assert src.shape == (2, 768) and torch.equal(pixels_from(src, 3, 16, torch.float32), pixels)
    greedy = qkv.generate(model, src, max_new_tokens=7, eos_token_id=())
    assert greedy.shape == (2, 8) and (greedy[:, 0] == 1).all()
    # greedy by full recomputation, the definition
    seq = torch.ones(2, 1, dtype=torch.long)
    with torch.no_grad():
        for _ in range(7):
            seq = torch.cat([seq, model(pixels, seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(greedy, seq)
    beams = qkv.generate(model, src, max_new_tokens=7, num_beams=3, eos_token_id=(), return_scores=True)
    greedy_scores = qkv.generate(model, src, max_new_tokens=7, eos_token_id=(), return_scores=True).sequences_scores
    assert (beams.sequences_scores >= greedy_scores - 1e-5).all()  # beam search finds at least greedy's score
    # the adapter's teacher-forced logits (the explorer's) are the full pass
    with torch.no_grad():
        logits = CaptionDecoding().teacher_forced(model, src[0].tolist(), greedy[0, 1:].tolist())
        torch.testing.assert_close(logits, model(pixels[:1], greedy[:1, :-1].clone())[0])


@pytest.mark.parametrize("name", ["sat-soft", "sat-local", "caption-transformer"])
def test_decoding_steps_make_no_host_reads(name, monkeypatch):
    from qkv.ops.checks import trusted_values
    model = small(name).eval()
    seen = []
    with torch.no_grad():
        cache = model.new_cache(2)
        token = model(torch.rand(2, 3, 16, 16), torch.ones(2, 1, dtype=torch.long), cache=cache)[:, -1:].argmax(-1)
        for read in ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"):
            original = getattr(torch.Tensor, read)
            monkeypatch.setattr(torch.Tensor, read, lambda self, *a, _o=original, _n=read, **k: (seen.append(_n),
                                                                                                _o(self, *a, **k))[1])
        with trusted_values():
            for _ in range(3):
                token = model.decode(token, cache.memory, cache=cache, last_only=True).argmax(-1)
    assert seen == []


# ----------------------------------------------------------------------------------------------------------------
# Training: REINFORCE records, save / load

def test_reinforce_picks_record_and_their_loss_reaches_the_attention():
    model = small("sat-hard-reinforce", attn_expectation=0.0).train()
    pixels, ids = torch.rand(4, 3, 16, 16), torch.randint(0, 20, (4, 5))
    logits, weights = model(pixels, ids, return_weights=True)
    assert set(weights.weights.unique().tolist()) == {0.0, 1.0}  # hard: one cell per step
    reward = -torch.rand(4) * 10
    loss = reinforce_loss(model, reward)
    loss.backward()
    assert model.decoder.attention.W_h.grad.abs().sum() > 0  # the score learns through REINFORCE alone
    assert model.decoder.reinforce.baseline.item() == pytest.approx(reward.mean().item())  # the first reward sets b
    assert reinforce_loss(model, reward) is None  # consumed


@pytest.mark.parametrize("name", VARIANTS)
def test_save_and_load_give_the_same_captioner(name, tmp_path):
    model = small(name).eval()
    model.save(tmp_path / "m")
    loaded = qkv.load(tmp_path / "m")
    pixels, ids = torch.rand(2, 3, 16, 16), torch.randint(0, 20, (2, 4))
    torch.testing.assert_close(loaded(pixels, ids), model(pixels, ids))


# ----------------------------------------------------------------------------------------------------------------
# Bad inputs: one line each

@pytest.mark.parametrize("pixels, message", [
    (torch.rand(2, 3, 20, 16), r"expected float pixels \(B, 3, 16, 16\).*got shape \(2, 3, 20, 16\)"),
    (torch.rand(2, 1, 16, 16), r"got shape \(2, 1, 16, 16\)"),
    (torch.randint(0, 255, (2, 100)), r"image's bytes as ids \(B, 768\).*got ids of shape \(2, 100\)"),
    (torch.full((1, 768), 300), r"image bytes must lie in \[0, 255\], got values in \[300, 300\]"),
])
def test_images_of_the_wrong_size_or_channels_are_one_line(pixels, message):
    model = small("sat-soft")
    with pytest.raises(ValueError, match=message):
        model(pixels, torch.zeros(len(pixels), 2, dtype=torch.long))


@pytest.mark.parametrize("overrides, message", [
    (dict(attn_select="local", attn_local_window=5), r"attn_local_window=5 is larger than the 4 x 4 grid"),
    (dict(attn_select="hard", attn_estimator="reinforce", attn_baseline_decay=None),
     r"attn_baseline_decay=None: REINFORCE .* needs its moving-average baseline"),
    (dict(patch_size=3, image_size=12), r"image_encoder='cnn' halves the image .* power of 2, got 3"),
    (dict(max_positions=100), r"max_positions=100: an image-to-text model reads its image as .* 768 byte ids"),
    (dict(caption_decoder="gru"), r"caption_decoder must be one of \('lstm', 'transformer'\), got 'gru'"),
])
def test_bad_caption_configs_are_one_line(overrides, message):
    fields = dict(d_model=32, image_size=16, patch_size=4, max_positions=768, vocab_size=20)
    with pytest.raises(ValueError, match=message):
        qkv.preset("sat-soft", **{**fields, **overrides})


def test_expectation_share_replaces_whole_captions_picks_by_alpha():
    """Xu et al. sec. 4.1: with probability p an image's picks become their expectation (soft attention); those rows
    then carry no REINFORCE term. p = 1: every row soft; p = 0: every row picks."""
    pixels, ids = torch.rand(4, 3, 16, 16), torch.randint(0, 20, (4, 5))
    for share in (1.0, 0.0):
        model = small("sat-hard-reinforce", attn_expectation=share).train()
        _, weights = model(pixels, ids, return_weights=True)
        if share:
            torch.testing.assert_close(weights.weights, weights.alpha)
            assert (model.decoder.reinforce.pending[0] == 0).all()
        else:
            assert set(weights.weights.unique().tolist()) == {0.0, 1.0}
            assert (model.decoder.reinforce.pending[0] != 0).all()
    with pytest.raises(ValueError, match=r"attn_expectation must be in \[0, 1\]"):
        qkv.preset("sat-hard-reinforce", attn_expectation=1.5)


def test_generate_and_the_explorer_refuse_a_wrong_image_in_one_line(tmp_path, capsys):
    """qkv.generate takes an image model's source as the image's bytes: a wrong count (another size or channel
    count) is one line naming the expected shape; `qkv plot attention --image` a PNG of the wrong channel count."""
    from PIL import Image
    import numpy as np
    from qkv.cli import main
    from qkv.data import CharTokenizer
    model = small("sat-soft")
    for source, message in ((torch.randint(0, 255, (1, 1 * 16 * 16)), r"\(B, 768\).*got ids of shape \(1, 256\)"),
                            (torch.randint(0, 255, (1, 3 * 8 * 8)), r"\(B, 768\).*got ids of shape \(1, 192\)")):
        with pytest.raises(ValueError, match=message):
            qkv.generate(model, source, max_new_tokens=2)
    folder = tmp_path / "m"
    model.save(folder)
    CharTokenizer.train(iter(["un círculo rojo"])).save(folder / "tokenizer")
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(tmp_path / "grey.png")
    assert main(["plot", "attention", "--checkpoint", str(folder), "--image", str(tmp_path / "grey.png"),
                 "--out", str(tmp_path / "a.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert "grey.png" in err and "channel" in err and "\n" not in err
