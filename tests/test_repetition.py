"""qkv.repetition: a decode that ran to its limit repeating itself is found (what repeats, how often, from where);
one that ended by itself, or does not loop, is not; and `qkv translate` / `qkv generate` and the explorer say so
in one line per input, on a model built to loop."""
import ast
from pathlib import Path

import pytest
import torch

import qkv
from qkv.cli import main
from qkv.data import CharTokenizer
from qkv.repetition import Repetition, describe, repetition


def test_a_one_token_loop_to_the_limit_is_found_with_its_count_and_start():
    ids = [7, 3] + [9] * 60
    assert repetition(ids, hit_limit=True) == Repetition(unit=(9,), count=60, start=2, covered=60)


def test_a_loop_of_several_tokens_is_read_from_where_it_begins_and_a_partial_unit_is_covered_not_counted():
    ids = [1, 2] + [5, 6, 7] * 10 + [5, 6]  # cut mid-unit by the limit
    found = repetition(ids, hit_limit=True)
    assert found.unit == (5, 6, 7) and found.count == 10 and found.start == 2 and found.covered == 32


def test_the_shortest_unit_wins_a_tie_and_the_longest_run_wins_otherwise():
    assert repetition([4] * 12, hit_limit=True).unit == (4,)  # not (4, 4) x 6
    # (1, 2) x 3 at the very end is shorter than the (1, 2, 1, 2, 3) x 4 run that reaches further back
    ids = [1, 2, 1, 2, 3] * 4
    found = repetition(ids, hit_limit=True)
    assert found.unit == (1, 2, 1, 2, 3) and found.count == 4 and found.start == 0


def test_an_output_that_ended_by_itself_is_never_a_loop():
    assert repetition([9] * 60, hit_limit=False) is None


@pytest.mark.parametrize("ids", [
    list(range(40)),  # no repeats at all
    [9, 9],  # too short to call
    list(range(30)) + [9, 9, 9],  # three repeats at the end, but a sliver of the output
    [1, 2, 3, 1, 2, 3, 4],  # the repeats do not reach the end
])
def test_outputs_that_do_not_end_in_a_long_loop_are_not_flagged(ids):
    assert repetition(ids, hit_limit=True) is None


