"""Decoding: cached steps equal full passes, greedy equals a naive loop, beam search equals exhaustive search on a
tiny vocabulary, sampling is seeded and collapses to greedy at its limits, and Hugging Face's ``generate`` gives
the same tokens on the same (imported) weights."""
import importlib
import itertools
import math

import pytest
import torch
import torch.nn as nn

import qkv
from qkv.nn.cache import Cache, KVCache
from qkv.decoding import GenerationConfig, generate, stream
from qkv.decoding import top_k_top_p as _filter
from qkv.decoding.prefill import prefill
from qkv.models.common import Embeddings, QKVModel, final_norm, make_block
from qkv.ops.masks import padding_mask


# ---------------------------------------------------------------------------------------------------------------
# Models

class TinySeq2Seq(QKVModel):
    """A stand-in encoder-decoder with the interface generate relies on (encode / decode / new_cache)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.src_embed = Embeddings(config)
        self.tgt_embed = Embeddings(config, tokens=self.src_embed.tokens)
        self.encoder = nn.ModuleList(make_block(config, layer=i) for i in range(config.n_layers))
        self.decoder = nn.ModuleList(make_block(config, layer=i, cross=True) for i in range(config.n_layers))
        self.enc_norm, self.dec_norm = final_norm(config), final_norm(config)
        self.head = nn.Linear(config.d_model, config.vocab_size)
        self.encode_calls = 0

    def decoder_blocks(self):
        return self.decoder

    def encode(self, input_ids, attention_mask=None):
        self.encode_calls += 1
        x = self.src_embed(input_ids, torch.arange(input_ids.shape[1]))
        mask = None if attention_mask is None else padding_mask(attention_mask)
        for block in self.encoder:
            x = block(x, mask=mask)
        return self.enc_norm(x)

    def decode(self, decoder_input_ids, memory, *, attention_mask=None, cache=None, last_only=False):
        past = 0 if cache is None else cache.length
        T = decoder_input_ids.shape[1]
        x = self.tgt_embed(decoder_input_ids, torch.arange(past, past + T))
        context_mask = None if attention_mask is None else padding_mask(attention_mask)
        for i, block in enumerate(self.decoder):
            x = block(x, context=memory, context_mask=context_mask, causal=True,
                      cache=None if cache is None else cache.layers[i])
        if cache is not None:
            cache.length += T
        if last_only:
            x = x[:, -1:]
        return self.head(self.dec_norm(x))


def _peaky(model, scale=20.0):
    """Multiply the logits by ``scale`` (through the final norm, or the head when there is none) so random models
    have no near-ties between their best tokens."""
    norm = getattr(model, "norm", None)
    for path in ("transformer.ln_f", "model.norm"):  # Hugging Face GPT-2, Llama
        try:
            norm = model.get_submodule(path)
        except AttributeError:
            pass
    target = model.head if norm is None or isinstance(norm, nn.Identity) else norm
    with torch.no_grad():
        for p in target.parameters():
            p.mul_(scale)
    return model.eval()


def make(name, dtype=torch.float64, **overrides):
    torch.manual_seed(0)
    if name == "seq2seq":
        cfg = qkv.preset("transformer-tiny", dropout=0.0, **overrides)
        model = TinySeq2Seq(cfg)
    elif name == "transformer-tiny":  # the real encoder-decoder, once its family is registered
        try:
            model = qkv.build(qkv.preset(name, dropout=0.0, **overrides))
        except ValueError as err:
            pytest.skip(f"no encoder-decoder model class yet: {err}")
    else:
        model = qkv.build(qkv.preset(name, **overrides))
    return _peaky(model).to(dtype)


FAMILIES = ["gpt2-tiny", "llama-tiny", "seq2seq", "transformer-tiny"]


def full_logits(model, prefix, generated, src_mask=None, mask=None):
    """Next-token logits of a full pass without a cache, (N, V)."""
    if model.config.family == "encoder_decoder":
        memory = model.encode(prefix[0], attention_mask=src_mask)
        return model.decode(torch.cat([prefix[1], generated], 1), memory, attention_mask=src_mask)[:, -1]
    ids = torch.cat([prefix, generated], 1)
    if mask is None:
        return model(ids)[:, -1]
    mask = torch.cat([mask, torch.ones_like(generated)], 1)
    return model(ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))[:, -1]


def naive_greedy(model, ids, steps, src_mask=None):
    """Greedy decoding by full recomputation at every step: the definition."""
    if model.config.family == "encoder_decoder":
        prefix = (ids, torch.full((ids.shape[0], 1), model.config.decoder_start_token_id))
    else:
        prefix = ids
    out = torch.zeros(ids.shape[0], 0, dtype=torch.long)
    for _ in range(steps):
        out = torch.cat([out, full_logits(model, prefix, out, src_mask=src_mask).argmax(-1, keepdim=True)], 1)
    return torch.cat([prefix[1] if isinstance(prefix, tuple) else prefix, out], 1)


def _prompt(model, B=2, T=7):
    return torch.randint(3, model.config.vocab_size, (B, T))


# ---------------------------------------------------------------------------------------------------------------
# Cached decoding equals full passes

@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("padded", [False, True])
def test_cached_step_logits_equal_full_pass(name, padded):
    model = make(name)
    ids = _prompt(model, B=3, T=6)
    mask = None
    if padded:
        mask = torch.ones_like(ids)
        mask[1, :2] = 0  # left padding (decoder) / source padding (encoder-decoder)
        mask[2, :5] = 0
        if model.config.family == "encoder_decoder":
            mask = mask.flip(1)  # sources are usually right-padded; any pattern must work
    run = prefill(model, ids, GenerationConfig(max_new_tokens=5, eos_token_id=()), attention_mask=mask)
    seq2seq = model.config.family == "encoder_decoder"
    prefix = (ids, run.prefix) if seq2seq else ids
    generated = torch.zeros(3, 0, dtype=torch.long)
    logits = run.logits
    for _ in range(5):
        expected = full_logits(model, prefix, generated, src_mask=mask if seq2seq else None,
                               mask=None if seq2seq else mask)
        torch.testing.assert_close(logits, expected, rtol=1e-9, atol=1e-9)
        token = logits.argmax(-1)
        generated = torch.cat([generated, token[:, None]], 1)
        logits = run.step(token)


@pytest.mark.parametrize("name", FAMILIES)
def test_greedy_with_cache_equals_naive_recomputation(name):
    model = make(name)
    ids = _prompt(model, B=2, T=5)
    expected = naive_greedy(model, ids, 9)
    assert torch.equal(generate(model, ids, max_new_tokens=9, eos_token_id=()), expected)
    assert torch.equal(generate(model, ids, max_new_tokens=9, eos_token_id=(), static_cache=False), expected)


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny"])
def test_left_padded_batch_equals_each_row_alone(name):
    model = make(name)
    a, b = _prompt(model, 1, 7), _prompt(model, 1, 3)
    batch = torch.cat([a, torch.cat([torch.zeros(1, 4, dtype=torch.long), b], 1)])
    mask = torch.tensor([[1] * 7, [0] * 4 + [1] * 3])
    out = generate(model, batch, attention_mask=mask, max_new_tokens=6, eos_token_id=())
    assert torch.equal(out[0], generate(model, a, max_new_tokens=6, eos_token_id=())[0])
    assert torch.equal(out[1, 4:], generate(model, b, max_new_tokens=6, eos_token_id=())[0])
    beams = generate(model, batch, attention_mask=mask, max_new_tokens=5, num_beams=3, eos_token_id=())
    assert torch.equal(beams[1, 4:], generate(model, b, max_new_tokens=5, num_beams=3, eos_token_id=())[0])


# ---------------------------------------------------------------------------------------------------------------
# Static decoding (compile=True): positions in a preallocated cache, one mask over all of it; recurrent states
# written in place

STATIC = [("gpt2-tiny", {}), ("llama-tiny", {}), ("gpt2-tiny", {"position": "alibi"}),
          ("llama-tiny", {"window": 3}), ("llama-tiny", {"window": 2, "layer_pattern": "WA", "n_layers": 4})]


@pytest.fixture
def eager_static(monkeypatch):
    """compile=True without the compiler: the static-slot step runs eagerly, so float64 and exact checks apply."""
    step, beam = importlib.import_module("qkv.decoding.step"), importlib.import_module("qkv.decoding.beam")
    monkeypatch.setattr(step, "compiled_step", lambda decoding, device_type: decoding.step)
    monkeypatch.setattr(beam, "compiled_select", lambda device_type: beam.beam_select)


def _left_padding(ids):
    """A (3, T) mask: row 0 whole, rows 1 and 2 left-padded by 2 and 5 tokens."""
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :5] = 0
    return mask


@pytest.mark.parametrize("name, overrides", STATIC)
@pytest.mark.parametrize("padded", [False, True])
def test_static_slot_steps_equal_full_pass(name, overrides, padded, eager_static):
    model = make(name, **overrides)
    ids = _prompt(model, B=3, T=6)
    mask = _left_padding(ids) if padded else None
    run = prefill(model, ids, GenerationConfig(max_new_tokens=6, eos_token_id=(), max_len=20, compile=True),
                  attention_mask=mask)  # max_len 20: slots never reach the end
    generated = torch.zeros(3, 0, dtype=torch.long)
    logits = run.logits
    for _ in range(6):
        torch.testing.assert_close(logits, full_logits(model, ids, generated, mask=mask), rtol=1e-9, atol=1e-9)
        token = logits.argmax(-1)
        generated = torch.cat([generated, token[:, None]], 1)
        logits = run.step(token)
    assert run.cache.length == run.cache.layers[0].mixer.length == 6 + 6  # prompt + tokens fed
    assert run.cache.layers[0].mixer.k.shape[2] == 20  # the buffer never moved or grew


RECURRENT = ["linear-tiny", "retnet-tiny", "rwkv4-tiny", "rwkv7-tiny", "memory-tiny", "mamba2-tiny",
             "gated-deltanet-h1-tiny", "hybrid-tiny"]


@pytest.mark.parametrize("name", RECURRENT)
@pytest.mark.parametrize("padded", [False, True])
def test_static_recurrent_steps_equal_full_pass_and_keep_their_buffers(name, padded, eager_static):
    """A static cache of a recurrent (or hybrid) model: every step writes the states in place (their memory never
    moves, as a CUDA graph needs), and gives the full pass's logits, a left-padded batch included."""
    model = make(name)
    ids = _prompt(model, B=3, T=6)
    mask = _left_padding(ids) if padded else None
    run = prefill(model, ids, GenerationConfig(max_new_tokens=5, eos_token_id=(), max_len=16, compile=True),
                  attention_mask=mask)
    addresses = [t.data_ptr() for t in run.cache.tensors()]
    generated = torch.zeros(3, 0, dtype=torch.long)
    logits = run.logits
    for _ in range(5):
        torch.testing.assert_close(logits, full_logits(model, ids, generated, mask=mask), rtol=1e-9, atol=1e-9)
        token = logits.argmax(-1)
        generated = torch.cat([generated, token[:, None]], 1)
        logits = run.step(token)
    assert [t.data_ptr() for t in run.cache.tensors()] == addresses
    assert run.cache.length == 6 + 5


