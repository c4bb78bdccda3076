"""The ``qkv`` command: one table of subcommands. Each entry adds its flags and runs; errors are one line.

    qkv info --preset gpt2                       what a model is: parameters, FLOPs per token, memory
    qkv convert --from-hf DIR --out DIR          a Hugging Face folder -> qkv's own folder (and --to-hf back)
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Command:
    help: str
    example: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


class CLIError(Exception):
    """A mistake in what the user asked for: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (``qkv CMD: error: ...``), like every other qkv error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Notes:
    """Warnings printed at most once per command (an unknown character in every sentence of a file is one note)."""
    said: set = set()


def _warn_once(key: str, text: str) -> None:
    if key not in _Notes.said:
        _Notes.said.add(key)
        print(f"qkv: warning: {text}", file=sys.stderr)


def _limit_and_eos(config, model, prompt_length: int) -> tuple:
    """(new tokens allowed, the first end-of-sequence id or None) of ``config`` met with ``model``."""
    resolved = config.resolved(model, prompt_length)
    return resolved.max_new_tokens, (resolved.eos_ids[0] if resolved.eos_ids else None)


def _warn_loop(where: str, tokens, limit, eos=None, *, tok) -> None:
    """One line on stderr when a decode's new tokens ran to ``limit`` repeating themselves (``qkv.repetition``):
    its score says nothing of it. ``where`` names the input line."""
    from .repetition import describe, repetition
    tokens = list(tokens)
    ended = eos is not None and eos in tokens
    found = None if limit is None else repetition(tokens, hit_limit=not ended and len(tokens) >= limit)
    if found is not None:
        print(f"qkv: warning: {where}: the output {describe(found, tok.decode(list(found.unit)), limit=limit)}",
              file=sys.stderr)


def _encode(tok, text: str, flag: str, *, add_special: bool = False) -> list[int]:
    """``tok.encode(text)``, warning (once, on stderr) when pieces of the text are not in the vocabulary and
    become the unknown token: the model then sees <unk>, not the text."""
    ids = tok.encode(text, add_special=add_special)
    unk = tok.unk_id
    if unk is not None and unk in ids:
        token = tok.specials.get("unk")
        plain = tok.encode(text) if add_special else ids  # tokens() spans the text without added specials
        pieces = [piece for i, piece in zip(plain, tok.tokens(text)) if i == unk and piece != token]
        if pieces:
            shown = ", ".join(repr(p) for p in dict.fromkeys(pieces))
            _warn_once("unk", f"{flag}: {len(pieces)} piece(s) of the input are not in the tokenizer's vocabulary "
                              f"and become {token} (first: {shown[:120]}); the model sees an unknown token there")
    return ids


def _positive_flag(value, flag: str, *, zero_ok: bool = False) -> None:
    if value is not None and value < (0 if zero_ok else 1):
        raise CLIError(f"{flag} {value}: expected an int >= {0 if zero_ok else 1}")


def _model_source(parser: argparse.ArgumentParser) -> None:
    g = parser.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", help="a named configuration (see `qkv info --list`)")
    g.add_argument("--checkpoint", help="a qkv model folder (config.json + model.safetensors), or a training "
                                        "output folder")
    g.add_argument("--hf", help="a local Hugging Face checkpoint folder")


def _load_model(args):
    import qkv
    if getattr(args, "preset", None):
        return qkv.build(qkv.preset(args.preset))
    if getattr(args, "hf", None):
        return qkv.from_hf(args.hf)
    return qkv.load(_model_folder(args.checkpoint))


def _model_folder(path):
    """A model folder, or a training output folder (its ``latest`` file names the newest checkpoint), or the
    demo's output folder (training output under train/)."""
    from .checkpoint import latest_checkpoint
    p = Path(path)
    if not p.is_dir():
        raise CLIError(f"--checkpoint {path}: " + ("no such folder" if not p.exists() else "is a file; expected a qkv "
                                                   "model folder or a training output folder"))
    for run in (p, p / "train"):
        named = latest_checkpoint(run)  # 'latest' may only name checkpoints/step-N inside the run folder
        if named is not None:
            return named
    if (p / "config.json").is_file():
        return p
    raise CLIError(f"--checkpoint {path}: not a qkv model folder (no config.json) nor a training output folder "
                   f"(no 'latest' file)")


def _tokenizer_for(model_dir):
    """The tokenizer saved beside a checkpoint (training writes it to tokenizer/)."""
    from .data import Tokenizer
    from .files import inside
    folder = model_dir / "tokenizer"
    if not folder.is_dir():
        raise CLIError(f"{model_dir}: no tokenizer/ folder beside the weights; pass token ids or train with qkv")
    return Tokenizer.load(inside(model_dir, folder, what="tokenizer folder"))


# -- info -------------------------------------------------------------------------------------------------------

def _info_args(p):
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--list", action="store_true", help="list the presets")
    g.add_argument("--supported", action="store_true", help="list the Hugging Face architectures, tokenizer files "
                                                            "and RoPE variants qkv reads")
    g.add_argument("--preset", help="a named configuration, e.g. gpt2, llama-tiny, transformer-base")
    g.add_argument("--checkpoint", help="a qkv model folder")
    g.add_argument("--hf", help="a Hugging Face checkpoint folder or hub id (org/name)")
    p.add_argument("--seq-len", type=int, default=None, help="context length for the FLOPs count "
                                                               "(default: the model's max_positions)")


