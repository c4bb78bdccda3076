"""The recurrent family decodes like any other: cached steps give the full pass's logits, a padded batch gives each
row what it gives alone, and qkv.generate's greedy, beam search, sampling and static cache run it
through the decode adapter, reading nothing back to the host per step."""
import pytest
import torch

import qkv
from qkv.models import decoding_of
from qkv.ops.checks import trusted_values

F64 = torch.float64
V = 41
VARIANTS = {
    "none": dict(rnn_attention="none", rnn_bidirectional="encoder", rnn_cell="gru"),
    "bahdanau": dict(preset="rnnsearch-tiny"),
    "global": dict(rnn_attention="global", score="bilinear", rnn_bidirectional="encoder"),
    "global-nofeed": dict(rnn_attention="global", score="dot", rnn_input_feeding=False, rnn_cell="gru"),
    "local_m": dict(rnn_attention="local_m", score="dot", rnn_local_window=1),
    "local_p": dict(rnn_attention="local_p", score="bilinear", rnn_local_window=2),
}


def make(name, seed=0):
    fields = dict(VARIANTS[name])
    base = fields.pop("preset", "luong-tiny")
    torch.manual_seed(seed)
    model = qkv.build(qkv.preset(base, vocab_size=V, d_model=16, rnn_embed_dim=None if base == "luong-tiny" else 8,
                                 d_ff=16, **fields)).to(F64).eval()
    for p in model.parameters():  # peaky logits: ties in an argmax would make token checks flaky
        torch.nn.init.uniform_(p, -0.6, 0.6)
    return model


def _padded(B=3, S=7):
    torch.manual_seed(1)
    src = torch.randint(3, V, (B, S))
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, 4:] = 0  # right padding, as translation batches have it
    mask[2, :2] = 0  # left padding, and a hole: any pattern works
    mask[2, 5] = 0
    return src, mask


@pytest.mark.parametrize("name", VARIANTS)
def test_cached_steps_equal_the_full_pass_and_rows_equal_themselves_alone(name):
    model = make(name)
    src, mask = _padded()
    tgt = torch.randint(3, V, (3, 6))
    with torch.no_grad():
        full = model(src, tgt, mask)
        cache = model.new_cache(3)
        steps = torch.cat([model(src, tgt[:, t: t + 1], mask, cache=cache) for t in range(6)], 1)
        torch.testing.assert_close(steps, full, rtol=0, atol=1e-12)
        assert cache.length == 6
        for row in range(3):
            alone = model(src[row: row + 1, mask[row].bool()], tgt[row: row + 1])
            torch.testing.assert_close(full[row: row + 1], alone, rtol=0, atol=1e-12)


def _full_pass_greedy(model, src, steps):
    """Greedy decoding by a full teacher-forced pass over the tokens so far, at every step: the definition."""
    out = [model.config.decoder_start_token_id]
    for _ in range(steps):
        with torch.no_grad():
            logits = decoding_of(model).teacher_forced(model, src, out[1:] + [0])  # the last row: the next token's
        out.append(int(logits[-1].argmax()))
    return out


@pytest.mark.parametrize("name", VARIANTS)
def test_greedy_equals_full_pass_recomputation_and_its_scores_are_the_full_pass_log_probs(name):
    model = make(name)
    src = torch.randint(3, V, (1, 6))
    expected = _full_pass_greedy(model, src[0].tolist(), 8)
    out = qkv.generate(model, src, max_new_tokens=8, eos_token_id=(), return_scores=True)
    assert out.sequences[0].tolist() == expected
    with torch.no_grad():
        logits = decoding_of(model).teacher_forced(model, src[0].tolist(), expected[1:])
    chosen = logits.log_softmax(-1).gather(1, torch.tensor(expected[1:])[:, None])[:, 0]
    torch.testing.assert_close(out.token_logprobs[0].to(F64), chosen, rtol=0, atol=1e-6)  # generate keeps float32
    grown = qkv.generate(model, src, max_new_tokens=8, eos_token_id=(), static_cache=False)
    assert grown[0].tolist() == expected