def test_the_thresholds_are_the_callers_to_choose_and_are_checked():
    ids = list(range(30)) + [9, 9, 9]
    assert repetition(ids, hit_limit=True, min_share=0.0).count == 3
    assert repetition([1, 2] * 40, hit_limit=True, max_period=1) is None  # a unit of 2 is not looked for
    for bad in (dict(min_repeats=1), dict(min_share=1.5), dict(max_period=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            repetition([1], hit_limit=True, **bad)


def test_describe_is_one_line_naming_the_unit_the_count_and_the_limit():
    found = repetition([9] * 60, hit_limit=True)
    line = describe(found, " veintiuna", limit=60)
    assert line.startswith("ran to the length limit (60 tokens) repeating ' veintiuna' 60 times") and "\n" not in line
    assert "…" in describe(found, "x" * 100) and len(describe(found, "x" * 100)) < 200


def test_the_module_is_a_leaf_importing_nothing_of_qkv():
    source = (Path(__file__).resolve().parents[1] / "qkv" / "repetition.py").read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            assert not node.level and (node.module or "").split(".")[0] != "qkv", ast.dump(node)
        if isinstance(node, ast.Import):
            assert all(a.name.split(".")[0] != "qkv" for a in node.names)


# -- on the command line and in the explorer: a model built to loop ----------------------------------------------

CORPUS = ["el gato compró tres árboles", "the cat sat on the mat"] * 3


def constant(model, last_norm, token: int):
    """Make ``model`` predict ``token`` at every step: its last norm outputs a constant (weight 0, bias a multiple of
    that token's output row), so every position's logits are the same, and ``token``'s the largest."""
    with torch.no_grad():
        last_norm.weight.zero_()
        last_norm.bias.copy_(4 * model.head.weight[token] / model.head.weight[token].norm())
        assert int((model.head.weight @ last_norm.bias).argmax()) == token
    return model


@pytest.fixture(scope="module")
def tok():
    return CharTokenizer.train(iter(CORPUS))


def folder_of(tmp_path_factory, tok, name, token_text):
    torch.manual_seed(0)
    special = dict(vocab_size=tok.vocab_size, pad_token_id=tok.pad_id, bos_token_id=tok.bos_id,
                   eos_token_id=tok.eos_id, max_positions=64)
    if name == "transformer-tiny":
        model = qkv.build(qkv.preset(name, **special, decoder_start_token_id=tok.bos_id)).eval()
        last = model.decoder.blocks[-1].norm_ffn  # post-norm: the last block's norm is the last layer
    else:
        model = qkv.build(qkv.preset(name, **special)).eval()
        last = model.norm
    token = tok.eos_id if token_text is None else tok.encode(token_text)[0]
    folder = tmp_path_factory.mktemp("loop") / name
    constant(model, last, token).save(folder)
    tok.save(folder / "tokenizer")
    return folder


@pytest.fixture(scope="module")
def looping_translator(tmp_path_factory, tok):
    return folder_of(tmp_path_factory, tok, "transformer-tiny", "a")


@pytest.fixture(scope="module")
def looping_lm(tmp_path_factory, tok):
    return folder_of(tmp_path_factory, tok, "gpt2-tiny", "a")


def warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("qkv: warning:") and "repeating" in line]


@pytest.mark.parametrize("beams", ["4", "1"], ids=["beam-batched", "greedy-streamed"])
def test_translate_warns_once_per_looping_line_naming_it(looping_translator, tmp_path, capsys, beams):
    flags = ["--max-new-tokens", "12", "--num-beams", beams]
    assert main(["translate", "--checkpoint", str(looping_translator), "--text", "el gato", *flags]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "a" * 12
    assert warnings(err) == ["qkv: warning: --text 'el gato': the output ran to the length limit (12 tokens) "
                             "repeating 'a' 12 times: the model never ended it, whatever its score says"]
    lines = tmp_path / "in.txt"
    lines.write_text("el gato\n\ntres árboles\n")
    assert main(["translate", "--checkpoint", str(looping_translator), "--file", str(lines), *flags]) == 0
    found = warnings(capsys.readouterr().err)
    assert len(found) == 2 and f"--file {lines} line 1:" in found[0] and f"--file {lines} line 3:" in found[1]


def test_generate_warns_for_a_prompt_and_for_each_line_of_a_file(looping_lm, tmp_path, capsys):
    for extra in ([], ["--num-beams", "2"]):
        assert main(["generate", "--checkpoint", str(looping_lm), "--prompt", "el", "--max-new-tokens", "10",
                     *extra]) == 0
        out, err = capsys.readouterr()
        assert out.strip() == "el" + "a" * 10
        assert len(warnings(err)) == 1 and "--prompt 'el': the output ran to the length limit (10 tokens) " \
                                           "repeating 'a' 10 times" in warnings(err)[0]
    lines = tmp_path / "prompts.txt"
    lines.write_text("el\nthe cat\n")
    assert main(["generate", "--checkpoint", str(looping_lm), "--file", str(lines), "--max-new-tokens", "10"]) == 0
    assert [w.split(":")[2].strip() for w in warnings(capsys.readouterr().err)] == \
        [f"--file {lines} line 1", f"--file {lines} line 2"]


def test_an_output_that_ends_or_is_cut_short_of_a_loop_is_not_warned_about(tmp_path_factory, tok, capsys):
    ends = folder_of(tmp_path_factory, tok, "transformer-tiny", None)  # EOS first: an empty, ended translation
    assert main(["translate", "--checkpoint", str(ends), "--text", "el gato", "--max-new-tokens", "12"]) == 0
    assert not warnings(capsys.readouterr().err)


def test_the_explorer_says_it_under_the_output(looping_translator, tok):
    from qkv.explore import Explorer
    ex = Explorer(qkv.load(looping_translator), tok, max_new_tokens=12).example("el gato")
    assert ex["output"] == "a" * 12
    assert ex["warning"] == ("The translation ran to the length limit (12 tokens) repeating 'a' 12 times: the model "
                             "never ended it, whatever its score says (greedy decoding's too).")
