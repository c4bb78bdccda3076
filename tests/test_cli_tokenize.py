"""qkv tokenize: the ids are the tokenizer's own, the pieces cover the text in order, the round trip is reported
truthfully, and every mistake is one line."""
import json

import pytest

from qkv.cli import main
from qkv.data import CharTokenizer
from qkv.data.tokenizer import train_bpe

TEXT = "¿Dónde está la  estación? ÑANDÚ, dijo."


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    train_bpe(iter([TEXT, "the cat sat on the mat"] * 40), vocab_size=300).save(root / "bpe")
    CharTokenizer.train(iter(["abc de"])).save(root / "char")  # knows too few characters for TEXT
    return root


def _rows(capsys, *argv):
    assert main(["tokenize", *argv, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize("special", [False, True])
def test_ids_are_the_tokenizers_and_pieces_spell_the_text(folders, capsys, special):
    from qkv.data import Tokenizer
    tok = Tokenizer.load(folders / "bpe")
    (row,) = _rows(capsys, "--tokenizer", str(folders / "bpe"), "--text", TEXT, *(["--add-special"] if special else []))
    assert row["ids"] == tok.encode(TEXT, add_special=special) and row["round_trip"] and row["decoded"] == TEXT
    assert len(row["pieces"]) == len(row["ids"])
    inner = row["pieces"][1:-1] if special else row["pieces"]
    assert "".join(inner) == TEXT  # byte-level pieces, one per id, spell the text exactly
    if special:
        assert row["pieces"][0] == tok.id_to_token(tok.bos_id) and row["pieces"][-1] == tok.id_to_token(tok.eos_id)


def test_a_text_the_tokenizer_cannot_spell_is_said_not_to_round_trip(folders, capsys):
    (row,) = _rows(capsys, "--tokenizer", str(folders / "char"), "--text", "a Zb")
    assert not row["round_trip"] and row["decoded"] != "a Zb"
    assert main(["tokenize", "--tokenizer", str(folders / "char"), "--text", "a Zb"]) == 0
    assert "not the text" in capsys.readouterr().out


def test_a_file_gives_one_answer_a_line_in_order(folders, capsys, tmp_path):
    lines = ["uno", "", "tres cuatro", "¡cinco!"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = _rows(capsys, "--tokenizer", str(folders / "bpe"), "--file", str(tmp_path / "in.txt"))
    assert [r["text"] for r in rows] == lines and all(r["round_trip"] for r in rows)
    assert main(["tokenize", "--tokenizer", str(folders / "bpe"), "--file", str(tmp_path / "in.txt")]) == 0
    shown = capsys.readouterr().out
    assert shown.count("decodes back exactly") == 4 and "␣" not in shown.splitlines()[1]  # "uno": no blank


def test_a_hugging_face_tokenizer_json_gives_the_ids_tokenizers_gives(folders, capsys):
    tokenizers = pytest.importorskip("tokenizers")
    path = folders / "bpe" / "tokenizer.json"
    if not path.is_file():
        pytest.skip("the BPE folder stores its tokenizer under another name")
    (row,) = _rows(capsys, "--tokenizer", str(path), "--text", TEXT)
    assert row["ids"] == tokenizers.Tokenizer.from_file(str(path)).encode(TEXT, add_special_tokens=False).ids


@pytest.mark.parametrize("argv, said", [
    (["--tokenizer", "no/such/folder", "--text", "x"], "--tokenizer no/such/folder: no such tokenizer folder"),
    (["--checkpoint", "nowhere", "--text", "x"], "--checkpoint nowhere: no such folder"),
    (["--tokenizer", "{bpe}", "--file", "missing.txt"], "missing.txt"),
])
def test_mistakes_are_one_line(folders, capsys, argv, said):
    argv = [a.replace("{bpe}", str(folders / "bpe")) for a in argv]
    assert main(["tokenize", *argv]) in (1, 2)  # 2: a flag was wrong, 1: what it named was
    err = capsys.readouterr().err.strip()
    assert err.startswith("qkv tokenize: error: ") and said in err and "\n" not in err
