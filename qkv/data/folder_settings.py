"""A Hugging Face tokenizer folder's settings (tokenizer_config.json, special_tokens_map.json) and the special-token
roles they name: read by both tokenizer formats of such a folder, tokenizer.json (``qkv.data.tokenizer``) and
SentencePiece files (``qkv.data.sentencepiece``)."""
from __future__ import annotations

from pathlib import Path

from qkv.files import inside, read_json


def token_of(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


def read_folder_json(folder: Path, name: str) -> dict:
    """A folder's optional JSON file (tokenizer_config.json, ...): {} when absent, errors naming the file; a link
    leading out of the folder is refused (``qkv.files.inside``)."""
    path = folder / name
    return read_json(inside(folder, path, what=name)) if path.is_file() else {}


def folder_settings(folder: Path) -> dict:
    """tokenizer_config.json with special_tokens_map.json's entries filled in where the config lacks them."""
    config = read_folder_json(folder, "tokenizer_config.json")
    for key, value in read_folder_json(folder, "special_tokens_map.json").items():
        config.setdefault(key, value)
    return config


def roles_of(config: dict, defaults: dict[str, str]) -> dict[str, str]:
    roles = dict(defaults)
    for role in ("pad", "bos", "eos", "unk", "mask", "cls", "sep"):
        if f"{role}_token" in config:
            token = token_of(config[f"{role}_token"])
            if token is None:
                roles.pop(role, None)
            else:
                roles[role] = token
    return roles


def folder_roles(folder: Path, tokenizer_json: Path) -> dict[str, str] | None:
    """Special roles a tokenizer.json folder names in tokenizer_config.json / special_tokens_map.json, keeping
    those whose token the vocabulary has; None when the folder names none (the caller then recognises them)."""
    roles = roles_of(folder_settings(folder), {})
    if not roles:
        return None
    from tokenizers import Tokenizer as HF  # optional dependency: only a tokenizer.json folder needs it
    try:
        vocab = HF.from_file(str(tokenizer_json)).get_vocab(with_added_tokens=True)
    except Exception:
        return None  # the loader reports what is wrong with the file
    return {r: t for r, t in roles.items() if t in vocab} or None