def _info(args):
    import qkv
    if args.list:
        for name, fields in sorted(qkv.PRESETS.items()):
            print(f"{name:18s} {fields['family']:16s} d_model={fields.get('d_model')} layers={fields.get('n_layers')}")
        return 0
    if args.supported:
        from .hub.supported import supported_text
        print(supported_text())
        return 0
    import torch
    _positive_flag(args.seq_len, "--seq-len")
    with torch.device("meta"):  # sizes only: no memory, no initialisation time, even for big presets
        if args.checkpoint:  # the config says everything info prints: the weights are not read
            from .files import check_fits
            from .models.common import load_config
            from .models.sizing import model_bytes, model_sizes
            config = load_config(_model_folder(args.checkpoint))
            # a meta build holds no weights, but its module objects still cost memory: bound them first
            check_fits(model_bytes(config, dtype_bytes=0)[1],
                       what=f"{args.checkpoint}/config.json: building {model_sizes(config)}")
            model = qkv.build(config)
        else:
            model = _load_model(args) if not args.preset else qkv.build(qkv.preset(args.preset))
    print(model.summary(args.seq_len))
    n = model.num_parameters()
    print(f"  training memory:  ~{16 * n / 2**30:.2f} GiB for weights, grads and AdamW state in fp32 "
          f"(activations extra)")
    print(model.config.to_json())
    return 0


# -- convert ----------------------------------------------------------------------------------------------------

def _convert_args(p):
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--from-hf", metavar="DIR", help="read a Hugging Face folder (config.json + weights)")
    g.add_argument("--from-rwkv", metavar="FILE", help="read an RWKV-LM .pth checkpoint")
    g.add_argument("--checkpoint", metavar="DIR", help="read a qkv model folder (for --to-hf)")
    p.add_argument("--to-hf", action="store_true", help="write a Hugging Face folder instead of a qkv folder")
    p.add_argument("--out", required=True, help="folder to write")


def _convert(args):
    import qkv
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out}: is a file; expected a new (or empty) folder to write the model into")
    if out.is_dir() and any(out.iterdir()):
        raise CLIError(f"--out {out}: the folder exists and is not empty; expected a new (or empty) folder (qkv "
                       f"never writes over files)")
    from .hub import carry  # what a round trip keeps besides the weights: tokenizer, settings, unmapped tensors
    kept = carry.Kept()
    if args.from_hf:
        model = qkv.from_hf(args.from_hf)
        kept = carry.from_hf_folder(args.from_hf, model)
    elif args.from_rwkv:
        if not hasattr(qkv, "from_rwkv"):
            raise CLIError("RWKV checkpoints are not supported in this build")
        model = qkv.from_rwkv(args.from_rwkv)
    else:
        folder = _model_folder(args.checkpoint)
        model = qkv.load(folder)
        kept = carry.from_qkv_folder(folder)
    # Written beside --out under a name of its own, renamed at the end: a full disk or a crash leaves no
    # half-written --out to block the rerun.
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        if args.to_hf:
            _, kept = carry.write_hf(kept, model, partial)
        else:
            carry.write_qkv(kept, model.save(partial))
        if out.is_dir():
            out.rmdir()  # empty, checked above
        os.replace(partial, out)
    except OSError as e:
        raise CLIError(f"--out {out}: writing {e.filename or partial} failed ({e.strerror or e}); nothing was left "
                       f"at --out: free some space (or choose another --out) and run the command again") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    print(f"wrote {out} ({model.num_parameters():,} parameters, {'Hugging Face' if args.to_hf else 'qkv'} format); "
          f"kept: {kept.summary()}")
    return 0


# -- train ------------------------------------------------------------------------------------------------------

def _train_args(p):
    from .train.args import add_arguments  # the same flags as ``python -m qkv.train`` (torchrun's entry)
    add_arguments(p)


def _train(args):
    import dataclasses
    import json
    import logging
    from .train import TrainingInterrupted, configs_from_args, train
    from .train.args import model_name, stopped
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        model_config, train_config = configs_from_args(args)  # its errors name the flags already
    except (TypeError, ValueError) as e:
        raise CLIError(str(e)) from None
    try:
        summary = train(model_config, train_config, name=model_name(args))
    except TrainingInterrupted as e:  # Ctrl-C / SIGTERM: the checkpoint it saved, and 130 / 143
        return stopped(e, "qkv train")
    print(json.dumps(dataclasses.asdict(summary), indent=1))
    return 0


# -- generate / translate -------------------------------------------------------------------------------------

