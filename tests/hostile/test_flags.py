"""Mistaken flags on the decoding, evaluation, inspection and conversion subcommands: each is one line naming the
flag, the value and what was expected, before anything heavy runs; silent fallbacks (greedy for --num-beams 0,
the default for --block-size 0) are gone, and text the tokenizer cannot spell is reported once."""
import pytest

import qkv

from .conftest import TEXT, copy, ok, refused


@pytest.mark.parametrize("flags,culprits", [
    (["--num-beams", "0"], ["--num-beams 0"]), (["--num-beams", "-2"], ["--num-beams -2"]),
    (["--max-new-tokens", "0"], ["--max-new-tokens 0"]), (["--max-new-tokens", "-1"], ["--max-new-tokens -1"]),
    (["--temperature", "0", "--sample"], ["--temperature 0"]), (["--temperature", "nan"], ["--temperature nan"]),
    (["--top-k", "0", "--sample"], ["--top-k 0"]), (["--top-p", "2"], ["--top-p 2"]),
    (["--top-p", "-0.5"], ["--top-p -0.5"]), (["--repetition-penalty", "0"], ["--repetition-penalty 0"]),
    (["--sample", "--num-beams", "3"], ["--sample", "--num-beams 3"]),
    (["--max-new-tokens", "lots"], ["--max-new-tokens", "lots"])])
def test_bad_generate_flags_are_one_line(lm_folder, capsys, flags, culprits):
    refused(capsys, ["generate", "--checkpoint", lm_folder, "--prompt", "The", *flags], *culprits)


@pytest.mark.parametrize("flags,culprits", [(["--num-beams", "0"], ["--num-beams 0"]),
                                            (["--max-new-tokens", "0"], ["--max-new-tokens 0"]),
                                            (["--top-p", "1.5", "--sample"], ["--top-p 1.5"])])
def test_bad_translate_flags_are_one_line(s2s_folder, capsys, flags, culprits):
    refused(capsys, ["translate", "--checkpoint", s2s_folder, "--text", "The boats", *flags], *culprits)


@pytest.mark.parametrize("text", ["", "   ", "\t"])
def test_translate_refuses_an_empty_sentence(s2s_folder, capsys, text):
    refused(capsys, ["translate", "--checkpoint", s2s_folder, "--text", text], "--text", "empty")


def test_translate_refuses_a_file_of_blank_lines(world, s2s_folder, capsys):
    f = world.root / "blank.txt"
    f.write_text("\n  \n\n")
    refused(capsys, ["translate", "--checkpoint", s2s_folder, "--file", f], "--file", "no sentences")


def test_translate_keeps_blank_lines_of_a_file_blank(world, s2s_folder, capsys):
    f = world.root / "in.txt"
    f.write_text("The boats\n\nAll the doors\n")
    out = ok(capsys, ["translate", "--checkpoint", s2s_folder, "--file", f, "--num-beams", "1",
                      "--max-new-tokens", "3"]).out
    assert out.split("\n")[1] == "" and len(out.splitlines()) == 3


@pytest.mark.parametrize("kind", ["folder", "missing", "latin1"])
def test_a_bad_translate_file_is_named(world, s2s_folder, capsys, kind):
    f = world.root / "sentences.txt"
    if kind == "folder":
        f.mkdir()
    elif kind == "latin1":
        f.write_bytes("The boats\nse\xf1or\n".encode("latin-1"))
    culprits = ["sentences.txt"] + (["byte offset 12"] if kind == "latin1" else [])
    refused(capsys, ["translate", "--checkpoint", s2s_folder, "--file", f], *culprits)


def test_generate_refuses_a_translation_checkpoint(s2s_folder, capsys):
    refused(capsys, ["generate", "--checkpoint", s2s_folder, "--prompt", "The"], "encoder_decoder", "qkv translate")


def test_translate_refuses_a_language_model(lm_folder, capsys):
    refused(capsys, ["translate", "--checkpoint", lm_folder, "--text", "The"], "encoder-decoder")


def test_unknown_characters_are_reported_once_on_stderr(world, s2s_folder, capsys):
    out = ok(capsys, ["translate", "--checkpoint", s2s_folder, "--text", "Zürich ß", "--text", "Zürich again",
                      "--num-beams", "1", "--max-new-tokens", "2"])
    notes = [ln for ln in out.err.splitlines() if "warning" in ln]
    assert len(notes) == 1 and "'ü'" in notes[0] and "<unk>" in notes[0] and "--text" in notes[0]
    assert "warning" not in out.out


