"""Tokenizers: round trips, special ids in one consistent order, save/load, and clear errors."""
from pathlib import Path

import pytest

from qkv.data import (ROLES, SPECIALS, CharTokenizer, HFTokenizer, Tokenizer, train_bpe, train_wordpiece)

SHAKESPEARE = Path("/work/shared/data/tinyshakespeare/input.txt")
CORPUS = ["the cat sat on the mat.\n", "a dog and a cat, together!\n", "numbers 12 and 345 too.\n",
          "mañana será otro día, ¿verdad?\n"] * 20


@pytest.fixture(params=["char", "bpe", "wordpiece"])
def tok(request):
    if request.param == "char":
        return CharTokenizer.train(iter(CORPUS))
    if request.param == "bpe":
        return train_bpe(iter(CORPUS), vocab_size=300)
    return train_wordpiece(iter(CORPUS), vocab_size=120)


def test_specials_have_the_same_ids_in_every_trained_tokenizer(tok):
    assert [tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id, tok.mask_id, tok.cls_id, tok.sep_id] == list(range(7))
    assert tok.sos_id == tok.bos_id
    assert tok.special_ids == list(range(7))
    assert [tok.id_to_token(i) for i in range(7)] == [getattr(SPECIALS, r) for r in ROLES]


def test_encode_decode_round_trip(tok):
    text = "the cat sat on the mat."
    ids = tok.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    wrapped = tok.encode(text, add_special=True)
    # BERT-style WordPiece wraps in CLS ... SEP; the generative tokenizers in BOS ... EOS.
    is_wordpiece = isinstance(tok, HFTokenizer) and type(tok.hf.model).__name__ == "WordPiece"
    begin, end = (tok.cls_id, tok.sep_id) if is_wordpiece else (tok.bos_id, tok.eos_id)
    assert wrapped == [begin] + ids + [end]
    assert tok.decode(wrapped) == text and tok.decode(wrapped, skip_special=False) != text


def test_tokens_has_one_label_per_id(tok):
    text = "a dog and a cat"
    assert len(tok.tokens(text)) == len(tok.encode(text))


def test_save_load_gives_the_same_ids(tok, tmp_path):
    tok.save(tmp_path / "tok")
    again = Tokenizer.load(tmp_path / "tok")
    assert type(again) is type(tok) and again.specials == tok.specials
    assert Tokenizer.load(tmp_path / "tok" / "qkv_tokenizer.json").vocab_size == tok.vocab_size
    text = "mañana the cat, 345"
    assert again.encode(text, add_special=True) == tok.encode(text, add_special=True)
    assert again.fingerprint() == tok.fingerprint()


def test_char_tokenizer_without_specials_is_sorted_characters():
    tok = CharTokenizer.train(iter(["hello"]), specials=())
    assert tok.vocab == ["e", "h", "l", "o"] and tok.pad_id is None
    assert tok.encode("hello", add_special=True) == [1, 0, 2, 2, 3]


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="tinyshakespeare not present")
def test_char_vocab_on_tinyshakespeare_is_nanogpts_65():
    assert CharTokenizer.train(SHAKESPEARE, specials=()).vocab_size == 65


def test_char_unknown_character_maps_to_unk_or_raises():
    assert CharTokenizer.train(iter(["ab"])).encode("az") == [7, CharTokenizer.train(iter(["ab"])).unk_id]
    with pytest.raises(ValueError, match=r"'z' \(U\+007A\) at index 1"):
        CharTokenizer.train(iter(["ab"]), specials=()).encode("az")


def test_specials_subset_keeps_role_order_and_sos_alias():
    tok = CharTokenizer.train(iter(["ab"]), specials=["eos", "sos", "pad"])
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == (0, 1, 2, None)
    with pytest.raises(ValueError, match="unknown role 'bogus'"):
        CharTokenizer.train(iter(["ab"]), specials=["bogus"])


def test_bpe_is_byte_level_so_any_text_round_trips():
    tok = train_bpe(iter(["plain ascii only\n"] * 5), vocab_size=270)
    text = "naïve 東京 🙂"
    assert tok.decode(tok.encode(text)) == text and tok.unk_id not in tok.encode(text)


def test_load_foreign_tokenizer_json_recognises_roles(tmp_path):
    tok = train_wordpiece(iter(CORPUS), vocab_size=120, specials={"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]",
                                                                  "sep": "[SEP]", "mask": "[MASK]"})
    tok.hf.save(str(tmp_path / "tokenizer.json"))  # as a BERT checkpoint folder would hold it
    for path in (tmp_path, tmp_path / "tokenizer.json"):
        loaded = Tokenizer.load(path)
        assert (loaded.pad_id, loaded.unk_id, loaded.cls_id, loaded.sep_id, loaded.mask_id) == (0, 1, 3, 4, 2)
        assert loaded.bos_id is None


def test_training_from_files_and_their_errors(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("".join(CORPUS), encoding="utf-8")
    assert train_bpe([f], vocab_size=300).encode("the cat") == train_bpe(iter(CORPUS), vocab_size=300).encode("the cat")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_bpe([tmp_path / "missing.txt"], vocab_size=300)
    with pytest.raises(FileNotFoundError, match=r"iter\(texts\)"):
        CharTokenizer.train(["not a file, a sentence"])
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty.txt.*empty"):
        train_wordpiece(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("olá\nmañana".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.txt.*byte offset 2 \(line 1\)"):
        CharTokenizer.train(tmp_path / "latin1.txt")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="vocab_size=100.*at least 263"):
        train_bpe(iter(CORPUS), vocab_size=100)
    with pytest.raises(ValueError, match="needs an 'unk'"):
        train_wordpiece(iter(CORPUS), specials=["pad"])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Tokenizer.load("/nowhere/at/all")