def _decoding_args(p, defaults, *, speculative: bool = False):
    """The decoding flags, generated from GenerationConfig's fields (``qkv/decoding/args.py``; help shows this
    command's ``defaults``), and the flags of the command itself."""
    from .decoding.args import add_decoding_arguments
    # Defaults are None so that, with --hf, the folder's generation_config.json fills what no flag gives.
    add_decoding_arguments(p, defaults, speculative=speculative)
    p.add_argument("--seed", type=int, help="seed for sampling (reproducible output)")
    p.add_argument("--show-scores", action="store_true",
                   help="after each output, a tab and its score: the beam score (sum log p / length ** "
                        "length_penalty), or the summed log-probability of the generated tokens")
    p.add_argument("--stream", action="store_true",
                   help="--file: decode one line at a time, printing tokens as they come (default: batches of "
                        "similar length, printed in the file's order)")
    p.add_argument("--tokens-per-batch", type=int, default=32768,
                   help="--file: rows x (longest input + max new tokens) x beams per batch (default: 32768, about "
                        "the padded size of the library's translate batches of 64 sentences with 4 beams; lower it "
                        "for a large model on a small machine)")
    p.set_defaults(qkv_defaults=defaults, qkv_speculative=speculative)


def _check_decoding(args) -> None:
    """The decoding flags, checked by their names (over the command's defaults) before any model is loaded."""
    _positive_flag(args.tokens_per_batch, "--tokens-per-batch")
    _decoding_config(args)


def _decoding_config(args, folder=None):
    """The GenerationConfig of the command: the flags over a Hugging Face folder's generation settings (--hf:
    what transformers' generate would use, so both print the same text) or over the command's defaults."""
    from .decoding import GenerationConfig
    from .decoding.args import config_from_arguments
    base = args.qkv_defaults if folder is None else GenerationConfig.from_folder(folder)
    try:
        return config_from_arguments(args, base, speculative=args.qkv_speculative)
    except ValueError as e:
        raise CLIError(str(e)) from None


def _generator(args):
    """--seed: a torch.Generator for sampling, or None."""
    import torch
    return torch.Generator().manual_seed(args.seed) if args.seed is not None else None


def _hf_folder(args):
    """The --hf folder: a local path, or a hub id resolved through huggingface_hub's cache."""
    from .files import resolve
    return resolve(args.hf)


def _model_and_tokenizer(args):
    """(model, tokenizer) from --checkpoint (a qkv or training folder) or --hf (a Hugging Face folder or hub id,
    with its tokenizer: tokenizer.json or SentencePiece files)."""
    import qkv
    from .data import Tokenizer
    if getattr(args, "hf", None):
        folder = _hf_folder(args)
        model = qkv.from_hf(folder)
        try:
            tok = Tokenizer.load(folder)
        except FileNotFoundError as e:
            raise CLIError(f"--hf {args.hf}: no tokenizer in the folder ({e})") from None
        return model, tok
    folder = _model_folder(args.checkpoint)
    return qkv.load(folder), _tokenizer_for(folder)


def _source_args(p):
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--checkpoint", help="a qkv model folder or training output folder (with tokenizer/)")
    g.add_argument("--hf", help="a Hugging Face folder or hub id (org/name) with its tokenizer (tokenizer.json, "
                                "spiece.model, source.spm + vocab.json or sentencepiece.bpe.model)")


