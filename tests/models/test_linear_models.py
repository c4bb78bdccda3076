"""Linear-time and hybrid decoders built from presets: cached decoding equals the full pass, recurrent layers keep
a constant-size state, beam reordering works, gradients reach every weight, the layer pattern follows the config."""
import pytest
import torch

import qkv
from qkv.nn.cache import KVCache, RecurrentCache
from qkv.nn import LinearAttention, MemoryAttention, MultiHeadAttention, MultiScaleRetention, RWKVBlock

PRESETS = ("linear-tiny", "retnet-tiny", "rwkv4-tiny", "hybrid-tiny", "memory-tiny", "rwkv5-tiny", "rwkv6-tiny",
           "rwkv7-tiny", "gla-tiny", "hgrn2-tiny", "deltanet-tiny", "gated-deltanet-tiny", "gated-deltanet-h1-tiny", "mamba2-tiny")


def _model(name, **overrides):
    """A float64 model whose chunk / segment sizes (4 / 5) divide none of the lengths used below."""
    torch.manual_seed(0)
    model = qkv.build(qkv.preset(name, **overrides)).double().eval()
    for block in model.blocks:
        if hasattr(block.mixer, "chunk_size"):
            block.mixer.chunk_size = 4
        if isinstance(block.mixer, MemoryAttention):
            block.mixer.segment = 5
    return model


def _ids(B=2, T=13):
    return torch.randint(0, 256, (B, T))


@pytest.mark.parametrize("name", PRESETS)
def test_cached_steps_and_prompt_then_steps_equal_full_pass(name):
    model, ids = _model(name), _ids()
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2)
        steps = torch.cat([model(ids[:, t:t + 1], cache) for t in range(13)], 1)
        cache = model.new_cache(2)
        pieces = [model(ids[:, :6], cache), model(ids[:, 6:9], cache)]
        pieces += [model(ids[:, t:t + 1], cache) for t in range(9, 13)]
    torch.testing.assert_close(steps, full, rtol=0, atol=1e-10)
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=0, atol=1e-10)
    assert cache.length == 13


def _recurrent_numel(cache):
    return sum(layer.mixer.numel() for layer in cache.layers if isinstance(layer.mixer, RecurrentCache))


@pytest.mark.parametrize("name", PRESETS)
def test_recurrent_state_size_is_constant_in_length(name):
    model, sizes = _model(name), []
    with torch.no_grad():
        for T in (5, 50):
            cache = model.new_cache(1)
            model(_ids(1, T), cache)
            model(_ids(1, 1), cache)
            sizes.append(_recurrent_numel(cache))
            kv = [layer.mixer for layer in cache.layers if isinstance(layer.mixer, KVCache)]
            assert all(c.length == T + 1 for c in kv)  # hybrids: only the softmax layers grow
    assert sizes[0] == sizes[1] > 0


@pytest.mark.parametrize("name", PRESETS)
def test_cache_reorder_continues_the_chosen_rows(name):
    model, ids = _model(name), _ids(B=3, T=10)
    index = torch.tensor([1, 1, 0])
    with torch.no_grad():
        cache = model.new_cache(3)
        model(ids[:, :7], cache)
        cache.reorder(index)
        out = torch.cat([model(ids[index, t:t + 1], cache) for t in range(7, 10)], 1)
        ref = model(ids[index])[:, 7:]
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", PRESETS)
def test_gradients_reach_every_weight(name):
    model, ids = _model(name), _ids(B=2, T=9)
    model.train()
    logits = model(ids[:, :-1])
    torch.nn.functional.cross_entropy(logits.reshape(-1, 256), ids[:, 1:].reshape(-1)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", PRESETS)
def test_save_and_load_round_trip(name, tmp_path):
    model, ids = _model(name), _ids(B=1, T=7)
    model.save(tmp_path)
    loaded = qkv.load(tmp_path, dtype=torch.float64)
    for block in loaded.blocks:  # chunk sizes are compute details, not saved: match the test's
        if hasattr(block.mixer, "chunk_size"):
            block.mixer.chunk_size = 4
        if isinstance(block.mixer, MemoryAttention):
            block.mixer.segment = 5
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=1e-10)


def _kinds(model):
    return [type(b).__name__ if isinstance(b, RWKVBlock) else type(b.mixer).__name__ for b in model.blocks]


