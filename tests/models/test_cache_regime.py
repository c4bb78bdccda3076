"""One cache regime for every mixer: cached decoding equals the full pass (growing and static caches), a left-padded
batch decodes each row as it decodes alone, a compiled decoding step gives the eager tokens, ``crop(length)``
rewinds a KV cache to a shorter prefix, and ``snapshot()`` / ``restore(snap)`` rewind every recurrent state.

"Every mixer" is one small decoder whose stack holds each mixer ``qkv.config.MIXERS`` names once (one layer per
pattern letter, sliding-window attention included), so a new mixer is covered here by its letter alone. The
speculative decoding of qkv.generate relies on exactly this API: ``cache.crop``, ``cache.snapshot``,
``cache.restore``, ``cache.length``.
"""
import importlib

import pytest
import torch

import qkv
from qkv.config import PATTERN_LETTERS
from qkv.nn.cache import KVCache, RecurrentCache

EVERY = "".join(dict.fromkeys(PATTERN_LETTERS))  # each letter once: every mixer, sliding-window attention too
RECURRENT_PRESETS = ("linear-tiny", "retnet-tiny", "rwkv4-tiny", "rwkv5-tiny", "rwkv6-tiny", "rwkv7-tiny",
                     "memory-tiny", "gla-tiny", "hgrn2-tiny", "deltanet-tiny", "gated-deltanet-tiny", "mamba2-tiny",
                     "hybrid-tiny", "gated-deltanet-h1-tiny")


def every_mixer(dtype=torch.float64):
    """A decoder with one block of every mixer (positions: none, which every mixer accepts), scaled so its logits
    have no near-ties."""
    torch.manual_seed(0)
    cfg = qkv.preset("gla-tiny", layer_pattern=EVERY, n_layers=len(EVERY), window=3, position="none", d_ff=96,
                     rwkv_ranks={"mix": 8, "decay": 16, "a": 16, "v": 8, "gate": 16})
    model = qkv.build(cfg).to(dtype).eval()
    with torch.no_grad():
        for p in model.norm.parameters():
            p.mul_(20.0)
    return model


def _ids(B, T, seed=1):
    return torch.randint(3, 256, (B, T), generator=torch.Generator().manual_seed(seed))


def test_every_mixer_is_in_the_stack():
    model = every_mixer()
    mixers = {kind for kind, _ in model.layer_mixers()}
    assert mixers == set(qkv.config.MIXERS)
    assert {type(layer.mixer) for layer in model.new_cache(1).layers} == {KVCache, RecurrentCache}


@pytest.mark.parametrize("static", [False, True])
def test_every_mixer_decodes_through_its_cache_like_the_full_pass(static):
    model, ids = every_mixer(), _ids(2, 11)
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2, 16 if static else None, static=static)
        pieces = [model(ids[:, :5], cache)] + [model(ids[:, t:t + 1], cache) for t in range(5, 11)]
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=0, atol=1e-9)
    assert cache.length == 11


@pytest.fixture
def eager_static(monkeypatch):
    """compile=True without the compiler: the static step runs eagerly (float64, exact comparisons)."""
    step, beam = importlib.import_module("qkv.decoding.step"), importlib.import_module("qkv.decoding.beam")
    monkeypatch.setattr(step, "compiled_step", lambda decoding, device_type: decoding.step)
    monkeypatch.setattr(beam, "compiled_select", lambda device_type: beam.beam_select)


@pytest.mark.parametrize("compile", [True])  # growing caches: tests/models/test_linear_models.py, per preset
def test_every_mixer_left_padded_rows_decode_as_they_do_alone(compile, eager_static):
    model = every_mixer()
    long, short = _ids(1, 9), _ids(1, 5, seed=2)
    batch = torch.cat([long, torch.cat([torch.zeros(1, 4, dtype=torch.long), short], 1)])
    mask = torch.tensor([[1] * 9, [0] * 4 + [1] * 5])
    out = qkv.generate(model, batch, attention_mask=mask, max_new_tokens=6, eos_token_id=(), compile=compile)
    assert torch.equal(out[0], qkv.generate(model, long, max_new_tokens=6, eos_token_id=())[0])
    assert torch.equal(out[1, 4:], qkv.generate(model, short, max_new_tokens=6, eos_token_id=())[0])


@pytest.mark.slow
def test_every_mixer_compiled_step_gives_the_eager_tokens(monkeypatch):
    """torch.compile captures every mixer's decoding step as one graph (fullgraph: no host read, no graph break,
    states written in place) and gives the eager tokens, for a left-padded batch and for beam search. The graph
    runs on the AOT-eager backend: Inductor's code generation would take minutes on this stack, and gpt2-tiny /
    transformer-tiny run it in tests/test_generate.py."""
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is unavailable")
    step, beam = importlib.import_module("qkv.decoding.step"), importlib.import_module("qkv.decoding.beam")
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, backend="aot_eager", fullgraph=True,
                                                                    dynamic=kw.get("dynamic")))
    monkeypatch.setattr(step, "_COMPILED", {})  # graphs made here stay here
    monkeypatch.setattr(beam, "_COMPILED_SELECT", {})
    model = every_mixer(torch.float32)
    ids = _ids(2, 7)
    mask = torch.tensor([[1] * 7, [0, 0, 0, 1, 1, 1, 1]])
    for kwargs in (dict(attention_mask=mask), dict(num_beams=2)):
        eager = qkv.generate(model, ids, max_new_tokens=5, eos_token_id=(), **kwargs)
        assert torch.equal(qkv.generate(model, ids, max_new_tokens=5, eos_token_id=(), compile=True, **kwargs),
                           eager), kwargs