def _generate_args(p):
    _source_args(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompt", default="", help="text to continue (default: the empty prompt, from BOS)")
    g.add_argument("--file", help="a file of prompts, one a line: each prompt and its continuation printed on one "
                                  "line, in the file's order (newlines inside written as \\n; blank lines stay blank)")
    from .decoding import GenerationConfig
    _decoding_args(p, GenerationConfig(max_new_tokens=100), speculative=True)
    p.add_argument("--draft", help="speculative decoding: a smaller qkv model folder with the same vocabulary guesses "
                                   "--num-draft-tokens tokens, the model checks them in one pass (greedy: the same "
                                   "tokens; sampling: the same distribution)")


def _draft(args) -> dict:
    """generate's draft_model from --draft (--num-draft-tokens and --prompt-lookup are decoding flags)."""
    import qkv
    if args.draft and args.prompt_lookup_num_tokens:
        raise CLIError("--draft and --prompt-lookup: pass one (prompt lookup is the draft)")
    if not args.draft:
        return {}
    try:
        folder = _model_folder(args.draft)
    except CLIError as e:
        raise CLIError(str(e).replace("--checkpoint", "--draft", 1)) from None
    return dict(draft_model=qkv.load(folder))


def _on_one_line(text: str) -> str:
    """A file's answer on one line: its newlines written as \\n, so output line i answers input line i."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _decode_lines(model, inputs, config, args, show):
    """--file without --stream: every non-blank line decoded in batches of similar length (qkv.decoding.batch),
    progress on stderr, then ``show(line index, tokens, score)`` for each line in the file's order (None: a blank
    line)."""
    from tqdm.auto import tqdm
    from .decoding import generate_many
    if config.num_return_sequences > 1:
        raise CLIError(f"num_return_sequences={config.num_return_sequences} (generation_config.json): --file "
                       f"prints one answer per line; add --stream to print them all")
    present = [i for i, x in enumerate(inputs) if x is not None]
    with tqdm(total=len(present), file=sys.stderr, unit="line", dynamic_ncols=True, desc="decode") as bar:
        answers = generate_many(model, [inputs[i] for i in present], config.replace(return_scores=args.show_scores),
                                tokens_per_batch=args.tokens_per_batch, progress=bar.update,
                                generator=_generator(args))
    by_line = dict(zip(present, answers))
    for i in range(len(inputs)):
        answer = by_line.get(i)
        show(i, None if answer is None else answer.tokens, None if answer is None else answer.score)


def _file_lines(path, what: str) -> list[str]:
    """The lines of --file (read_lines' checks: exists, UTF-8, not empty); refused when every line is blank."""
    from .data import read_lines
    lines = read_lines(path, "--file")
    if not any(line.strip() for line in lines):
        raise CLIError(f"--file {path}: holds no {what} (every line is blank)")
    return lines


def _generate(args):
    _check_decoding(args)
    lines = None
    if args.file is not None:
        lines = _file_lines(args.file, "prompts")
    model, tok = _model_and_tokenizer(args)
    from .models import family_of
    record = family_of(model)
    if not record.continues:
        hint = "; use `qkv translate` for it" if record.has_source else ""
        raise CLIError(f"generate continues text with a decoder-only language model, but this checkpoint holds an "
                       f"{record.name!r} model{hint}")
    hf = bool(getattr(args, "hf", None))
    config = _decoding_config(args, _hf_folder(args) if hf else None)
    spec = _draft(args)
    if lines is not None and not args.stream:
        inputs = [_encode(tok, line, f"--file {args.file}", add_special=hf) if line.strip() else None
                  for line in lines]
        if spec or config.prompt_lookup_num_tokens:
            raise CLIError("--draft / --prompt-lookup decode one prompt at a time: add --stream to --file")

        def show(i, tokens, score):
            text = "" if tokens is None else tok.decode(inputs[i] + tokens) if hf else lines[i] + tok.decode(tokens)
            print(_on_one_line(text) + (f"\t{score:.4f}" if score is not None else ""), flush=True)
            _warn_loop(f"--file {args.file} line {i + 1}", tokens or [], config.max_new_tokens, tok=tok)
        _decode_lines(model, inputs, config, args, show)
        return 0
    for line in (lines if lines is not None else [args.prompt]):
        if lines is not None and not line.strip():
            print()
            continue
        _generate_one(args, model, tok, line, hf, config, spec)
    return 0


def _generate_one(args, model, tok, prompt, hf, config, spec):
    """One prompt: streamed token by token (greedy, sampling), or printed at once (beams, speculative, scores)."""
    import torch
    from .decoding import generate, stream
    # --hf: the tokenizer's own template (Llama 3's BOS), as transformers' tokenizer(prompt) does
    ids = _encode(tok, prompt, "--prompt", add_special=hf)
    if not ids:
        if tok.bos_id is None:
            raise CLIError("--prompt is empty and the tokenizer has no BOS token to start from")
        ids = [tok.bos_id]
    input_ids = torch.tensor([ids])
    if config.num_beams > 1 or config.num_return_sequences > 1 or spec or config.prompt_lookup_num_tokens or \
            args.show_scores:
        out = generate(model, input_ids, config, return_scores=args.show_scores, generator=_generator(args), **spec)
        rows, scores = (out.sequences, out.sequences_scores.tolist()) if args.show_scores else (out, None)
        for r, row in enumerate(rows.tolist()):
            # --hf: transformers' batch_decode(skip_special_tokens=True) of prompt + continuation
            text = tok.decode(row) if hf else prompt + tok.decode(row[len(ids):])
            print(text + (f"\t{scores[r]:.4f}" if scores else ""))
        if len(rows) == 1:
            _warn_loop(f"--prompt {prompt!r}", rows[0, len(ids):].tolist(), *_limit_and_eos(config, model, len(ids)),
                       tok=tok)
        return 0
    if not hf:
        print(prompt, end="", flush=True)
    shown, generated = "", []
    decode = (lambda new: tok.decode(ids + new)) if hf else tok.decode
    try:
        for chunk in stream(model, input_ids, config, decode=decode, generator=_generator(args)):
            generated.append(int(chunk.tokens[0]))
            shown += chunk.text[0]
            print(chunk.text[0], end="", flush=True)  # streaming: each piece as soon as it is decoded
    except BaseException:
        print(flush=True)  # end the echoed line: an error (or ^C) then starts on a line of its own
        raise
    if hf:  # what the stream held back (an unfinished character), so the line ends as transformers' text does
        final = tok.decode(ids + generated)
        print(final[len(shown):] if final.startswith(shown) else "\n" + final, end="")
    print()
    _warn_loop(f"--prompt {prompt!r}", generated, *_limit_and_eos(config, model, len(ids)), tok=tok)
    return 0


def _translate_args(p):
    from .decoding.batch import TRANSLATION_DEFAULTS
    _source_args(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--text", action="append", help="a sentence to translate (repeat for more)")
    g.add_argument("--file", help="a file of sentences, one a line")
    p.add_argument("--src-lang", help="the source language code of a multilingual tokenizer (mBART: en_XX)")
    p.add_argument("--tgt-lang", help="the target language code: its token is forced first (transformers' "
                                      "forced_bos_token_id; mBART-50: es_XX)")
    _decoding_args(p, TRANSLATION_DEFAULTS.replace(num_beams=4))


def _translate(args):
    _check_decoding(args)
    if args.text is not None:
        for t in args.text:
            if not t.strip():
                raise CLIError(f"--text {t!r}: empty; expected a sentence to translate")
        sentences = args.text
    else:
        sentences = _file_lines(args.file, "sentences")
    model, tok = _model_and_tokenizer(args)
    from .models import family_of
    record = family_of(model)
    if not record.has_source:
        raise CLIError(f"translate needs an encoder-decoder model; this one is {record.name!r}"
                       + (" (use `qkv generate`)" if record.continues else ""))
    flag = "--text" if args.text is not None else f"--file {args.file}"
    for s in sentences:
        _encode(tok, s, flag)
    forced_bos = _languages(args, tok)
    hf = bool(getattr(args, "hf", None))
    if hf:
        config = _decoding_config(args, _hf_folder(args))
    else:  # the translation rules: the tokenizer's EOS and padding, the decoder's positions
        from .decoding import translation_config
        config = translation_config(model, tok, _decoding_config(args))
    if forced_bos is not None:
        config = config.replace(forced_bos_token_id=forced_bos)
    # a person watches --text (greedy and sampling stream); files decode in batches unless --stream
    batched = (args.file is not None and not args.stream) or args.show_scores or config.num_beams > 1
    if batched and config.num_return_sequences == 1:
        # --hf: transformers' way, the tokenizer's template; a qkv model: the sentence, then EOS
        inputs = [(tok.encode(s, add_special=True) if hf else tok.encode(s) + [tok.eos_id]) if s.strip() else None
                  for s in sentences]

        def show(i, tokens, score):
            text = "" if tokens is None else tok.decode(tokens)
            print(_on_one_line(text) + (f"\t{score:.4f}" if score is not None else ""), flush=True)
            _warn_loop(f"--file {args.file} line {i + 1}" if args.file else f"--text {sentences[i]!r}", tokens or [],
                       config.max_new_tokens, tok=tok)
        _decode_lines(model, inputs, config, args, show)
        return 0
    _translate_one_by_one(args, model, tok, sentences, config, hf)
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


def _translate_one_by_one(args, model, tok, sentences, config, hf):
    """--text (or --stream): --hf prints transformers' batch_decode of each output (every returned sequence); a
    qkv model streams each translation token by token."""
    import torch
    from .decoding import generate, stream
    for n, s in enumerate(sentences, 1):
        if not s.strip():
            print(flush=True)
            continue
        if hf:
            out = generate(model, torch.tensor([tok.encode(s, add_special=True)]), config, generator=_generator(args))
            for row in out.tolist():
                print(tok.decode(row), flush=True)
            continue
        src, new = torch.tensor([tok.encode(s) + [tok.eos_id]]), []
        for chunk in stream(model, src, config, decode=tok.decode, generator=_generator(args)):
            new.append(int(chunk.tokens[0]))
            print(chunk.text[0], end="", flush=True)
        print()
        where = f"--file {args.file} line {n}" if args.file else f"--text {s!r}"
        _warn_loop(where, new, config.max_new_tokens, tok.eos_id, tok=tok)


# -- eval -------------------------------------------------------------------------------------------------------

def _eval_args(p):
    _source_args(p)
    p.add_argument("--data", help="language models: a text file; translation: the source file; classifiers: a .tsv "
                                  "of text<TAB>label lines")
    p.add_argument("--tgt", help="translation: the reference file aligned with --data")
    p.add_argument("--block-size", type=int, help="language models: window length (default: max_positions)")
    p.add_argument("--num-beams", type=int, default=1, help="translation: beam width for BLEU (default: 1)")
    p.add_argument("--max-batches", type=int, default=0, help="stop after this many batches (0: the whole file)")


def _eval(args):
    import torch
    import torch.nn.functional as F
    from .data import read_text
    if not args.data:
        raise CLIError("pass --data FILE (and --tgt FILE for translation)")
    _positive_flag(args.block_size, "--block-size")
    _positive_flag(args.num_beams, "--num-beams")
    _positive_flag(args.max_batches, "--max-batches", zero_ok=True)
    model, tok = _model_and_tokenizer(args)
    model.eval()
    from .models import family_of
    record = family_of(model)
    if record.has_source:
        return _eval_translation(args, model, tok)
    if record.text and not record.continues and model.config.num_labels:
        return _eval_classifier(model, tok, args)
    if not record.continues:
        raise CLIError(f"eval supports language, translation and classification models; this one is "
                       f"{record.name!r}")
    ids = torch.tensor(_encode(tok, read_text(args.data, "--data"), f"--data {args.data}"))
    block = args.block_size or model.config.max_positions
    if block > model.config.max_positions:
        raise CLIError(f"--block-size {block}: more than the model's {model.config.max_positions} positions "
                       f"(max_positions); expected --block-size <= {model.config.max_positions}")
    n = (len(ids) - 1) // block
    if n < 1:
        raise CLIError(f"--data has {len(ids)} tokens, fewer than one block of {block} + 1")
    if args.max_batches:
        n = min(n, 8 * args.max_batches)
    x = ids[: n * block].view(n, block)
    y = ids[1: n * block + 1].view(n, block)
    total, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, n, 8):
            logits = model(x[i: i + 8])
            total += F.cross_entropy(logits.flatten(0, 1).float(), y[i: i + 8].flatten(), reduction="sum").item()
            correct += (logits.argmax(-1) == y[i: i + 8]).sum().item()
    loss = total / (n * block)
    print(f"tokens {n * block}  loss {loss:.4f}  perplexity {math.exp(loss):.2f}  "
          f"accuracy {100 * correct / (n * block):.1f}%")
    return 0


def _eval_translation(args, model, tok):
    """Exact match and BLEU of the model's translations of --data against --tgt."""
    from .data import read_pairs
    from .demo import bleu
    from .decoding import translate
    if not args.tgt:
        raise CLIError("a translation model: pass --data SOURCE_FILE --tgt REFERENCE_FILE")
    pairs = read_pairs(args.data, args.tgt)
    if args.max_batches:
        pairs = pairs[: 64 * args.max_batches]
    sources, refs = [s for s, _ in pairs], [t for _, t in pairs]
    for s in sources:
        _encode(tok, s, f"--data {args.data}")
    hyps = translate(model, tok, sources, num_beams=args.num_beams)
    exact = sum(h == r for h, r in zip(hyps, refs)) / len(refs)
    score = bleu(hyps, refs)
    print(f"sentences {len(refs)}  exact match {100 * exact:.1f}%  BLEU "
          f"{'n/a (pip install sacrebleu)' if score is None else f'{score:.2f}'}")
    return 0


def _eval_classifier(model, tok, args):
    """Accuracy, each class's F1 and macro-F1 of a classifier on a .tsv of text<TAB>label lines."""
    from .tasks.classify import classification_metrics, confusion_matrix, load_classifier_data, model_labels, predict
    labels = model_labels(model)
    texts, gold = load_classifier_data(args.data, labels)
    if args.max_batches:
        texts, gold = texts[: 32 * args.max_batches], gold[: 32 * args.max_batches]
    for t in texts:
        _encode(tok, t, f"--data {args.data}")
    confusion = confusion_matrix(predict(model, tok, texts), gold, len(labels))
    m = classification_metrics(confusion, labels, prefix="")
    print(f"lines {len(texts)}  accuracy {100 * m['acc']:.1f}%  macro-F1 {m['macro_f1']:.4f}")
    for i, name in enumerate(labels):
        print(f"  {name}: F1 {m[f'f1/{name}']:.4f}  (support {int(confusion[i].sum())})")
    return 0


# -- demo -------------------------------------------------------------------------------------------------------

def _demo_args(p):
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo); an interrupted run "
                                                      "resumes from its last checkpoint with its saved tokenizer, a "
                                                      "finished one is evaluated again without training; a folder "
                                                      "holding anything else is refused (see --overwrite)")
    p.add_argument("--src", help="your own source-language file, one sentence a line (default: qkv's generated "
                                 "English -> Spanish task)")
    p.add_argument("--tgt", help="the target-language file aligned with --src")
    p.add_argument("--val-src", help="held-out source file (with --src; default: a share of --src/--tgt is held "
                                     "out, chosen by a hash of each source)")
    p.add_argument("--val-tgt", help="held-out target file (with --val-src)")
    p.add_argument("--max-steps", type=int, help="training steps (default: the demo's tuned value)")
    p.add_argument("--seed", type=int, default=0, help="seed for data, weights and order (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true", help="replace what the demo writes in --out (data/, train/, "
                                                           "results.json, figures, explorer.html) even where no demo "
                                                           "made it; other files are left alone")