SEQ2SEQ = ["transformer-tiny", "t5-tiny", "mbart-tiny", "marian-tiny"]  # sinusoids, T5 buckets, learned + offset


@pytest.mark.parametrize("name", SEQ2SEQ)
def test_static_seq2seq_steps_equal_full_pass(name, eager_static):
    model = make(name)
    src = _prompt(model, B=3, T=6)
    src_mask = torch.ones_like(src)
    src_mask[1, 4:] = 0  # right-padded sources
    run = prefill(model, src, GenerationConfig(max_new_tokens=6, eos_token_id=(), max_len=12, compile=True),
                  attention_mask=src_mask)
    generated = torch.zeros(3, 0, dtype=torch.long)
    logits = run.logits
    for _ in range(6):
        expected = full_logits(model, (src, run.prefix), generated, src_mask=src_mask)
        torch.testing.assert_close(logits, expected, rtol=1e-9, atol=1e-9)
        token = logits.argmax(-1)
        generated = torch.cat([generated, token[:, None]], 1)
        logits = run.step(token)


@pytest.mark.parametrize("name, overrides", STATIC + [(n, {}) for n in SEQ2SEQ + ["linear-tiny", "rwkv7-tiny",
                                                                                  "memory-tiny", "hybrid-tiny"]])
def test_static_decoding_gives_the_same_tokens(name, overrides, eager_static):
    model = make(name, **overrides)
    ids = _prompt(model, B=2, T=5)
    mask = torch.tensor([[1] * 5, [0, 0, 1, 1, 1]])
    if model.config.family == "encoder_decoder":
        mask = mask.flip(1)
    for kwargs in (dict(), dict(attention_mask=mask), dict(num_beams=3), dict(num_beams=3, attention_mask=mask),
                   dict(do_sample=True, num_return_sequences=2)):
        expected = generate(model, ids, max_new_tokens=7, eos_token_id=(), generator=torch.Generator().manual_seed(0),
                            **kwargs)
        out = generate(model, ids, max_new_tokens=7, eos_token_id=(), compile=True,
                       generator=torch.Generator().manual_seed(0), **kwargs)
        assert torch.equal(out, expected), kwargs


