"""What every command shares: its table entry (``Command``), the one-line mistake (``CLIError``), warnings said once,
flag checks, input encoding that names unknown pieces, and the warning for a decode that ran out repeating itself."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable

from ..config_args import CLIError
from ..data import read_lines
from ..repetition import describe, repetition

__all__ = ["CLIError", "Command", "warn_once", "positive_flag", "check_utf8", "encode", "warn_loop", "limit_and_eos", "on_one_line",
           "file_lines"]


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, an example, its flags and what runs."""
    help: str
    example: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


class Notes:
    """Warnings printed at most once per command (an unknown character in every sentence of a file is one note)."""
    said: set = set()


def warn_once(key: str, text: str) -> None:
    if key not in Notes.said:
        Notes.said.add(key)
        print(f"qkv: warning: {text}", file=sys.stderr)


def positive_flag(value, flag: str, *, zero_ok: bool = False) -> None:
    if value is not None and value < (0 if zero_ok else 1):
        raise CLIError(f"{flag} {value}: expected an int >= {0 if zero_ok else 1}")


def check_utf8(args) -> None:
    """Refuse, in one line naming the flag, a command-line value that is not UTF-8: Python keeps such bytes as lone
    surrogates, which no tokenizer, JSON file or terminal can take."""
    for name, value in vars(args).items():
        for text in value if isinstance(value, list) else [value]:
            if not isinstance(text, str):
                continue
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raw = text.encode("utf-8", "surrogateescape")[e.start:e.start + 1].hex()
                raise CLIError(f"--{name.replace('_', '-')}: byte {raw} at character {e.start} is not valid UTF-8; "
                               f"expected UTF-8 text") from None


def encode(tok, text: str, flag: str, *, add_special: bool = False) -> list[int]:
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
            warn_once("unk", f"{flag}: {len(pieces)} piece(s) of the input are not in the tokenizer's vocabulary "
                             f"and become {token} (first: {shown[:120]}); the model sees an unknown token there")
    return ids


def limit_and_eos(config, model, prompt_length: int) -> tuple:
    """(new tokens allowed, the first end-of-sequence id or None) of ``config`` met with ``model``."""
    resolved = config.resolved(model, prompt_length)
    return resolved.max_new_tokens, (resolved.eos_ids[0] if resolved.eos_ids else None)


def warn_loop(where: str, tokens, limit, eos=None, *, tok) -> None:
    """One line on stderr when a decode's new tokens ran to ``limit`` repeating themselves (``qkv.repetition``):
    its score says nothing of it. ``where`` names the input line."""
    tokens = list(tokens)
    ended = eos is not None and eos in tokens
    found = None if limit is None else repetition(tokens, hit_limit=not ended and len(tokens) >= limit)
    if found is not None:
        print(f"qkv: warning: {where}: the output {describe(found, tok.decode(list(found.unit)), limit=limit)}",
              file=sys.stderr)


def on_one_line(text: str) -> str:
    """A file's answer on one line: its newlines written as \\n, so output line i answers input line i."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def file_lines(path, what: str) -> list[str]:
    """The lines of --file (read_lines' checks: exists, UTF-8, not empty); refused when every line is blank."""
    lines = read_lines(path, "--file")
    if not any(line.strip() for line in lines):
        raise CLIError(f"--file {path}: holds no {what} (every line is blank)")
    return lines
