"""Hugging Face folders built on the spot, the way the hub ships them, for peer-parity tests: SentencePiece models
trained here on generated text (no corpus copied), tokenizer files of each format (T5's spiece.model, Marian's
source.spm / target.spm + vocab.json, mBART / mBART-50's sentencepiece.bpe.model), and tiny random-weight models.
"""
from __future__ import annotations

import io
import json
import random
from pathlib import Path

_ONSETS = ["", "b", "c", "d", "f", "g", "l", "m", "n", "p", "r", "s", "t", "v", "ch", "tr", "pl", "br", "qu", "ñ"]
_VOWELS = ["a", "e", "i", "o", "u", "á", "é", "í", "ó", "ú", "ü", "ai", "ou", "ie"]
_CODAS = ["", "", "", "n", "s", "r", "l", "nd", "st"]
_PUNCT = [".", ",", "!", "?", ";", ":", "...", "¿", "¡", "(", ")", "-", "'", '"']


def _word(rng: random.Random) -> str:
    w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(rng.randint(1, 3)))
    return w.capitalize() if rng.random() < 0.15 else w


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """n lines of made-up words (accents, capitals, punctuation, digits), a few hundred bytes of vocabulary each."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [_word(rng) for _ in range(rng.randint(3, 12))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 2000)))
        text = " ".join(words)
        if rng.random() < 0.5:
            text += rng.choice(_PUNCT[:4])
        lines.append(text)
    return lines


def train_spm(path: Path, *, vocab_size: int = 300, seed: int = 0, **ids) -> Path:
    """Train a unigram SentencePiece model on ``corpus(seed=seed)`` and write it to ``path``. ``ids``: pad_id,
    unk_id, bos_id, eos_id as SentencePieceTrainer takes them (-1: absent)."""
    import sentencepiece as spm
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus(seed=seed)), model_writer=model,
                                   vocab_size=vocab_size, model_type="unigram", character_coverage=1.0,
                                   minloglevel=2, num_threads=1, **ids)
    path.write_bytes(model.getvalue())
    return path


def _json(path: Path, data) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")


def t5_tokenizer_files(folder: Path, extra_ids: int = 5) -> Path:
    """spiece.model (<pad> 0, </s> 1, <unk> 2, no BOS) + tokenizer_config.json, as t5-small ships them."""
    folder.mkdir(parents=True, exist_ok=True)
    train_spm(folder / "spiece.model", pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    extra = [f"<extra_id_{i}>" for i in range(extra_ids)]
    _json(folder / "tokenizer_config.json", {"tokenizer_class": "T5Tokenizer", "extra_ids": extra_ids,
                                             "additional_special_tokens": extra, "eos_token": "</s>",
                                             "unk_token": "<unk>", "pad_token": "<pad>", "model_max_length": 512})
    _json(folder / "special_tokens_map.json", {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                                               "additional_special_tokens": extra})
    return folder


def marian_tokenizer_files(folder: Path) -> Path:
    """source.spm and target.spm (two models, trained on different text) and one shared vocab.json, </s> 0,
    <unk> 1, <pad> last, as the opus-mt folders ship them."""
    folder.mkdir(parents=True, exist_ok=True)
    src = train_spm(folder / "source.spm", vocab_size=250, seed=1, unk_id=1, eos_id=2, bos_id=-1, pad_id=-1)
    tgt = train_spm(folder / "target.spm", vocab_size=250, seed=2, unk_id=1, eos_id=2, bos_id=-1, pad_id=-1)
    import sentencepiece as spm
    vocab = {"</s>": 0, "<unk>": 1}
    for path in (src, tgt):
        sp = spm.SentencePieceProcessor(model_file=str(path))
        for i in range(sp.get_piece_size()):
            piece = sp.id_to_piece(i)
            if not sp.is_control(i) and not sp.is_unknown(i):
                vocab.setdefault(piece, len(vocab))
    for code in (">>es<<", ">>fr<<"):  # a multilingual model's target-language tokens
        vocab[code] = len(vocab)
    vocab["<pad>"] = len(vocab)
    _json(folder / "vocab.json", vocab)
    _json(folder / "tokenizer_config.json", {"tokenizer_class": "MarianTokenizer", "source_lang": "en",
                                             "target_lang": "es", "separate_vocabs": False, "eos_token": "</s>",
                                             "unk_token": "<unk>", "pad_token": "<pad>", "model_max_length": 512})
    _json(folder / "special_tokens_map.json", {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"})
    return folder


def mbart50_tokenizer_files(folder: Path, *, src_lang: str = "en_XX", tgt_lang: str = "es_XX") -> Path:
    """sentencepiece.bpe.model (SentencePiece's <unk> 0, <s> 1, </s> 2, shifted by fairseq to <s> 0, <pad> 1, </s> 2,
    <unk> 3) + tokenizer_config.json naming MBart50Tokenizer and the languages, as mbart-large-50 ships them."""
    folder.mkdir(parents=True, exist_ok=True)
    train_spm(folder / "sentencepiece.bpe.model", unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    _json(folder / "tokenizer_config.json", {"tokenizer_class": "MBart50Tokenizer", "src_lang": src_lang,
                                             "tgt_lang": tgt_lang, "model_max_length": 1024})
    return folder


def mbart_tokenizer_files(folder: Path, *, src_lang: str = "en_XX", tgt_lang: str = "ro_RO") -> Path:
    """The mBART-25 layout: the same model file, MBartTokenizer (language code after </s>)."""
    folder.mkdir(parents=True, exist_ok=True)
    train_spm(folder / "sentencepiece.bpe.model", unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    _json(folder / "tokenizer_config.json", {"tokenizer_class": "MBartTokenizer", "src_lang": src_lang,
                                             "tgt_lang": tgt_lang, "model_max_length": 1024})
    return folder


# Strings every format is tested on: accents, punctuation, spaces (runs, leading, trailing, tabs), characters
# the models never saw (CJK, emoji, symbols), digits, capitals, the empty string.
PROBES = ["", " ", "hola", "Hola, ¿qué tal?", "la canción del niño", "  two  spaces   here ", "tab\there",
          "trailing space ", " leading", "naïve café — 3.5 €", "日本語 text", "emoji 🙂 here", "ÀÉÎÕÜ ñ Ñ",
          "a.b,c!d?e;f:g", "(paréntesis) \"comillas\" 'simples'", "100 200 3000", "ß æ ø å œ", "x" * 40,
          "new\nline", "ﬁ ligature ½ ①", "a </s> b", "<pad>x<unk>", "<extra_id_0> hueco <extra_id_3>",
          "en_XX hola es_XX", "una <mask> más", ">>es<< hola", ">>xx<< nada", "end with tab\t"]
