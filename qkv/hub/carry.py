"""What ``qkv convert`` keeps besides the weights qkv's model holds, so that a round trip loses nothing it read.

A Hugging Face folder holds more than the tensors a qkv model uses: its tokenizer files, generation and image
preprocessing settings, a config.json with fields qkv has no use for, and tensors no qkv weight holds (BERT's pooler
without a classifier, BertForPreTraining's next-sentence head, buffers older checkpoints saved). A qkv folder
written by ``qkv convert --from-hf`` keeps them beside its own files:

  tokenizer/                the tokenizer files as the folder had them (``qkv.data.Tokenizer.load`` reads them, so
                            ``qkv translate --checkpoint`` works on the converted folder)
  hf/config.json            the folder's config.json
  hf/generation_config.json, hf/preprocessor_config.json   where the folder had them
  hf/unmapped.safetensors   the tensors no qkv weight holds, under their Hugging Face names

and ``qkv convert --checkpoint ... --to-hf`` puts them back: tokenizer and settings files beside the weights, and,
while config.json still ``describes`` the model (its shape unchanged), the unmapped tensors and config.json's other
fields (its ``architectures`` among them). A model whose shape changed since goes out as ``to_hf`` writes it.
Every file is read through ``qkv.files`` (no link out of its folder; safetensors headers checked first).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import files
from .hf_maps import StateDict

# Tokenizer files of Hugging Face folders, all formats transformers and qkv read (fast, SentencePiece, WordPiece,
# byte-level BPE vocab + merges, chat templates).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "vocab.txt", "merges.txt", "spiece.model", "source.spm", "target.spm",
                   "sentencepiece.bpe.model", "tokenizer.model", "chat_template.jinja", "chat_template.json")
SETTINGS_FILES = ("generation_config.json", "preprocessor_config.json")
TOKENIZER_DIR, HF_DIR, UNMAPPED_FILE = "tokenizer", "hf", "unmapped.safetensors"


@dataclass
class Kept:
    """What a conversion carries: files by name (their source paths, checked to lie inside their folder), the source
    config.json, and the tensors no qkv weight holds."""
    tokenizer: dict[str, Path] = field(default_factory=dict)
    settings: dict[str, Path] = field(default_factory=dict)
    hf_config: dict | None = None
    unmapped: StateDict = field(default_factory=dict)

    def summary(self) -> str:
        """One line for the command line: what was kept."""
        parts = []
        if self.tokenizer:
            parts.append(f"tokenizer ({', '.join(sorted(self.tokenizer))})")
        parts += sorted(self.settings)
        if self.unmapped:
            names = sorted(self.unmapped)
            parts.append(f"{len(names)} tensor(s) no qkv weight holds ({', '.join(names[:4])}"
                         f"{', ...' if len(names) > 4 else ''})")
        return "; ".join(parts) or "nothing besides the weights"


def _files(folder: Path, names) -> dict[str, Path]:
    return {n: files.inside(folder, folder / n, what=n) for n in names if (folder / n).is_file()}


# -- reading ------------------------------------------------------------------------------------------------------

def from_hf_folder(path, model) -> Kept:
    """What the Hugging Face folder (or hub id) ``path`` that ``model`` was read from holds besides ``model``'s
    weights: the tensors its converter's export would not write (those equal to one it writes, tied copies older
    checkpoints saved, aside), its tokenizer and settings files and its config.json."""
    from .hf import CONVERTERS, hf_folder  # hf.py imports this module: a top-level import would close a circle
    top, folder = files.resolve(path), hf_folder(path)
    tokenizer = _files(folder, TOKENIZER_FILES) or _files(top, TOKENIZER_FILES)
    hf_config = files.read_json(files.inside(folder, folder / "config.json", what="config.json"))
    conv = CONVERTERS[hf_config["model_type"]]
    exported = conv.state_to_hf(model.state_dict(), model.config)
    return Kept(tokenizer, _files(folder, SETTINGS_FILES) or _files(top, SETTINGS_FILES), hf_config,
                _unmapped(folder, exported))


def _unmapped(folder: Path, exported: StateDict) -> StateDict:
    from .hf import read_weights, weight_files  # hf.py imports this module (a circle at the top level)
    names = set(read_weights(folder, shapes_only=True)) - set(exported)
    if not names:
        return {}
    found: StateDict = {}
    for file in weight_files(folder):  # only the tensors asked for are read from a safetensors file
        if file.suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(file), framework="pt") as f:
                found.update({k: f.get_tensor(k) for k in f.keys() if k in names})
        else:
            found.update({k: v for k, v in files.load_tensor_pickle(file).items() if k in names})
    by_shape: dict[tuple, list[torch.Tensor]] = {}
    for t in exported.values():
        by_shape.setdefault(tuple(t.shape), []).append(t)
    return {k: v for k, v in found.items()  # a copy of an exported weight is re-tied by transformers on load
            if not any(torch.equal(e.to(v.dtype), v) for e in by_shape.get(tuple(v.shape), []))}


def from_qkv_folder(folder) -> Kept:
    """What a qkv model folder keeps (see the module docstring): its tokenizer/ folder's files, whoever wrote them
    (qkv's own qkv_tokenizer.json too: ``write_hf`` takes the ones transformers reads), and hf/."""
    folder = Path(folder)
    tok, hf = folder / TOKENIZER_DIR, folder / HF_DIR
    kept = Kept(_files(files.inside(folder, tok, what=f"{TOKENIZER_DIR}/ folder"),
                       sorted(p.name for p in tok.iterdir())) if tok.is_dir() else {})
    if hf.is_dir():
        files.inside(folder, hf, what=f"{HF_DIR}/ folder")
        kept.settings = _files(hf, SETTINGS_FILES)
        if (hf / "config.json").is_file():
            kept.hf_config = files.read_json(files.inside(hf, hf / "config.json", what=f"{HF_DIR}/config.json"))
        if (hf / UNMAPPED_FILE).is_file():
            kept.unmapped = files.load_safetensors(files.inside(hf, hf / UNMAPPED_FILE, what=UNMAPPED_FILE))
    return kept


# -- writing ------------------------------------------------------------------------------------------------------

def write_qkv(kept: Kept, folder) -> None:
    """Add ``kept`` to the qkv model folder ``folder`` (written by ``model.save``) and list every file in its
    manifest, so ``qkv.load`` checks them too."""
    from safetensors.torch import save_file
    folder = Path(folder)
    for sub, names in ((folder / TOKENIZER_DIR, kept.tokenizer), (folder / HF_DIR, kept.settings)):
        for name, src in names.items():
            sub.mkdir(exist_ok=True)
            shutil.copyfile(src, sub / name)
    if kept.hf_config is not None:
        (folder / HF_DIR).mkdir(exist_ok=True)
        (folder / HF_DIR / "config.json").write_text(json.dumps(kept.hf_config, indent=2))
    if kept.unmapped:
        save_file({k: v.contiguous() for k, v in kept.unmapped.items()}, str(folder / HF_DIR / UNMAPPED_FILE),
                  metadata={"format": "pt"})
    files.write_manifest(folder)


def write_hf(kept: Kept, model, folder) -> tuple[Path, Kept]:
    """``to_hf(model, folder)`` with what ``kept`` holds: the files beside the weights, and the source config.json's
    fields and unmapped tensors while that config.json still describes the model. Returns (the folder, what was
    written of ``kept``)."""
    from .hf import describes, to_hf  # hf.py imports this module (a circle at the top level)
    same = kept.hf_config is not None and describes(kept.hf_config, model.config)
    path = to_hf(model, folder, source_config=kept.hf_config if same else None,
                 unmapped=kept.unmapped if same else None)
    tokenizer = {name: src for name, src in kept.tokenizer.items() if name in TOKENIZER_FILES}
    for name, src in {**tokenizer, **kept.settings}.items():
        shutil.copyfile(src, path / name)
    return path, Kept(tokenizer, kept.settings, kept.hf_config if same else None, kept.unmapped if same else {})
