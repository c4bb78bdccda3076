"""The second wave of decoding controls against transformers' generate, through the production converter: min_p
and typical_p sampling, the logits_processor hook, decoder_input_ids (an encoder-decoder's prefix), and
return_scores (per-token log-probabilities and beam scores equal transformers' output_scores / sequences_scores).
Also: the controls give the same tokens through the static (compiled-step) path as through the eager one."""
import pytest
import torch

import qkv
from qkv.decoding import GenerateOutput, generate
from qkv.decoding import make_controls
from tests.test_generate import _hf_generate, _hf_model, _peaky, eager_static  # noqa: F401 (a fixture)

transformers = pytest.importorskip("transformers")
from transformers.generation import logits_process as lp  # noqa: E402


def test_min_p_typical_and_epsilon_equal_the_transformers_warpers():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 17, generator=g) * 3
    scores[0, :5] = float("-inf")  # tokens already forbidden by an earlier control
    for kwargs, warper in ((dict(min_p=0.1), lp.MinPLogitsWarper(0.1)), (dict(min_p=0.6), lp.MinPLogitsWarper(0.6)),
                           (dict(typical_p=0.3), lp.TypicalLogitsWarper(0.3)),
                           (dict(typical_p=0.9), lp.TypicalLogitsWarper(0.9)),
                           (dict(epsilon_cutoff=0.02), lp.EpsilonLogitsWarper(0.02)),
                           (dict(epsilon_cutoff=0.9), lp.EpsilonLogitsWarper(0.9))):
        ours = make_controls(**kwargs, vocab_size=17).warp(scores.clone())
        torch.testing.assert_close(ours, warper(None, scores.clone()), rtol=0, atol=0, msg=str(kwargs))


@pytest.mark.parametrize("kwargs", [dict(min_p=0.2), dict(typical_p=0.5), dict(min_p=0.05, top_k=10, temperature=1.5),
                                    dict(typical_p=0.7, no_repeat_ngram_size=2), dict(epsilon_cutoff=0.01),
                                    dict(epsilon_cutoff=0.003, typical_p=0.9, top_p=0.95)], ids=str)
def test_sampling_with_min_p_and_typical_p_draws_transformers_tokens(kwargs, tmp_path):
    """The same seed, the same distribution: the same draws (both sample with torch.multinomial)."""
    hf, ours = _hf_model("gpt2", tmp_path)
    with torch.no_grad():  # a flatter model than the greedy tests' peaky one, so the filters keep several tokens
        hf.transformer.ln_f.weight.div_(10)
        ours = qkv.from_hf(hf.save_pretrained(tmp_path) or tmp_path).float().eval()
    ids = torch.randint(2, 96, (2, 4), generator=torch.Generator().manual_seed(3))
    hf.generation_config.update(eos_token_id=None, pad_token_id=1, bos_token_id=None)
    torch.manual_seed(11)
    with torch.no_grad():
        expected = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, max_new_tokens=8,
                               **{"top_k": 0, **kwargs})  # transformers' default top_k is 50: off, as ours
    torch.manual_seed(11)
    got = generate(ours, ids, do_sample=True, max_new_tokens=8, eos_token_id=(), **kwargs)
    assert torch.equal(got, expected)


def _ban_after_even(input_ids, scores):
    """A processor no built-in control is: after an even token, the odd tokens are forbidden."""
    even = (input_ids[:, -1] % 2 == 0)[:, None]
    odd = (torch.arange(scores.shape[-1]) % 2 == 1)[None, :]
    return scores.masked_fill(even & odd, float("-inf"))


@pytest.mark.parametrize("beams", [1, 4])
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_logits_processor_hook_and_combinations_match_transformers(kind, beams, tmp_path):
    hf, ours = _hf_model(kind, tmp_path)
    ids = torch.randint(2, 96, (2, 5), generator=torch.Generator().manual_seed(1))
    eos = int(_hf_generate(hf, ids, eos=None, max_new_tokens=3)[0, -1])
    combos = [dict(logits_processor=[_ban_after_even]),
              dict(logits_processor=[_ban_after_even], no_repeat_ngram_size=2, min_new_tokens=4),
              dict(bad_words_ids=[[7], [eos, 3]], forced_eos_token_id=eos, no_repeat_ngram_size=3)]
    for controls in combos:
        kwargs = dict(max_new_tokens=9, num_beams=beams, **controls)
        if beams > 1:
            kwargs.update(early_stopping=True, num_return_sequences=2)
        hf_kwargs = dict(kwargs)
        if "logits_processor" in hf_kwargs:
            hf_kwargs["logits_processor"] = lp.LogitsProcessorList(hf_kwargs["logits_processor"])
        expected = _hf_generate(hf, ids, eos=eos, **hf_kwargs)
        assert torch.equal(generate(ours, ids, eos_token_id=eos, pad_token_id=1, **kwargs), expected), controls