def _demo(args):
    import logging
    from .demo import run_demo
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    run_demo(args.out, src=args.src, tgt=args.tgt, val_src=args.val_src, val_tgt=args.val_tgt,
             max_steps=args.max_steps, seed=args.seed, progress=not args.no_progress, overwrite=args.overwrite)
    return 0


# -- explore ----------------------------------------------------------------------------------------------------

def _explore_args(p):
    _source_args(p)
    p.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default: 8000; 0: any free port)")
    p.add_argument("--text", action="append", help="a first sentence (or prompt; for an image-to-text model "
                                                  "a generated scene's number) to show; repeat for more")
    p.add_argument("--num-beams", type=int, default=4, help="beam width of the beam view (default: 4)")
    p.add_argument("--max-new-tokens", type=int, help="longest output in tokens (default: what the model allows, "
                                                      "at most 60)")
    p.add_argument("--open", action="store_true", help="open the page in the default web browser")


def _explore(args):
    from .explore import Explorer, ExploreInputError
    from .explore_server import make_server
    model, tok = _model_and_tokenizer(args)
    explorer = Explorer(model, tok, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens)
    examples = []
    for text in args.text or []:
        try:
            examples.append(explorer.example(text))
        except ExploreInputError as e:
            raise CLIError(f"--text {text!r}: {e}") from None
    if not args.text and getattr(args, "checkpoint", None):  # a demo's folder: the examples its explorer.html shows
        from .demo_folder import saved_examples
        try:
            saved = saved_examples(args.checkpoint)
        except ValueError as e:
            saved = []
            _warn_once("examples", f"{_one_line(e)}; the explorer opens without the demo's examples")
        for label, text in saved:
            try:
                examples.append(explorer.example(text, label=label))
            except ExploreInputError as e:
                _warn_once("examples", f"the demo's example {text!r} is left out: {e}")
    server = make_server(explorer, port=args.port, examples=examples)
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    print(f"serving the explorer at {url} (this machine only); Ctrl-C stops it", flush=True)
    if args.open:
        import webbrowser
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0


