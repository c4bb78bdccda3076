"""The neuron view's numbers are the model's: for every score function and every kind of attention (self with
padding, masked with RoPE and grouped-query heads, cross with T5's relative bias, a ViT), its softmax equals the
weights ``return_weights=True`` gives and its weighted sum equals the head's output before W_O, to 1e-6 (float64
models, so in fact to rounding); the score's terms add up to the score; the HTML says the numbers."""
import pytest
import torch

import qkv
from qkv.interpret import attention_layers, find_layer, neuron_view
from qkv.ops import SCORES


def tiny(name, **kw):
    torch.manual_seed(0)
    return qkv.build(qkv.preset(name, **kw)).double().eval()


def head_inputs(model, kind, layer, run):
    """(weights (B, H, T, S) from return_weights, the input of W_O (B, T, H * D)) of one sublayer."""
    module = find_layer(model, kind, layer).module
    seen = {}
    handle = module.out.register_forward_pre_hook(lambda _, args: seen.setdefault("o", args[0]))
    try:
        with torch.no_grad():
            weights = run()
    finally:
        handle.remove()
    return weights, seen["o"]


def check(view, weights, o, module, *, index=0):
    h, t, D = view.head, view.query, module.head_dim
    torch.testing.assert_close(view.weights, weights[index, h, t].double(), rtol=0, atol=1e-6)
    torch.testing.assert_close(view.output, o[index, t, h * D:(h + 1) * D].double(), rtol=0, atol=1e-6)
    assert view.weights.sum() == pytest.approx(1.0)


IDS = torch.tensor([[5, 17, 99, 42, 8, 61, 120], [9, 3, 77, 200, 14, 15, 16]])


@pytest.mark.parametrize("score", [s for s in SCORES])
def test_every_score_function_equals_the_forward_of_a_decoder(score):
    model = tiny("gpt2-tiny", score=score)
    weights, o = head_inputs(model, "masked", 1, lambda: [w.self_attn for w in model(IDS, return_weights=True)[1]][1])
    view = neuron_view(model, IDS, kind="masked", layer=1, head=2, query=4, index=1)
    check(view, weights, o, find_layer(model, "masked", 1).module, index=1)
    assert view.score == score and not view.allowed[5:].any() and view.allowed[:5].all()  # causal
    last = view.terms[-1].value
    scale = 1.0 if view.scale is None else view.scale
    torch.testing.assert_close(last * scale, view.raw)  # the terms add up to the score
    if score in ("dot", "scaled_dot"):
        torch.testing.assert_close(view.terms[0].value, view.q * view.keys)
        torch.testing.assert_close(view.terms[0].value.sum(-1), view.keys @ view.q)
    if score == "scaled_dot":
        assert view.scale == pytest.approx(16 ** -0.5)
    if score == "additive":
        assert [t.name for t in view.terms][:2] == ["W_q q", "W_k k"] and view.terms[0].value.shape == (16,)


def test_rope_and_grouped_query_heads():
    model = tiny("llama-tiny")
    mod = find_layer(model, "masked", 0).module
    assert mod.n_kv_heads == 2 and mod.n_heads == 4
    weights, o = head_inputs(model, "masked", 0, lambda: model(IDS, return_weights=True)[1][0].self_attn)
    for head in range(4):
        check(neuron_view(model, IDS, kind="masked", layer=0, head=head, query=6), weights, o, mod)


def test_self_attention_with_padding_and_labels():
    model = tiny("bert-tiny")
    mask = torch.tensor([[1] * 7, [1] * 5 + [0, 0]])
    weights, o = head_inputs(model, "self", 0, lambda: model(IDS, mask, return_weights=True)[1][0].self_attn)
    labels = list("abcdefg")
    view = neuron_view(model, IDS, mask, head=3, query=1, index=1, tokens=labels)
    check(view, weights, o, find_layer(model, "self", 0).module, index=1)
    assert view.allowed.tolist() == [True] * 5 + [False] * 2 and view.query_token == "b"
    page = view.to_html()
    assert f"{float(view.weights[0]):.3f}" in page and ">g<" in page and "scale 0.25" in page


def test_cross_attention_with_t5_relative_bias_and_self_attention_bias():
    model = tiny("t5-tiny")
    src, tgt = IDS[:, :6], IDS[:, :4]
    run = lambda: model(src, tgt, return_weights=True)[1]  # noqa: E731
    weights, o = head_inputs(model, "cross", 1, lambda: run().cross[1])
    view = neuron_view(model, src, tgt, kind="cross", layer=1, head=0, query=3, tokens=list("wxyz"),
                       key_tokens=list("ABCDEF"))
    check(view, weights, o, find_layer(model, "cross", 1).module)
    assert view.score == "dot" and view.keys.shape == (6, 16) and view.key_tokens == list("ABCDEF")
    weights, o = head_inputs(model, "self", 0, lambda: run().encoder_self[0])
    view = neuron_view(model, src, tgt, kind="self", layer=0, head=1, query=2)
    check(view, weights, o, find_layer(model, "self", 0).module)
    assert view.bias is not None  # T5's bucketed relative position bias, added to the logits


def test_a_vit_head():
    model = tiny("vit-tiny")
    pixels = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    weights, o = head_inputs(model, "self", 1, lambda: model.hidden_states(pixels, return_weights=True)[1][1].self_attn)
    check(neuron_view(model, pixels, layer=1, head=1, query=0), weights, o, find_layer(model, "self", 1).module)


def test_a_float32_model_is_within_1e_6():
    torch.manual_seed(0)
    model = qkv.build(qkv.preset("gpt2-tiny", score="additive")).eval()
    weights, o = head_inputs(model, "masked", 0, lambda: model(IDS, return_weights=True)[1][0].self_attn)
    check(neuron_view(model, IDS, kind="masked", head=1, query=6), weights, o, find_layer(model, "masked", 0).module)


def test_bad_requests_are_refused_by_name():
    model = tiny("hybrid-tiny")
    linear = [a for a in attention_layers(model) if not a.softmax][0]
    with pytest.raises(ValueError, match="softmax attention"):
        neuron_view(model, IDS, kind="masked", layer=linear.layer, head=0, query=0)
    with pytest.raises(ValueError, match="query=9"):
        neuron_view(tiny("gpt2-tiny"), IDS, kind="masked", head=0, query=9)
    with pytest.raises(ValueError, match="kind='cross'"):
        neuron_view(tiny("gpt2-tiny"), IDS, kind="cross", head=0, query=0)
    with pytest.raises(ValueError, match="key_tokens has 2 labels"):
        neuron_view(tiny("gpt2-tiny"), IDS, kind="masked", head=0, query=0, key_tokens=["a", "b"])


def test_query_key_norm_softcap_and_a_sliding_window():
    model = tiny("llama-tiny", qk_norm=True, attn_softcap=5.0, window=2)
    mod = find_layer(model, "masked", 1).module
    weights, o = head_inputs(model, "masked", 1, lambda: model(IDS, return_weights=True)[1][1].self_attn)
    view = neuron_view(model, IDS, kind="masked", layer=1, head=3, query=5)
    check(view, weights, o, mod)
    assert view.allowed.tolist() == [False, False, False, True, True, True, False] and view.softcap == 5.0
    assert view.logits[view.allowed].abs().max() < 5.0  # capped in (-c, c)
