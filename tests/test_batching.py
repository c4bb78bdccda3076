"""Files at library speed (qkv/decoding/batch.py, `qkv translate --file`, `qkv generate --file`): inputs batched by
length under a token budget give exactly the tokens of one-at-a-time decoding, in the inputs' order, greedy and
beam search, for a prompt (left-padded) and a source (right-padded)."""
import pytest
import torch

import qkv
from qkv.decoding import generate_many, length_batches
from qkv.cli import main
from qkv.decoding import generate

LENGTHS = [3, 41, 1, 17, 2, 29, 5, 11, 1, 33]  # very different lengths, out of order


def test_length_batches_keep_the_budget_and_cover_every_input_once():
    batches = length_batches(LENGTHS, 120, extra=4, rows_per_input=2)
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
    for b in batches:
        longest = max(LENGTHS[i] for i in b)
        assert len(b) == 1 or len(b) * (longest + 4) * 2 <= 120
    assert len(batches) < len(LENGTHS)  # short inputs do share batches
    assert [len(b) for b in length_batches(LENGTHS, 10 ** 6, max_batch_size=4)] == [4, 4, 2]
    with pytest.raises(ValueError, match="tokens_per_batch must be an int >= 1, got 0"):
        length_batches(LENGTHS, 0)


@pytest.mark.parametrize("name", ["gpt2-tiny", "transformer-tiny", "retnet-tiny"])
@pytest.mark.parametrize("beams", [1, 3])
def test_batched_decoding_equals_one_at_a_time(name, beams):
    torch.manual_seed(0)
    model = qkv.build(qkv.preset(name, dropout=0.0)).double().eval()
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randint(4, 256, (n,), generator=g).tolist() for n in LENGTHS]
    eos = 3
    kwargs = dict(max_new_tokens=9, num_beams=beams, eos_token_id=eos, no_repeat_ngram_size=3)
    answers = generate_many(model, inputs, tokens_per_batch=150, pad_token_id=0, return_scores=True, **kwargs)
    source = model.config.family == "encoder_decoder"
    for x, answer in zip(inputs, answers):
        alone = generate(model, torch.tensor([x]), pad_token_id=0, return_scores=True, **kwargs)
        tokens = alone.sequences[0, 1 if source else len(x):].tolist()
        tokens = tokens[: tokens.index(eos)] if eos in tokens else tokens
        assert answer.tokens == tokens
        assert answer.score == pytest.approx(float(alone.sequences_scores[0]), abs=1e-9)


def _char_checkpoint(tmp_path, preset):
    from qkv.data import CharTokenizer
    tok = CharTokenizer.train(iter(["abcdefghijklmnopqrstuvwxyz ."]))
    torch.manual_seed(0)
    model = qkv.build(qkv.preset(preset, vocab_size=tok.vocab_size, dropout=0.0, pad_token_id=tok.pad_id,
                                 eos_token_id=tok.eos_id, bos_token_id=tok.bos_id,
                                 **({"decoder_start_token_id": tok.bos_id} if preset == "transformer-tiny" else {})))
    with torch.no_grad():  # peaky: no near-ties, so padding's float noise cannot flip a choice
        model.head.weight.mul_(20)
    model.save(tmp_path / "m")
    tok.save(tmp_path / "m" / "tokenizer")
    lines = ["a", "", "the quick brown fox jumps over the lazy dog again and again", "hi there", "xyz",
             "a much longer line than most of the others here."]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "m"), str(tmp_path / "in.txt"), lines


@pytest.mark.parametrize("command, preset", [("generate", "gpt2-tiny"), ("translate", "transformer-tiny")])
def test_cli_file_batches_print_what_one_at_a_time_prints(command, preset, tmp_path, capsys):
    model, path, lines = _char_checkpoint(tmp_path, preset)
    common = [command, "--checkpoint", model, "--max-new-tokens", "6"]
    for beams in ("1", "3"):
        assert main(common + ["--file", path, "--num-beams", beams, "--tokens-per-batch", "90"]) == 0
        captured = capsys.readouterr()
        batched = captured.out.splitlines()
        assert len(batched) == len(lines) and batched[1] == ""  # one line per input line, blanks kept
        assert "decode" in captured.err  # progress on stderr
        assert main(common + ["--file", path, "--num-beams", beams, "--stream"]) == 0
        assert capsys.readouterr().out.splitlines() == batched, beams
    assert main(common + ["--file", path, "--show-scores", "--no-repeat-ngram-size", "2", "--min-new-tokens",
                          "2"]) == 0
    scored = capsys.readouterr().out.splitlines()
    assert len(scored) == len(lines) and all(float(s.rsplit("\t", 1)[1]) <= 0 for s in scored if s)


def test_cli_generate_speculative_prints_the_greedy_text(tmp_path, capsys):
    model, _, _ = _char_checkpoint(tmp_path, "gpt2-tiny")
    base = ["generate", "--checkpoint", model, "--prompt", "abc abc ab", "--max-new-tokens", "12"]
    assert main(base) == 0
    greedy = capsys.readouterr().out
    assert main(base + ["--draft", model, "--num-draft-tokens", "3"]) == 0
    assert capsys.readouterr().out == greedy
    assert main(base + ["--prompt-lookup", "3"]) == 0
    assert capsys.readouterr().out == greedy
    assert main(base + ["--draft", str(tmp_path / "nowhere")]) == 2
    assert "--draft" in capsys.readouterr().err
