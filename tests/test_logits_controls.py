"""The logits controls (no_repeat_ngram_size, bad_words_ids, min_length, min_new_tokens, forced_bos/eos_token_id,
renormalize_logits) equal transformers' processors of the same names on random scores, and ``qkv.generate`` with
them gives transformers' ``generate`` tokens, greedy and beam search, through the production converter."""
import pytest
import torch

from qkv.decoding import generate
from qkv.decoding import make_controls
from tests.test_generate import _hf_generate, _hf_model

transformers = pytest.importorskip("transformers")
from transformers.generation import logits_process as lp  # noqa: E402

V = 12


def _ours(scores, seqs, prompt_length=1, max_length=20, eos=(3,), **controls):
    c = make_controls(**controls, vocab_size=V, eos_ids=eos)
    return c.apply(scores, seqs if c.needs_sequences else None, length=seqs.shape[1], prompt_length=prompt_length,
                   max_length=max_length, eos=torch.tensor(eos))


@pytest.mark.parametrize("L", [1, 2, 5, 9])
def test_each_control_equals_the_transformers_processor(L):
    g = torch.Generator().manual_seed(L)
    seqs = torch.randint(0, 4, (3, L), generator=g)  # a small alphabet: repeats and matches happen
    scores = torch.randn(3, V, generator=g)
    cases = [(dict(no_repeat_ngram_size=n), lp.NoRepeatNGramLogitsProcessor(n)) for n in (1, 2, 3)]
    bad = [[5], [1, 2], [0, 1, 6], [3]]  # [3] is EOS: dropped, as transformers does
    cases += [(dict(bad_words_ids=bad), lp.NoBadWordsLogitsProcessor(bad, eos_token_id=3)),
              (dict(min_length=6), lp.MinLengthLogitsProcessor(6, 3)),
              (dict(min_new_tokens=3), lp.MinNewTokensLengthLogitsProcessor(1, 3, 3)),
              (dict(forced_bos_token_id=7), lp.ForcedBOSTokenLogitsProcessor(7)),
              (dict(forced_eos_token_id=[3, 4]), lp.ForcedEOSTokenLogitsProcessor(L + 1, [3, 4])),
              (dict(renormalize_logits=True), lp.LogitNormalization())]
    for controls, processor in cases:
        torch.testing.assert_close(_ours(scores, seqs, max_length=L + 1, **controls), processor(seqs, scores.clone()),
                                   rtol=0, atol=0, msg=str(controls))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="bad_words_ids must be a list of non-empty lists"):
        make_controls(bad_words_ids=[[]], vocab_size=V)
    with pytest.raises(ValueError, match=r"forced_bos_token_id must hold token ids in \[0, 12\), got 12"):
        make_controls(forced_bos_token_id=12, vocab_size=V)
    with pytest.raises(ValueError, match="no_repeat_ngram_size must be an int >= 0"):
        make_controls(no_repeat_ngram_size=-1, vocab_size=V)


CONTROLS = [dict(no_repeat_ngram_size=2), dict(bad_words_ids=[[5], [17, 30], [40]]), dict(min_new_tokens=6),
            dict(forced_eos_token_id=9), dict(renormalize_logits=True, bad_words_ids=[[5]]),
            dict(no_repeat_ngram_size=3, forced_eos_token_id=9, bad_words_ids=[[2, 3]], min_length=9)]


@pytest.mark.parametrize("controls", CONTROLS, ids=lambda c: "+".join(c))
@pytest.mark.parametrize("beams", [1, 4])
def test_generate_with_controls_matches_transformers(controls, beams, tmp_path):
    hf, ours = _hf_model("gpt2", tmp_path)
    torch.manual_seed(1)
    ids = torch.randint(2, 96, (2, 5))
    # an EOS that greedy decoding produces early, so min_new_tokens / min_length / forced EOS change something
    eos = int(_hf_generate(hf, ids, eos=None, max_new_tokens=3)[0, -1])
    kwargs = dict(max_new_tokens=10, num_beams=beams, **controls)
    if beams > 1:
        kwargs.update(early_stopping=True)
    expected = _hf_generate(hf, ids, eos=eos, **kwargs)
    got = generate(ours, ids, eos_token_id=eos, pad_token_id=1, **kwargs)
    assert torch.equal(got, expected)


def test_forced_bos_acts_on_the_first_token_of_a_one_token_sequence(tmp_path):
    hf, ours = _hf_model("gpt2", tmp_path)
    ids = torch.tensor([[7]])
    for beams in (1, 3):
        expected = _hf_generate(hf, ids, eos=None, max_new_tokens=6, num_beams=beams, forced_bos_token_id=42)
        got = generate(ours, ids, eos_token_id=(), pad_token_id=1, max_new_tokens=6, num_beams=beams,
                       forced_bos_token_id=42)
        assert torch.equal(got, expected) and int(got[0, 1]) == 42