# -- plot -------------------------------------------------------------------------------------------------------

def _plot_args(p):
    p.add_argument("what", choices=("attention", "curves"), help="attention: heatmaps of every layer and head; "
                                                                 "curves: the training curves of a run")
    p.add_argument("--checkpoint", help="attention: a model folder or training output; curves: a training "
                                        "output folder (or give --metrics)")
    p.add_argument("--metrics", help="curves: a metrics.jsonl file")
    p.add_argument("--text", help="attention, language models and encoders: the text to look at")
    p.add_argument("--src", help="attention, translation models: the source sentence")
    p.add_argument("--tgt", help="attention, translation models: the target sentence (default: the model's own "
                                 "greedy translation)")
    p.add_argument("--image", help="attention, image-to-text models: the image to caption (a PNG of the model's size; "
                                   "default: a generated scene)")
    p.add_argument("--out", default="attention.png", help="the PNG to write (default: attention.png); the HTML "
                                                          "explorer goes beside it with --html")
    p.add_argument("--html", action="store_true", help="also write the interactive explorer (OUT with .html)")
    p.add_argument("--scale", choices=("auto", "linear", "log"), default="auto",
                   help="attention: colour scale of the heatmaps; linear (0 to each head's max) or log (symmetric, 3 "
                        "decades: shows the fading rows of recurrent mixers); auto: log when any layer is not "
                        "softmax attention")


