"""The demo's folder: what it writes there, the marker that says a folder is a demo's own, the guard that keeps
the demo from writing over anything else (as ``qkv train`` refuses an earlier run, ``qkv.checkpoint.earlier_run``),
a full disk said in one line, and the examples a finished demo showed (for ``qkv explore`` to open with)."""
from __future__ import annotations

import errno
import shutil
from contextlib import contextmanager
from pathlib import Path

from . import files
from .checkpoint import LOCK, TRAIN_CONFIG_FILE

# What the demo writes in its folder: all it removes with overwrite=True, and all a folder of its own may hold
# (with the run lock and the marker that says the demo made the folder).
MARKER = ".qkv-demo"
DEMO_FILES = ("data", "train", "results.json", "cross_attention.png", "cross_attention_heads.png", "explorer.html",
              MARKER)


class DiskFull(OSError):
    """The disk filled while the demo wrote a file: its message names the path and what to do."""

    def __str__(self) -> str:
        return str(self.args[0])


@contextmanager
def writing(path):
    """Turn a full disk (ENOSPC, or a quota: EDQUOT) while writing ``path`` into one line naming it and saying what
    to do; other errors pass unchanged."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)) or isinstance(e, DiskFull):
            raise
        raise DiskFull(f"no space left on the disk while writing {path}; free some space there (or pass --out on "
                       f"another disk) and run the demo again: it resumes from its last checkpoint") from None


def is_demo_folder(out: Path) -> bool:
    """Whether ``out`` is a demo's own folder: it holds the demo's marker, or (a folder from before the marker)
    nothing but the demo's files, with a finished demo's results.json or a training run the demo started (its
    train_config.json names ``out/train`` as its folder)."""
    if (out / MARKER).is_file():
        return True
    names = {p.name for p in out.iterdir()} - {LOCK}
    if not names <= set(DEMO_FILES):
        return False
    try:
        record = files.read_json(out / "results.json", expect=None)
        if isinstance(record, dict) and {"exact_greedy", "tokenizer_settings"} <= set(record):
            return True
    except (ValueError, OSError):
        pass
    try:
        config = files.read_json(out / "train" / TRAIN_CONFIG_FILE, expect=None)
        return isinstance(config, dict) and isinstance(config.get("out_dir"), str) and \
            Path(config["out_dir"]).resolve() == (out / "train").resolve()
    except (ValueError, OSError):
        return False


def check_demo_folder(out: Path, overwrite: bool = False, echo=print) -> bool:
    """Refuse an --out the demo would write over: a file, a folder holding a link where the demo writes, or a
    folder with content that is not a demo's own (``is_demo_folder``) unless ``overwrite``. With ``overwrite``, what
    the demo writes there (``DEMO_FILES``) is removed, nothing else. Returns whether the folder is a demo's own
    (to resume or evaluate again)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: a file, expected a folder")
    if not out.is_dir():
        return False
    files.check_no_links(out, DEMO_FILES, what="--out")  # a write or a clean-up through a link reaches elsewhere
    names = sorted(p.name for p in out.iterdir() if p.name != LOCK)
    own = bool(names) and is_demo_folder(out)
    if overwrite:
        present = [n for n in DEMO_FILES if (out / n).exists()]
        if present:
            echo(f"--overwrite: removing what the demo writes in {out}: {', '.join(present)}")
        for n in present:
            shutil.rmtree(out / n) if (out / n).is_dir() else (out / n).unlink()
        return False
    if names and not own:
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        raise ValueError(f"--out {out}: the folder holds files the demo did not write ({shown}); choose a new or "
                         f"empty --out, or pass --overwrite to replace the demo's files there (data/, train/, "
                         f"results.json, the figures, explorer.html; other files are left alone)")
    return own


def saved_examples(folder) -> list[tuple[str, str]]:
    """(label, sentence) of the examples a demo showed in its explorer.html, read from its results.json in
    ``folder`` or the demo folder above it (``folder`` may be the demo's train/ or one of its checkpoints);
    [] when there is none. ValueError naming the file when it is there but not what the demo writes."""
    start = Path(folder)
    place = next((p for p in [start, *list(start.parents)[:3]] if p.is_dir() and is_demo_folder(p)), None)
    record = None if place is None else place / "results.json"
    if record is None or not record.is_file():
        return []
    found = files.read_json(record).get("examples", [])
    if not isinstance(found, list) or not all(isinstance(e, dict) and isinstance(e.get("label"), str) and
                                              isinstance(e.get("source"), str) for e in found):
        raise ValueError(f"{record}: 'examples' is not a list of {{\"label\": text, \"source\": text}}")
    return [(e["label"], e["source"]) for e in found[:20]]
