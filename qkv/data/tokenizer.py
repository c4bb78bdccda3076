"""Tokenizers: text <-> token ids behind one small interface.

Three ways to get one, all returning a `Tokenizer`:
  CharTokenizer.train(files_or_iter)    one id per character (nanoGPT's Shakespeare vocab with specials=())
  train_bpe / train_wordpiece(...)      byte-level BPE (GPT-2 style) / WordPiece (BERT style), trained on the
                                        user's corpus with the `tokenizers` library

Text is data: the character and BPE tokenizers give every (NFC) line back exactly, `decode(encode(s)) == s`,
in any script, so they are what qkv trains for translation and language models. WordPiece does not: it splits
punctuation off with spaces and, lowercased as BERT-uncased, strips accents; it serves masked LMs only.
  Tokenizer.load(path)                  a folder written by `save`, or any Hugging Face `tokenizer.json`

Special tokens are defined once, in `SpecialTokens`: trained tokenizers put the requested ones first, in
that field order, so with the default set every qkv tokenizer has pad=0, bos=1, eos=2, unk=3, mask=4,
cls=5, sep=6. A folder saved by `save` holds `qkv_tokenizer.json` (kind and special roles; the whole
vocabulary for char-level) and, for HF-backed tokenizers, `tokenizer.json`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from qkv.data._files import PathLike, iter_texts
from qkv.data.folder_settings import folder_roles
from qkv.files import inside, read_json, resolve

META_FILE = "qkv_tokenizer.json"
HF_FILE = "tokenizer.json"


@dataclass(frozen=True)
class SpecialTokens:
    """Special token strings by role. Field order is id order for trained tokenizers."""
    pad: str = "<pad>"
    bos: str = "<s>"      # also called SOS: the decoder's first input
    eos: str = "</s>"
    unk: str = "<unk>"
    mask: str = "<mask>"  # BERT's masked-LM replacement
    cls: str = "<cls>"
    sep: str = "<sep>"


SPECIALS = SpecialTokens()
ROLES: tuple[str, ...] = tuple(f.name for f in fields(SpecialTokens))
_ALIASES = {"sos": "bos"}
# Strings that mark a role in tokenizer.json files made elsewhere (BERT, GPT-2, Llama, T5, ...).
_KNOWN = {
    "pad": ("<pad>", "[PAD]", "<|pad|>", "<|endoftext|>"),
    "bos": ("<s>", "<bos>", "[BOS]", "<|begin_of_text|>", "<|startoftext|>", "<|endoftext|>"),
    "eos": ("</s>", "<eos>", "[EOS]", "<|end_of_text|>", "<|endoftext|>"),
    "unk": ("<unk>", "[UNK]", "<|unk|>", "<|endoftext|>"),
    "mask": ("<mask>", "[MASK]"),
    "cls": ("<cls>", "[CLS]"),
    "sep": ("<sep>", "[SEP]"),
}


def resolve_specials(specials: Iterable[str] | Mapping[str, str] | None = None) -> dict[str, str]:
    """Roles -> token strings, in `ROLES` order.

    specials: None for all roles with `SPECIALS`' strings; an iterable of role names ("pad", "bos"/"sos",
    ...; `()` for none); or a mapping role -> custom string.
    """
    if specials is None:
        specials = ROLES
    custom = dict(specials) if isinstance(specials, Mapping) else {r: None for r in specials}
    chosen = {}
    for role, token in custom.items():
        role = _ALIASES.get(role, role)
        if role not in ROLES:
            raise ValueError(f"specials: unknown role {role!r}; expected some of {ROLES} (or 'sos')")
        chosen[role] = token if token is not None else getattr(SPECIALS, role)
    return {r: chosen[r] for r in ROLES if r in chosen}


class Tokenizer:
    """The interface every qkv tokenizer has. ids are plain Python ints; ids of absent specials are None."""
    kind = "base"

    def __init__(self, specials: Mapping[str, str]):
        self.specials = dict(specials)  # role -> token string, only roles this vocabulary has

    # -- to implement ------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def token_to_id(self, token: str) -> int | None:
        raise NotImplementedError

    def id_to_token(self, i: int) -> str | None:
        raise NotImplementedError

    def encode(self, text: str, add_special: bool = False) -> list[int]:
        """text -> ids; add_special wraps them in the tokenizer's begin/end tokens (BOS/EOS or CLS/SEP)."""
        raise NotImplementedError

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        raise NotImplementedError

    def tokens(self, text: str) -> list[str]:
        """One readable string per id of `encode(text)` (the covered span of `text`), for plot labels."""
        raise NotImplementedError

    def _save_files(self, directory: Path) -> dict:
        """Write what `load` needs besides the meta file; return extra meta fields."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------------------
    def encode_batch(self, texts: Sequence[str], add_special: bool = False) -> list[list[int]]:
        return [self.encode(t, add_special) for t in texts]

    def _role_id(self, role: str) -> int | None:
        token = self.specials.get(role)
        return None if token is None else self.token_to_id(token)

    pad_id = property(lambda self: self._role_id("pad"))
    bos_id = property(lambda self: self._role_id("bos"))
    sos_id = bos_id
    eos_id = property(lambda self: self._role_id("eos"))
    unk_id = property(lambda self: self._role_id("unk"))
    mask_id = property(lambda self: self._role_id("mask"))
    cls_id = property(lambda self: self._role_id("cls"))
    sep_id = property(lambda self: self._role_id("sep"))

    def fingerprint(self) -> str:
        """A hash of everything that decides the ids (vocabulary, rules, specials): a cache key."""
        return hashlib.sha256(json.dumps([self.kind, self.specials, self._identity()]).encode()).hexdigest()

    def _identity(self) -> str:
        raise NotImplementedError

    @property
    def special_ids(self) -> list[int]:
        """Ids of this tokenizer's special tokens, sorted (never masked, never sampled as random words)."""
        ids = {self.token_to_id(t) for t in self.specials.values()}
        return sorted(i for i in ids if i is not None)

    def save(self, directory: PathLike) -> Path:
        """Write the tokenizer into `directory` (created if needed), e.g. beside a checkpoint; returns it."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"kind": self.kind, "specials": self.specials, **self._save_files(d)}
        (d / META_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
        return d

    @classmethod
    def load(cls, path: PathLike) -> "Tokenizer":
        """Load a folder written by `save`, a Hugging Face folder (its tokenizer.json, else its SentencePiece files:
        T5, Marian, mBART; see `qkv.data.sentencepiece`), a `tokenizer.json` file, or a hub id "org/name"
        (resolved through huggingface_hub's cache, see `qkv.files.resolve`)."""
        p = resolve(path, what="tokenizer")
        if p.is_file() and p.name == META_FILE:
            p = p.parent
        elif p.is_file():
            return HFTokenizer.from_file(p)
        if not p.is_dir():
            raise FileNotFoundError(f"path={str(p)!r}: no such tokenizer folder or tokenizer.json file")
        kinds = tokenizer_kinds()
        if (p / META_FILE).is_file():
            meta = read_json(inside(p, p / META_FILE, what=META_FILE))
            if meta.get("kind") not in kinds:
                raise ValueError(f"{str(p / META_FILE)!r}: kind={meta.get('kind')!r}, expected one of {list(kinds)}")
            specials, vocab = meta.get("specials"), meta.get("vocab")
            char_ok = isinstance(vocab, list) and all(isinstance(t, str) for t in vocab)
            if not isinstance(specials, dict) or not all(isinstance(v, str) for v in specials.values()) or (
                    meta["kind"] == "char" and not char_ok):
                raise ValueError(f"{str(p / META_FILE)!r}: expected 'specials' (role -> token string)"
                                 f"{' and vocab (a list of strings)' if meta['kind'] == 'char' else ''}")
            return kinds[meta["kind"]]._from_meta(p, meta)
        if (p / HF_FILE).is_file():  # what transformers reads first too
            path = inside(p, p / HF_FILE, what=HF_FILE)
            return HFTokenizer.from_file(path, folder_roles(p, path))
        for kind in kinds.values():  # a folder of another format (SentencePiece files: qkv/data/sentencepiece.py)
            found = kind.from_folder(p)
            if found is not None:
                return found
        other = ", ".join(name for kind in kinds.values() for name in kind.folder_files())
        raise FileNotFoundError(f"path={str(p)!r}: the folder has neither {META_FILE}, {HF_FILE} nor SentencePiece "
                                f"files ({other})")

    @classmethod
    def from_folder(cls, folder: Path) -> "Tokenizer | None":
        """A kind that reads a Hugging Face folder's own files (not qkv's meta file, not tokenizer.json) returns its
        tokenizer here, or None when the folder holds none of them (``folder_files``)."""
        return None

    @classmethod
    def folder_files(cls) -> tuple[str, ...]:
        """The files ``from_folder`` recognises."""
        return ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, specials={list(self.specials)})"


