"""Paths in a folder someone handed qkv: every file it reads there, and every name the folder's own files give
(an index's shards, modules.json, ``latest``), stays inside the folder after resolving links. The one exception,
by name, is the Hugging Face cache, whose ``snapshots/<rev>/`` files link into the same repository's ``blobs/``.
A folder qkv writes into (a run folder) holds no link a write or a clean-up could follow elsewhere.
"""
from __future__ import annotations

import os
from pathlib import Path


def hf_cache_blobs(folder) -> Path | None:
    """The ``blobs/`` folder of the Hugging Face cache repository ``folder`` lies in (``<cache>/models--org--name/
    snapshots/<rev>/...``), or None when ``folder`` is not inside such a snapshot."""
    p = Path(folder).absolute()
    for q in (p, *p.parents):
        if q.parent.name == "snapshots" and q.parent.parent.name.startswith(("models--", "datasets--")):
            return q.parent.parent / "blobs"
    return None


def inside(root, path, *, what: str = "file") -> Path:
    """``path`` (a file or folder qkv is about to read under ``root``) after checking that it, and any link it
    goes through, stays inside ``root``; raises ValueError naming the path and where it leads otherwise. A link
    from a Hugging Face cache snapshot into its repository's ``blobs/`` is allowed. Returns ``path`` as given."""
    root_r = Path(root).resolve()
    p = Path(path)
    target = p.resolve()
    if target == root_r or root_r in target.parents:
        return p
    blobs = hf_cache_blobs(root)
    if blobs is not None and blobs.resolve() in target.parents:
        return p
    how = "is a symbolic link to" if p.is_symlink() or p.absolute() != target else "resolves to"
    raise ValueError(f"{what} {str(p)!r} {how} {str(target)!r}, outside the folder {str(Path(root))!r}; qkv reads "
                     f"only files inside the folder it was given (the Hugging Face cache's snapshots -> blobs links "
                     f"are the one exception)")


def child(root, name, *, what: str) -> Path:
    """``root / name`` for a relative ``name`` read from one of the folder's own files (an index, modules.json):
    absolute names and names climbing out with ``..`` are refused, and so are links leading outside."""
    if not isinstance(name, str) or not name or os.path.isabs(name) or Path(name).is_absolute() \
            or ".." in Path(name).parts:
        raise ValueError(f"{what}: {name!r} is not a relative path inside {str(Path(root))!r}; expected a file name "
                         f"in the folder")
    return inside(root, Path(root) / name, what=what)


def check_no_links(folder, names, *, what: str = "folder") -> None:
    """Refuse a folder qkv is about to write into (a run folder) if any of the entries ``names`` it writes, or
    anything under them, is a symbolic link: a write or a clean-up through a link would change files elsewhere."""
    root = Path(folder)
    for name in names:
        top = root / name
        for p in [top] + ([q for base, dirs, files in os.walk(top) for q in map(Path(base).joinpath, dirs + files)]
                          if top.is_dir() and not top.is_symlink() else []):
            if p.is_symlink():
                raise ValueError(f"{what} {str(root)!r} holds a symbolic link {str(p)!r} -> {os.readlink(p)!r}; "
                                 f"qkv writes only real files in a run folder (remove the link)")


def write_atomic(path, text: str) -> Path:
    """Write text under a temporary name, then rename it over ``path``: readers see the old file or the new one,
    and a link at ``path`` is replaced, never written through."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