# -- crop: a KV cache rewound to a shorter prefix --------------------------------------------------------------

CROPPABLE = [("gpt2-tiny", {}, {}), ("llama-tiny", {}, {}), ("gpt2-tiny", {"position": "alibi"}, {}),
             ("llama-tiny", {}, {"max_len": 24, "static": True}),
             ("llama-tiny", {"window": 3}, {"rewind": 4}),  # a rolling cache keeping 4 positions more
             ("llama-tiny", {"window": 2, "layer_pattern": "WA", "n_layers": 4}, {"rewind": 4})]


def _feed(model, cache, ids, prefill):
    """ids through cache: the first ``prefill`` at once, then one at a time; the logits of every position fed."""
    out = [model(ids[:, :prefill], cache)] if prefill else []
    out += [model(ids[:, t:t + 1], cache) for t in range(prefill, ids.shape[1])]
    return torch.cat(out, 1)


@pytest.mark.parametrize("name, overrides, cache_kw", CROPPABLE)
def test_crop_then_decode_equals_decoding_the_shorter_prefix(name, overrides, cache_kw):
    torch.manual_seed(0)
    model = qkv.build(qkv.preset(name, **overrides)).double().eval()
    ids, other = _ids(2, 10), _ids(2, 4, seed=3)
    with torch.no_grad():
        cache = model.new_cache(2, **cache_kw)
        _feed(model, cache, ids, 6)  # 6 at once, then 4 steps: 10 tokens
        cache.crop(7)
        assert cache.length == 7
        got = _feed(model, cache, other, 0)  # a different continuation of the first 7
        fresh = model.new_cache(2, **cache_kw)
        _feed(model, fresh, ids[:, :7], 7)
        expected = _feed(model, fresh, other, 0)
        full = model(torch.cat([ids[:, :7], other], 1))[:, 7:]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(got, full, rtol=1e-9, atol=1e-9)
    assert cache.length == 11


def test_crop_refuses_what_it_cannot_rewind():
    torch.manual_seed(0)
    model = qkv.build(qkv.preset("llama-tiny", window=3)).double().eval()
    with torch.no_grad():
        cache = model.new_cache(1, rewind=2)
        _feed(model, cache, _ids(1, 12), 8)
        with pytest.raises(ValueError, match=r"crop\(length=13\): the cache holds 12 tokens"):
            cache.crop(13)
        with pytest.raises(ValueError, match=r"rewind=N"):  # the window before position 7 is gone
            cache.crop(7)
        cache.crop(10)  # within the 2 kept positions
        assert cache.length == 10
        recurrent = qkv.build(qkv.preset("retnet-tiny")).eval()
        rcache = recurrent.new_cache(1)
        recurrent(_ids(1, 5), rcache)
        with pytest.raises(ValueError, match=r"snapshot\(\) at length 3 and cache.restore"):
            rcache.crop(3)


# -- snapshot / restore: every recurrent state rewound ------------------------------------------------------------

def _model(name):
    if name == "every":
        return every_mixer()
    torch.manual_seed(0)
    return qkv.build(qkv.preset(name)).double().eval()


@pytest.mark.parametrize("name, static", [(n, s) for n in RECURRENT_PRESETS for s in (False, True)] +
                         [("every", False)])  # the presets cover each state; "every" adds a rolling window
def test_restore_rewinds_to_the_snapshot(name, static):
    """Decode on, restore the snapshot, decode something else: the logits of decoding that directly. The snapshot
    stays usable (restored twice), and a static cache's tensors never move."""
    model = _model(name)
    prompt, first, second = _ids(2, 6), _ids(2, 3, seed=4), _ids(2, 3, seed=5)
    cache_kw = dict(max_len=16, static=True) if static else {}
    with torch.no_grad():
        cache = model.new_cache(2, **cache_kw)
        model(prompt, cache)
        snap = cache.snapshot()
        addresses = [t.data_ptr() for t in cache.tensors()]
        went_on = _feed(model, cache, first, 0)
        cache.restore(snap)
        assert cache.length == 6
        got = _feed(model, cache, second, 0)
        cache.restore(snap)
        again = _feed(model, cache, first, 0)
        fresh = model.new_cache(2, **cache_kw)
        model(prompt, fresh)
        expected = _feed(model, fresh, second, 0)
        if static:
            assert [t.data_ptr() for t in cache.tensors()] == addresses
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    torch.testing.assert_close(again, went_on, rtol=0, atol=1e-10)
    assert cache.length == 9


def test_restore_refuses_another_caches_snapshot():
    model = _model("hybrid-tiny")
    snap = model.new_cache(1).snapshot()
    other = qkv.build(qkv.preset("retnet-tiny")).new_cache(1)
    with pytest.raises(ValueError, match="the snapshot has 4 layers, this cache 2"):
        other.restore(snap)
