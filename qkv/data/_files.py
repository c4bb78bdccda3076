"""Reading the user's text files, with errors that say which file, where, and what was expected.

Every dataset in `qkv.data` reads through here, so a missing file, an empty file or a stray Latin-1 byte
is reported the same way wherever it is met.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Union

PathLike = Union[str, os.PathLike]


def check_file(path: PathLike, arg: str) -> Path:
    """Return `path` as a Path after checking it names a non-empty file; `arg` names the caller's argument."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{arg}={str(p)!r}: no such file")
    if not p.is_file():
        raise ValueError(f"{arg}={str(p)!r}: expected a file, got a directory or special file")
    if p.stat().st_size == 0:
        raise ValueError(f"{arg}={str(p)!r}: the file is empty; expected UTF-8 text")
    return p


def read_text(path: PathLike, arg: str = "path") -> str:
    """Read a whole file as UTF-8 (a leading byte-order mark is dropped).

    Raises FileNotFoundError when missing, ValueError when empty or when some bytes are not UTF-8
    (the message gives the byte offset and line, so the user can find them with `head -c` or an editor).
    """
    p = check_file(path, arg)
    data = p.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        bad = data[e.start:e.end].hex(" ")
        raise ValueError(
            f"{arg}={str(p)!r}: bytes {bad} at byte offset {e.start} (line {line}) are not valid UTF-8; "
            f"expected UTF-8 text (re-encode it, e.g. `iconv -f latin1 -t utf-8`)") from None


def read_lines(path: PathLike, arg: str = "path") -> list[str]:
    """The file's lines without their line endings (a final newline does not make an extra empty line)."""
    return read_text(path, arg).splitlines()


def is_paths(files_or_iter) -> bool:
    """True when `files_or_iter` names files: one path, or a list/tuple of paths.

    Any other iterable (a generator, `iter(list_of_strings)`, a dataset column) is taken as texts.
    """
    if isinstance(files_or_iter, (str, os.PathLike)):
        return True
    return isinstance(files_or_iter, (list, tuple)) and all(
        isinstance(f, (str, os.PathLike)) for f in files_or_iter)


def as_paths(files: PathLike | Sequence[PathLike], arg: str) -> list[Path]:
    """One path or a list of them -> checked Paths (each must be a non-empty file)."""
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    files = list(files)
    if not files:
        raise ValueError(f"{arg}=[]: expected at least one file")
    return [check_file(f, arg) for f in files]


def iter_texts(files_or_iter, arg: str = "files_or_iter") -> Iterator[str]:
    """Yield texts from files (line by line, endings kept) or from an iterable of strings.

    Paths are all checked before the first line is yielded, so a typo fails fast, not after an hour.
    """
    if is_paths(files_or_iter):
        try:
            paths = as_paths(files_or_iter, arg)
        except FileNotFoundError as e:
            # A list of plain strings reads as paths; say how to pass texts instead.
            raise FileNotFoundError(f"{e}; to use in-memory strings pass an iterator, e.g. iter(texts)") from None
        for p in paths:
            yield from read_text(p, arg).splitlines(keepends=True)
        return
    if not isinstance(files_or_iter, Iterable):
        raise TypeError(f"{arg}: expected a path, a list of paths or an iterable of strings, "
                        f"got {type(files_or_iter).__name__}")
    for i, text in enumerate(files_or_iter):
        if not isinstance(text, str):
            raise TypeError(f"{arg}: item {i} is {type(text).__name__}, expected str")
        yield text
