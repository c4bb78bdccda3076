"""The one JSON reader for every file qkv reads (configs, indexes, manifests, trainer state, tokenizer settings,
safetensors headers) and for JSON text from elsewhere (an HTTP body, a line of a .jsonl file).

Decided once, here:
- encoding: UTF-8; a leading byte-order mark (EF BB BF, as some Windows editors write) is accepted and dropped;
- size: a file over ``MAX_BYTES`` is refused before it is read (qkv's own JSON files are kilobytes);
- depth: objects and lists nested deeper than ``MAX_DEPTH`` are refused (qkv's deepest file, a trainer state, nests
  about 10 levels); Python's parser would otherwise raise RecursionError, naming nothing;
- errors: one line, ValueError (FileNotFoundError for a missing file), naming the file, what is wrong and where.
"""
from __future__ import annotations

import json
from pathlib import Path

MAX_BYTES = 64 * 2**20
MAX_DEPTH = 64
_BOM = "\ufeff"
_KIND = {dict: "an object {...}", list: "a list [...]", str: "a string"}


def json_kind(value) -> str:
    """How a JSON value is called in messages: "an object", "a list", "a number", ..."""
    return {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
            bool: "a boolean", type(None): "null"}.get(type(value), type(value).__name__)


def _depth(value) -> int:
    """Nesting depth of a parsed value (a scalar is 0, [] is 1), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def loads(text: str | bytes, *, what: str, expect: type | tuple | None = None, max_depth: int = MAX_DEPTH):
    """The value of JSON ``text`` (bytes are read as UTF-8), errors naming ``what`` (a file, "the request body"):
    not UTF-8 (the byte and its offset), not JSON (line and column), nested deeper than ``max_depth``, or not of the
    ``expect``ed type. A leading byte-order mark is dropped."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ValueError(f"{what}: byte {text[e.start]:#04x} at offset {e.start} is not valid UTF-8; expected "
                             f"JSON text in UTF-8") from None
    text = text.removeprefix(_BOM)
    try:
        value, too_deep = json.loads(text), False
    except json.JSONDecodeError as e:
        raise ValueError(f"{what}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        value, too_deep = None, True  # deeper than Python's parser goes: certainly deeper than max_depth
    if too_deep or _depth(value) > max_depth:
        raise ValueError(f"{what}: objects and lists nested more than {max_depth} levels deep; expected a flatter "
                         f"JSON file (a damaged or hostile one?)")
    if expect is not None and not isinstance(value, expect):
        kinds = expect if isinstance(expect, tuple) else (expect,)
        wanted = " or ".join(_KIND.get(k, k.__name__) for k in kinds)
        raise ValueError(f"{what}: holds {json_kind(value)}; expected {wanted}")
    return value


def read_json(path, *, expect: type | tuple | None = dict, what: str | None = None, max_bytes: int = MAX_BYTES):
    """A JSON file's value (``loads`` on its bytes), with the file's name in every error: missing, not a regular
    file, larger than ``max_bytes``, not UTF-8, not valid JSON, too deep, or not of the ``expect``ed type (a config
    must be an object, not a list; None accepts any value)."""
    p = Path(path)
    name = what or str(p)
    if not p.is_file():
        raise FileNotFoundError(f"{name}: no such file" if not p.exists() else f"{name}: not a file")
    size = p.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{name}: {size} bytes, more than the {max_bytes} a JSON file qkv reads may hold")
    return loads(p.read_bytes(), what=name, expect=expect)
