"""Vision Transformer: shapes, patches, save / load."""
import pytest
import torch

import qkv
from qkv.models import ViT


def _model(**overrides):
    return qkv.build(qkv.preset("vit-tiny", **overrides)).eval()


def test_shapes():
    model = _model()
    assert isinstance(model, ViT)
    x = torch.randn(3, 3, 32, 32)
    assert model(x).shape == (3, 10)
    hidden, weights = model.hidden_states(x, return_weights=True)
    assert hidden.shape == (3, 1 + 16, 64)  # class token + (32 / 8)^2 patches
    assert weights[0].self_attn.shape == (3, 4, 17, 17)


def test_no_head_gives_class_token_features():
    model = _model(num_labels=0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model.hidden_states(x)[:, 0])


def test_patch_embedding_is_per_patch():
    """Changing the pixels of one patch changes that patch's embedding only (before any attention)."""
    model = _model()
    x = torch.randn(1, 3, 32, 32)
    y = x.clone()
    y[..., 8:16, 16:24] += 1.0  # patch row 1, column 2 -> index 1 * 4 + 2
    with torch.no_grad():
        changed = (model.patches(x) - model.patches(y)).abs().sum(-1)[0] > 0
    assert changed.nonzero().flatten().tolist() == [6]


def test_gradients_reach_every_parameter():
    model = _model().train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_save_load_round_trip(tmp_path):
    model = _model()
    model.save(tmp_path)
    loaded = qkv.load(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_wrong_image_shape_is_named():
    with pytest.raises(ValueError, match="image_size"):
        _model()(torch.randn(1, 3, 30, 30))
    with pytest.raises(ValueError, match="patch_size"):
        qkv.preset("vit-tiny", patch_size=7)
