"""qkv.nn.Linear is nn.Linear to its state dict; ``packed_weights`` gives the same outputs from packed copies, only
inside the context, never stale, once per tied weight; decoding takes the oneDNN path and keeps its tokens."""
import contextlib
import copy
import importlib

import pytest
import torch
import torch.nn as nn

import qkv
from qkv.nn import Linear, packed_weights
from qkv.ops.linear import onednn_available

linear_op = importlib.import_module("qkv.ops.linear")  # the module (qkv.ops.linear is also its function)
needs_onednn = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN linear")


def wide_gpt(**overrides):
    """A GPT whose block weights (384 x 1152, 384 x 1536, ...) are past ONEDNN_MIN_WEIGHTS; tied head."""
    torch.manual_seed(0)
    cfg = dict(family="decoder", vocab_size=97, d_model=384, n_layers=2, n_heads=6, d_ff=1536, max_positions=64,
               tie_embeddings=True)
    return qkv.build(qkv.ModelConfig(**{**cfg, **overrides})).eval()


def packed_layers(model):
    return [m for m in model.modules() if isinstance(m, Linear) and m.packed is not None]


def test_linear_is_an_nn_linear_with_the_same_state_dict():
    torch.manual_seed(0)
    mine, plain = Linear(5, 3), nn.Linear(5, 3)
    assert isinstance(mine, nn.Linear)
    assert mine.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(mine.state_dict())
    x = torch.randn(2, 5)
    assert torch.equal(mine(x), plain(x))  # small weights: F.linear, exactly


@needs_onednn
def test_packed_weights_give_the_same_logits_and_are_dropped_on_leaving():
    model = wide_gpt()
    ids = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        plain = model(ids)
        with packed_weights(model):
            layers = packed_layers(model)
            assert len(layers) == 2 * 4  # qkv, out, w_in, w_out per block; the 97-row head is under the threshold
            packed = model(ids)
        assert packed_layers(model) == []
    torch.testing.assert_close(packed, plain, rtol=1e-4, atol=1e-4)


@needs_onednn
def test_nested_packing_keeps_the_outer_copies_and_a_tied_weight_is_packed_once():
    model = wide_gpt(vocab_size=1000)  # 1000 x 384 head tied to the embedding: past the threshold
    assert model.head.weight is model.embed.tokens.weight
    with packed_weights(model):
        outer = {id(m): m.packed for m in packed_layers(model)}
        assert id(model.head) in outer
        with packed_weights(model):
            assert {id(m): m.packed for m in packed_layers(model)} == outer  # nothing packed twice
        assert {id(m): m.packed for m in packed_layers(model)} == outer  # the inner exit left them
    assert packed_layers(model) == []


@needs_onednn
def test_a_weight_changed_inside_the_context_is_used_not_its_stale_copy():
    model = wide_gpt()
    layer = model.blocks[0].ffn.w_in
    x = torch.randn(1, 3, 384)
    with torch.no_grad(), packed_weights(model):
        before = layer(x)
        layer.weight.mul_(2.0)  # in place: same storage, a new version
        torch.testing.assert_close(layer(x), 2 * before - layer.bias, rtol=1e-4, atol=1e-4)
        layer.weight = nn.Parameter(torch.zeros_like(layer.weight))  # replaced
        torch.testing.assert_close(layer(x), layer.bias.expand(1, 3, -1), rtol=0, atol=0)


def test_max_bytes_below_the_copies_packs_nothing():
    model = wide_gpt()
    with packed_weights(model, max_bytes=0):
        assert packed_layers(model) == []


def test_packed_weights_names_a_bad_model_or_budget():
    with pytest.raises(TypeError, match="takes a model .*got str"):
        with packed_weights("runs/model"):
            pass
    for bad in (-1, 1.5, "1GB", True):
        with pytest.raises(ValueError, match=f"max_bytes must be None or an int >= 0, got {bad!r}"):
            with packed_weights(wide_gpt(n_layers=1), max_bytes=bad):
                pass