@pytest.mark.parametrize("name", ["bahdanau", "local_p", "none"])
def test_a_padded_batch_decodes_each_row_as_alone_greedy_and_beam(name):
    model = make(name)
    src, mask = _padded()
    for beams in (1, 3):
        batch = qkv.generate(model, src, attention_mask=mask, max_new_tokens=6, num_beams=beams, eos_token_id=())
        for row in range(3):
            alone = qkv.generate(model, src[row: row + 1, mask[row].bool()], max_new_tokens=6, num_beams=beams,
                                 eos_token_id=())
            assert torch.equal(batch[row], alone[0]), (beams, row)


@pytest.mark.parametrize("name", ["bahdanau", "global", "local_m"])
def test_beam_search_reorders_the_recurrent_state(name):
    """Beams keep their own states: with EOS possible, each returned hypothesis scores what a full pass gives it."""
    model = make(name)
    src = torch.randint(3, V, (2, 5))
    out = qkv.generate(model, src, max_new_tokens=6, num_beams=4, num_return_sequences=4, eos_token_id=5,
                       return_scores=True)
    for i, row in enumerate(out.sequences.tolist()):
        tokens = row[1:]
        if 5 in tokens:
            tokens = tokens[: tokens.index(5) + 1]
        with torch.no_grad():
            logits = decoding_of(model).teacher_forced(model, src[i // 4].tolist(), tokens)
        logp = logits.log_softmax(-1).gather(1, torch.tensor(tokens)[:, None]).sum()
        assert abs(float(logp) / len(tokens) - float(out.sequences_scores[i])) < 1e-6


def test_sampling_with_top_k_1_is_greedy_and_samples_are_reproducible():
    model = make("local_p")
    src, mask = _padded()
    greedy = qkv.generate(model, src, attention_mask=mask, max_new_tokens=5, eos_token_id=())
    assert torch.equal(qkv.generate(model, src, attention_mask=mask, max_new_tokens=5, eos_token_id=(),
                                    do_sample=True, top_k=1), greedy)
    draws = [qkv.generate(model, src, attention_mask=mask, max_new_tokens=5, eos_token_id=(), do_sample=True,
                          num_return_sequences=2, generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert draws[0].shape == (6, 6) and torch.equal(draws[0], draws[1])


@pytest.mark.parametrize("name", ["bahdanau", "local_m", "local_p"])
def test_static_cache_step_equals_growing(name, monkeypatch):
    """compile=True's static cache (its step run eagerly here: compiling takes a minute on CPU) writes the state in
    place and gives the same tokens, greedy and beam search."""
    import importlib
    step, beam = importlib.import_module("qkv.decoding.step"), importlib.import_module("qkv.decoding.beam")
    monkeypatch.setattr(step, "compiled_step", lambda decoding, device_type: decoding.step)
    monkeypatch.setattr(beam, "compiled_select", lambda device_type: beam.beam_select)
    model = make(name)
    src, mask = _padded()
    greedy = qkv.generate(model, src, attention_mask=mask, max_new_tokens=7, eos_token_id=())
    assert torch.equal(qkv.generate(model, src, attention_mask=mask, max_new_tokens=7, eos_token_id=(),
                                    compile=True), greedy)
    beams = qkv.generate(model, src, attention_mask=mask, max_new_tokens=5, num_beams=3, eos_token_id=())
    assert torch.equal(qkv.generate(model, src, attention_mask=mask, max_new_tokens=5, num_beams=3,
                                    eos_token_id=(), compile=True), beams)


_READS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")


@pytest.mark.parametrize("name, static", [(n, False) for n in VARIANTS] + [("local_m", True), ("bahdanau", True)])
def test_decoding_steps_make_no_host_reads(name, static, monkeypatch):
    model = make(name).float()
    src, mask = _padded()
    seen = []
    with torch.no_grad():
        cache = model.new_cache(3, 20, static=static)
        token = model(src, torch.ones(3, 1, dtype=torch.long), mask, cache=cache)[:, -1:].argmax(-1)
        for name_ in _READS:
            original = getattr(torch.Tensor, name_)

            def wrapped(self, *args, _name=name_, _original=original, **kwargs):
                seen.append(_name)
                return _original(self, *args, **kwargs)
            monkeypatch.setattr(torch.Tensor, name_, wrapped)
        with trusted_values():  # what qkv.generate does around its steps
            for _ in range(4):
                token = model.decode(token, cache, last_only=True)[:, -1:].argmax(-1)
        assert seen == []
        model.decode(token, cache, last_only=True)  # unguarded, the value check reads the ids: the probe sees it
        assert "__bool__" in seen
