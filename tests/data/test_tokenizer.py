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


# -- text is data: the tokenizers qkv trains for translation and language models give every line back ---------

# A line of every script we could think of, plus the marks, spaces and sequences that trip normalisers.
SCRIPTS = [
    "Él compró veintidós árboles, ¿verdad? ¡Sí! Mañana, PINGÜINO y Ñandú.",
    "Ça coûte 12,50 € — « très cher », dit-elle ; l'œuf et l'âme.",
    "Größe: 3 Äpfel, ÖL und Übermaß. Straße ẞ.",
    "Ελληνικά: Καλημέρα κόσμε, ΆΈΉ ΐ ς.",
    "Кириллица: Съешь же ещё этих мягких булок, Ёё Її Ґґ.",
    "العربية: مرحبا بالعالم، كَتَبَ ١٢٣.",
    "עברית: שלום עולם, בְּרֵאשִׁית.",
    "हिन्दी: नमस्ते दुनिया, क्षत्रिय ०१२.",
    "ไทย: สวัสดีชาวโลก ภาษาไทย",
    "中文：你好，世界。日本語：こんにちは、カタカナ。",
    "한국어: 안녕하세요 세계, 한글.",
    "Tiếng Việt: Xin chào thế giới, người ơi.",
    "emoji: 👩‍👩‍👧‍👦 🇪🇸 👍🏽 ❤️ 🫠",
    "combining: é à ñ ṩ q̃ a̐ Z̴̡a̷l̸g̶o̵",
    "spacing:  two  spaces\tand a tab, trailing space ",
    " leading space and\u00a0nbsp\u2009thin\u200bzwsp\u200djoiner",
    "math: ∑ x² ≤ ∞, ½ ¾, ﬁ ligature, Ⅻ",
    "quotes “double” ‘single’ «angle» „low“ and ... … — –",
    "",
]


@pytest.mark.parametrize("prefix_space", [False, True])
@pytest.mark.parametrize("digits", [False, True])
def test_bpe_gives_every_script_back_exactly(prefix_space, digits):
    import unicodedata
    tok = train_bpe(iter(SCRIPTS * 3), vocab_size=600, prefix_space=prefix_space, individual_digits=digits)
    for line in SCRIPTS:
        assert unicodedata.is_normalized("NFC", line)
        assert tok.decode(tok.encode(line)) == line, line
        assert tok.decode(tok.encode(line, add_special=True)) == line
    assert tok.unk_id not in tok.encode("".join(SCRIPTS))  # byte-level: nothing is unknown


def test_bpe_composes_to_nfc_and_lowercases_only_when_asked():
    import unicodedata
    tok = train_bpe(iter(SCRIPTS), vocab_size=400)
    decomposed = unicodedata.normalize("NFD", "Él compró ÁRBOLES")
    assert decomposed != "Él compró ÁRBOLES"
    assert tok.decode(tok.encode(decomposed)) == "Él compró ÁRBOLES"  # canonically the same text, one spelling
    assert tok.encode(decomposed) == tok.encode("Él compró ÁRBOLES")
    raw = train_bpe(iter(SCRIPTS), vocab_size=400, nfc=False)
    assert raw.decode(raw.encode(decomposed)) == decomposed  # nfc=False keeps every code point
    lower = train_bpe(iter(SCRIPTS), vocab_size=400, lowercase=True)
    assert lower.decode(lower.encode("Él ÁRBOLES Ñ")) == "él árboles ñ"  # folded case, accents kept


def test_bpe_options_split_digits_and_share_words_across_sentence_starts():
    corpus = ["cuatro", "mil cuatro", "cuatro mil", "dos mil cuatro", "1999 and 2024"] * 5
    tok = train_bpe(iter(corpus), vocab_size=300, min_frequency=1, prefix_space=True, individual_digits=True)
    first, after = tok.encode("cuatro"), tok.encode("mil cuatro")
    assert len(first) == 1 and after[-1] == first[0]  # the same token first and after a space
    assert tok.decode(first) == "cuatro" and tok.decode(after) == "mil cuatro"
    assert [tok.decode([i]) for i in tok.encode("x 1999")[-4:]] == ["1", "9", "9", "9"]
    plain = train_bpe(iter(corpus), vocab_size=300, min_frequency=1)
    assert plain.encode("cuatro")[-1] != plain.encode("mil cuatro")[-1]  # GPT-2's scheme: " cuatro" differs


def test_bpe_is_the_same_vocabulary_in_every_process(tmp_path):
    import subprocess
    import sys
    code = ("from qkv.data import train_bpe\nfrom qkv.data.demo_task import generate_pairs\n"
            "pairs = generate_pairs(3000, seed=0)\n"
            "tok = train_bpe(iter([t for p in pairs for t in p]), vocab_size=2000, min_frequency=1, "
            "individual_digits=True, prefix_space=True)\nprint(tok.fingerprint())")
    env = {**__import__("os").environ, "PYTHONHASHSEED": "random"}
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                           check=True).stdout for _ in range(2)}
    assert len(runs) == 1


def test_the_demo_tokenizer_gives_every_demo_line_back():
    from qkv.data.demo_task import generate_pairs
    from qkv.demo import DEMO_TOKENIZER, accented
    lines = [t for pair in generate_pairs(4000, seed=0) for t in pair]
    tok = train_bpe(iter(lines), **DEMO_TOKENIZER)
    assert sum(accented(t) for t in lines) > 200  # the corpus does exercise accents and ñ
    assert [tok.decode(ids) for ids in tok.encode_batch(lines)] == lines


MULTI30K = Path("/work/shared/data/multi30k")


@pytest.mark.skipif(not (MULTI30K / "val.fr").exists(), reason="Multi30k not present")
def test_the_translation_default_tokenizer_gives_multi30k_back_in_de_fr_en():
    from qkv.config import TrainConfig
    from qkv.tasks import train_tokenizer
    for lang in ("de", "fr"):
        cfg = TrainConfig(data=str(MULTI30K / f"val.{lang}"), data_tgt=str(MULTI30K / "val.en"))
        tok = train_tokenizer(cfg, "seq2seq")  # what `qkv train` trains for translation without --tokenizer
        for name in (f"val.{lang}", "val.en", f"test_2016_flickr.{lang}", "test_2016_flickr.en", f"train.{lang}"):
            lines = (MULTI30K / name).read_text(encoding="utf-8").splitlines()
            assert [tok.decode(ids) for ids in tok.encode_batch(lines)] == lines, name


def test_language_model_and_translation_defaults_round_trip_their_corpus(tmp_path):
    from qkv.config import TrainConfig
    from qkv.tasks import train_tokenizer
    text = tmp_path / "t.txt"
    text.write_text("\n".join(SCRIPTS) + "\n", encoding="utf-8")
    for task in ("lm", "seq2seq"):
        tok = train_tokenizer(TrainConfig(data=str(text), data_tgt=str(text) if task == "seq2seq" else None), task)
        for line in SCRIPTS:
            assert tok.decode(tok.encode(line)) == line, (task, line)
    with pytest.raises(ValueError, match="wordpiece.*masked LMs"):
        train_tokenizer(TrainConfig(data=str(text), tokenizer_type="wordpiece"), "lm")
