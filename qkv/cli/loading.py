"""Where a command's model comes from: the --preset / --checkpoint / --hf flags, the folders they name, and the one
place the qkv-or-Hugging-Face fork is made (``load_source``): a Hugging Face folder brings its tokenizer's own
template and its generation_config.json, a qkv checkpoint the rules of qkv's training (``qkv.tasks.seq2seq``)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import qkv

from ..checkpoint import latest_checkpoint
from ..data import Tokenizer
from ..files import inside, resolve
from ..tasks.seq2seq import source_ids
from .common import CLIError


def model_source_args(parser: argparse.ArgumentParser) -> None:
    """--preset / --checkpoint / --hf: a model, its weights not needed (info)."""
    g = parser.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", help="a named configuration (see `qkv info --list`)")
    g.add_argument("--checkpoint", help="a qkv model folder (config.json + model.safetensors), or a training "
                                        "output folder")
    g.add_argument("--hf", help="a local Hugging Face checkpoint folder")


def source_args(p: argparse.ArgumentParser) -> None:
    """--checkpoint / --hf: a trained model with its tokenizer (generate, translate, eval, explore)."""
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--checkpoint", help="a qkv model folder or training output folder (with tokenizer/)")
    g.add_argument("--hf", help="a Hugging Face folder or hub id (org/name) with its tokenizer (tokenizer.json, "
                                "spiece.model, source.spm + vocab.json or sentencepiece.bpe.model)")


def load_model(args):
    """The model --preset, --hf or --checkpoint names."""
    if getattr(args, "preset", None):
        return qkv.build(qkv.preset(args.preset))
    if getattr(args, "hf", None):
        return qkv.from_hf(args.hf)
    return qkv.load(model_folder(args.checkpoint))


def model_folder(path):
    """A model folder, or a training output folder (its ``latest`` file names the newest checkpoint), or the
    demo's output folder (training output under train/)."""
    p = Path(path)
    if not p.is_dir():
        raise CLIError(f"--checkpoint {path}: " + ("no such folder" if not p.exists() else "is a file; expected a qkv "
                                                   "model folder or a training output folder"))
    for run in (p, p / "train"):
        named = latest_checkpoint(run)  # 'latest' may only name checkpoints/step-N inside the run folder
        if named is not None:
            return named
    if (p / "config.json").is_file():
        return p
    raise CLIError(f"--checkpoint {path}: not a qkv model folder (no config.json) nor a training output folder "
                   f"(no 'latest' file)")


def tokenizer_for(model_dir):
    """The tokenizer saved beside a checkpoint (training writes it to tokenizer/)."""
    folder = model_dir / "tokenizer"
    if not folder.is_dir():
        raise CLIError(f"{model_dir}: no tokenizer/ folder beside the weights; pass token ids or train with qkv")
    return Tokenizer.load(inside(model_dir, folder, what="tokenizer folder"))


@dataclass
class Source:
    """A model, its tokenizer and where they came from. ``hf_folder``: the --hf folder (None for a qkv checkpoint):
    its texts take the tokenizer's own template (transformers' ``tokenizer(text)``) and its generation_config.json
    is what the decoding flags override; a qkv model's source is the sentence then EOS, as it was trained."""
    model: object
    tokenizer: object
    hf_folder: Path | None = None

    @property
    def hf(self) -> bool:
        return self.hf_folder is not None

    def source_ids(self, text: str) -> list[int]:
        """A translation model's input for one sentence."""
        if self.hf:
            return self.tokenizer.encode(text, add_special=True)
        return source_ids(self.tokenizer, text)


def load_source(args) -> Source:
    """The model and tokenizer of --checkpoint (a qkv or training folder) or --hf (a Hugging Face folder or hub id,
    with its tokenizer: tokenizer.json or SentencePiece files)."""
    if getattr(args, "hf", None):
        folder = resolve(args.hf)  # a local path, or a hub id resolved through huggingface_hub's cache
        model = qkv.from_hf(folder)
        try:
            tok = Tokenizer.load(folder)
        except FileNotFoundError as e:
            raise CLIError(f"--hf {args.hf}: no tokenizer in the folder ({e})") from None
        return Source(model, tok, folder)
    folder = model_folder(args.checkpoint)
    return Source(qkv.load(folder), tokenizer_for(folder))


def model_and_tokenizer(args) -> tuple:
    """(model, tokenizer) of ``load_source``."""
    source = load_source(args)
    return source.model, source.tokenizer
