"""The rolling KV cache of sliding-window layers: its buffer stays bounded by the window however long the sequence,
and decoding through it gives the full pass's logits past the window (prefill, token steps, padding, beams)."""
import importlib

import pytest
import torch

import qkv
from qkv.nn.cache import KVCache

W = 3  # each token sees itself and 3 earlier ones


def _model(**overrides):
    torch.manual_seed(0)
    return qkv.build(qkv.preset("llama-tiny", window=W, **overrides)).double().eval()


def _ids(model, B=2, T=37):
    return torch.randint(0, model.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("prefill", [1, 2, 11])
def test_rolling_buffer_stays_bounded_and_steps_equal_full_pass(prefill):
    model = _model()
    ids = _ids(model)
    cache = model.new_cache(2)
    layers = [layer.mixer for layer in cache.layers]
    assert all(isinstance(c, KVCache) and c.window == W for c in layers)
    with torch.no_grad():
        full = model(ids)
        steps = [model(ids[:, :prefill], cache)]
        sizes = set()
        for i in range(prefill, ids.shape[1]):
            steps.append(model(ids[:, i:i + 1], cache))
            sizes |= {c.k.shape[2] for c in layers}
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-10)
    assert sizes == {W + 1}  # a token's window: itself and W earlier keys, whatever the length (37 here)
    assert cache.length == layers[0].length == ids.shape[1]


def test_chunked_prefill_through_a_rolling_cache():
    """Several tokens per call: each chunk sees the kept W keys and itself."""
    model = _model()
    ids = _ids(model, T=30)
    cache = model.new_cache(2)
    with torch.no_grad():
        got = torch.cat([model(ids[:, i:i + 7], cache) for i in range(0, 30, 7)], 1)
        torch.testing.assert_close(got, model(ids), rtol=1e-10, atol=1e-10)
    assert cache.layers[0].mixer.k.shape[2] <= W + 7


def test_hybrid_stack_rolls_only_its_window_layers():
    model = _model(n_layers=4, layer_pattern="WA")
    cache = model.new_cache(1)
    ids = _ids(model, B=1, T=25)
    with torch.no_grad():
        got = torch.cat([model(ids[:, i:i + 1], cache) for i in range(25)], 1)
        torch.testing.assert_close(got, model(ids), rtol=1e-10, atol=1e-10)
    assert [layer.mixer.k.shape[2] for layer in cache.layers][::2] == [W + 1, W + 1]
    assert all(layer.mixer.k.shape[2] >= 25 for layer in cache.layers[1::2])  # full layers keep every key


def test_generate_over_rolling_caches_equals_full_caches(monkeypatch):
    """Greedy and beam search (rows reordered in the rolling buffers), left padding included, give the tokens of
    caches that keep every position."""
    gen = importlib.import_module("qkv.decoding.prefill")  # where a run makes its cache
    model = _model()
    ids = _ids(model, B=2, T=9)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    kept = gen.new_cache
    for beams in (1, 3):
        rolling = qkv.generate(model, ids, attention_mask=mask, max_new_tokens=12, num_beams=beams, eos_token_id=())
        monkeypatch.setattr(gen, "new_cache", lambda m, b, capacity, static: kept(m, b, capacity, static=True))
        full = qkv.generate(model, ids, attention_mask=mask, max_new_tokens=12, num_beams=beams, eos_token_id=())
        monkeypatch.setattr(gen, "new_cache", kept)
        assert torch.equal(rolling, full)


def test_static_caches_keep_every_position_and_never_roll():
    model = _model()
    cache = model.new_cache(1, max_len=16, static=True)
    assert all(layer.mixer.window is None and layer.mixer.static for layer in cache.layers)
    with pytest.raises(ValueError, match="cannot roll"):
        KVCache(16, window=W, static=True)
    with pytest.raises(ValueError, match=r"preallocated cache: new_cache\(batch_size, max_len=...\)"):
        model.new_cache(1, static=True)


def test_rolling_cache_keeps_max_len_and_window_checks():
    with pytest.raises(ValueError, match="window must be None or an int >= 0"):
        KVCache(window=-1)
    cache = KVCache(max_len=4, window=2)
    k = torch.zeros(1, 1, 3, 2)
    cache.update(k, k)
    with pytest.raises(ValueError, match="KV cache is full"):
        cache.update(k, k)
