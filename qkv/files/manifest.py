"""qkv's own folders carry ``manifest.json``: the sha256 of every file, written last and checked on load. It
detects damage (a truncated copy, a flipped byte), not malice: whoever can write a folder can rewrite it."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .jsonfile import read_json
from .paths import child, inside, write_atomic

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "qkv-manifest/1"


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder, names=None) -> Path:
    """Write ``folder/manifest.json``: the sha256 of the files ``names`` (default: every file under ``folder``, the
    manifest itself aside), under a temporary name renamed into place."""
    root = Path(folder)
    if names is not None:
        files = [root / n for n in names]
    else:
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST_FILE
                       and not p.name.startswith(f".{MANIFEST_FILE}"))
    manifest = {"format": MANIFEST_FORMAT, "algorithm": "sha256",
                "files": {p.relative_to(root).as_posix(): sha256(p) for p in files}}
    return write_atomic(root / MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def verify_manifest(folder, *, required: bool = False, must_list: tuple[str, ...] = ()) -> bool:
    """Check every file listed in ``folder/manifest.json`` against its sha256. Returns False when there is no
    manifest (and ``required`` is False); raises ValueError naming the first file that is missing or changed."""
    root = Path(folder)
    m = root / MANIFEST_FILE
    if not m.exists() and not m.is_symlink():
        if required:
            raise ValueError(f"{root}: {MANIFEST_FILE} is missing; a qkv checkpoint carries the sha256 of its files")
        return False
    manifest = read_json(inside(root, m, what=MANIFEST_FILE))
    files = manifest.get("files")
    if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
        raise ValueError(f"{m}: format {manifest.get('format')!r}; expected {MANIFEST_FORMAT!r} with a 'files' object")
    for name in must_list:
        if name not in files:
            raise ValueError(f"{m}: does not list {name}; expected every file of the folder")
    for rel, digest in files.items():
        p = child(root, rel, what=f"{m} entry")
        if not p.is_file():
            raise ValueError(f"{p}: listed in {MANIFEST_FILE} but missing; the folder is incomplete")
        if sha256(p) != digest:
            raise ValueError(f"{p}: its content does not match the sha256 in {MANIFEST_FILE}; the file was damaged "
                             f"or changed after it was written")
    return True