def test_layer_pattern_follows_the_config():
    assert _kinds(_model("linear-tiny")) == ["LinearAttention"] * 2
    assert _kinds(_model("retnet-tiny")) == ["MultiScaleRetention"] * 2
    assert _kinds(_model("rwkv4-tiny")) == ["RWKVBlock"] * 2
    assert _kinds(_model("memory-tiny")) == ["MemoryAttention"] * 2
    assert _kinds(_model("hybrid-tiny")) == ["MultiScaleRetention", "MultiHeadAttention"] * 2
    # every 3rd of 6 blocks softmax, any recurrent mixer (RWKV included: its blocks sit beside ordinary ones)
    for mixer, kind in (("linear", "LinearAttention"), ("rwkv4", "RWKVBlock"), ("memory", "MemoryAttention")):
        letter = {"linear": "L", "rwkv4": "K", "memory": "M"}[mixer]
        m = qkv.build(qkv.preset("linear-tiny", mixer=mixer, n_layers=6, layer_pattern=letter * 2 + "A", n_heads=4))
        assert _kinds(m) == [kind, kind, "MultiHeadAttention"] * 2
    rwkv = _model("rwkv4-tiny")
    assert rwkv.blocks[0].ln0 is not None and rwkv.blocks[1].ln0 is None  # ln0 on the embeddings only
    new = qkv.build(qkv.preset("gla-tiny", n_layers=7, layer_pattern="GDE567W", window=4, n_heads=4))
    assert [type(b.mixer).__name__ for b in new.blocks] == [
        "GatedLinearAttention", "DeltaNet", "DeltaNet", "RWKV5TimeMix", "RWKV6TimeMix", "RWKV7TimeMix",
        "MultiHeadAttention"]
    assert not new.blocks[1].mixer.gated and new.blocks[2].mixer.gated and new.blocks[5].mixer.first
    assert new.stack() == ("GDE567W (G gla, D deltanet, E gated_deltanet, 5 rwkv5, 6 rwkv6, 7 rwkv7, "
                           "W sliding-window attention)")


def test_rwkv7_value_residual_starts_at_the_first_rwkv7_block_of_a_hybrid():
    model = _model("rwkv7-tiny", n_layers=4, layer_pattern="A77A")
    firsts = [getattr(b.mixer, "first", None) for b in model.blocks]
    assert firsts == [None, True, False, None] and not hasattr(model.blocks[1].mixer, "v0")
    ids = _ids()
    with torch.no_grad():
        cache = model.new_cache(2)
        steps = torch.cat([model(ids[:, t:t + 1], cache) for t in range(13)], 1)
        torch.testing.assert_close(steps, model(ids), rtol=0, atol=1e-10)
        # the second RWKV-7 block reads the first one's values: changing them changes its output
        before = model(ids)
        model.blocks[1].mixer.value.weight.add_(0.5)
        model.blocks[1].mixer.output.weight.zero_()  # only the shared values still carry the change
        assert not torch.allclose(model(ids), before)


@pytest.mark.parametrize("name", PRESETS)
def test_return_weights_gives_every_layer_a_causal_map(name):
    model, ids = _model(name), _ids(B=1, T=9)
    with torch.no_grad():
        logits, weights = model(ids, return_weights=True)
        torch.testing.assert_close(logits, model(ids), rtol=0, atol=1e-12)
    H = model.config.n_heads
    assert len(weights) == model.config.n_layers
    for w in weights:
        assert w.self_attn.shape == (1, H, 9, 9) and torch.isfinite(w.self_attn).all()
        assert torch.equal(w.self_attn.triu(1), torch.zeros_like(w.self_attn))


@pytest.mark.parametrize("name", PRESETS)
def test_flops_per_token_do_not_grow_with_context_unless_attention_sees_it(name):
    model = qkv.build(qkv.preset(name))
    short, long = model.flops_per_token(1024), model.flops_per_token(65536)
    kinds = {kind for kind, window in model.layer_mixers() if kind == "attention" and window is None}
    if kinds:  # full softmax layers pay for every token of the context
        assert long > short
    else:  # linear-time mixers and sliding windows: the same cost at 1k and 64k
        assert long == short
    # and softmax attention's term is the only one that grows: 4 T H D per full layer
    full = sum(1 for kind, window in model.layer_mixers() if kind == "attention" and window is None)
    cfg = model.config
    assert long - short == 4 * (65536 - 1024) * cfg.n_heads * cfg.head_dim * full


def test_flops_count_the_attention_term_for_softmax_models_only():
    gpt, gla = qkv.build(qkv.preset("gpt2-tiny")), qkv.build(qkv.preset("gla-tiny"))
    assert gpt.flops_per_token(4096) - gpt.flops_per_token(1024) == 4 * 3072 * 4 * 16 * 2
    assert gla.flops_per_token(4096) == gla.flops_per_token(1024)


def test_layer_pattern_sets_each_blocks_window_and_old_configs_still_load():
    cfg = qkv.preset("llama-tiny", n_layers=5, layer_pattern="WWA", window=3)
    model = qkv.build(cfg)
    assert [b.window for b in model.blocks] == [3, 3, None, 3, 3]
    legacy = {k: v for k, v in qkv.preset("retnet-tiny").to_dict().items() if k != "layer_pattern"}
    assert qkv.ModelConfig.from_dict({**legacy, "attention_every": 2}).layer_pattern == "RA"
    assert qkv.ModelConfig.from_dict({**legacy, "attention_every": 0}).layer_pattern is None
    for bad, match in (({"layer_pattern": "AX"}, "letters"), ({"layer_pattern": "W"}, "set window"),
                       ({"layer_pattern": "A", "window": 2}, "no sliding-window"),
                       ({"mixer": "linear", "window": 2}, "mixer='linear'")):
        with pytest.raises(ValueError, match=match):
            qkv.preset("llama-tiny", **bad)


