"""Sliding context (qkv/decoding/sliding.py): past a decoder's learned positions every token is the model's
prediction from a full pass over the last max_positions tokens (nanoGPT's crop), checked token for token against
a naive loop that runs the model on ``ids[:, -W:]`` at every step, in float64, for greedy decoding, sampling (the
same seeded draws), a left-padded batch (each row as if alone), beam search (a naive beam search over cropped
windows), a prompt longer than the window, and speculative decoding (draft and prompt lookup: plain sliding greedy).
The cache serves while the sequence fits (counted from the model's calls); families that do not slide refuse."""
import copy

import pytest
import torch

import qkv
from qkv.decoding import GenerationConfig, SlidingContext, SpeculativeStats, generate, sliding_context, stream
from qkv.models import context_window

W = 12  # the tiny model's learned positions: the runs below go 3 to 4 windows past them


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    fields = dict(max_positions=W, d_model=32, n_layers=2, n_heads=2, head_dim=16, d_ff=64, vocab_size=23,
                  tie_embeddings=False)
    model = qkv.build(qkv.preset("gpt-char-tiny", **dict(fields, **overrides))).double().eval()
    with torch.no_grad():  # larger weights: greedy wanders instead of repeating one token, no near-ties
        for p in model.parameters():
            p.mul_(4.0)
    return model


def _prompt(T, B=1, seed=1):
    torch.manual_seed(seed)
    return torch.randint(0, 23, (B, T))


def _cropped_logits(model, seq):
    """(N, V) logits of the next token from the last W tokens of ``seq`` (N, L): the definition."""
    return model(seq[:, -W:])[:, -1]


def naive(model, ids, steps, choose):
    seq = ids
    for _ in range(steps):
        seq = torch.cat([seq, choose(_cropped_logits(model, seq))[:, None]], 1)
    return seq