@pytest.mark.parametrize("name", ["gpt2-tiny", "transformer-tiny"])
def test_compiled_decoding_gives_the_eager_tokens(name):
    """The real torch.compile: one graph per batch size, the same tokens as eager decoding (float32)."""
    model = make(name, dtype=torch.float32)
    ids = _prompt(model, B=2, T=5)
    for kwargs in (dict(max_new_tokens=8), dict(max_new_tokens=6, num_beams=2)):
        expected = generate(model, ids, eos_token_id=(), **kwargs)
        assert torch.equal(generate(model, ids, eos_token_id=(), compile=True, **kwargs), expected), kwargs
    if model.config.family == "encoder_decoder":  # sources of other lengths: no error, same tokens
        longer = _prompt(model, B=2, T=9)
        assert torch.equal(generate(model, longer, max_new_tokens=5, eos_token_id=(), compile=True),
                           generate(model, longer, max_new_tokens=5, eos_token_id=()))


def test_compile_refuses_what_it_cannot_do():
    gpt2 = make("gpt2-tiny")
    ids = _prompt(gpt2, 1, 3)
    with pytest.raises(ValueError, match="compile=True needs static_cache=True"):
        generate(gpt2, ids, max_new_tokens=2, compile=True, static_cache=False)
    with pytest.raises(ValueError, match=r"preallocated cache: new_cache\(batch_size, max_len=...\)"):
        gpt2.new_cache(1, static=True)
    with pytest.raises(ValueError, match="'encoder' model reads its input at once and generates no tokens"):
        generate(qkv.build(qkv.preset("bert-tiny")), ids, max_new_tokens=2)


