"""Encoder-decoder models: the original Transformer, T5 (v1.0 and v1.1), MBART and Marian shapes, one class."""
import pytest
import torch

import qkv
from qkv.models.encoder_decoder import EncoderDecoder, Seq2SeqWeights

# Every variant by configuration: post-norm sinusoidal, T5 relative bias (ReLU / gated), MBART learned positions
# with offset and embedding norm, Marian sines-then-cosines. One extra decoder layer checks n_decoder_layers.
VARIANTS = {
    "transformer": qkv.preset("transformer-tiny", d_model=32, n_heads=4, d_ff=48, vocab_size=53),
    "t5": qkv.preset("t5-tiny", d_model=32, n_heads=4, head_dim=8, d_ff=48, vocab_size=53, n_decoder_layers=3,
                     relative_buckets=8, relative_max_distance=16),
    "t5-v1_1": qkv.preset("t5-v1_1-tiny", d_model=32, n_heads=4, head_dim=8, d_ff=48, vocab_size=53,
                          relative_buckets=8, relative_max_distance=16),
    "mbart": qkv.preset("mbart-tiny", d_model=32, n_heads=4, d_ff=48, vocab_size=53, max_positions=40),
    "marian": qkv.preset("marian-tiny", d_model=32, n_heads=4, d_ff=48, vocab_size=53, pad_token_id=52),
}
S, T = 11, 13  # awkward lengths; T > relative_max_distance / 2 exercises T5's log-spaced buckets


def _model(name):
    model = qkv.build(VARIANTS[name]).eval()
    if model.head.bias is not None:  # a nonzero logits bias, so that tests see it
        torch.nn.init.normal_(model.head.bias)
    return model


def _batch(V=53):
    src = torch.randint(3, V - 1, (2, S))
    tgt = torch.randint(3, V - 1, (2, T))
    mask = torch.ones(2, S, dtype=torch.long)
    mask[1, 7:] = 0  # the second source is 7 tokens long, then padding
    return src, tgt, mask


@pytest.mark.parametrize("name", VARIANTS)
def test_build_gives_encoder_decoder_with_tied_embeddings(name):
    model = _model(name)
    assert isinstance(model, EncoderDecoder)
    assert model.encoder.embed.tokens is model.decoder.embed.tokens  # source and target share one table
    assert (model.head.weight is model.encoder.embed.tokens.weight) == VARIANTS[name].tie_embeddings
    assert len(model.decoder_blocks()) == VARIANTS[name].n_decoder_layers


@pytest.mark.parametrize("name", VARIANTS)
def test_cached_decoding_equals_full_pass(name):
    model = _model(name)
    src, tgt, mask = _batch()
    with torch.no_grad():
        full = model(src, tgt, mask)
        cache = model.new_cache(2)
        steps = [model(src, tgt[:, t: t + 1], mask, cache=cache) for t in range(T)]
    assert cache.length == T
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["t5", "marian"])
def test_cached_decoding_in_chunks_with_a_fixed_size_cache(name):
    model = _model(name)
    src, tgt, mask = _batch()
    with torch.no_grad():
        full = model(src, tgt, mask)
        memory = model.encode(src, mask)
        cache = model.new_cache(2, max_len=T)
        parts = [model.decode(tgt[:, a:b], memory, attention_mask=mask, cache=cache)
                 for a, b in ((0, 5), (5, 6), (6, T))]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", VARIANTS)
def test_padded_source_tokens_change_nothing(name):
    model = _model(name)
    src, tgt, mask = _batch()
    other = src.clone()
    other[1, 7:] = torch.randint(3, 52, (S - 7,))
    with torch.no_grad():
        a, b = model(src, tgt, mask), model(other, tgt, mask)
        unmasked = model(other, tgt)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert not torch.allclose(a[1], unmasked[1], atol=1e-4)  # without the mask the padding is seen
    torch.testing.assert_close(a[0], unmasked[0], atol=1e-6, rtol=0)  # the unpadded row is unaffected


@pytest.mark.parametrize("name", VARIANTS)
def test_decoder_is_causal(name):
    model = _model(name)
    src, tgt, mask = _batch()
    changed = tgt.clone()
    changed[:, 6:] = torch.randint(3, 52, (2, T - 6))
    with torch.no_grad():
        a, b = model(src, tgt, mask), model(src, changed, mask)
    torch.testing.assert_close(a[:, :6], b[:, :6], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, 6:], b[:, 6:], atol=1e-4)


@pytest.mark.parametrize("name", VARIANTS)
def test_encoder_sees_the_whole_source(name):
    model = _model(name)
    src, tgt, mask = _batch()
    changed = src.clone()
    changed[0, -1] = (src[0, -1] + 1) % 50 + 3
    with torch.no_grad():
        a, b = model.encode(src, mask), model.encode(changed, mask)
    assert not torch.allclose(a[0, 0], b[0, 0], atol=1e-5)  # the first source position sees the last one


