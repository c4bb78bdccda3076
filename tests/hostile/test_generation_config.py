"""A handed generation_config.json is checked like the flags it stands for: every field's type and range when the
config is read, one line naming the file, the field, the value and what was expected; token ids against the
model's vocabulary once the model is known. Before, ``num_beams: 0`` decoded greedily, ``do_sample: "no"``
sampled, ``top_p: Infinity`` was dropped, ``max_new_tokens: -3`` was blamed on max_length and an
``eos_token_id`` outside the vocabulary crashed ``--min-new-tokens`` with an IndexError."""
import json

import pytest

import qkv
from qkv.decoding import GenerationConfig
from qkv.decoding.config import FILE_SETTINGS, SETTINGS

from .conftest import copy, ok, refused

# Wrong values of every kind of field: each must be refused by the field it is put in.
INT = [-1, 1.5, True, False, "3", [1], {"a": 1}]
NUMBER = [float("nan"), float("inf"), float("-inf"), "1.0", True, [1.0], {"a": 1}]
BOOL = ["no", "false", 0, 1, [True], {"a": 1}]
TOKEN = [-1, 1.0, True, "5", [[1]], {"a": 1}]
TOKENS = [-1, [1, -2], [1, "2"], [[1]], "7", True, {"a": 1}]
SEQUENCES = [[[]], [[1, -1]], [["a"]], [1, 2], "x", {"a": [1]}]
STRINGS = [[""], [1], "", {"a": "b"}, [["x"]]]
BAD = {"int": INT, "number": NUMBER, "bool": BOOL, "token": TOKEN, "tokens": TOKENS, "sequences": SEQUENCES,
       "strings": STRINGS, "early_stopping": ["sometimes", 1, 0.0, [True], "True"]}
KIND = dict(max_new_tokens="int", max_length="int", min_new_tokens="int", min_length="int", num_beams="int",
            num_return_sequences="int", top_k="int", no_repeat_ngram_size="int", num_draft_tokens="int",
            prompt_lookup_num_tokens="int", prompt_lookup_max_ngram="int", max_len="int",
            length_penalty="number", temperature="number", top_p="number", min_p="number", typical_p="number",
            epsilon_cutoff="number",
            repetition_penalty="number", do_sample="bool", renormalize_logits="bool", adaptive_draft="bool",
            static_cache="bool", compile="bool", return_scores="bool", forced_bos_token_id="token",
            pad_token_id="token", bos_token_id="token", decoder_start_token_id="token", eos_token_id="tokens",
            forced_eos_token_id="tokens", bad_words_ids="sequences", stop_strings="strings",
            early_stopping="early_stopping")
# Values in range for their type but not for the field
OUT_OF_RANGE = dict(max_new_tokens=[0, -3], max_length=[0], num_beams=[0, -2], num_return_sequences=[0],
                    min_new_tokens=[-1], min_length=[-5], top_k=[-1], no_repeat_ngram_size=[-1],
                    num_draft_tokens=[0], prompt_lookup_num_tokens=[0], prompt_lookup_max_ngram=[0], max_len=[0],
                    temperature=[-0.5], top_p=[0, 1.5, -0.1], min_p=[-0.1, 1.01], typical_p=[2.0],
                    epsilon_cutoff=[1, 1.0, -0.1],
                    repetition_penalty=[0, -1.0])


def test_every_field_has_its_kind_here():
    """A field added to GenerationConfig must be added to this file's table of kinds (and so be tried)."""
    assert set(KIND) == set(SETTINGS), set(SETTINGS) ^ set(KIND)


CASES = [(name, value) for name, kind in KIND.items() for value in BAD[kind]] + \
        [(name, value) for name, values in OUT_OF_RANGE.items() for value in values]


@pytest.mark.parametrize("field, value", CASES, ids=[f"{n}={v!r}" for n, v in CASES])
def test_a_bad_value_is_one_line_naming_file_field_and_value(world, field, value):
    """Fields a file sets are tried through a generation_config.json; how qkv runs a decode (compile, static
    caches, scores, speculative rounds) is not read from files, so those are tried as keywords."""
    path = world.root / "generation_config.json"
    path.write_text(json.dumps({field: value}))
    with pytest.raises(ValueError) as e:
        if field in FILE_SETTINGS:
            GenerationConfig.from_json(path)
        else:
            GenerationConfig(**{field: value})
    line = str(e.value)
    assert "\n" not in line and f"{field} must be" in line and repr(value) in line, line
    assert (str(path) in line) == (field in FILE_SETTINGS), line


def test_run_settings_in_a_file_are_kept_not_obeyed(world):
    path = world.root / "generation_config.json"
    path.write_text(json.dumps({"compile": True, "return_scores": True, "max_len": 10 ** 12, "num_beams": 3}))
    config = GenerationConfig.from_json(path)
    assert (config.compile, config.return_scores, config.max_len, config.num_beams) == (False, False, None, 3)
    assert set(config.extra) == {"compile", "return_scores", "max_len"}


