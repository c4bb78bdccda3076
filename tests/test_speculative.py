"""Speculative decoding (qkv/decoding/speculative.py): greedy gives exactly the target's greedy tokens for any pair of
families (KV caches cropped, recurrent states restored), prompt lookup too; sampling keeps the target's
distribution exactly (a chi-square test on a 5-token vocabulary against the float64 distribution of the first two
tokens, with a check that the test would catch the draft's distribution)."""
import copy
import math

import pytest
import torch

import qkv
from qkv.decoding import generate
from qkv.decoding import SpeculativeStats


def _model(name, seed=0, **overrides):
    torch.manual_seed(seed)
    if name == "llama-window":  # sliding-window attention: a rolling KV cache, cropped within its rewind margin
        name, overrides = "llama-tiny", dict(overrides, window=3)
    return qkv.build(qkv.preset(name, **overrides)).double().eval()


def _near(model, noise, seed=1):
    """A draft that agrees with the target often but not always: its weights plus a little noise."""
    torch.manual_seed(seed)
    draft = copy.deepcopy(model)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn_like(p) * noise)
    return draft


PAIRS = [("gpt2-tiny", "near"), ("llama-tiny", "near"), ("gpt2-tiny", "rwkv4-tiny"), ("llama-tiny", "retnet-tiny"),
         ("retnet-tiny", "near"), ("rwkv6-tiny", "near"), ("rwkv6-tiny", "gpt2-tiny"), ("hybrid-tiny", "near"),
         ("llama-window", "near"), ("llama-tiny", "self")]


def test_a_float32_target_checked_through_packed_onednn_weights_keeps_its_greedy_tokens():
    """A target wide enough for the packed CPU product (384 x 1152 weights): the check pass reads 1 to 5 rows where
    greedy reads 1, and the tokens must not move."""
    torch.manual_seed(0)
    target = qkv.build(qkv.ModelConfig(family="decoder", vocab_size=97, d_model=384, n_layers=2, n_heads=6,
                                       d_ff=1536, max_positions=64)).eval()
    draft = _near(target, 0.01)
    ids = torch.randint(0, 97, (1, 7), generator=torch.Generator().manual_seed(3))
    expected = generate(target, ids, max_new_tokens=30, eos_token_id=())
    for kwargs in (dict(draft_model=draft), dict(draft_model=draft, adaptive_draft=True),
                   dict(prompt_lookup_num_tokens=3)):
        stats = SpeculativeStats()
        assert torch.equal(generate(target, ids, max_new_tokens=30, eos_token_id=(), speculative_stats=stats,
                                    **kwargs), expected), kwargs
        assert stats.rounds < 30 or "prompt_lookup_num_tokens" in kwargs


@pytest.mark.parametrize("target_name, draft_name", PAIRS)
def test_greedy_speculative_gives_the_target_greedy_tokens(target_name, draft_name):
    target = _model(target_name)
    draft = {"near": lambda: _near(target, 0.002), "self": lambda: target}.get(draft_name, lambda: _model(draft_name))()
    ids = torch.randint(3, 256, (1, 6), generator=torch.Generator().manual_seed(2))
    accepted = 0
    for kwargs in (dict(), dict(adaptive_draft=True, num_draft_tokens=2), dict(num_draft_tokens=5, min_new_tokens=4,
                                                                            no_repeat_ngram_size=3)):
        expected = generate(target, ids, max_new_tokens=23, eos_token_id=(), **{k: v for k, v in kwargs.items()
                                                                                 if k in ("min_new_tokens",
                                                                                          "no_repeat_ngram_size")})
        stats = SpeculativeStats()
        got = generate(target, ids, max_new_tokens=23, eos_token_id=(), draft_model=draft, speculative_stats=stats,
                       **kwargs)
        assert torch.equal(got, expected), kwargs
        assert stats.generated == 23 and stats.accepted <= stats.proposed
        accepted += stats.accepted
    if draft_name in ("near", "self"):  # rewinds after partial acceptance did happen
        assert accepted > 0
    if draft_name == "self":
        assert stats.acceptance_rate == 1.0 and stats.rounds == math.ceil(23 / 6)


@pytest.mark.parametrize("name", ["gpt2-tiny", "retnet-tiny", "rwkv4-tiny"])
def test_prompt_lookup_gives_the_greedy_tokens_and_stops_at_eos(name):
    target = _model(name)
    ids = torch.tensor([[5, 9, 14, 5, 9, 20, 31, 5, 9, 14, 77, 5]])  # repeats: lookups find continuations
    expected = generate(target, ids, max_new_tokens=30, eos_token_id=())
    stats = SpeculativeStats()
    got = generate(target, ids, max_new_tokens=30, eos_token_id=(), prompt_lookup_num_tokens=4,
                   speculative_stats=stats)
    assert torch.equal(got, expected) and stats.proposed > 0
    eos = int(expected[0, ids.shape[1] + 11])  # a token greedy produces: the run must end at its first occurrence
    ended = generate(target, ids, max_new_tokens=30, eos_token_id=eos)
    assert torch.equal(generate(target, ids, max_new_tokens=30, eos_token_id=eos, prompt_lookup_num_tokens=3), ended)
    assert torch.equal(generate(target, ids, max_new_tokens=30, eos_token_id=eos,
                                draft_model=_near(target, 0.002)), ended)