@pytest.mark.parametrize("name", VARIANTS)
def test_save_load_round_trip(name, tmp_path):
    model = _model(name)
    src, tgt, mask = _batch()
    model.save(tmp_path / name)
    loaded = qkv.load(tmp_path / name)
    assert isinstance(loaded, EncoderDecoder) and loaded.config == model.config
    if model.config.tie_embeddings:
        assert loaded.head.weight is loaded.encoder.embed.tokens.weight
    with torch.no_grad():
        torch.testing.assert_close(loaded(src, tgt, mask), model(src, tgt, mask), atol=0, rtol=0)


def test_encode_then_decode_equals_forward_and_last_only():
    model = _model("mbart")
    src, tgt, mask = _batch()
    with torch.no_grad():
        full = model(src, tgt, mask)
        split = model.decode(tgt, model.encode(src, mask), attention_mask=mask)
        last = model(src, tgt, mask, last_only=True)
    torch.testing.assert_close(split, full, atol=0, rtol=0)
    assert last.shape == (2, 1, 53)
    torch.testing.assert_close(last, full[:, -1:], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["transformer", "t5"])
def test_return_weights_shapes_and_masks(name):
    model = _model(name)
    cfg = model.config
    src, tgt, mask = _batch()
    with torch.no_grad():
        logits, w = model(src, tgt, mask, return_weights=True)
        plain = model(src, tgt, mask)
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=1e-5)  # the weighed path is the same model
    assert isinstance(w, Seq2SeqWeights)
    assert len(w.encoder_self) == cfg.n_layers and len(w.decoder_self) == len(w.cross) == cfg.n_decoder_layers
    assert w.encoder_self[0].shape == (2, cfg.n_heads, S, S)
    assert w.decoder_self[0].shape == (2, cfg.n_heads, T, T) and w.cross[0].shape == (2, cfg.n_heads, T, S)
    for group in (w.encoder_self, w.decoder_self, w.cross):
        torch.testing.assert_close(group[-1].sum(-1), torch.ones_like(group[-1].sum(-1)))
    assert torch.all(w.cross[0][1, :, :, 7:] == 0) and torch.all(w.encoder_self[0][1, :, :, 7:] == 0)
    assert torch.all(w.decoder_self[0].triu(1) == 0)  # no weight on a later target token


def test_cache_keeps_the_memory_and_follows_reorder():
    model = _model("t5")
    src, tgt, mask = _batch()
    with torch.no_grad():
        full = model(src.flip(0), tgt.flip(0), mask.flip(0))
        cache = model.new_cache(2)
        first = model(src, tgt[:, :4], mask, cache=cache)
        assert cache.memory.shape == (2, S, model.config.d_model) and torch.equal(cache.memory_mask, mask)
        cache.reorder(torch.tensor([1, 0]))  # beam search's survivors: swap the two rows
        rest = model(torch.zeros_like(src), tgt.flip(0)[:, 4:], cache=cache)  # the source is not re-read
    torch.testing.assert_close(torch.cat([first.flip(0), rest], dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["transformer", "t5-v1_1", "mbart"])
def test_every_parameter_gets_a_gradient(name):
    model = _model(name).train()
    src, tgt, mask = _batch()
    loss = torch.nn.functional.cross_entropy(model(src, tgt, mask).flatten(0, 1), tgt.flatten())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_t5_head_scale_and_logits_bias():
    t5 = _model("t5")
    assert t5.head_scale == pytest.approx(32 ** -0.5)
    assert _model("t5-v1_1").head_scale == 1.0 and t5.head.bias is None
    assert _model("marian").head.bias.shape == (53,)


def test_errors_name_the_argument():
    model = _model("transformer")
    src, tgt, mask = _batch()
    with pytest.raises(ValueError, match="attention_mask"):
        model(src, tgt, mask[:, :5])
    with pytest.raises(ValueError, match="decoder_attention_mask"):
        model(src, tgt, mask, decoder_attention_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="memory"):
        model.decode(tgt, torch.zeros(2, S))
    with pytest.raises(ValueError, match="input_ids"):
        model(src + 100, tgt)
    with pytest.raises(ValueError, match="family"):
        EncoderDecoder(qkv.preset("gpt2-tiny"))


def test_decoder_padding_mask_is_used():
    model = _model("marian")
    src, tgt, mask = _batch()
    dmask = torch.ones(2, T, dtype=torch.long)
    dmask[0, :2] = 0  # left-padded target in row 0
    changed = tgt.clone()
    changed[0, :2] = 5
    with torch.no_grad():
        a = model(src, tgt, mask, decoder_attention_mask=dmask)
        b = model(src, changed, mask, decoder_attention_mask=dmask)
    torch.testing.assert_close(a[0, 2:], b[0, 2:], atol=1e-6, rtol=0)