@pytest.mark.parametrize("text, field", [('{"top_p": Infinity}', "top_p"), ('{"temperature": NaN}', "temperature"),
                                         ('{"length_penalty": -Infinity}', "length_penalty"),
                                         ('{"top_p": 1e400}', "top_p"), ('{"num_beams": 1e2}', "num_beams")])
def test_json_numbers_that_are_not_finite_or_not_ints_are_refused(world, text, field):
    path = world.root / "generation_config.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"{path}: {field} must be"):
        GenerationConfig.from_json(path)


def test_unknown_fields_are_kept_and_unsupported_ones_refused(world):
    path = world.root / "generation_config.json"
    path.write_text(json.dumps({"transformers_version": "4.50", "_from_model_config": True, "num_beams": 2,
                                "output_scores": True}))
    config = GenerationConfig.from_json(path)
    assert config.num_beams == 2 and config.extra == {"transformers_version": "4.50", "_from_model_config": True,
                                                      "output_scores": True}
    path.write_text(json.dumps({"num_beam_groups": 2, "num_beams": 4}))
    with pytest.raises(ValueError, match="num_beam_groups.*does not implement"):
        GenerationConfig.from_json(path)


def _folder_with(world, hf_folder, **settings):
    folder = copy(hf_folder, world.root / f"hf{len(list(world.root.glob('hf*')))}")
    (folder / "generation_config.json").write_text(json.dumps(settings))
    return folder


@pytest.mark.parametrize("settings, culprits", [
    (dict(num_beams=0), ["num_beams", "0", ">= 1"]),
    (dict(do_sample="no"), ["do_sample", "'no'", "true or false"]),
    (dict(top_p=float("inf"), do_sample=True), ["top_p", "inf", "(0, 1]"]),
    (dict(max_new_tokens=-3, max_length=50), ["max_new_tokens", "-3", ">= 1"]),
    (dict(temperature=-1.0), ["temperature", "-1.0"]),
    (dict(bad_words_ids=[[1, "x"]]), ["bad_words_ids", "non-empty lists of token ids"])])
def test_the_command_refuses_a_bad_generation_config_in_one_line(world, hf_folder, capsys, settings, culprits):
    folder = _folder_with(world, hf_folder, **settings)
    line = refused(capsys, ["generate", "--hf", folder, "--prompt", "the"], "generation_config.json", *culprits)
    assert "max_length" not in line  # max_new_tokens=-3 is not blamed on max_length


@pytest.mark.parametrize("field", ["eos_token_id", "pad_token_id", "forced_bos_token_id", "forced_eos_token_id",
                                   "bad_words_ids"])
def test_token_ids_outside_the_vocabulary_are_refused_before_decoding(world, hf_folder, capsys, field):
    """eos_token_id 10**6 used to reach index_fill with --min-new-tokens: an IndexError with no file named."""
    value = [[10 ** 6]] if field == "bad_words_ids" else 10 ** 6
    folder = _folder_with(world, hf_folder, **{field: value})
    refused(capsys, ["generate", "--hf", folder, "--prompt", "the", "--min-new-tokens", "2", "--max-new-tokens", "3"],
            "generation_config.json", field, "1000000", "vocabulary" if field in ("eos_token_id", "pad_token_id")
            else "token ids in [0,")


def test_a_flag_wins_over_the_file_and_a_good_file_decodes(world, hf_folder, capsys):
    folder = _folder_with(world, hf_folder, num_beams=0)
    refused(capsys, ["generate", "--hf", folder, "--prompt", "the"], "num_beams")
    folder = _folder_with(world, hf_folder, num_beams=2, max_new_tokens=3, transformers_version="4.0")
    assert ok(capsys, ["generate", "--hf", folder, "--prompt", "the"]).out.strip()


def test_a_bad_flag_over_a_good_file_is_blamed_on_the_flag(world, hf_folder, capsys):
    folder = _folder_with(world, hf_folder, num_beams=2, eos_token_id=3)
    line = refused(capsys, ["generate", "--hf", folder, "--prompt", "the", "--top-p", "2"], "--top-p 2", "top_p")
    assert "generation_config.json" not in line
    config = GenerationConfig.from_folder(folder)
    with pytest.raises(ValueError, match=r"^eos_token_id must hold token ids in \[0, 5\)"):
        config.replace(eos_token_id=9).resolved(qkv.build(qkv.preset("gpt2-tiny", vocab_size=5)), 1)
    with pytest.raises(ValueError, match=r"generation_config.json: eos_token_id must hold token ids in \[0, 3\)"):
        config.resolved(qkv.build(qkv.preset("gpt2-tiny", vocab_size=3)), 1)