def _plot(args):
    from . import viz
    out = Path(args.out)
    if args.what == "curves":
        metrics = Path(args.metrics) if args.metrics else None
        if metrics is None:
            if not args.checkpoint:
                raise CLIError("plot curves needs --metrics FILE or --checkpoint RUN_FOLDER")
            run = Path(args.checkpoint)
            metrics = next((m for m in (run / "metrics.jsonl", run / "train" / "metrics.jsonl") if m.is_file()), None)
            if metrics is None:
                raise CLIError(f"--checkpoint {run}: no metrics.jsonl there (nor in train/)")
        viz.plot_curves(metrics, out)
        print(f"wrote {out}")
        return 0
    if not args.checkpoint:
        raise CLIError("plot attention needs --checkpoint")
    import torch
    import qkv
    folder = _model_folder(args.checkpoint)
    model = qkv.load(folder)
    tok = _tokenizer_for(folder)
    from .models import family_of
    record = family_of(model)
    if not record.text and record.has_source:  # image to text: each word beside where it looked (qkv/viz_image.py)
        from .viz_image import caption_figure  # only for an image model: its figure reads the caption task
        path, caption = caption_figure(model, tok, args.image, out)
        print(f"wrote {path} ({caption})")
        if args.html:  # the explorer's view of the same image: each word's weights over the cells, the beam search
            # the command's imports load on use, as every command's (start-up time of `qkv`)
            from .explore import Explorer
            from .viz_image import load_pixels  # (start-up time, as above)
            example = Explorer(model, tok).image_example(load_pixels(model.config, args.image),
                                                         source=args.image or "generated scene 0")
            viz.explorer_html([example], out.with_suffix(".html"), title="qkv explorer: an image-to-text model")
            print(f"wrote {out.with_suffix('.html')}")
        return 0
    if not record.text:
        raise CLIError(f"plot attention reads text; a {type(model).__name__} model takes images (use qkv.viz on its "
                       f"weights)")
    scale = args.scale
    if scale == "auto":
        scale = "linear" if all(kind == "attention" for kind, _ in model.layer_mixers()) \
            else "log"
    if record.has_source:
        if not args.src:
            raise CLIError("a translation model: pass --src (and optionally --tgt)")
        from .demo import attention_maps
        from .decoding import translate
        tgt = args.tgt if args.tgt is not None else translate(model, tok, [args.src])[0]
        maps = attention_maps(model, tok, args.src, tgt)
    else:
        if not args.text:
            raise CLIError("pass --text")
        ids = _encode(tok, args.text, "--text")
        tokens = tok.tokens(args.text)
        with torch.no_grad():
            result = model(torch.tensor([ids]), return_weights=True)
        weights = result[1]
        kind = "masked" if record.causal else "self"
        maps = [viz.AttentionMaps.from_batch(kind, [w.self_attn for w in weights], tokens, tokens)]
    for m in maps:
        path = out if len(maps) == 1 else out.with_name(f"{out.stem}_{m.kind}{out.suffix}")
        viz.plot_attention(m, path, title=f"{m.kind} attention", scale=scale)
        print(f"wrote {path} ({scale} colour scale)")
    if args.html:
        viz.explorer_html(maps, out.with_suffix(".html"))
        print(f"wrote {out.with_suffix('.html')}")
    return 0


# -- bench ------------------------------------------------------------------------------------------------------

def _bench_args(p):
    p.add_argument("name", nargs="?", help="which benchmark (a script in bench/); none: list them")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed on to the script (see its --help)")