def test_value_checks_are_skipped_only_inside_trusted_values():
    from qkv.ops.checks import checks_values, trusted_values
    model = make("gpt2-tiny")
    bad = torch.tensor([[1, model.config.vocab_size]])
    with pytest.raises(ValueError, match=r"input_ids must lie in \[0, 256\)"):
        model(bad)
    with pytest.raises(ValueError, match="position 200 is beyond the model's 128 learned positions"):
        model(bad[:, :1], position_ids=torch.tensor([200]))
    with pytest.raises(RuntimeError):
        with trusted_values():
            assert not checks_values()
            raise RuntimeError("leaves the block")
    assert checks_values()  # restored however the block ends
    with pytest.raises(ValueError, match="input_ids"):  # prompts are still checked by generate's prefill
        generate(model, bad, max_new_tokens=2)


def test_seq2seq_encodes_once_and_starts_with_the_start_token():
    model = make("seq2seq")
    src = _prompt(model, 2, 6)
    out = generate(model, src, max_new_tokens=4, num_beams=3, eos_token_id=())
    assert model.encode_calls == 1
    assert out.shape == (2, 5) and (out[:, 0] == model.config.decoder_start_token_id).all()
    # padding the source does not change what a row decodes to
    padded = torch.cat([src, torch.zeros(2, 3, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(2, 6), torch.zeros(2, 3)], 1).long()
    again = generate(model, padded, attention_mask=mask, max_new_tokens=4, num_beams=3, eos_token_id=())
    assert torch.equal(again, out)


# ---------------------------------------------------------------------------------------------------------------
# EOS, padding, stopping, streaming

def test_finished_rows_are_padded_and_the_run_stops_when_all_have_finished():
    model = make("gpt2-tiny")
    ids = _prompt(model, 2, 4)
    free = generate(model, ids, max_new_tokens=8, eos_token_id=())
    eos = int(free[0, 4 + 2])  # row 0's third new token
    out = generate(model, ids, max_new_tokens=8, eos_token_id=eos, pad_token_id=1)
    for row in range(2):
        new, ref = out[row, 4:], free[row, 4:]
        hits = (ref == eos).nonzero()
        end = int(hits[0]) + 1 if len(hits) else 8
        assert torch.equal(new[:end], ref[:end]) and (new[end:] == 1).all()
    assert out.shape[1] == 4 + max(int((free[r, 4:] == eos).nonzero()[0]) + 1 if (free[r, 4:] == eos).any()
                                   else 8 for r in range(2))


def test_stop_strings_and_stop_callback_end_rows():
    model = make("gpt2-tiny")
    ids = _prompt(model, 2, 4)
    free = generate(model, ids, max_new_tokens=8, eos_token_id=())

    def decode(tokens):
        return " ".join(str(t) for t in tokens)
    target = str(int(free[1, 4 + 1]))  # row 1's second new token, as text
    out = generate(model, ids, max_new_tokens=8, eos_token_id=(), pad_token_id=0, stop_strings=[target],
                   decode=decode)
    for row in range(2):
        texts = [decode(free[row, 4:5 + i].tolist()) for i in range(8)]
        end = next((i + 1 for i, t in enumerate(texts) if target in t), 8)
        assert torch.equal(out[row, 4:4 + end], free[row, 4:4 + end]) and (out[row, 4 + end:] == 0).all()
    # a callback that stops every row after its third new token
    out = generate(model, ids, max_new_tokens=8, eos_token_id=(), stop=lambda seq: torch.full(
        (seq.shape[0],), seq.shape[1] >= 4 + 3))
    assert torch.equal(out, free[:, :7])


def test_stream_yields_generate_tokens_and_text_pieces():
    model = make("llama-tiny")
    ids = _prompt(model, 2, 4)
    expected = generate(model, ids, max_new_tokens=6, eos_token_id=())

    def decode(tokens):
        return "".join(chr(0x61 + t % 26) for t in tokens)
    chunks = list(stream(model, ids, max_new_tokens=6, eos_token_id=(), decode=decode))
    assert torch.equal(torch.stack([c.tokens for c in chunks], 1), expected[:, 4:])
    for row in range(2):
        assert "".join(c.text[row] for c in chunks) == decode(expected[row, 4:].tolist())


# ---------------------------------------------------------------------------------------------------------------
# Beam search

@pytest.mark.parametrize("name", FAMILIES)
def test_one_beam_equals_greedy(name):
    model = make(name)
    ids = _prompt(model, 2, 5)
    greedy = generate(model, ids, max_new_tokens=7, eos_token_id=())
    assert torch.equal(generate(model, ids, max_new_tokens=7, num_beams=1, eos_token_id=()), greedy)
    eos = int(greedy[0, -4])
    assert torch.equal(generate(model, ids, max_new_tokens=7, num_beams=1, eos_token_id=eos, pad_token_id=0),
                       _beam_search_one(model, ids, eos))


def _beam_search_one(model, ids, eos):
    from qkv.decoding.beam import beam_search
    config = GenerationConfig(max_new_tokens=7, num_beams=1, eos_token_id=eos, pad_token_id=0, early_stopping=True)
    with torch.inference_mode():
        run = prefill(model, ids, config)
        with run.steps():
            return beam_search(run)  # the beam-search code path with a single beam


@torch.no_grad()
def _sequence_logprob(model, prompt, seq):
    logp = model(torch.cat([prompt, seq], 1)).log_softmax(-1)[0, prompt.shape[1] - 1:-1]
    return float(logp.gather(1, seq[0, :, None]).sum())


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
@pytest.mark.parametrize("eos", [None, 2])
def test_full_width_beam_search_finds_the_exhaustive_best(length_penalty, eos):
    V, steps = 6, 3
    model = make("gpt2-tiny", vocab_size=V)
    _peaky(model, 1.5)
    prompt = torch.tensor([[1, 4, 3]])
    scored = []
    for seq in itertools.product(range(V), repeat=steps):
        if eos is not None and eos in seq:
            seq = seq[: seq.index(eos) + 1]  # a hypothesis ends at its EOS
        seq = torch.tensor([seq])
        score = _sequence_logprob(model, prompt, seq) / seq.shape[1] ** length_penalty
        scored.append((score, tuple(seq[0].tolist())))
    best_score, best = max(set(scored))
    out = generate(model, prompt, max_new_tokens=steps, num_beams=V ** steps, length_penalty=length_penalty,
                   eos_token_id=() if eos is None else eos, pad_token_id=0, early_stopping=True)
    assert tuple(out[0, 3:3 + len(best)].tolist()) == best
    # the n-best list is the exhaustive ranking
    ranking = sorted(set(scored), reverse=True)[:4]
    nbest = generate(model, prompt, max_new_tokens=steps, num_beams=V ** steps, length_penalty=length_penalty,
                     eos_token_id=() if eos is None else eos, pad_token_id=0, num_return_sequences=4)
    for row, (_, seq) in zip(nbest, ranking):
        assert tuple(row[3:3 + len(seq)].tolist()) == seq


def test_beam_search_reorders_the_static_cache_in_place():
    cache = KVCache(max_len=10)
    k = torch.randn(3, 2, 4, 5)
    cache.update(k, -k)
    pointer = cache.k.data_ptr()
    cache.reorder(torch.tensor([2, 2, 0]))
    assert cache.k.data_ptr() == pointer
    torch.testing.assert_close(cache.k[:, :, :4], k[[2, 2, 0]])
    torch.testing.assert_close(cache.v[:, :, :4], -k[[2, 2, 0]])
    cache.reorder(torch.tensor([0, 1, 2, 2]))  # a different batch size makes a new buffer
    assert cache.k.shape[0] == 4


def test_beam_search_returns_n_best_sorted_and_padded():
    model = make("llama-tiny")
    ids = _prompt(model, 2, 4)
    out = generate(model, ids, max_new_tokens=6, num_beams=4, num_return_sequences=3, eos_token_id=())
    assert out.shape == (6, 10)
    assert torch.equal(out[::3], generate(model, ids, max_new_tokens=6, num_beams=4, eos_token_id=()))
    assert len({tuple(r) for r in out[:3].tolist()}) == 3


class _Bigram(nn.Module):
    """A decoder-only "model" whose next-token distribution depends on the last token only (a table of
    probabilities), with the decoding interface generate drives: what beam search sees, set by hand."""

    def __init__(self, probs):
        super().__init__()
        self.logp = torch.tensor(probs, dtype=torch.float64).log()  # (V, V): row = last token
        V = self.logp.shape[0]
        self.config = type("Config", (), dict(family="decoder", max_positions=None, position="none",
                                              vocab_size=V, eos_token_id=None, pad_token_id=None, n_layers=1,
                                              n_kv_heads=1, head_dim=1))()

    def new_cache(self, batch_size, max_len=None, *, static=False):
        return Cache([], batch_size, max_len=max_len, static=static)  # no layers: nothing to keep

    def forward(self, input_ids, cache=None, attention_mask=None, position_ids=None, last_only=False):
        return self.logp[input_ids]  # (N, T, V)


def test_default_beam_search_waits_for_the_likely_hypothesis_instead_of_stopping_early():
    """The demo's beam search scored below greedy: with early_stopping=True an input stops as soon as K hypotheses
    have ended, and short unlikely ones can end first. Here the likely path is 1 2 3 4 EOS (p = 0.99 a token) and
    a junk token 6 (p = 0.004 after the start) ends or repeats itself: with K = 2, two junk hypotheses end by step
    3, before the likely one can (step 5)."""
    V, EOS, JUNK, low = 7, 5, 6, 1e-5
    probs = [[low] * V for _ in range(V)]
    for a, b in ((0, 1), (1, 2), (2, 3), (3, 4), (4, EOS)):
        probs[a][b] = 1 - low * (V - 1)
    probs[0][JUNK], probs[0][1] = 0.004, 1 - low * (V - 2) - 0.004
    probs[JUNK] = [0.0] * V
    probs[JUNK][EOS], probs[JUNK][JUNK] = 0.6, 0.4
    probs[EOS] = [1.0 / V] * V
    model = _Bigram(probs)
    prompt = torch.tensor([[0]])
    kw = dict(max_new_tokens=8, eos_token_id=EOS, pad_token_id=EOS)
    greedy = generate(model, prompt, **kw)
    assert greedy[0, 1:6].tolist() == [1, 2, 3, 4, EOS]
    assert torch.equal(generate(model, prompt, num_beams=2, **kw)[:, :6], greedy[:, :6])  # the default: False
    early = generate(model, prompt, num_beams=2, early_stopping=True, **kw)
    # stopped at step 3 with two junk hypotheses (J EOS, J J EOS), before the likely one could finish
    assert early[0, 1:4].tolist() == [JUNK, JUNK, EOS]


@pytest.mark.parametrize("name, length_penalty", [("transformer-tiny", 1.0), ("llama-tiny", 1.0),
                                                   ("gpt2-tiny", 0.0), ("transformer-tiny", 2.0)])
def test_beam_trace_final_hypotheses_are_generates(name, length_penalty):
    from qkv.decoding import beam_search_trace
    model = make(name)
    ids = _prompt(model, 1, 5)
    eos = int(generate(model, ids, max_new_tokens=4, eos_token_id=())[0, -1])  # greedy's 4th token ends it
    kw = dict(max_new_tokens=7, num_beams=3, length_penalty=length_penalty, eos_token_id=eos, pad_token_id=0)
    trace = beam_search_trace(model, ids, **kw)
    assert torch.equal(trace.sequences, generate(model, ids, num_return_sequences=3, **kw))
    assert trace.scores == sorted(trace.scores, reverse=True) and len(trace.scores) == 3
    greedy = generate(model, ids, max_new_tokens=7, eos_token_id=eos, pad_token_id=0)[0, trace.prompt_length:]
    assert trace.greedy == greedy.tolist()[: greedy.tolist().index(eos) + 1]
    # the best hypothesis' score is its summed log-probability over its length ** length_penalty
    best = trace.sequences[0, trace.prompt_length:].tolist()
    best = best[: best.index(eos) + 1] if eos in best else best
    total = _logprob_of(model, ids, best)
    assert trace.scores[0] == pytest.approx(total / len(best) ** length_penalty, rel=1e-4, abs=1e-4)


def _logprob_of(model, ids, tokens):
    """Summed log-probability of ``tokens`` after the prompt (decoder-only) or source (encoder-decoder), float64."""
    with torch.no_grad():
        if model.config.family == "encoder_decoder":
            start = torch.tensor([[model.config.decoder_start_token_id] + tokens[:-1]])
            logits = model(ids, start)[0]
        else:
            logits = model(torch.cat([ids, torch.tensor([tokens[:-1]], dtype=ids.dtype)], 1))[0, ids.shape[1] - 1:]
    logp = logits.double().log_softmax(-1)
    return float(logp.gather(1, torch.tensor(tokens)[:, None]).sum())


def test_beam_trace_steps_rank_extend_and_mark_candidates():
    from qkv.decoding import beam_search_trace
    model = make("transformer-tiny")
    ids = _prompt(model, 1, 6)
    K = 3
    trace = beam_search_trace(model, ids, max_new_tokens=6, num_beams=K, eos_token_id=(), pad_token_id=0)
    assert len(trace.steps) == 6  # no EOS: every step runs, the last one finishes the running beams
    paths = [()]
    for t, step in enumerate(trace.steps):
        assert len(step.tokens) == len(step.parents) == len(step.scores) == len(step.status) == 2 * K
        assert step.scores == sorted(step.scores, reverse=True)
        assert step.status.count("running") == (K if t < 5 else 0)
        assert all(p == -1 for p in step.parents) if t == 0 else all(0 <= p < 2 * K for p in step.parents)
        if t:
            assert all(trace.steps[t - 1].status[p] == "running" for p in step.parents)  # only beams extend
        paths = [paths[max(p, 0)] + (tok,) for p, tok in zip(step.parents, step.tokens)]
        for path, score in zip(paths, step.scores):  # each candidate's score is its path's summed log-probability
            assert score == pytest.approx(_logprob_of(model, ids, list(path)), rel=1e-4, abs=1e-4)
        on_greedy = step.greedy
        assert on_greedy is None or list(paths[on_greedy]) == trace.greedy[: t + 1]
    assert trace.steps[0].greedy == 0  # greedy takes the best first token
    assert trace.steps[-1].status.count("finished") == K
    assert [list(p) for p, st in zip(paths, trace.steps[-1].status) if st == "finished"] == \
        [r[trace.prompt_length:] for r in trace.sequences.tolist()]
    with pytest.raises(ValueError, match="num_beams must be an int >= 2"):
        beam_search_trace(model, ids, max_new_tokens=3, num_beams=1)
    with pytest.raises(ValueError, match=r"shape \(1, T\)"):
        beam_search_trace(model, _prompt(model, 2, 3), max_new_tokens=3)


# ---------------------------------------------------------------------------------------------------------------
# Sampling

def test_seeded_sampling_is_reproducible():
    model = make("gpt2-tiny", dtype=torch.float32)
    ids = _prompt(model, 2, 3)
    kwargs = dict(max_new_tokens=10, do_sample=True, top_k=50, top_p=0.95, temperature=1.5, eos_token_id=(),
                  num_return_sequences=2, repetition_penalty=1.3)
    a = generate(model, ids, generator=torch.Generator().manual_seed(7), **kwargs)
    b = generate(model, ids, generator=torch.Generator().manual_seed(7), **kwargs)
    c = generate(model, ids, generator=torch.Generator().manual_seed(8), **kwargs)
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == (4, 13)


@pytest.mark.parametrize("limit", [dict(top_k=1), dict(top_p=1e-6), dict(temperature=1e-4)])
def test_sampling_at_its_limits_is_greedy(limit):
    model = make("llama-tiny", dtype=torch.float32)
    ids = _prompt(model, 3, 4)
    greedy = generate(model, ids, max_new_tokens=8, eos_token_id=())
    sampled = generate(model, ids, max_new_tokens=8, eos_token_id=(), do_sample=True,
                       generator=torch.Generator().manual_seed(0), **limit)
    assert torch.equal(sampled, greedy)


def test_top_k_and_nucleus_keep_the_right_tokens():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 3.0]]).log_softmax(-1)
    probs = logits.exp()[0]  # sorted: 4, 0, 1, 2, 3
    assert torch.isfinite(_filter(logits, 2, None)).tolist() == [[True, False, False, False, True]]
    p = float(probs[4] + probs[0])  # exactly the top-2 mass: the nucleus is those two
    assert torch.isfinite(_filter(logits, None, p - 1e-6)).tolist() == [[True, False, False, False, True]]
    assert torch.isfinite(_filter(logits, None, p + 1e-6)).tolist() == [[True, True, False, False, True]]
    assert torch.isfinite(_filter(logits, None, 1.0)).all()