@pytest.mark.parametrize("beams", [1, 4])
def test_return_scores_equal_transformers_transition_and_sequence_scores(beams, tmp_path):
    hf, ours = _hf_model("gpt2", tmp_path)
    with torch.no_grad():  # log-probabilities away from 0, so the comparison means something
        hf.transformer.ln_f.weight.div_(10)
        ours = qkv.from_hf(hf.save_pretrained(tmp_path) or tmp_path).float().eval()
    ids = torch.randint(2, 96, (2, 5), generator=torch.Generator().manual_seed(2))
    eos = int(_hf_generate(hf, ids, eos=None, max_new_tokens=2, num_beams=beams)[0, -1])
    kwargs = dict(max_new_tokens=8, num_beams=beams, no_repeat_ngram_size=2)
    if beams > 1:
        kwargs.update(early_stopping=True, num_return_sequences=3, length_penalty=0.7)
    hf.generation_config.update(eos_token_id=eos, pad_token_id=1, bos_token_id=None)
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, output_scores=True,
                          return_dict_in_generate=True, **kwargs)
        if beams > 1:
            transition = hf.compute_transition_scores(ref.sequences, ref.scores, ref.beam_indices)
        else:
            transition = hf.compute_transition_scores(ref.sequences, ref.scores, normalize_logits=True)
    out = generate(ours, ids, eos_token_id=eos, pad_token_id=1, return_scores=True, **kwargs)
    assert isinstance(out, GenerateOutput) and torch.equal(out.sequences, ref.sequences)
    generated = out.sequences[:, 5:]
    real = torch.ones_like(generated, dtype=torch.bool)  # up to and including each row's EOS
    for row in range(generated.shape[0]):
        hits = (generated[row] == eos).nonzero()
        if len(hits):
            real[row, int(hits[0]) + 1:] = False
    assert real.sum() > generated.shape[0]  # several tokens per row are compared
    torch.testing.assert_close(out.token_logprobs[real], transition[real].float(), rtol=0, atol=1e-5)
    assert (out.token_logprobs[~real] == 0).all()
    if beams > 1:
        torch.testing.assert_close(out.sequences_scores, ref.sequences_scores, rtol=0, atol=1e-5)
    else:
        torch.testing.assert_close(out.sequences_scores, out.token_logprobs.sum(-1))


def _marian(tmp_path):
    V = 61
    cfg = transformers.MarianConfig(vocab_size=V, d_model=32, encoder_layers=2, decoder_layers=2,
                                    encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
                                    decoder_ffn_dim=48, max_position_embeddings=64, activation_function="swish",
                                    scale_embedding=True, pad_token_id=V - 1, decoder_start_token_id=V - 1,
                                    eos_token_id=0, dropout=0.0)
    torch.manual_seed(0)
    hf = transformers.MarianMTModel(cfg).eval()
    with torch.no_grad():
        hf.lm_head.weight.mul_(8)  # peaky: no near-ties between the best tokens
    hf.save_pretrained(tmp_path)
    return hf, qkv.from_hf(tmp_path).float().eval()


@pytest.mark.parametrize("beams", [1, 4])
def test_seq2seq_decoder_prefix_and_controls_match_transformers(beams, tmp_path):
    hf, ours = _marian(tmp_path)
    src = torch.randint(1, 59, (2, 7), generator=torch.Generator().manual_seed(4))
    eos = 0
    cases = [dict(decoder_input_ids=torch.tensor([[60, 5, 9], [60, 7, 7]])),  # with the start token
             dict(decoder_input_ids=torch.tensor([[12]]).expand(2, 1)),  # without: it is put in front
             dict(forced_bos_token_id=33, no_repeat_ngram_size=2, min_new_tokens=5),
             dict(decoder_input_ids=torch.tensor([[60, 3], [60, 4]]), bad_words_ids=[[8], [3, 9]],
                  logits_processor=[_ban_after_even], forced_eos_token_id=eos)]
    for controls in cases:
        kwargs = dict(max_new_tokens=8, num_beams=beams, **controls)
        if beams > 1:
            kwargs.update(early_stopping=True)
        hf_kwargs = dict(kwargs)
        if "logits_processor" in hf_kwargs:
            hf_kwargs["logits_processor"] = lp.LogitsProcessorList(hf_kwargs["logits_processor"])
        hf.generation_config.update(eos_token_id=eos, pad_token_id=60, bos_token_id=None, forced_eos_token_id=None,
                                    max_length=None)
        with torch.no_grad():
            expected = hf.generate(src, attention_mask=torch.ones_like(src), do_sample=False, **hf_kwargs)
        got = generate(ours, src, eos_token_id=eos, pad_token_id=60, **kwargs)
        assert torch.equal(got, expected), {k: v for k, v in controls.items() if k != "logits_processor"}


@pytest.mark.parametrize("name", ["gpt2-tiny", "transformer-tiny", "retnet-tiny"])
def test_controls_and_scores_through_static_steps_equal_eager(name, eager_static):
    model = qkv.build(qkv.preset(name)).eval()
    ids = torch.randint(3, model.config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(5))
    for kwargs in (dict(no_repeat_ngram_size=2, logits_processor=_ban_after_even, min_new_tokens=3),
                   dict(num_beams=3, bad_words_ids=[[4], [5, 6]], no_repeat_ngram_size=2),
                   dict(do_sample=True, min_p=0.1, typical_p=0.8)):
        run = dict(max_new_tokens=7, eos_token_id=3, return_scores=True, **kwargs)
        eager = generate(model, ids, generator=torch.Generator().manual_seed(0), **run)
        static = generate(model, ids, generator=torch.Generator().manual_seed(0), compile=True, **run)
        assert torch.equal(eager.sequences, static.sequences), kwargs
        torch.testing.assert_close(eager.token_logprobs, static.token_logprobs)


def test_bad_control_arguments_are_named():
    gpt = qkv.build(qkv.preset("gpt2-tiny"))
    ids = torch.tensor([[5, 6]])
    with pytest.raises(ValueError, match="min_p must be None or a number in"):
        generate(gpt, ids, max_new_tokens=2, min_p=1.5)
    with pytest.raises(TypeError, match="logits_processor must be a function"):
        generate(gpt, ids, max_new_tokens=2, logits_processor=[3])
    with pytest.raises(ValueError, match="decoder_input_ids is for encoder-decoder models"):
        generate(gpt, ids, max_new_tokens=2, decoder_input_ids=ids)
    with pytest.raises(ValueError, match="must return scores of shape"):
        generate(gpt, ids, max_new_tokens=2, logits_processor=lambda i, s: s[:, :3])