def tokenizer_kinds() -> dict[str, type]:
    """Every kind of tokenizer by its ``kind`` (the name its meta file records): the subclasses of ``Tokenizer``,
    nearest first. The base class finds its subclasses without importing their modules, so the SentencePiece one
    (``qkv.data.sentencepiece``, imported by ``qkv.data``) imports this module and not the other way round."""
    kinds, todo = {}, list(Tokenizer.__subclasses__())
    while todo:
        kind = todo.pop(0)
        todo += kind.__subclasses__()
        if isinstance(getattr(kind, "kind", None), str):
            kinds.setdefault(kind.kind, kind)
    return kinds


class CharTokenizer(Tokenizer):
    """One token per Unicode character; specials come first, then the corpus' characters sorted."""
    kind = "char"

    def __init__(self, vocab: Sequence[str], specials: Mapping[str, str]):
        super().__init__(specials)
        self.vocab = list(vocab)
        self._ids = {t: i for i, t in enumerate(self.vocab)}
        if len(self._ids) != len(self.vocab):
            raise ValueError("vocab: tokens must be unique")
        missing = [t for t in self.specials.values() if t not in self._ids]
        if missing:
            raise ValueError(f"specials: {missing} are not in the vocabulary")

    @classmethod
    def train(cls, files_or_iter, specials: Iterable[str] | Mapping[str, str] | None = None) -> "CharTokenizer":
        """Vocabulary = the requested specials (all roles by default; `()` for none) + sorted characters.

        files_or_iter: a path, a list of paths, or an iterable of strings (e.g. `iter(lines)`).
        With specials=() on tinyshakespeare this is nanoGPT's 65-character vocabulary.
        """
        sp = resolve_specials(specials)
        chars: set[str] = set()
        for text in iter_texts(files_or_iter):
            chars.update(text)
        if not chars:
            raise ValueError("files_or_iter: no text to train on")
        return cls(list(sp.values()) + sorted(chars - set(sp.values())), sp)

    @classmethod
    def _from_meta(cls, directory: Path, meta: dict) -> "CharTokenizer":
        return cls(meta["vocab"], meta["specials"])

    def _save_files(self, directory: Path) -> dict:
        return {"vocab": self.vocab}

    def _identity(self) -> str:
        return json.dumps(self.vocab)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def token_to_id(self, token: str) -> int | None:
        return self._ids.get(token)

    def id_to_token(self, i: int) -> str | None:
        return self.vocab[i] if 0 <= i < len(self.vocab) else None

    def encode(self, text: str, add_special: bool = False) -> list[int]:
        unk = self.unk_id
        ids = []
        for pos, ch in enumerate(text):
            i = self._ids.get(ch, unk)
            if i is None:
                raise ValueError(f"text: character {ch!r} (U+{ord(ch):04X}) at index {pos} is not in the "
                                 f"vocabulary and the tokenizer has no unk token; retrain on this text")
            ids.append(i)
        if add_special:
            ids = [i for i in (self.bos_id,) if i is not None] + ids + [i for i in (self.eos_id,) if i is not None]
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        skip = set(self.special_ids) if skip_special else set()
        out = []
        for i in ids:
            i = int(i)
            if i < 0 or i >= len(self.vocab):
                raise ValueError(f"ids: {i} is outside the vocabulary [0, {len(self.vocab)})")
            if i not in skip:
                out.append(self.vocab[i])
        return "".join(out)

    def tokens(self, text: str) -> list[str]:
        return list(text)


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers.Tokenizer` (BPE, WordPiece, Unigram, ...) behind qkv's interface."""
    kind = "hf"

    def __init__(self, tokenizer, specials: Mapping[str, str]):
        super().__init__(specials)
        self.hf = tokenizer

    @classmethod
    def from_file(cls, path: PathLike, specials: Mapping[str, str] | None = None) -> "HFTokenizer":
        """Load a `tokenizer.json`; roles are `specials` if given, else recognised from common strings."""
        from tokenizers import Tokenizer as HF
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"path={str(p)!r}: no such tokenizer.json file")
        inside(p.absolute().parent, p, what="tokenizer file")  # no link out of its folder (HF cache blobs aside)
        try:
            hf = HF.from_file(str(p))
        except Exception as e:  # the Rust error says what is wrong inside the JSON
            raise ValueError(f"path={str(p)!r}: not a Hugging Face tokenizer.json ({e})") from None
        # qkv batches and cuts text itself: a file's padding (MiniLM pads to 128) or truncation would silently
        # pad every prompt and cut every corpus chunk, so both are switched off; text round-trips as the user wrote it.
        hf.no_padding()
        hf.no_truncation()
        if specials is None:
            vocab = hf.get_vocab(with_added_tokens=True)
            specials = {r: next(t for t in cands if t in vocab)
                        for r, cands in _KNOWN.items() if any(t in vocab for t in cands)}
        return cls(hf, specials)

    @classmethod
    def _from_meta(cls, directory: Path, meta: dict) -> "HFTokenizer":
        return cls.from_file(inside(directory, directory / HF_FILE, what=HF_FILE), meta["specials"])

    def _save_files(self, directory: Path) -> dict:
        self.hf.save(str(directory / HF_FILE))
        return {}

    def _identity(self) -> str:
        return self.hf.to_str()

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.hf.id_to_token(i)

    def encode(self, text: str, add_special: bool = False) -> list[int]:
        return self.hf.encode(text, add_special_tokens=add_special).ids

    def encode_batch(self, texts: Sequence[str], add_special: bool = False) -> list[list[int]]:
        # The Rust side encodes a batch on all cores: this is what makes tokenizing a corpus fast.
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=add_special)]

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def tokens(self, text: str) -> list[str]:
        # Offsets map each token back to text; a character split over several byte-level tokens is shown
        # on the first of them only, so the labels still read as the text.
        out, prev = [], None
        for start, end in self.hf.encode(text, add_special_tokens=False).offsets:
            out.append("" if (start, end) == prev else text[start:end])
            prev = (start, end)
        return out


def _wrap_with(hf, specials: dict[str, str], begin: str, end: str) -> None:
    """Make `encode(..., add_special=True)` give `begin text end` (e.g. BOS ... EOS or CLS ... SEP)."""
    from tokenizers import processors
    if begin in specials and end in specials:
        b, e = specials[begin], specials[end]
        hf.post_processor = processors.TemplateProcessing(
            single=f"{b} $A {e}", pair=f"{b} $A {e} $B:1 {e}:1",
            special_tokens=[(b, hf.token_to_id(b)), (e, hf.token_to_id(e))])


def _check_vocab_size(vocab_size: int, floor: int, what: str) -> None:
    if not isinstance(vocab_size, int) or vocab_size < floor:
        raise ValueError(f"vocab_size={vocab_size!r}: {what} needs at least {floor}")


def train_bpe(files_or_iter, vocab_size: int = 8000,
              specials: Iterable[str] | Mapping[str, str] | None = None, *,
              min_frequency: int = 2, individual_digits: bool = False, prefix_space: bool = False,
              nfc: bool = True, lowercase: bool = False) -> HFTokenizer:
    """Train a byte-level BPE tokenizer (GPT-2's scheme: any text encodes, no unknown tokens).

    files_or_iter: a path, a list of paths, or an iterable of strings. Returns a tokenizer whose ids
    0..len(specials)-1 are the specials in `ROLES` order; `encode(add_special=True)` adds BOS/EOS.

    Text is data: ``decode(encode(s)) == s`` for every string s in Unicode NFC (the form nearly all text is
    stored in): case, accents, ``ñ``, ``¿ ¡``, spaces and punctuation come back as they were, in any script.
    nfc=True composes other input first (``e`` + U+0301 -> ``é``), so canonically equal spellings get the same ids
    and decode to the NFC form; nfc=False keeps every input's code points as they are. lowercase=True folds case
    (and then decode gives the lowercased text); nothing is lowercased or stripped unless asked.
    individual_digits=True splits every digit into its own piece (as Llama does; a space before the first
    digit stays with it), so numbers are spelled out digit by digit instead of being memorised as whole tokens.
    prefix_space=True puts one space before every text it encodes and takes exactly one off the front of what it
    decodes (Llama's and SentencePiece's scheme), so a word is one and the same token at the start of a sentence
    and after a space ("cuatro" and "mil cuatro" share " cuatro"): right for sentences (translation), wrong for a
    prompt whose continuation is decoded on its own (its first space would go).
    Deterministic: the same corpus gives the same vocabulary in every process.
    """
    from tokenizers import Regex, Tokenizer as HF, decoders, models, normalizers, pre_tokenizers, trainers
    sp = resolve_specials(specials)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    _check_vocab_size(vocab_size, len(sp) + len(alphabet), f"byte-level BPE with {len(sp)} specials")
    hf = HF(models.BPE())
    steps = ([normalizers.NFC()] if nfc else []) + ([normalizers.Lowercase()] if lowercase else []) \
        + ([normalizers.Prepend(" ")] if prefix_space else [])
    if steps:
        hf.normalizer = normalizers.Sequence(steps)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if individual_digits:
        # " 1999" -> " 1" "9" "9" "9": split before GPT-2's regex, which then keeps each piece whole.
        hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r" ?\p{N}"), "isolated"), byte_level])
    else:
        hf.pre_tokenizer = byte_level
    hf.decoder = decoders.ByteLevel()
    if prefix_space:  # the bytes become one string (Fuse), whose first character is the space encode added
        hf.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=list(sp.values()), initial_alphabet=alphabet)
    hf.train_from_iterator(iter_texts(files_or_iter), trainer)
    _wrap_with(hf, sp, "bos", "eos")
    return HFTokenizer(hf, sp)


def train_wordpiece(files_or_iter, vocab_size: int = 8000,
                    specials: Iterable[str] | Mapping[str, str] | None = None, *,
                    min_frequency: int = 2, lowercase: bool = False) -> HFTokenizer:
    """Train a WordPiece tokenizer (BERT's scheme: words split on whitespace and punctuation, "##" pieces).

    specials must include "unk" (WordPiece's fallback for unseen characters). `encode(add_special=True)`
    adds CLS ... SEP. lowercase=True also strips accents, as BERT-uncased does.

    Does not give text back: decode spaces out some punctuation ("¿verdad?" -> "¿ verdad?"), maps unseen
    characters to unk, and with lowercase=True drops case and accents ("Él compró" -> "el compro"). Right for
    masked-LM pretraining (BERT), never for a model whose output is read (translation, language models: use
    ``train_bpe``).

    Not reproducible from run to run (tokenizers 0.23): the trainer numbers its "##" pieces in hash-map order and
    breaks ties between equally frequent merges by those numbers, so the same corpus can give a slightly
    different vocabulary in another process (huggingface/tokenizers issue 1794). Save the tokenizer with the
    run (qkv's checkpoints do) rather than retraining it; ``train_bpe`` is deterministic.
    """
    from tokenizers import Tokenizer as HF, decoders, models, normalizers, pre_tokenizers, trainers
    sp = resolve_specials(specials)
    if "unk" not in sp:
        raise ValueError(f"specials={list(sp)}: WordPiece needs an 'unk' token for characters it never saw")
    _check_vocab_size(vocab_size, len(sp) + 1, f"WordPiece with {len(sp)} specials")
    hf = HF(models.WordPiece(unk_token=sp["unk"]))
    hf.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                        special_tokens=list(sp.values()), continuing_subword_prefix="##")
    hf.train_from_iterator(iter_texts(files_or_iter), trainer)
    _wrap_with(hf, sp, "cls", "sep")
    return HFTokenizer(hf, sp)