def test_repetition_penalty_discourages_seen_tokens():
    model = make("gpt2-tiny", dtype=torch.float32)
    ids = _prompt(model, 1, 3)
    plain = generate(model, ids, max_new_tokens=12, eos_token_id=())[0, 3:]
    penalised = generate(model, ids, max_new_tokens=12, eos_token_id=(), repetition_penalty=1e4)[0, 3:]
    assert len(set(plain.tolist())) < 12 and len(set(penalised.tolist()) | set(ids[0].tolist())) == 15


# ---------------------------------------------------------------------------------------------------------------
# Bad input

@pytest.mark.parametrize("kwargs, words", [
    (dict(num_beams=0), ["num_beams", "0", ">= 1"]),
    (dict(do_sample=True, top_p=0.0), ["top_p", "0.0", "(0, 1]"]),
    (dict(do_sample=True, top_p=1.5), ["top_p", "1.5", "(0, 1]"]),
    (dict(do_sample=True, temperature=0.0), ["temperature", "0.0", "> 0"]),
    (dict(do_sample=True, temperature=-1.0), ["temperature", "-1.0", "> 0"]),
    (dict(do_sample=True, top_k=0), ["top_k", "0", ">= 1"]),
    (dict(max_new_tokens=0), ["max_new_tokens", "0", ">= 1"]),
    (dict(num_beams=2, num_return_sequences=3), ["num_return_sequences", "3", "<= num_beams"]),
    (dict(repetition_penalty=0.0), ["repetition_penalty", "0.0", "> 0"]),
    (dict(stop_strings=["x"]), ["stop_strings", "decode"]),
])
def test_bad_arguments_name_the_argument_value_and_expectation(kwargs, words):
    model = make("gpt2-tiny")
    kwargs = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError) as err:
        generate(model, _prompt(model, 1, 3), **kwargs)
    for word in words:
        assert word in str(err.value)


