"""GenerationConfig (qkv/decoding/config.py): transformers' generation_config.json reads straight in, every
default that depends on a model is decided by ``resolved``, every decoding entry takes a config plus keyword
overrides (the same tokens either way), the command line's decoding flags are the config's fields, and the
decoding package imports without a cycle."""
import ast
import json
from pathlib import Path

import pytest
import torch

import qkv
from qkv.decoding import GenerationConfig, beam_search_trace, generate, generate_many, stream
from qkv.decoding.args import flag_fields
from qkv.decoding.config import FILE_SETTINGS, SETTINGS


def _gpt(**overrides):
    torch.manual_seed(0)
    return qkv.build(qkv.preset("gpt2-tiny", **overrides)).eval()


def test_a_transformers_generation_config_reads_straight_in(tmp_path):
    transformers = pytest.importorskip("transformers")
    settings = dict(num_beams=3, length_penalty=0.8, no_repeat_ngram_size=2, bad_words_ids=[[5], [6, 7]],
                    forced_eos_token_id=2, eos_token_id=[2, 3], pad_token_id=0, decoder_start_token_id=1,
                    max_new_tokens=12, min_new_tokens=2, repetition_penalty=1.2, early_stopping="never",
                    num_return_sequences=2, renormalize_logits=True, forced_bos_token_id=4, bos_token_id=1)
    transformers.GenerationConfig(**settings).save_pretrained(tmp_path)
    ours = GenerationConfig.from_json(tmp_path / "generation_config.json")
    for name, value in settings.items():
        expected = tuple(map(tuple, value)) if name == "bad_words_ids" else tuple(value) \
            if isinstance(value, list) else value
        assert getattr(ours, name) == expected, name
    assert "transformers_version" in ours.extra  # kept, not obeyed
    assert ours.top_k == 50  # transformers' default when the file leaves it out


def test_file_defaults_follow_transformers_and_round_trip():
    assert GenerationConfig().top_k is None and GenerationConfig.from_dict({}).top_k == 50
    assert GenerationConfig.from_dict({"top_k": 0}).top_k is None  # transformers: 0 is off
    assert GenerationConfig.from_dict({"top_p": None, "num_beams": None}) == GenerationConfig(top_k=50)
    for config in (GenerationConfig(num_beams=4, eos_token_id=(2, 5), bad_words_ids=[[1, 2]], max_length=30),
                   GenerationConfig(stop_strings="end", do_sample=True, top_k=5, min_p=0.1, epsilon_cutoff=3e-4)):
        assert GenerationConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_replace_checks_again_and_names_unknown_settings():
    config = GenerationConfig(num_beams=4)
    assert config.replace(num_beams=2).num_beams == 2 and config.num_beams == 4  # frozen: a new config
    with pytest.raises(TypeError, match=r"unknown decoding setting\(s\) \['beams'\]"):
        config.replace(beams=2)
    with pytest.raises(ValueError, match="do_sample=True is not supported with num_beams > 1"):
        config.replace(do_sample=True)
    with pytest.raises(ValueError, match="num_beams must be an int >= 1, got 0"):
        GenerationConfig(num_beams=0)
    assert GenerationConfig(top_p=1, temperature=0).top_p == 1.0  # numbers become floats; 0 is fine greedily
    with pytest.raises(ValueError, match="temperature must be a number > 0 when sampling"):
        GenerationConfig(temperature=0, do_sample=True)


