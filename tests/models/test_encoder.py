"""BERT-style encoder: shapes, heads, padding invariance, save / load."""
import pytest
import torch

import qkv
from qkv.models import Encoder

T = 13  # awkward length


def _model(**overrides):
    return qkv.build(qkv.preset("bert-tiny", **overrides)).eval()


def test_shapes_and_heads():
    model = _model(num_labels=3)
    assert isinstance(model, Encoder)
    ids = torch.randint(0, 256, (2, T))
    hidden = model(ids)
    assert hidden.shape == (2, T, 64)
    assert model.mlm_logits(hidden).shape == (2, T, 256)
    assert model.classify(hidden).shape == (2, 3)
    assert model.pooled(hidden).shape == (2, 64)
    hidden, weights = model(ids, return_weights=True)
    assert len(weights) == 2 and weights[0].self_attn.shape == (2, 4, T, T)


def test_mlm_decoder_is_tied_to_embeddings():
    model = _model()
    assert model.mlm.decoder.weight is model.embed.tokens.weight
    untied = _model(tie_embeddings=False)
    assert untied.mlm.decoder.weight is not untied.embed.tokens.weight


def test_missing_heads_say_which_field():
    model = _model(mlm_head=False)
    hidden = model(torch.randint(0, 256, (1, 5)))
    with pytest.raises(ValueError, match="mlm_head"):
        model.mlm_logits(hidden)
    with pytest.raises(ValueError, match="num_labels"):
        model.classify(hidden)


def test_padding_invariance():
    """Changing a padded token changes no real position's output (and no head output)."""
    model = _model(num_labels=2)
    ids = torch.randint(1, 256, (2, T))
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    other = ids.clone()
    other[0, 8:] = torch.randint(1, 256, (T - 8,))
    with torch.no_grad():
        a, b = model(ids, mask), model(other, mask)
        alone = model(ids[:1, :8])
    assert torch.allclose(a[0, :8], b[0, :8], atol=1e-6)
    assert torch.allclose(a[0, :8], alone[0], atol=1e-5)  # padding = truncation
    assert torch.allclose(model.classify(a), model.classify(b), atol=1e-6)
    assert not torch.allclose(a[0, 8:], b[0, 8:])  # the padded positions did change: the test has teeth


def test_token_types_matter():
    model = _model()
    ids = torch.randint(0, 256, (1, T))
    types = (torch.arange(T) >= 6).long()[None]
    with torch.no_grad():
        assert not torch.allclose(model(ids), model(ids, token_type_ids=types))


def test_gradients_reach_every_parameter():
    model = _model(num_labels=2).train()
    ids = torch.randint(0, 256, (2, T))
    hidden = model(ids, torch.ones_like(ids))
    (model.mlm_logits(hidden).logsumexp(-1).mean() + model.classify(hidden).sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_save_load_round_trip(tmp_path):
    model = _model(num_labels=3)
    model.save(tmp_path)
    loaded = qkv.load(tmp_path)
    assert loaded.config == model.config
    assert loaded.mlm.decoder.weight is loaded.embed.tokens.weight
    ids = torch.randint(0, 256, (2, T))
    with torch.no_grad():
        h, g = model(ids), loaded(ids)
        assert torch.equal(h, g)
        assert torch.equal(model.mlm_logits(h), loaded.mlm_logits(g))
        assert torch.equal(model.classify(h), loaded.classify(g))


def test_input_errors_name_the_argument():
    model = _model()
    ids = torch.randint(0, 256, (2, T))
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, torch.ones(2, T + 1))
    with pytest.raises(ValueError, match="token_type_ids"):
        model(ids, token_type_ids=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.full((1, 3), 256))
    with pytest.raises(ValueError, match="family"):
        Encoder(qkv.preset("gpt2-tiny"))