def test_bad_prompts():
    gpt2, llama = make("gpt2-tiny"), make("llama-tiny")  # max_positions 128 and 256
    with pytest.raises(ValueError, match=r"input_ids .*T >= 1.*\(1, 0\)"):
        generate(gpt2, torch.zeros(1, 0, dtype=torch.long), max_new_tokens=2)
    # GPT-2's learned positions slide past their end (tests/test_sliding_context.py); MBART's target does not
    mbart = qkv.build(qkv.preset("mbart-tiny")).eval()  # max_positions 128
    with pytest.raises(ValueError, match="129 positions.*max_positions=128"):
        generate(mbart, torch.zeros(1, 129, dtype=torch.long), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"max_new_tokens=130 .* 131 positions.*128 learned.*<= 127.*does not slide"):
        generate(mbart, torch.zeros(1, 10, dtype=torch.long), max_new_tokens=130)
    with pytest.raises(ValueError, match="257 positions.*max_positions=256"):
        generate(llama, torch.zeros(1, 257, dtype=torch.long), max_new_tokens=2)
    generate(llama, torch.zeros(1, 250, dtype=torch.long), max_new_tokens=10)  # RoPE goes past the end
    with pytest.raises(ValueError, match="left padding"):
        generate(gpt2, torch.ones(2, 3, dtype=torch.long), attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]),
                 max_new_tokens=2)
    with pytest.raises(TypeError, match="integer tensor"):
        generate(gpt2, torch.zeros(1, 3), max_new_tokens=2)


