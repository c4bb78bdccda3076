"""``qkv translate``: sentences (or a file of them) through an encoder-decoder model: a file in batches of similar
length, a sentence streamed token by token; beams and scores print each output at once."""
from __future__ import annotations

import torch

from ..decoding import generate, stream
from ..models import family_of
from ..tasks.seq2seq import TRANSLATION_DEFAULTS, translation_config
from .common import CLIError, Command, encode, file_lines, on_one_line, warn_loop
from .decoding_flags import check_decoding, decode_lines, decoding_args, decoding_config, generator
from .loading import load_source, source_args


def _translate_args(p):
    source_args(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--text", action="append", help="a sentence to translate (repeat for more)")
    g.add_argument("--file", help="a file of sentences, one a line")
    p.add_argument("--src-lang", help="the source language code of a multilingual tokenizer (mBART: en_XX)")
    p.add_argument("--tgt-lang", help="the target language code: its token is forced first (transformers' "
                                      "forced_bos_token_id; mBART-50: es_XX)")
    decoding_args(p, TRANSLATION_DEFAULTS.replace(num_beams=4))


def _translate(args):
    check_decoding(args)
    if args.text is not None:
        for t in args.text:
            if not t.strip():
                raise CLIError(f"--text {t!r}: empty; expected a sentence to translate")
        sentences = args.text
    else:
        sentences = file_lines(args.file, "sentences")
    source = load_source(args)
    model, tok = source.model, source.tokenizer
    record = family_of(model)
    if not record.has_source:
        raise CLIError(f"translate needs an encoder-decoder model; this one is {record.name!r}"
                       + (" (use `qkv generate`)" if record.continues else ""))
    flag = "--text" if args.text is not None else f"--file {args.file}"
    for s in sentences:
        encode(tok, s, flag)
    forced_bos = _languages(args, tok)
    if source.hf:
        config = decoding_config(args, source.hf_folder)
    else:  # the translation rules: the tokenizer's EOS and padding, the decoder's positions
        config = translation_config(model, tok, decoding_config(args))
    if forced_bos is not None:
        config = config.replace(forced_bos_token_id=forced_bos)
    # a person watches --text (greedy and sampling stream); files decode in batches unless --stream
    batched = (args.file is not None and not args.stream) or args.show_scores or config.num_beams > 1
    if batched and config.num_return_sequences == 1:
        inputs = [source.source_ids(s) if s.strip() else None for s in sentences]

        def show(i, tokens, score):
            text = "" if tokens is None else tok.decode(tokens)
            print(on_one_line(text) + (f"\t{score:.4f}" if score is not None else ""), flush=True)
            warn_loop(f"--file {args.file} line {i + 1}" if args.file else f"--text {sentences[i]!r}", tokens or [],
                      config.max_new_tokens, tok=tok)
        decode_lines(model, inputs, config, args, show)
        return 0
    _translate_one_by_one(args, source, sentences, config)
    return 0


def _languages(args, tok):
    """--src-lang set on the tokenizer; --tgt-lang's token id (forced first), or None."""
    if not (args.src_lang or args.tgt_lang):
        return None
    languages = getattr(tok, "languages", [])
    for flag, code in (("--src-lang", args.src_lang), ("--tgt-lang", args.tgt_lang)):
        if code is not None and code not in languages:
            raise CLIError(f"{flag} {code}: not a language of this tokenizer; known: {', '.join(languages) or 'none'}")
    if args.src_lang:
        tok.set_src_lang(args.src_lang)
    return tok.token_to_id(args.tgt_lang) if args.tgt_lang else None


def _translate_one_by_one(args, source, sentences, config):
    """--text (or --stream): --hf prints transformers' batch_decode of each output (every returned sequence); a
    qkv model streams each translation token by token."""
    model, tok = source.model, source.tokenizer
    for n, s in enumerate(sentences, 1):
        if not s.strip():
            print(flush=True)
            continue
        src = torch.tensor([source.source_ids(s)])
        if source.hf:
            out = generate(model, src, config, generator=generator(args))
            for row in out.tolist():
                print(tok.decode(row), flush=True)
            continue
        new = []
        for chunk in stream(model, src, config, decode=tok.decode, generator=generator(args)):
            new.append(int(chunk.tokens[0]))
            print(chunk.text[0], end="", flush=True)
        print()
        where = f"--file {args.file} line {n}" if args.file else f"--text {s!r}"
        warn_loop(where, new, config.max_new_tokens, tok.eos_id, tok=tok)


COMMAND = Command("translate sentences with an encoder-decoder model (beam search, or streaming greedy)",
                  "qkv translate --checkpoint runs/demo --text 'three hundred twenty-one'",
                  _translate_args, _translate)
