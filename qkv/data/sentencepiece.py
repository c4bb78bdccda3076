"""SentencePiece tokenizers as Hugging Face folders ship them, run by the ``sentencepiece`` library.

Three layouts around the same library (Kudo & Richardson 2018), read by ``load_sentencepiece(folder)``:

  T5          spiece.model; ids are the model's (<pad> 0, </s> 1, <unk> 2), sentinels <extra_id_N> after them;
              encode: text </s>
  Marian      source.spm encodes, target.spm decodes, vocab.json maps pieces to ids (one table for both sides);
              encode: [>>lang<<] text </s>
  mBART       sentencepiece.bpe.model with fairseq's ids: <s> 0, <pad> 1, </s> 2, <unk> 3, the model's pieces one
              id up, then the language codes and <mask>; mBART-50 encodes [src_lang] text </s>, mBART-25 text </s>
              [src_lang]

What differs between them is data on the tokenizer (``SentencePieceTokenizer``'s fields: the id table, the
template around the text, the added tokens), never a branch on the format's name. Each folder's
tokenizer_config.json / special_tokens_map.json name the special tokens and the languages; added tokens (special
tokens, sentinels, language codes) are matched in the text before SentencePiece sees it, as transformers does.

The reference is the library the models were trained with: between added tokens, ``encode`` gives exactly the ids
of ``sentencepiece``'s own encoding (so " " encodes as nothing and a trailing space is dropped, in every format),
and ``decode`` gives sentencepiece's own decoding of the model's pieces. Where transformers' tokenizers differ from
sentencepiece, qkv follows sentencepiece; docs/tokenizers.md lists the differences seen, with the version, and
tests/data/test_sentencepiece.py keeps that list true.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Iterable, Mapping

from qkv.data.folder_settings import folder_settings, read_folder_json, roles_of, token_of
from qkv.data.tokenizer import Tokenizer
from qkv.files import inside

SPIECE_UNDERLINE = "\u2581"  # SentencePiece's mark for a space

# fairseq's language codes, in id order after the model's pieces (mBART-25, then mBART-50's 52)
MBART25_LANGUAGES = ["ar_AR", "cs_CZ", "de_DE", "en_XX", "es_XX", "et_EE", "fi_FI", "fr_XX", "gu_IN", "hi_IN",
                     "it_IT", "ja_XX", "kk_KZ", "ko_KR", "lt_LT", "lv_LV", "my_MM", "ne_NP", "nl_XX", "ro_RO",
                     "ru_RU", "si_LK", "tr_TR", "vi_VN", "zh_CN"]
MBART50_LANGUAGES = MBART25_LANGUAGES + ["af_ZA", "az_AZ", "bn_IN", "fa_IR", "he_IL", "hr_HR", "id_ID", "ka_GE",
                                         "km_KH", "mk_MK", "ml_IN", "mn_MN", "mr_IN", "pl_PL", "ps_AF", "pt_XX",
                                         "sv_SE", "sw_KE", "ta_IN", "te_IN", "th_TH", "tl_XX", "uk_UA", "ur_PK",
                                         "xh_ZA", "gl_ES", "sl_SI"]

# The formats this module reads: files that identify them -> what they are (the README's list comes from here).
FORMATS = {
    "spiece.model": "T5 (SentencePiece unigram, sentinels <extra_id_N>)",
    "source.spm + target.spm + vocab.json": "Marian / opus-mt (source side encodes, target side decodes)",
    "sentencepiece.bpe.model": "mBART-25 and mBART-50 (fairseq ids, language codes)",
}
_FAIRSEQ = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}  # fairseq's fixed ids before the model's pieces


def _processor(model: bytes):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(model)
    return sp


class SentencePieceTokenizer(Tokenizer):
    """SentencePiece model(s) behind qkv's interface, with the id layout and template of a Hugging Face folder.

    Args:
        model: the encoding model's bytes. decode_model: the decoding model's bytes (Marian's target.spm; default
            the same model).
        vocab: piece -> id (Marian's vocab.json), or None: ids are the model's own, the ones in ``fixed`` aside and
            every other piece shifted by ``offset`` (fairseq: 1).
        fixed: piece -> id for pieces whose ids the folder fixes (fairseq's <s> <pad> </s> <unk>).
        added: token -> id of the tokens matched in the text before SentencePiece (special tokens, T5's sentinels,
            language codes); ``lstrip`` / ``rstrip`` name those that swallow the spaces beside them (mBART's <mask>).
        specials: role -> token (pad, bos, eos, unk, mask, cls, sep), as the folder names them.
        prefix, suffix: tokens put before / after the text by ``encode(add_special=True)``; "{src_lang}" stands for
            the current source language (``src_lang``), or the target language (``tgt_lang``, default
            ``src_lang`` as in transformers) in ``encode_target``.
        language_prefix: a text starting ">>xx<<" puts that token first (Marian's multilingual targets).
        strip_decoded: the decoded text loses its leading and trailing spaces, and a "▁" in a piece the decoding
            model lacks (Marian's vocab.json is shared by both sides) is a space, as in Marian's output.
    """
    kind = "sentencepiece"

    @classmethod
    def from_folder(cls, folder: Path) -> "SentencePieceTokenizer | None":
        """The tokenizer of a Hugging Face folder that ships SentencePiece files (``load_sentencepiece``), or None
        when it ships none: ``Tokenizer.load`` asks after tokenizer.json."""
        return load_sentencepiece(folder) if has_sentencepiece_files(folder) else None

    @classmethod
    def folder_files(cls) -> tuple[str, ...]:
        return tuple(READERS)

    def __init__(self, model: bytes, *, decode_model: bytes | None = None, vocab: Mapping[str, int] | None = None,
                 fixed: Mapping[str, int] | None = None, offset: int = 0, added: Mapping[str, int] | None = None,
                 lstrip: Iterable[str] = (), rstrip: Iterable[str] = (), specials: Mapping[str, str],
                 prefix: Iterable[str] = (), suffix: Iterable[str] = (), src_lang: str | None = None,
                 tgt_lang: str | None = None, language_prefix: bool = False, strip_decoded: bool = False):
        super().__init__(specials)
        self._model, self._decode_model = model, decode_model
        self.sp = _processor(model)
        self.sp_decode = _processor(decode_model) if decode_model is not None else self.sp
        self.vocab = None if vocab is None else dict(vocab)
        self.fixed, self.offset = dict(fixed or {}), offset
        self.added = dict(added or {})
        self.lstrip, self.rstrip = set(lstrip), set(rstrip)
        self.prefix, self.suffix = list(prefix), list(suffix)
        self.src_lang, self.tgt_lang = src_lang, tgt_lang
        self.language_prefix = language_prefix
        self.strip_decoded = strip_decoded
        missing = [t for t in self.specials.values() if self.token_to_id(t) is None]
        if missing:
            raise ValueError(f"special tokens {missing} are not in the vocabulary")
        # id -> token for the ids that are not the model's own pieces
        self._inverse = {i: t for t, i in {**self.fixed, **(self.vocab or {}), **self.added}.items()}
        own = self.sp.get_piece_size() + self.offset if self.vocab is None else 0  # the model's pieces, shifted
        self._size = max(own, max(self._inverse) + 1)
        self._split = None
        if self.added:  # longest first, so "<extra_id_10>" wins over "<extra_id_1>"
            self._split = re.compile("(" + "|".join(re.escape(t) for t in sorted(self.added, key=len, reverse=True))
                                     + ")")

    # -- ids and pieces ----------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._size

    @property
    def languages(self) -> list[str]:
        """Language codes this vocabulary has as tokens (mBART's xx_XX, Marian's >>xx<<)."""
        codes = [t for t in self.added if re.fullmatch(r"[a-z]{2}_[A-Z]{2}", t)]
        return codes + [t for t in (self.vocab or {}) if t.startswith(">>") and t.endswith("<<")]

    def token_to_id(self, token: str) -> int | None:
        if token in self.added:
            return self.added[token]
        if self.vocab is not None:
            return self.vocab.get(token)
        if token in self.fixed:
            return self.fixed[token]
        i = self.sp.piece_to_id(token)
        if self.sp.is_unknown(i) or self.sp.is_control(i) or self.sp.id_to_piece(i) != token:
            return None
        return i + self.offset

    def id_to_token(self, i: int) -> str | None:
        if i in self._inverse:
            return self._inverse[i]
        if self.vocab is not None:
            return None
        j = i - self.offset
        return self.sp.id_to_piece(j) if 0 <= j < self.sp.get_piece_size() else None

    def _piece_id(self, piece: str, unk: int) -> int:
        if self.vocab is not None:
            return self.vocab.get(piece, unk)
        if piece in self.fixed:
            return self.fixed[piece]
        i = self.sp.piece_to_id(piece)
        return unk if self.sp.is_unknown(i) else i + self.offset

    # -- text -> ids -------------------------------------------------------------------------------------------
    def _segments(self, text: str) -> list[tuple[str, bool]]:
        """(piece of text, is an added token) in order; lstrip / rstrip tokens take the spaces beside them."""
        if self._split is None or not text:
            return [(text, False)]
        parts = self._split.split(text)
        out = []
        for k, part in enumerate(parts):
            if k % 2:
                out.append((part, True))
                continue
            if k > 0 and parts[k - 1] in self.rstrip:
                part = part.lstrip()
            if k + 1 < len(parts) and parts[k + 1] in self.lstrip:
                part = part.rstrip()
            out.append((part, False))
        return out

    def _encode_text(self, text: str, sp=None) -> list[int]:
        """SentencePiece's own pieces of ``text``, as this folder numbers them (whitespace the model's normaliser
        removes, a lone or trailing space among it, gives no piece)."""
        unk = self.unk_id
        return [self._piece_id(piece, unk) for piece in (sp or self.sp).encode(text, out_type=str)]

    def encode(self, text: str, add_special: bool = False, *, target: bool = False,
               max_len: int | None = None) -> list[int]:
        """``target``: the target side (its model, and ``tgt_lang`` in the template). ``max_len``: at most this many
        ids in all, the text's ids cut and the template's kept (transformers' truncation)."""
        ids = []
        sp = self.sp_decode if target else self.sp
        if self.language_prefix and text.startswith(">>") and "<<" in text:
            code, text = text[: text.index("<<") + 2], text[text.index("<<") + 2:]
            ids.append(self._piece_id(code, self.unk_id))
        for segment, is_added in self._segments(text):
            ids += [self.added[segment]] if is_added else (self._encode_text(segment, sp) if segment else [])
        if add_special:
            lang = (self.tgt_lang or self.src_lang) if target else self.src_lang
            prefix, suffix = self._template(self.prefix, lang), self._template(self.suffix, lang)
            if max_len is not None:
                ids = ids[:max(0, max_len - len(prefix) - len(suffix))]
            return prefix + ids + suffix
        return ids if max_len is None else ids[:max_len]

    def encode_source(self, text: str, max_len: int | None = None) -> list[int]:
        """``text`` as a translation source, as transformers' ``tokenizer(text)`` encodes it (the template with
        ``src_lang``), at most ``max_len`` ids."""
        return self.encode(text, add_special=True, max_len=max_len)

    def encode_target(self, text: str, max_len: int | None = None) -> list[int]:
        """``text`` as a translation target, the way transformers' ``tokenizer(text_target=text)`` encodes it: the
        pieces of the target-side model (Marian's target.spm; T5's one model) in the template, which names the
        target language where it names one (mBART-50: [tgt_lang] text </s>; mBART-25: text </s> [tgt_lang])."""
        return self.encode(text, add_special=True, target=True, max_len=max_len)

    @property
    def decoder_starts_from_last_label(self) -> bool:
        """Whether the decoder's first input is the last token of the labels (mBART: its template carries the
        language, and transformers' MBart shift_tokens_right wraps the last non-pad label to the front) rather than
        the config's decoder_start_token_id (Marian, T5)."""
        return "{src_lang}" in self.prefix + self.suffix

    def _template(self, tokens: list[str], lang: str | None) -> list[int]:
        out = []
        for t in tokens:
            if t == "{src_lang}":
                if lang is None:
                    raise ValueError("this tokenizer puts the language in its template: set src_lang / tgt_lang "
                                     f"(one of {self.languages[:6]}...)")
                t = lang
            i = self.token_to_id(t)
            if i is None:
                raise ValueError(f"template token {t!r} is not in the vocabulary")
            out.append(i)
        return out

    def set_src_lang(self, code: str) -> None:
        """The source language of ``encode(add_special=True)`` (mBART: en_XX, es_XX, ...)."""
        if code not in self.added:
            raise ValueError(f"src_lang {code!r} is not a language of this tokenizer; known: {self.languages}")
        self.src_lang = code

    def set_tgt_lang(self, code: str) -> None:
        """The target language of ``encode_target`` (mBART: the code its labels carry)."""
        if code not in self.added:
            raise ValueError(f"tgt_lang {code!r} is not a language of this tokenizer; known: {self.languages}")
        self.tgt_lang = code

    # -- ids -> text -------------------------------------------------------------------------------------------
    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """The text of ``ids`` as sentencepiece decodes the model's pieces: "▁" is a space, and the spaces before
        the first word are dropped (all of them, as sentencepiece does, where transformers keeps all but one).
        ``skip_special=False`` keeps special and added tokens as their strings between the decoded runs."""
        skip = set(self.special_ids) | set(self.added.values()) if skip_special else set()
        not_pieces = set(self.added.values()) | set(self.fixed.values())
        runs: list[list[str] | str] = [[]]  # runs of the model's pieces, with kept special tokens between them
        for i in ids:
            i = int(i)
            if i in skip:
                continue
            token = self.id_to_token(i)
            if token is None:
                raise ValueError(f"ids: {i} is outside the vocabulary [0, {self.vocab_size})")
            if i in not_pieces:
                runs += [token, []]
            else:
                runs[-1].append(token)
        text = ""
        for k, run in enumerate(runs):
            if isinstance(run, str):
                text += run
            elif run:
                piece_text = self._decode_pieces(run)
                # sentencepiece drops a run's leading spaces as the start of a text; inside one they are words' own
                text += (" " if k and run[0].startswith(SPIECE_UNDERLINE) else "") + piece_text
        return text.strip() if self.strip_decoded else text

    def _decode_pieces(self, pieces: list[str]) -> str:
        text = self.sp_decode.decode_pieces(pieces)
        # a piece the decoding model lacks comes back as it is written; its "▁" are spaces all the same (Marian)
        return text.replace(SPIECE_UNDERLINE, " ") if self.strip_decoded else text

    def tokens(self, text: str) -> list[str]:
        return [(self.id_to_token(i) or "").replace(SPIECE_UNDERLINE, " ") for i in self.encode(text)]

    # -- saving ------------------------------------------------------------------------------------------------
    def _fields(self) -> dict:
        return {"vocab": self.vocab, "fixed": self.fixed, "offset": self.offset, "added": self.added,
                "lstrip": sorted(self.lstrip), "rstrip": sorted(self.rstrip), "prefix": self.prefix,
                "suffix": self.suffix, "src_lang": self.src_lang, "tgt_lang": self.tgt_lang,
                "language_prefix": self.language_prefix, "strip_decoded": self.strip_decoded}

    def _save_files(self, directory: Path) -> dict:
        (directory / "sentencepiece.model").write_bytes(self._model)
        if self._decode_model is not None:
            (directory / "sentencepiece.decode.model").write_bytes(self._decode_model)
        return self._fields()

    @classmethod
    def _from_meta(cls, directory: Path, meta: dict) -> "SentencePieceTokenizer":
        fields = {k: meta[k] for k in ("vocab", "fixed", "offset", "added", "lstrip", "rstrip", "prefix", "suffix",
                                       "src_lang", "language_prefix", "strip_decoded")}
        fields["tgt_lang"] = meta.get("tgt_lang")  # absent in tokenizers saved before targets named their language
        # "keep_trailing_space" (mBART-50's extra "▁" after trailing whitespace, saved before qkv followed
        # sentencepiece there) is ignored: the model's library never made that piece
        decode = "sentencepiece.decode.model"
        return cls(_read_bytes(directory, "sentencepiece.model"),
                   decode_model=_read_bytes(directory, decode) if (directory / decode).is_file() else None,
                   specials=meta["specials"], **fields)

    def _identity(self) -> str:
        digest = hashlib.sha256(self._model + (self._decode_model or b"")).hexdigest()
        return json.dumps([digest, self._fields()], sort_keys=True)


# -- reading a Hugging Face folder ------------------------------------------------------------------------------------

def _read_bytes(folder: Path, name: str) -> bytes:
    """A SentencePiece model file of the folder, refusing links that lead out of it."""
    return inside(folder, folder / name, what=name).read_bytes()


def _extra_tokens(config: dict) -> list[str]:
    extra = config.get("additional_special_tokens") or config.get("extra_special_tokens") or []
    return [token_of(t) for t in (extra.values() if isinstance(extra, dict) else extra)]


def _added_from_config(config: dict) -> tuple[dict[str, int], set[str], set[str]]:
    """transformers >= 4.34 writes every added token with its id and flags under added_tokens_decoder."""
    added, lstrip, rstrip = {}, set(), set()
    for i, entry in (config.get("added_tokens_decoder") or {}).items():
        added[entry["content"]] = int(i)
        if entry.get("lstrip"):
            lstrip.add(entry["content"])
        if entry.get("rstrip"):
            rstrip.add(entry["content"])
    return added, lstrip, rstrip


def _t5(folder: Path, config: dict) -> SentencePieceTokenizer:
    model = _read_bytes(folder, "spiece.model")
    sp = _processor(model)
    roles = roles_of(config, {"pad": "<pad>", "eos": "</s>", "unk": "<unk>"})
    n_extra = int(config.get("extra_ids", 100))
    sentinels = [t for t in _extra_tokens(config) if t.startswith("<extra_id_")] or \
        [f"<extra_id_{i}>" for i in range(n_extra)]
    # the sentinels follow the model's pieces, highest number first: <extra_id_0> is the last id
    added = {t: sp.get_piece_size() + len(sentinels) - 1 - int(t[len("<extra_id_"):-1]) for t in sentinels}
    for token in roles.values():
        added.setdefault(token, sp.piece_to_id(token))
    from_config, lstrip, rstrip = _added_from_config(config)
    added.update(from_config)
    return SentencePieceTokenizer(model, added=added, lstrip=lstrip, rstrip=rstrip, specials=roles,
                                  suffix=[roles["eos"]])


def _marian(folder: Path, config: dict) -> SentencePieceTokenizer:
    vocab = read_folder_json(folder, "vocab.json")
    if not vocab:
        raise FileNotFoundError(f"{folder}: Marian's vocab.json is missing or empty")
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(vocab) for i in vocab.values()):
        raise ValueError(f"{folder / 'vocab.json'}: expected token -> id with ids in [0, {len(vocab)}) "
                         f"(one per entry)")
    if config.get("separate_vocabs"):
        raise ValueError(f"{folder}: separate source and target vocabularies (separate_vocabs) are not supported")
    roles = roles_of(config, {"eos": "</s>", "unk": "<unk>", "pad": "<pad>"})
    missing = [t for t in roles.values() if t not in vocab]
    if missing:
        raise ValueError(f"{folder / 'vocab.json'}: the special tokens {missing} are not in it")
    added = {t: vocab[t] for t in roles.values()}
    return SentencePieceTokenizer(_read_bytes(folder, "source.spm"), decode_model=_read_bytes(folder, "target.spm"),
                                  vocab=vocab, added=added, specials=roles, suffix=[roles["eos"]],
                                  language_prefix=True, strip_decoded=True)


def _mbart(folder: Path, config: dict) -> SentencePieceTokenizer:
    model = _read_bytes(folder, "sentencepiece.bpe.model")
    sp = _processor(model)
    fifty = config.get("tokenizer_class", "").startswith("MBart50")
    roles = {"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": "<pad>", "mask": "<mask>", "cls": "<s>", "sep": "</s>"}
    if fifty:
        del roles["bos"]  # mBART-50's tokenizer names <s> as its cls token only
    roles = roles_of(config, roles)
    languages = MBART50_LANGUAGES if fifty else MBART25_LANGUAGES
    first = sp.get_piece_size() + 1  # fairseq: 4 fixed ids, the model's pieces from its id 3 on, one up
    added = {**{t: _FAIRSEQ[t] for t in _FAIRSEQ}, **{code: first + k for k, code in enumerate(languages)}}
    added[roles["mask"]] = first + len(languages)
    from_config, lstrip, rstrip = _added_from_config(config)
    added.update(from_config)
    if not from_config:
        lstrip = {roles["mask"]}  # <mask> swallows the space before it
    src_lang = config.get("src_lang") or "en_XX"
    template = dict(prefix=["{src_lang}"], suffix=[roles["eos"]]) if fifty else \
        dict(prefix=[], suffix=[roles["eos"], "{src_lang}"])
    return SentencePieceTokenizer(model, fixed=_FAIRSEQ, offset=1, added=added, lstrip=lstrip, rstrip=rstrip,
                                  specials=roles, src_lang=src_lang, tgt_lang=config.get("tgt_lang"), **template)


# file that identifies the layout -> reader
READERS = {"spiece.model": _t5, "source.spm": _marian, "sentencepiece.bpe.model": _mbart}


def has_sentencepiece_files(folder: Path) -> bool:
    return any((folder / name).is_file() for name in READERS)


def load_sentencepiece(folder) -> SentencePieceTokenizer:
    """The tokenizer of a Hugging Face folder that ships SentencePiece files (see the module docstring)."""
    folder = Path(folder)
    for name, reader in READERS.items():
        if (folder / name).is_file():
            try:
                import sentencepiece  # noqa: F401
            except ImportError:
                raise ImportError(f"{folder / name}: reading SentencePiece models needs the sentencepiece package "
                                  f"(pip install sentencepiece)") from None
            try:
                return reader(folder, folder_settings(folder))
            except (KeyError, TypeError, AttributeError, RuntimeError) as e:  # a malformed file or entry
                detail = f"missing entry {e}" if isinstance(e, KeyError) else str(e).strip().splitlines()[0]
                raise ValueError(f"{folder}: not a readable {name} tokenizer folder ({detail})") from None
    raise FileNotFoundError(f"{folder}: no SentencePiece files (looked for {', '.join(READERS)})")