def test_windowed_and_full_layers_decode_like_their_full_pass():
    model = _model("llama-tiny", n_layers=4, layer_pattern="WA", window=2)
    ids = _ids(T=9)
    with torch.no_grad():
        cache = model.new_cache(2)
        steps = torch.cat([model(ids[:, t:t + 1], cache) for t in range(9)], 1)
        full = model(ids)
        torch.testing.assert_close(steps, full, rtol=0, atol=1e-10)
        # the full layers see further than the window: the output differs from an all-window stack's
        narrow = _model("llama-tiny", n_layers=4, layer_pattern="W", window=2)
        assert not torch.allclose(narrow(ids)[:, -1], full[:, -1])


def test_rwkv_hybrid_decodes_like_its_full_pass():
    model, ids = _model("rwkv4-tiny", n_layers=4, layer_pattern="KA", n_heads=4, head_dim=16), _ids()
    assert _kinds(model) == ["RWKVBlock", "MultiHeadAttention"] * 2
    with torch.no_grad():
        cache = model.new_cache(2)
        steps = torch.cat([model(ids[:, t:t + 1], cache) for t in range(13)], 1)
        torch.testing.assert_close(steps, model(ids), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", PRESETS)
def test_left_padded_rows_equal_each_row_alone(name):
    """Padding adds nothing to a recurrent state (nor to a token shift, a convolution's history or a memory's
    segments): a left-padded batch gives each row's own logits, in one full pass and through the cache."""
    model = _model(name)
    a, b = _ids(1, 11), _ids(1, 6)
    batch = torch.cat([a, torch.cat([torch.zeros(1, 5, dtype=torch.long), b], 1)])
    mask = torch.tensor([[1] * 11, [0] * 5 + [1] * 6])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        alone = [model(a)[0], model(b)[0]]
        full = model(batch, attention_mask=mask, position_ids=positions)
        cache = model.new_cache(2)
        pieces = [model(batch[:, :8], cache, attention_mask=mask[:, :8], position_ids=positions[:, :8])]
        pieces += [model(batch[:, t:t + 1], cache, attention_mask=mask[:, :t + 1], position_ids=positions[:, t:t + 1])
                   for t in range(8, 11)]
    for got in (full, torch.cat(pieces, 1)):
        torch.testing.assert_close(got[0], alone[0], rtol=0, atol=1e-10)
        torch.testing.assert_close(got[1, 5:], alone[1], rtol=0, atol=1e-10)


def test_unknown_mixer_is_refused():
    with pytest.raises(ValueError, match="mixer"):
        qkv.preset("linear-tiny", mixer="mamba")


@pytest.mark.parametrize("name", ["linear-tiny", "retnet-tiny", "rwkv4-tiny", "hybrid-tiny", "memory-tiny",
                                  "rwkv7-tiny", "gated-deltanet-h1-tiny"])
def test_generate_over_the_recurrent_state_equals_greedy_by_full_recomputation(name):
    import qkv
    model = qkv.build(qkv.preset(name)).eval()
    prompt = torch.randint(0, model.config.vocab_size, (2, 7))
    expected = prompt
    with torch.no_grad():
        for _ in range(6):
            expected = torch.cat([expected, model(expected)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(qkv.generate(model, prompt, max_new_tokens=6), expected)
    assert torch.equal(qkv.generate(model, prompt, max_new_tokens=6, num_beams=1), expected)
    beams = qkv.generate(model, prompt, max_new_tokens=6, num_beams=3, num_return_sequences=2)
    assert beams.shape == (4, 13) and torch.equal(beams[:, :7], prompt.repeat_interleave(2, dim=0))
    # a left-padded batch: each row decodes as it does alone
    short = prompt[1:, 3:]
    padded = torch.cat([prompt[:1], torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1)])
    mask = torch.tensor([[1] * 7, [0] * 3 + [1] * 4])
    out = qkv.generate(model, padded, attention_mask=mask, max_new_tokens=6, eos_token_id=())
    assert torch.equal(out[0], expected[0])
    assert torch.equal(out[1, 3:], qkv.generate(model, short, max_new_tokens=6, eos_token_id=())[0])


@pytest.mark.parametrize("name", ["retnet-tiny", "rwkv4-tiny"])
def test_the_training_loop_trains_a_recurrent_model(name, tmp_path):
    import qkv
    from qkv.train import train
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 30)
    cfg = qkv.TrainConfig(data=str(corpus), out_dir=str(tmp_path / "run"), max_steps=4, batch_size=4, block_size=16,
                          eval_every=4, eval_steps=1, warmup_steps=1, progress=False)
    summary = train(qkv.preset(name, max_positions=16), cfg)
    assert summary.steps == 4 and summary.val_loss is not None and summary.val_loss == summary.val_loss