class Calls:
    """Records each forward of a model: (tokens fed, whether a cache was passed)."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        cache = args[1] if len(args) > 1 else kwargs.get("cache")
        self.calls.append((args[0].shape[1], cache is not None))


def test_greedy_past_the_table_equals_recomputing_the_cropped_window_and_uses_the_cache_while_it_fits():
    model, T, new = _model(), 5, 40
    ids = _prompt(T)
    calls = Calls(model)
    out = generate(model, ids, max_new_tokens=new, return_scores=True)
    calls.handle.remove()
    expected = naive(model, ids, new, lambda logits: logits.argmax(-1))
    assert torch.equal(out.sequences, expected)
    assert len(set(expected[0, T + W:].tolist())) > 2  # the run went somewhere: not one token repeated
    assert out.sliding == SlidingContext(window=W, from_new_token=W - T + 2)
    # the prompt once, one cached token per step while positions last (T .. W - 1), then the window each step
    assert calls.calls[0] == (T, True)
    assert calls.calls[1:W - T + 1] == [(1, True)] * (W - T)
    assert calls.calls[W - T + 1:] == [(W, False)] * (new - 1 - (W - T))
    # the scores are the cropped windows' too
    logprobs = [torch.log_softmax(_cropped_logits(model, expected[:, :T + i]), -1)[0, expected[0, T + i]]
                for i in range(new)]
    assert torch.allclose(out.token_logprobs[0].double(), torch.stack(logprobs), atol=1e-5)


def test_sliding_context_says_from_which_new_token_the_window_is_cropped():
    model = _model()
    assert sliding_context(model, 5, W - 4) is None  # the last token is predicted from W tokens: no crop
    assert sliding_context(model, 5, W - 3) == SlidingContext(W, W - 3)
    assert sliding_context(model, W + 3, 1) == SlidingContext(W, 1)
    assert "from the 9th on are predicted from the last 12 tokens" in SlidingContext(W, 9).describe()
    assert context_window(model) == W


def test_seeded_sampling_draws_what_the_cropped_window_gives():
    model, new = _model(), 33
    ids = _prompt(4, B=3)
    out = generate(model, ids, max_new_tokens=new, do_sample=True, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    expected = naive(model, ids, new, lambda logits: torch.multinomial(logits.softmax(-1), 1, generator=g)[:, 0])
    assert torch.equal(out, expected)
    streamed = [c.tokens for c in stream(model, ids, max_new_tokens=new, do_sample=True,
                                         generator=torch.Generator().manual_seed(7))]
    assert torch.equal(torch.stack(streamed, 1), expected[:, 4:])


def test_left_padded_batch_slides_each_row_as_if_alone():
    model, new = _model(), 30
    rows = [_prompt(T, seed=T)[0] for T in (3, 7, 10)]
    L = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([torch.zeros(L - len(r), dtype=torch.long), r]) for r in rows])
    mask = torch.stack([torch.cat([torch.zeros(L - len(r), dtype=torch.long), torch.ones_like(r)]) for r in rows])
    out = generate(model, ids, attention_mask=mask, max_new_tokens=new)
    for i, r in enumerate(rows):
        alone = naive(model, r[None], new, lambda logits: logits.argmax(-1))
        assert torch.equal(out[i, L:], alone[0, len(r):]), i


def test_a_prompt_longer_than_the_window_is_read_from_its_last_tokens():
    model, new = _model(), 15
    ids = _prompt(W + 6)
    out = generate(model, ids, max_new_tokens=new)
    assert torch.equal(out, naive(model, ids, new, lambda logits: logits.argmax(-1)))


def _naive_beams(model, ids, K, steps):
    """Beam search without an end token, each hypothesis scored from its own cropped windows: the K best of the
    K x V one-token continuations by summed log-probability, every step. Returns the best sequence (1, T + steps)."""
    beams, scores = ids, torch.zeros(1, dtype=torch.float64)
    for _ in range(steps):
        logp = torch.log_softmax(_cropped_logits(model, beams), -1) + scores[:, None]  # (k, V)
        top = logp.flatten().topk(K)
        V = logp.shape[1]
        beams = torch.cat([beams[top.indices // V], (top.indices % V)[:, None]], 1)
        scores = top.values
    return beams[:1]


def test_beam_search_slides_each_beam_over_its_own_window():
    model, new = _model(), 30
    ids = _prompt(5)
    out = generate(model, ids, max_new_tokens=new, num_beams=3, eos_token_id=())
    assert torch.equal(out, _naive_beams(model, ids, 3, new))


@pytest.mark.parametrize("guesser", ["draft", "small-draft", "lookup"])
def test_speculative_decoding_past_the_window_gives_plain_sliding_greedy(guesser):
    model, new = _model(), 40
    ids = _prompt(5)
    plain = generate(model, ids, max_new_tokens=new)
    if guesser == "lookup":
        spec = dict(prompt_lookup_num_tokens=3)
    else:  # the target's weights plus noise (agrees often), or another model with a smaller table (8 positions)
        draft = copy.deepcopy(model) if guesser == "draft" else _model(seed=3, max_positions=8, n_layers=1)
        if guesser == "draft":
            torch.manual_seed(5)
            with torch.no_grad():
                for p in draft.parameters():
                    p.add_(0.02 * torch.randn_like(p))
        spec = dict(draft_model=draft, num_draft_tokens=4)
    stats = SpeculativeStats()
    out = generate(model, ids, max_new_tokens=new, speculative_stats=stats, **spec)
    assert torch.equal(out, plain)
    assert stats.slid == new - (W - 5 + 1)  # every token predicted from a cropped window: the target alone
    assert stats.generated == new and stats.accepted <= stats.proposed
    if guesser == "draft":
        assert stats.proposed > 0 and stats.accepted > 0
    scored = generate(model, ids, max_new_tokens=new, return_scores=True, **spec)
    assert scored.speculative.generated == new and scored.sliding == SlidingContext(W, W - 5 + 2)


def test_models_that_do_not_slide():
    # an output for a source (MBART's learned positions): refused, the reason said
    mbart = qkv.build(qkv.preset("mbart-tiny")).eval()
    assert context_window(mbart) is None
    limit = mbart.config.max_positions
    with pytest.raises(ValueError, match=rf"<= {limit - 1}\. A model of family 'encoder_decoder' does not slide its "
                                         r"context past them: its output is written for a source"):
        generate(mbart, torch.tensor([[5, 6, 7]]), max_new_tokens=limit + 5)
    # positions that extrapolate (RoPE) or none at all (recurrent mixers): no table end, nothing slides
    for name in ("llama-tiny", "rwkv4-tiny"):
        model = qkv.build(qkv.preset(name, max_positions=16)).eval()
        assert context_window(model) is None and sliding_context(model, 5, 40) is None
        out = generate(model, torch.tensor([[5, 6, 7]]), max_new_tokens=20, return_scores=True)
        assert out.sequences.shape == (1, 23) and out.sliding is None


def test_compiled_steps_and_static_caches_slide_alike():
    model, new = _model(), 25
    ids = _prompt(5)
    expected = naive(model, ids, new, lambda logits: logits.argmax(-1))
    config = GenerationConfig(max_new_tokens=new, static_cache=True)
    assert torch.equal(generate(model, ids, config), expected)


def test_a_sliding_run_reads_the_host_a_fixed_number_of_times(monkeypatch):
    """Sliding adds no read back to the host per token: 84 new tokens (72 of them from a cropped window) take the
    reads of 20, plus the non-finite accumulator's one read per 32 steps (as tests/models/test_decode_host_reads.py
    shows for the cached steps)."""
    model, prompt = _model(), _prompt(5, B=2)

    def reads(n):
        seen = []
        for name in ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__"):
            original = getattr(torch.Tensor, name)

            def wrapped(self, *args, _original=original, **kwargs):
                seen.append(1)
                return _original(self, *args, **kwargs)
            monkeypatch.setattr(torch.Tensor, name, wrapped)
        generate(model, prompt, max_new_tokens=n, eos_token_id=())
        monkeypatch.undo()
        return len(seen)
    short, long = reads(20), reads(84)
    assert short > 0 and long - short <= 64 // 32
