"""``qkv tokenize``: what a tokenizer does to a text. Each text becomes its ids, the piece of text each id covers
(whitespace shown as signs), and whether decoding the ids gives the text back exactly, the promise qkv's
tokenizers keep ("text is data": accents, case and punctuation round-trip)."""
from __future__ import annotations

import json

from ..data import Tokenizer
from ..files import resolve
from ..viz import visible_token
from .common import CLIError, Command, file_lines
from .loading import model_folder, tokenizer_for


def _tokenize_args(p):
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--checkpoint", help="a qkv model or training folder: the tokenizer saved beside its weights")
    g.add_argument("--hf", help="a Hugging Face folder or hub id: its tokenizer.json or SentencePiece files")
    g.add_argument("--tokenizer", help="a tokenizer folder (qkv's or Hugging Face's) or a tokenizer.json file")
    t = p.add_mutually_exclusive_group(required=True)
    t.add_argument("--text", help="the text to tokenize")
    t.add_argument("--file", help="a file of texts, one a line: each tokenized on its own")
    p.add_argument("--add-special", action="store_true",
                   help="add the tokenizer's own special tokens (BOS / EOS, CLS / SEP) as a model's input has them")
    p.add_argument("--json", action="store_true", help="one JSON object a text: text, ids, pieces, round_trip")


def _load_tokenizer(args):
    if args.checkpoint:
        return tokenizer_for(model_folder(args.checkpoint))
    flag, path = ("--hf", args.hf) if args.hf else ("--tokenizer", args.tokenizer)
    try:
        return Tokenizer.load(resolve(path, what="tokenizer"))
    except (FileNotFoundError, ValueError) as e:
        said = str(e).removeprefix(f"{path}: ")  # the path is named once, after its flag
        raise CLIError(f"{flag} {path}: {said}") from None


def tokenized(tok, text: str, add_special: bool) -> dict:
    """ids, the piece of ``text`` each id covers ("" for an id that continues a character the previous one began;
    an added special token by its own name), and whether decoding the ids gives ``text`` back."""
    plain = tok.encode(text)
    ids = tok.encode(text, add_special=True) if add_special else plain
    pieces = tok.tokens(text)  # one per id of the plain encoding
    at = next((s for s in range(len(ids) - len(plain) + 1) if ids[s:s + len(plain)] == plain), None)
    if at is None:  # a template that changes the text's own ids: name every id by its token
        pieces = [tok.id_to_token(i) or "" for i in ids]
    else:  # the specials around the text's ids
        pieces = ([tok.id_to_token(i) or "" for i in ids[:at]] + pieces
                  + [tok.id_to_token(i) or "" for i in ids[at + len(plain):]])
    back = tok.decode(ids)
    return {"text": text, "ids": ids, "pieces": pieces, "round_trip": back == text, "decoded": back}


def _tokenize(args):
    tok = _load_tokenizer(args)
    texts = file_lines(args.file, "texts") if args.file is not None else [args.text]
    for text in texts:
        row = tokenized(tok, text, args.add_special)
        if args.json:
            print(json.dumps(row, ensure_ascii=False))
            continue
        print(f"{len(row['ids'])} tokens: {row['ids']}")
        print("  " + " | ".join(visible_token(p) for p in row["pieces"]))
        print("  decodes back exactly" if row["round_trip"] else f"  decodes to {row['decoded']!r}, not the text")
    return 0


COMMAND = Command("what a tokenizer does to a text: its ids, the piece each covers, and whether it decodes back",
                  "qkv tokenize --checkpoint runs/demo --text '¿Dónde está la estación?'", _tokenize_args, _tokenize)
