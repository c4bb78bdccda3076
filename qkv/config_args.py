"""The command line of the config dataclasses, shared by ``qkv`` and ``python -m qkv.train``: one flag per field
(help from the field's comment), flags back into a dataclass, config files, negative values after a flag, and the
one-line error every qkv command prints (``OneLineParser``, ``one_line``, ``CLIError``)."""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
from pathlib import Path

from .files import loads


class CLIError(Exception):
    """A mistake in what the user asked for: printed as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors as one line (``qkv CMD: error: ...``), like every other qkv error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def one_line(e: BaseException) -> str:
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


def field_help(cls) -> dict[str, str]:
    """Field name -> the comment after it in the class body: the one place a field is documented."""
    docs = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s{4}(\w+)\s*:[^#]*#\s?(.*)$", line)
        if m:
            docs[m.group(1)] = m.group(2).strip()
    return docs


# A negative number after a flag that takes one value ("--lr -1e-3"): argparse would read it as a flag.
NEGATIVE = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


def join_negative_values(parser, argv: list[str]) -> list[str]:
    """``--lr -1e-3`` -> ``--lr=-1e-3`` for flags that take one value, so the value reaches the check that names
    the flag and says what it expects, instead of argparse's "expected one argument"."""
    takes_one = {o for a in parser._actions if a.nargs is None for o in a.option_strings}
    out: list[str] = []
    for a in argv:
        if out and NEGATIVE.match(a) and out[-1] in takes_one:
            out[-1] = f"{out[-1]}={a}"
        else:
            out.append(a)
    return out


def add_dataclass_arguments(parser, cls, *, skip=(), defaults_to_none: bool = False):
    """Add one ``--flag`` per field of the dataclass ``cls`` to an argparse parser (or argument group).

    Flags are the field names with dashes (``max_steps`` -> ``--max-steps``), help is the field's comment,
    types come from the annotation: bools become ``--x/--no-x``, tuples take several values, dict fields are
    skipped. With ``defaults_to_none`` every default is None, so ``dataclass_from_args`` can tell the flags the
    user gave from the rest (e.g. to let them override a config file or a preset).
    """
    docs = field_help(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        ann = str(f.type).replace(" ", "")
        base = ann.replace("|None", "").replace("None|", "")
        if base.startswith("dict"):
            continue
        default = None if defaults_to_none else (f.default if f.default is not dataclasses.MISSING else None)
        shown = f.default if f.default is not dataclasses.MISSING else None
        if shown is None and base == "bool":  # a switch left unset is decided by the run ("auto")
            shown = "auto"
        kw = dict(default=default, help=f"{docs.get(f.name, '')} (default: {shown})".replace("%", "%%"))
        flag = "--" + f.name.replace("_", "-")
        if base == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif base.startswith("tuple["):
            inner = base[len("tuple["):-1].split(",")
            parser.add_argument(flag, nargs=len(inner), type=_TYPES.get(inner[0], str), metavar=inner[0].upper(), **kw)
        else:
            parser.add_argument(flag, type=_TYPES.get(base, str), metavar=base.upper(), dest=f.name, **kw)
    return parser


_TYPES = {"int": int, "float": float, "str": str}


def dataclass_from_args(cls, args, base: dict | None = None, *, skip=()):
    """Build ``cls`` from parsed flags: fields start from ``base`` (a config file's dict, a preset's), and flags
    that were given (not None) override them."""
    values = dict(base or {})
    for f in dataclasses.fields(cls):
        if f.name not in skip and getattr(args, f.name, None) is not None:
            values[f.name] = getattr(args, f.name)
    return cls.from_dict(values) if hasattr(cls, "from_dict") else cls(**values)


def load_config_file(path) -> dict:
    """Read a YAML (.yaml/.yml) or JSON config file into a dict, e.g. ``{"model": {...}, "train": {...}}`` or the
    flat fields of one dataclass; the caller splits it with ``TrainConfig.from_dict`` / ``ModelConfig.from_dict``."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {str(p)!r}: no such file")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"config file {str(p)!r}: byte {data[e.start]:#04x} at offset {e.start} (line {line}) is "
                         f"not valid UTF-8; expected UTF-8 text") from None
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml  # optional dependency: only YAML config files need it
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"config file {str(p)!r}: not valid YAML ({e})") from None
    elif p.suffix.lower() == ".json":
        data = loads(text, what=f"config file {str(p)!r}")  # qkv's one JSON reader: depth bounded, errors one line
    else:
        raise ValueError(f"config file {str(p)!r}: expected a .yaml, .yml or .json file")
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(p)!r}: expected a mapping of field names to values, got {type(data).__name__}")
    return data