def test_a_prompt_the_vocabulary_covers_gets_no_warning(lm_folder, capsys):
    out = ok(capsys, ["generate", "--checkpoint", lm_folder, "--prompt", "The boats", "--max-new-tokens", "2"])
    assert "warning" not in out.err


def test_generate_warns_about_unknown_characters_in_the_prompt(lm_folder, capsys):
    out = ok(capsys, ["generate", "--checkpoint", lm_folder, "--prompt", "Ωmega", "--max-new-tokens", "2"])
    assert "'Ω'" in out.err and out.err.count("warning") == 1


@pytest.mark.parametrize("flags,culprits", [(["--block-size", "0"], ["--block-size 0"]),
                                            (["--block-size", "100000"], ["--block-size 100000", "64"]),
                                            (["--max-batches", "-1"], ["--max-batches -1"]),
                                            (["--num-beams", "0"], ["--num-beams 0"])])
def test_bad_eval_flags_are_one_line(lm_folder, corpus, capsys, flags, culprits):
    refused(capsys, ["eval", "--checkpoint", lm_folder, "--data", corpus, *flags], *culprits)


@pytest.mark.parametrize("kind", ["folder", "latin1", "missing"])
def test_a_bad_eval_data_file_is_named(world, lm_folder, capsys, kind):
    f = world.root / "eval.txt"
    if kind == "folder":
        f.mkdir()
    elif kind == "latin1":
        f.write_bytes(TEXT.encode() + "\xe9".encode("latin-1"))
    refused(capsys, ["eval", "--checkpoint", lm_folder, "--data", f], "eval.txt")


def test_info_refuses_a_zero_context(lm_folder, capsys):
    refused(capsys, ["info", "--checkpoint", lm_folder, "--seq-len", "0"], "--seq-len 0")


@pytest.mark.parametrize("kind", ["file", "nonempty"])
def test_convert_never_writes_over_existing_files(world, lm_folder, capsys, kind):
    out = world.root / "out"
    if kind == "file":
        out.write_text("precious")
    else:
        out.mkdir()
        (out / "config.json").write_text("precious")
    refused(capsys, ["convert", "--checkpoint", lm_folder, "--out", out], "--out", str(out))
    assert (out if kind == "file" else out / "config.json").read_text() == "precious"


def test_convert_writes_a_manifest_that_load_checks(world, lm_folder, capsys):
    out = world.root / "out"
    ok(capsys, ["convert", "--checkpoint", lm_folder, "--out", out])
    assert (out / "manifest.json").is_file() and qkv.load(out) is not None


@pytest.mark.parametrize("argv,culprits", [
    (["plot", "curves", "--metrics", "{root}/none.jsonl"], ["none.jsonl"]),
    (["plot", "attention"], ["--checkpoint"]),
    (["generate", "--checkpoint", "{root}/nowhere"], ["--checkpoint", "nowhere"]),
    (["eval", "--checkpoint", "{lm}"], ["--data"]),
    (["bench", "no-such-bench"], ["no-such-bench"]),
    (["info", "--preset", "no-such-preset"], ["no-such-preset"]),
    (["train", "--data", "{root}/x.txt", "--out-dir", "{root}/r"], ["--preset"]),
    (["no-such-command"], ["no-such-command"]),
    (["generate", "--checkpoint", "{lm}", "--no-such-flag"], ["--no-such-flag"])])
def test_other_mistakes_are_one_line(world, lm_folder, capsys, argv, culprits):
    argv = [a.format(root=world.root, lm=lm_folder) for a in argv]
    refused(capsys, argv, *culprits)


def test_a_broken_metrics_file_is_named_by_plot(world, capsys):
    m = world.root / "metrics.jsonl"
    m.write_text('{"step": 1, "train_loss": 2.0}\n{"step": 2, "tra')
    refused(capsys, ["plot", "curves", "--metrics", m, "--out", world.root / "c.png"], "metrics.jsonl")


def test_debug_keeps_the_traceback(world, lm_folder):
    from qkv.cli import main
    folder = copy(lm_folder, world.root / "m")
    (folder / "config.json").write_text("[]")
    (folder / "manifest.json").unlink()
    with pytest.raises(ValueError, match="config.json"):
        main(["generate", "--checkpoint", str(folder), "--debug"])