def test_resolved_decides_every_model_default_in_one_place():
    model = _gpt(vocab_size=64, eos_token_id=7, pad_token_id=None, max_positions=40)
    plan = GenerationConfig().resolved(model, 5)
    assert (plan.eos_ids, plan.pad, plan.max_new_tokens) == ((7,), 7, 20)  # the model's EOS; pad: the first EOS
    assert GenerationConfig(eos_token_id=()).resolved(model, 5).eos is None
    assert GenerationConfig(eos_token_id=(), pad_token_id=3).resolved(model, 5).pad == 3
    assert GenerationConfig(max_length=30).resolved(model, 5).max_new_tokens == 25
    assert GenerationConfig(max_length=30, max_new_tokens=4).resolved(model, 5).max_new_tokens == 4
    assert GenerationConfig().resolved(model, 32).max_new_tokens == 8  # 20 within the model's 40 positions
    with pytest.raises(ValueError, match="max_length=5 leaves nothing to generate after a 5-token prompt"):
        GenerationConfig(max_length=5).resolved(model, 5)
    with pytest.raises(ValueError, match=r"eos_token_id must hold token ids in \[0, 64\) \(the vocabulary\), got 64"):
        GenerationConfig(eos_token_id=[3, 64]).resolved(model, 5)
    out_of_vocab = _gpt(vocab_size=64, eos_token_id=50256)  # a preset's GPT-2 id: can never be generated
    assert GenerationConfig().resolved(out_of_vocab, 5).eos_ids == ()
    seq2seq = qkv.build(qkv.preset("transformer-tiny"))
    assert GenerationConfig().resolved(seq2seq, 1).decoder_start == seq2seq.config.decoder_start_token_id
    assert GenerationConfig(decoder_start_token_id=9).resolved(seq2seq, 1).decoder_start == 9


def test_every_entry_takes_a_config_and_overrides_with_the_same_tokens():
    model = _gpt()
    ids = torch.randint(3, 200, (2, 5), generator=torch.Generator().manual_seed(1))
    config = GenerationConfig(max_new_tokens=6, num_beams=3, eos_token_id=(), no_repeat_ngram_size=2)
    expected = generate(model, ids, max_new_tokens=6, num_beams=3, eos_token_id=(), no_repeat_ngram_size=2)
    assert torch.equal(generate(model, ids, config), expected)
    assert torch.equal(generate(model, ids, config.replace(num_beams=1), num_beams=3), expected)  # keywords win
    greedy = generate(model, ids, config, num_beams=1)
    streamed = torch.stack([c.tokens for c in stream(model, ids, config.replace(num_beams=1))], 1)
    assert torch.equal(greedy[:, 5:], streamed)
    trace = beam_search_trace(model, ids[:1], config, num_return_sequences=1)
    assert torch.equal(trace.sequences[:1], expected[:1])
    answers = generate_many(model, [ids[0].tolist(), ids[1, 2:].tolist()], config, tokens_per_batch=64)
    assert answers[0].tokens == expected[0, 5:].tolist()
    assert answers[1].tokens == generate(model, ids[1:, 2:], config)[0, 3:].tolist()


def test_the_decoding_flags_are_the_config_fields(capsys):
    from qkv.cli import main
    for command, defaults in (("generate", ["(default: 100)", "(default: 1)"]),
                              ("translate", ["(default: 60)", "(default: 4)"])):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        for f in flag_fields(speculative=command == "generate"):
            assert f.metadata["flag"] in text, f.name
        for shown in defaults:
            assert shown in text
        assert "tokens to generate at most (default:" in text and "beam search width" in text
    assert set(f.name for f in flag_fields(speculative=True)) <= set(SETTINGS)
    assert set(FILE_SETTINGS) < set(SETTINGS)


def test_the_decoding_package_has_no_import_cycle():
    """Each module of qkv/decoding imports its siblings one way (generate <-> speculative went round in a circle)."""
    folder = Path(qkv.__file__).parent / "decoding"
    edges = {}
    for path in folder.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names |= {node.module} if node.module else {a.name for a in node.names}
        edges[path.stem] = {n.split(".")[0] for n in names} & {p.stem for p in folder.glob("*.py")}

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, seen + (n,))) for n in edges.get(start, ()))
    cycles = sorted(m for m in edges if reaches(m, m))
    assert not cycles, cycles