def _bench(args):
    import subprocess
    root = Path(__file__).resolve().parents[1] / "bench"
    scripts = sorted(p.stem for p in root.glob("*.py")) if root.is_dir() else []
    if not scripts:
        raise CLIError("the bench/ scripts ship with the source tree, not the installed package: run from a clone")
    if not args.name:
        print("benchmarks (qkv bench NAME [args]):\n  " + "\n  ".join(scripts))
        return 0
    if args.name not in scripts:
        raise CLIError(f"unknown benchmark {args.name!r}; available: {', '.join(scripts)}")
    return subprocess.call([sys.executable, str(root / f"{args.name}.py"), *args.args])


COMMANDS: dict[str, Command] = {
    "train": Command("train any model on your data: text (LM), parallel files (translation), images (ViT), "
                     "text<TAB>label lines (--task classify); --init fine-tunes a pretrained checkpoint",
                     "qkv train --preset gpt-char-tiny --data input.txt --max-steps 2000 --out-dir runs/shk",
                     _train_args, _train),
    "generate": Command("continue a prompt with a language model, printing tokens as they come",
                        "qkv generate --checkpoint runs/shk --prompt 'ROMEO:' --max-new-tokens 200 --sample "
                        "--top-k 40 --seed 1", _generate_args, _generate),
    "translate": Command("translate sentences with an encoder-decoder model (beam search, or streaming greedy)",
                         "qkv translate --checkpoint runs/demo --text 'three hundred twenty-one'",
                         _translate_args, _translate),
    "eval": Command("loss, perplexity and accuracy on a text file; BLEU and exact match on parallel files; "
                    "accuracy and per-class F1 of a classifier on a .tsv",
                    "qkv eval --checkpoint runs/demo --data test.en --tgt test.es --num-beams 4",
                    _eval_args, _eval),
    "demo": Command("the main job: train a small Transformer to translate, then show where it attends",
                    "qkv demo --out runs/demo", _demo_args, _demo),
    "explore": Command("a local web page: type a sentence, see the output, every layer's and head's attention "
                       "and beam search step by step", "qkv explore --checkpoint runs/demo --port 8000",
                       _explore_args, _explore),
    "info": Command("a model's configuration, parameters, FLOPs per token and memory",
                    "qkv info --preset gpt2 --seq-len 1024", _info_args, _info),
    "plot": Command("attention heatmaps (every layer and head) and training curves",
                    "qkv plot attention --checkpoint runs/demo --src 'march 5, 1999' --out attn.png --html",
                    _plot_args, _plot),
    "bench": Command("run a benchmark script from bench/ (each prints its ratio to a peer)",
                     "qkv bench attention --max-T 2048", _bench_args, _bench),
    "convert": Command("checkpoints between formats: Hugging Face folders, RWKV-LM files, qkv folders",
                       "qkv convert --from-hf ./gpt2-hf --out ./gpt2-qkv", _convert_args, _convert),
}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="qkv", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="qkv: build, train, decode and inspect attention models.",
        epilog="examples:\n" + "\n".join(f"  {c.example}" for c in COMMANDS.values())
               + "\n\nEach command explains its options: qkv COMMAND --help")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.subcommands = {}
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help, epilog=f"example:\n  {cmd.example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.subcommands[name] = p
        cmd.add_arguments(p)
        p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return parser


# A negative number: "-1e-3", "-.5", "-inf". argparse takes "-1e-3" for an option (its rule knows no exponents).
def _join_negative_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--lr -1e-3`` -> ``--lr=-1e-3`` for the flags of the subcommand in ``argv`` (see config.join_negative_values)."""
    from .config import join_negative_values
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in getattr(parser, "subcommands", {}) or command == "bench":
        return argv
    return join_negative_values(parser.subcommands[command], argv)


def _one_line(e: BaseException) -> str:
    """An exception as one line: its message (the file, flag or field, the value, what was expected), with any
    line breaks joined; exceptions that are not a user's mistake also say their type."""
    if isinstance(e, KeyError) and e.args:
        msg = f"missing key {e.args[0]!r}" if not isinstance(e.args[0], str) or " " not in e.args[0] else e.args[0]
    elif isinstance(e, OSError) and e.filename and e.strerror:
        msg = f"{e.filename}: {e.strerror}"
    else:
        msg = str(e) or type(e).__name__
    lines = [line.strip() for line in msg.splitlines() if line.strip()]
    msg = "; ".join(lines) if lines else type(e).__name__
    if not isinstance(e, (CLIError, ValueError, TypeError, OSError, KeyError)):
        msg = f"{type(e).__name__}: {msg} (--debug shows the traceback)"
    return msg


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(_join_negative_values(parser, argv))
    if not args.command:
        parser.print_help()
        return 0
    _Notes.said = set()
    try:
        return COMMANDS[args.command].run(args) or 0
    except KeyboardInterrupt as e:  # a training run inside (qkv demo) says what it saved, and which signal
        print(f"qkv {args.command}: {e}" if str(e) else "qkv: interrupted", file=sys.stderr)
        return getattr(e, "exit_status", 130)
    except BrokenPipeError:  # the reader went away (``qkv ... | head``): stop quietly, as other commands do
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:  # every failure is one line; --debug keeps the traceback
        if args.debug:
            raise
        print(f"qkv {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2 if isinstance(e, CLIError) else 1


if __name__ == "__main__":
    sys.exit(main())