@pytest.mark.parametrize("model", ["gpt2-tiny", None, torch.nn.Linear(2, 2)])
def test_a_model_that_is_not_a_qkv_model_is_named(model):
    with pytest.raises(TypeError, match=f"model must be a qkv model .*got {type(model).__name__}"):
        generate(model, torch.zeros(1, 3, dtype=torch.long), max_new_tokens=2)


# ---------------------------------------------------------------------------------------------------------------
# Parity with Hugging Face transformers, through the production converter

def _hf_model(kind, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=96, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                         bos_token_id=0, eos_token_id=0, pad_token_id=1)
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                          bos_token_id=0, eos_token_id=0, pad_token_id=1)
        model = transformers.LlamaForCausalLM(config)
    _peaky(model, 30.0).float()
    model.save_pretrained(tmp_path)
    return model, qkv.from_hf(tmp_path).float().eval()


def _hf_generate(model, ids, *, eos, pad=1, mask=None, **kwargs):
    # pad 1, not 0: transformers' beam search pads with EOS when the pad id is 0 (falsy)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.generation_config.bos_token_id = None
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids) if mask is None else mask, do_sample=False,
                              **kwargs)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_greedy_and_beam_search_match_transformers(kind, tmp_path):
    hf, ours = _hf_model(kind, tmp_path)
    torch.manual_seed(1)
    ids = torch.randint(1, 96, (2, 5))
    greedy = _hf_generate(hf, ids, eos=None, max_new_tokens=10)
    assert torch.equal(generate(ours, ids, max_new_tokens=10, eos_token_id=()), greedy)
    eos = int(greedy[0, 5 + 2])  # a token greedy decoding does produce, so EOS really ends a row
    hf_eos = _hf_generate(hf, ids, eos=eos, max_new_tokens=10)
    assert (hf_eos[0, 8:] == 1).all()
    assert torch.equal(generate(ours, ids, max_new_tokens=10, eos_token_id=eos, pad_token_id=1), hf_eos)
    kwargs = dict(max_new_tokens=10, num_beams=4, length_penalty=1.0, early_stopping=True, num_return_sequences=3)
    hf_beams = _hf_generate(hf, ids, eos=None, **kwargs)
    assert torch.equal(generate(ours, ids, eos_token_id=(), pad_token_id=1, **kwargs), hf_beams)
    for eos in {int(hf_beams[0, 5 + 3]), int(hf_beams[3, 5 + 1])}:  # tokens the beams do pass through
        hf_eos = _hf_generate(hf, ids, eos=eos, **kwargs)
        assert torch.equal(generate(ours, ids, eos_token_id=eos, pad_token_id=1, **kwargs), hf_eos), eos


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_left_padded_greedy_matches_transformers(kind, tmp_path):
    hf, ours = _hf_model(kind, tmp_path)
    torch.manual_seed(2)
    ids = torch.randint(1, 96, (3, 6))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    mask[2, :1] = 0
    ids = ids.masked_fill(mask == 0, 1)
    expected = _hf_generate(hf, ids, eos=None, mask=mask, max_new_tokens=8)
    assert torch.equal(generate(ours, ids, attention_mask=mask, max_new_tokens=8, eos_token_id=()), expected)