def test_speculative_scores_equal_plain_decoding_scores():
    target = _model("gpt2-tiny")
    ids = torch.randint(3, 256, (1, 5), generator=torch.Generator().manual_seed(3))
    plain = generate(target, ids, max_new_tokens=12, eos_token_id=(), return_scores=True, no_repeat_ngram_size=2)
    spec = generate(target, ids, max_new_tokens=12, eos_token_id=(), return_scores=True, no_repeat_ngram_size=2,
                    draft_model=_near(target, 0.002), num_draft_tokens=3)
    assert torch.equal(spec.sequences, plain.sequences)
    torch.testing.assert_close(spec.token_logprobs, plain.token_logprobs.float(), rtol=0, atol=1e-5)


V = 5  # a vocabulary small enough to know the exact distribution of two tokens


def _tiny(name, seed):
    extra = {} if name.startswith("rwkv") else dict(d_ff=32)
    model = _model(name, seed, vocab_size=V, d_model=16, n_layers=1, n_heads=2, **extra)
    with torch.no_grad():  # far from uniform, so the test has something to tell apart
        for pname, p in model.named_parameters():
            if "head" in pname or "tokens" in pname:
                p.mul_(6.0)
    return model


def _two_token_distribution(model, prompt, temperature=1.0):
    """(V, V) float64: P(first two generated tokens = a, b), from full forward passes."""
    def next_token(ids):
        return (model(ids)[0, -1].double() / temperature).softmax(-1)
    with torch.no_grad():
        first = next_token(prompt)
        return torch.stack([first[a] * next_token(torch.cat([prompt, torch.tensor([[a]])], 1)) for a in range(V)])


@pytest.mark.parametrize("draft_kind", ["rwkv4 draft", "prompt lookup"])
def test_speculative_sampling_keeps_the_target_distribution(draft_kind):
    target, draft = _tiny("gpt2-tiny", 0), _tiny("rwkv4-tiny", 1)
    prompt = torch.tensor([[1, 3, 2, 1, 3]])
    temperature = 1.3
    p = _two_token_distribution(target, prompt, temperature)
    spec = dict(draft_model=draft) if draft_kind == "rwkv4 draft" else dict(prompt_lookup_num_tokens=2)
    n = 900 if draft_kind == "rwkv4 draft" else 500
    counts = torch.zeros(V, V, dtype=torch.float64)
    generator, stats = torch.Generator().manual_seed(0), SpeculativeStats()
    for _ in range(n):
        out = generate(target, prompt, max_new_tokens=3, do_sample=True, temperature=temperature, eos_token_id=(),
                       num_draft_tokens=2, generator=generator, speculative_stats=stats, **spec)
        counts[out[0, 5], out[0, 6]] += 1
    assert 0.2 < stats.acceptance_rate < 0.95  # both acceptances and rejections (the residual rule) happened
    chi2 = float(((counts - n * p) ** 2 / (n * p)).sum())
    assert chi2 < 51.2, chi2  # the 0.999 quantile of chi-square with 24 degrees of freedom
    assert 0.5 * float((counts / n - p).abs().sum()) < 0.1
    # The test has power: the draft's own distribution (what accepting every guess would give) fails it by far.
    q = _two_token_distribution(draft, prompt, temperature)
    assert n * float(((q - p) ** 2 / p).sum()) > 20 * 51.2


def test_speculative_refusals_are_named():
    target = _model("gpt2-tiny")
    ids = torch.tensor([[4, 5, 6]])
    with pytest.raises(ValueError, match=r"takes one sequence, input_ids of shape \(1, T\)"):
        generate(target, ids.repeat(2, 1), max_new_tokens=3, draft_model=target)
    with pytest.raises(ValueError, match="does not take num_beams=2"):
        generate(target, ids, max_new_tokens=3, draft_model=target, num_beams=2)
    with pytest.raises(ValueError, match="draft_model or prompt_lookup_num_tokens, not both"):
        generate(target, ids, max_new_tokens=3, draft_model=target, prompt_lookup_num_tokens=2)
    with pytest.raises(ValueError, match="draft_model must share the target's vocabulary: vocab_size 65"):
        generate(target, ids, max_new_tokens=3, draft_model=_model("gpt-char-tiny"))
    with pytest.raises(ValueError, match="num_draft_tokens must be an int >= 1, got 0"):
        generate(target, ids, max_new_tokens=3, draft_model=target, num_draft_tokens=0)
    # a draft whose positions end first stops guessing there (tests/test_sliding_context.py): no refusal
    assert torch.equal(generate(target, ids, max_new_tokens=30, draft_model=_model("gpt2-tiny", max_positions=20)),
                       generate(target, ids, max_new_tokens=30))
    with pytest.raises(ValueError, match="must be a decoder-only model"):
        generate(target, ids, max_new_tokens=3, draft_model=_model("transformer-tiny"))
    V = target.config.vocab_size
    for bad in (torch.tensor([[4, 5, V]]), torch.tensor([[-1, 5, 6]])):  # the last id too: no round reads it unchecked
        for kwargs in (dict(draft_model=target), dict(prompt_lookup_num_tokens=2)):
            with pytest.raises(ValueError, match=rf"input_ids must be integer token ids in \[0, {V}\)"):
                generate(target, bad, max_new_tokens=3, **kwargs)
