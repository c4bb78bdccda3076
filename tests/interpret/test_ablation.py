"""Head ablation: a head whose W_O columns are zero contributes nothing, so switching it off changes no loss;
switching every head off equals a model whose attention outputs only W_O's bias; the hooks leave no trace."""
import copy

import pytest
import torch
import torch.nn.functional as F

import qkv
from qkv.interpret import ablate_heads, attention_layers, head_importance


def tiny(name):
    torch.manual_seed(0)
    return qkv.build(qkv.preset(name)).double().eval()


IDS = torch.tensor([[5, 17, 99, 42, 8, 61, 120], [9, 3, 77, 200, 14, 15, 16]])


def lm_loss(model):
    logits = model(IDS[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), IDS[:, 1:].flatten())


def seq2seq_loss(model):
    logits = model(IDS[:, :5], IDS[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), IDS[:, 1:].flatten())


def test_a_head_whose_W_O_columns_are_zero_changes_nothing_when_ablated():
    model = tiny("gpt2-tiny")
    layer = attention_layers(model)[1].module
    D = layer.head_dim
    with torch.no_grad():
        layer.out.weight[:, 2 * D:3 * D] = 0.0  # head 2 of layer 1 writes nothing into the residual stream
    imp = head_importance(model, lm_loss)
    assert imp.scores.shape == (2, 4) and imp.names == ["masked 0", "masked 1"]
    assert imp.scores[1, 2] == 0.0
    assert (imp.scores.abs() > 1e-6).sum() >= 6  # the other heads do matter to a random model's loss
    with torch.no_grad():
        assert imp.base == pytest.approx(float(lm_loss(model)))


def test_ablating_every_head_equals_a_model_without_attention_output():
    model = tiny("transformer-tiny")
    gutted = copy.deepcopy(model)
    with torch.no_grad():
        for a in attention_layers(gutted):
            a.module.out.weight.zero_()  # only W_O's bias is left of every attention sublayer
    heads = {a.module: range(a.module.n_heads) for a in attention_layers(model)}
    with torch.no_grad(), ablate_heads(heads):
        ablated = model(IDS[:, :5], IDS[:, :-1])
    torch.testing.assert_close(ablated, gutted(IDS[:, :5], IDS[:, :-1]), rtol=0, atol=1e-12)
    assert not torch.allclose(ablated, model(IDS[:, :5], IDS[:, :-1]))  # the hooks are gone after the block
    imp = head_importance(model, seq2seq_loss, kinds=["cross"])
    assert imp.names == ["cross 0", "cross 1"] and torch.isfinite(imp.scores).all()


def test_ablate_heads_refuses_a_head_the_module_lacks_and_removes_its_hooks():
    model = tiny("gpt2-tiny")
    layer = attention_layers(model)[0].module
    with pytest.raises(ValueError, match=r"heads \[4\]: the module has 4 heads"):
        with ablate_heads({layer: [4]}):
            pass
    assert not layer.out._forward_pre_hooks
    with pytest.raises(ValueError, match="no softmax attention"):
        head_importance(tiny("linear-tiny"), lm_loss)


def test_the_figures_draw_what_they_are_given(tmp_path):
    pytest.importorskip("matplotlib")
    from qkv.interpret import plot_head_importance, plot_token_matrix, rollout, self_attention
    imp = head_importance(tiny("gpt2-tiny"), lm_loss)
    fig = plot_head_importance(imp)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert len(texts) == 8 and f"{float(imp.scores[0, 0]):+.3f}" in texts
    w = self_attention(tiny("bert-tiny"), IDS[:1, :4])
    fig = plot_token_matrix(rollout(w)[0, -1], ["a", "b", "c", "$d"])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "b", "c", r"\$d"]
    fig.savefig(tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000
    with pytest.raises(ValueError, match=r"expected \(T, T\) = \(3, 3\)"):
        plot_token_matrix(torch.zeros(4, 4), ["a", "b", "c"])
