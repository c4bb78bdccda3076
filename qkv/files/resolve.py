"""Where a checkpoint lives: a local folder, or a Hugging Face hub id ("org/name") resolved through
``huggingface_hub``'s cache (downloading where the network allows).

A path that exists always wins over an id of the same spelling. The hub's own environment variables decide the
rest, read at each call (so they work when set after import): ``HF_HUB_CACHE`` (or ``HF_HOME``) says where the
cache is, ``HF_HUB_OFFLINE=1`` forbids the network, so an id not in the cache is a one-line error.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# What qkv reads from a model repository: configs, weights (safetensors, else the .bin files), tokenizer files.
_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.spm", "*.txt", "*.tiktoken", "*.jinja"]


def is_repo_id(name: str) -> bool:
    """"org/name" in the hub's spelling (letters, digits, '-', '_', '.'), without '..' or a leading dot."""
    return bool(_REPO_ID.match(name)) and ".." not in name


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def cache_dir() -> str:
    """The hub cache folder the environment names (HF_HUB_CACHE, else HF_HOME/hub, else the default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                     os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return os.path.join(home, "hub")


def resolve(path_or_id, *, what: str = "checkpoint") -> Path:
    """A local folder (or file) as it is, or the snapshot folder of hub id ``path_or_id`` ("org/name").

    Raises FileNotFoundError (one line) when the path does not exist and is no hub id, or when the id is not in the
    cache and cannot be downloaded (offline, no network, no such repository)."""
    p = Path(path_or_id)
    if p.exists():
        return p
    name = str(path_or_id)
    if not is_repo_id(name):
        raise FileNotFoundError(f"{name}: no such {what} folder (nor a Hugging Face hub id like 'org/name')")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(f"{name}: not a local folder, and reading hub ids needs huggingface_hub "
                                f"(pip install huggingface_hub)") from None
    offline = _offline()
    kwargs = dict(cache_dir=cache_dir(), local_files_only=offline)
    try:
        folder = Path(snapshot_download(name, allow_patterns=_PATTERNS, **kwargs))
        if not offline and not any(folder.glob("*.safetensors")) and (folder / "config.json").is_file():
            folder = Path(snapshot_download(name, allow_patterns=["*.bin"], **kwargs))  # older checkpoints
    except Exception as e:  # the hub's errors (offline, not cached, not found, no network) in one line
        where = f"the Hugging Face cache ({kwargs['cache_dir']})"
        if offline:
            raise FileNotFoundError(f"{name}: not a local folder, and not in {where}; HF_HUB_OFFLINE=1 forbids "
                                    f"downloading it") from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(f"{name}: not a local folder, not in {where}, and the download failed "
                                f"({type(e).__name__}: {reason})") from None
    return folder