@needs_onednn
def test_generate_decodes_through_packed_onednn_weights_and_keeps_the_tokens(monkeypatch):
    model = wide_gpt()
    prompt = torch.randint(0, 97, (1, 7))
    with torch.profiler.profile() as prof:
        fast = qkv.generate(model, prompt, max_new_tokens=12, eos_token_id=(), return_scores=True)
    assert any(e.key == "mkldnn::_linear_pointwise" for e in prof.key_averages())
    assert packed_layers(model) == []  # the copies live for the call only
    monkeypatch.setattr(linear_op, "ONEDNN_MIN_WEIGHTS", 1 << 62)  # every product through F.linear
    plain = qkv.generate(model, prompt, max_new_tokens=12, eos_token_id=(), return_scores=True)
    assert torch.equal(fast.sequences, plain.sequences)
    torch.testing.assert_close(fast.token_logprobs, plain.token_logprobs, rtol=1e-4, atol=1e-4)


def test_compiled_decoding_of_wide_weights_gives_the_eager_tokens_also_inside_a_packing_context():
    model = wide_gpt(n_layers=1)
    prompt = torch.randint(0, 97, (1, 5))
    eager = qkv.generate(model, prompt, max_new_tokens=4, eos_token_id=())
    compiled = qkv.generate(model, prompt, max_new_tokens=4, eos_token_id=(), compile=True)
    with packed_weights(model):  # a compiled graph traces the plain product, not the packed copies
        compiled_inside = qkv.generate(model, prompt, max_new_tokens=4, eos_token_id=(), compile=True)
    assert torch.equal(compiled, eager) and torch.equal(compiled_inside, eager)


@needs_onednn
def test_a_bfloat16_model_decodes_from_packed_weights_with_the_same_tokens(monkeypatch):
    model = wide_gpt().to(torch.bfloat16)
    prompt = torch.randint(0, 97, (1, 7))
    with torch.no_grad(), packed_weights(model):
        assert len(packed_layers(model)) == 8
    packed = qkv.generate(model, prompt, max_new_tokens=12, eos_token_id=())
    monkeypatch.setattr(importlib.import_module("qkv.decoding.generate"), "packed_for_decoding",
                        lambda model, compile=False: contextlib.nullcontext())
    plain = qkv.generate(model, prompt, max_new_tokens=12, eos_token_id=())
    assert torch.equal(packed, plain)


@needs_onednn
def test_a_model_copied_inside_the_context_leaves_the_packed_copies_behind():
    model = wide_gpt(n_layers=1)
    ids = torch.randint(0, 97, (1, 5))
    with torch.no_grad(), packed_weights(model):
        twin = copy.deepcopy(model)  # an opaque oneDNN tensor has no storage to copy: it must not come along
        assert packed_layers(twin) == [] and len(packed_layers(model)) == 4
        torch.testing.assert_close(twin(ids), model(ids), rtol=1e-4, atol=1e-4)


@needs_onednn
def test_a_file_of_batches_packs_each_weight_once(monkeypatch):
    from qkv.decoding import generate_many
    layers_module = importlib.import_module("qkv.nn.layers")
    packed = []
    real = layers_module.pack_weight
    monkeypatch.setattr(layers_module, "pack_weight", lambda w: packed.append(w) or real(w))
    model = wide_gpt(n_layers=1)
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]
    answers = generate_many(model, prompts, max_new_tokens=3, tokens_per_batch=8, pad_token_id=0, eos_token_id=())
    assert len(packed) == 4  # qkv, out, w_in, w_out: once for the run, not once per batch
    one_by_one = [qkv.generate(model, torch.tensor([p]), max_new_tokens=3, eos_token_id=())[0, len(p):].tolist()
                  for p in prompts]
    assert [a.tokens for a in answers] == one_by_one
