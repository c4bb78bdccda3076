"""The files README.md's commands assume a reader has, made here from local sources so that tests/test_readme_run.py
can run every line offline: the text files (input.txt, sentences.txt, train.tsv, ...), a BERT and a MiniLM folder
(path/to/bert, path/to/minilm, bert-folder) and a huggingface_hub cache (``models--org--name/snapshots/<rev>/`` +
``refs/main``) holding a tiny random-weight folder, built from a transformers config, for every hub id the README
names. Nothing is downloaded: the hub ids are served with ``HF_HUB_OFFLINE=1``.
"""
from __future__ import annotations

import hashlib
import os
import random
import shutil
from pathlib import Path

from tests import peer_folders as pf

SHAKESPEARE = Path("/work/shared/data/tinyshakespeare/input.txt")
REVISION = "0123456789abcdef0123456789abcdef01234567"

# hub id -> how its stand-in folder is built (the shape of the real one, tiny and random). Positions as the real
# models have them where the README's defaults reach past 64 tokens.
HUB_FOLDERS = {
    "Helsinki-NLP/opus-mt-en-es": pf.marian_folder,
    "Helsinki-NLP/opus-mt-en-de": pf.marian_folder,
    "google-t5/t5-small": pf.t5_folder,
    "facebook/mbart-large-50-many-to-many-mmt": pf.mbart50_folder,
    "openai-community/gpt2": lambda f: pf.gpt2_folder(f, positions=1024),
    "meta-llama/Llama-3.2-1B": lambda f: pf.llama3_folder(f, positions=1024),
    "Qwen/Qwen3-0.6B": lambda f: pf.qwen3_folder(f, positions=1024),
    "sentence-transformers/all-MiniLM-L6-v2": pf.bert_folder,
}


def hub_cache(cache: Path, repo_id: str, source: Path) -> Path:
    """``source``'s files as ``repo_id`` in a huggingface_hub cache: blobs named by their sha256, the snapshot's
    files relative symlinks to them, refs/main naming the revision. Returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    for d in (repo / "refs", snapshot, repo / "blobs"):
        d.mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    for f in sorted(source.iterdir()):
        if f.is_file():
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            shutil.copyfile(f, repo / "blobs" / digest)
            os.symlink(os.path.join("..", "..", "blobs", digest), snapshot / f.name)
    return snapshot


def build_hub(cache: Path, repo_ids, scratch: Path) -> None:
    """Every id of ``repo_ids`` into the cache at ``cache`` (KeyError: an id HUB_FOLDERS has no builder for)."""
    for repo_id in sorted(set(repo_ids)):
        folder = scratch / repo_id.replace("/", "--")
        HUB_FOLDERS[repo_id](folder)
        hub_cache(cache, repo_id, folder)


def _text() -> str:
    """tinyshakespeare where the shared data holds it, else generated lines of made-up words."""
    if SHAKESPEARE.is_file():
        return SHAKESPEARE.read_text(encoding="utf-8")
    return "\n".join(pf.corpus(n=4000, seed=7)) + "\n"


def _lines(path: Path, lines) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _labelled(n: int, seed: int) -> list[str]:
    """text<TAB>label lines of three classes, after a header line (the README's .tsv format)."""
    rng, words = random.Random(seed), pf.corpus(n=n, seed=seed)
    return ["text\tlabel"] + [f"{w}\t{rng.choice(['pos', 'neg', 'neutral'])}" for w in words]


def make_files(root: Path) -> None:
    """The input files and local model folders the README's lines name, in ``root`` (the folder they run in)."""
    text = _text()
    (root / "input.txt").write_text(text, encoding="utf-8")
    (root / "more.txt").write_text(text[: len(text) // 4], encoding="utf-8")
    _lines(root / "sentences.txt", ["three hundred twenty-one", "march 5, 1999", "Good morning.", "the red house"])
    for name, seed in (("train.tsv", 1), ("val.tsv", 2), ("test.tsv", 3)):
        _lines(root / name, _labelled(60, seed))
    en, es = pf.corpus(n=64, seed=5), pf.corpus(n=64, seed=6)
    _lines(root / "train.en", en)
    _lines(root / "train.de", es)
    pf.bert_folder(root / "path" / "to" / "bert")
    pf.bert_folder(root / "bert-folder")
    pf.bert_folder(root / "path" / "to" / "minilm")
