"""Starting a run from a pretrained checkpoint (``--init``): fine-tuning, or continued pre-training.

Unlike ``--resume``, which continues a run with its optimizer, schedule and data position, ``--init`` takes only
the weights, the model config and the tokenizer of a checkpoint, and starts a new run on them. The checkpoint may be
a qkv model folder or run folder (its latest checkpoint), a Hugging Face folder or hub id (``qkv.from_hf``), or an
RWKV-LM ``.pth`` file (``qkv.from_rwkv``; it carries no tokenizer, so ``--tokenizer`` names one).

The run's model config is the checkpoint's; a task may only add what it trains on top (a classification head:
``num_labels`` and the label names) and follow the tokenizer's special ids. The weights the checkpoint holds are
copied by name; the ones it lacks (a new head) keep their fresh initialisation, and both lists are logged.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn

from .. import checkpoint as ckpt
from .. import files
from ..config import ModelConfig
from ..data import Tokenizer
from ..hub import from_hf, from_rwkv
from ..hub.hf import hf_config
from ..models import load
from ..models.common import load_config
from ..models.registry import family_of

log = logging.getLogger("qkv.train")

# Fields a task may set on the checkpoint's config: the head it trains and the special ids that follow the tokenizer.
MAY_CHANGE = ("num_labels", "extra", "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")


@dataclass
class Pretrained:
    """What ``--init`` names, read: its format ("qkv", "hf" or "rwkv"), the path read, the model config, the
    tokenizer (None for an RWKV file) and, for RWKV (whose config comes from its weights), the model itself."""
    source: str
    format: str
    path: Path
    config: ModelConfig
    tokenizer: object | None
    model: nn.Module | None = None

    def record(self) -> dict:
        """Where the run started from, as its config.json keeps it (``extra["init"]``)."""
        return {"source": self.source, "format": self.format}


def pretrained(source, *, tokenizer: str | None = None, tokenizer_type: str = "auto", src_lang: str | None = None,
               tgt_lang: str | None = None) -> Pretrained:
    """Read the config and tokenizer of ``source`` (weights later, by ``load_into``). ``tokenizer``: a tokenizer
    folder, allowed only for a checkpoint that carries none (RWKV); ``tokenizer_type`` must stay "auto".
    ``src_lang`` / ``tgt_lang``: the language codes a multilingual tokenizer (mBART) puts around the source and
    target (default: the folder's tokenizer_config.json)."""
    flag = f"init={str(source)!r} (--init)"
    if tokenizer_type != "auto":
        raise ValueError(f"tokenizer_type={tokenizer_type!r} (--tokenizer-type): with {flag} the tokenizer is the "
                         f"checkpoint's; drop --tokenizer-type")
    p = Path(source)
    if p.is_file():  # an RWKV-LM .pth: its config comes from the tensors, so it is read whole here
        model = from_rwkv(p)
        if tokenizer is None:
            raise ValueError(f"{flag}: an RWKV-LM file carries no tokenizer; pass --tokenizer FOLDER_OR_JSON (the "
                             f"RWKV release's tokenizer, e.g. its 20B_tokenizer.json)")
        return Pretrained(str(source), "rwkv", p, model.config, Tokenizer.load(tokenizer), model)
    fmt, folder, config = _locate(p, source, flag)
    if tokenizer is not None:
        raise ValueError(f"tokenizer={tokenizer!r} (--tokenizer): with {flag} the tokenizer is the checkpoint's "
                         f"(its ids are the ones the weights learned); drop --tokenizer")
    try:
        tok = Tokenizer.load(folder / "tokenizer" if fmt == "qkv" else folder)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{flag}: no tokenizer in the checkpoint ({e})") from None
    for name, code in (("src_lang", src_lang), ("tgt_lang", tgt_lang)):
        if code is None:
            continue
        languages = getattr(tok, "languages", [])
        if code not in languages:
            raise ValueError(f"{name}={code!r} (--{name.replace('_', '-')}): not a language of the {flag} "
                             f"tokenizer; known: {', '.join(languages) or 'none'}")
        getattr(tok, f"set_{name}")(code)
    if fmt == "hf" and family_of(config).has_source and not _trains_like_transformers(tok, config):
        raise ValueError(f"{flag}: fine-tuning this Hugging Face encoder-decoder is not supported: its tokenizer "
                         f"has no target-side encoding qkv can train with (supported: Marian, T5, mBART folders)")
    return Pretrained(str(source), fmt, folder, config, tok)


def _trains_like_transformers(tok, config: ModelConfig) -> bool:
    """A Hugging Face encoder-decoder trains on its own convention (see qkv.data.parallel.ParallelDataset) when its
    tokenizer encodes targets on their side and the decoder's first token is known: the config's
    decoder_start_token_id, or (mBART) the last label token."""
    encode_target = getattr(tok, "encode_target", None)
    if not callable(encode_target):
        return False
    if config.decoder_start_token_id is None and not getattr(tok, "decoder_starts_from_last_label", False):
        return False
    try:
        encode_target("a")
    except ValueError:
        return False
    return True


def _locate(p: Path, source, flag: str):
    """(format, folder, config) of a qkv model folder, a qkv run folder or a Hugging Face folder / hub id."""
    if p.is_dir():
        latest = ckpt.latest_checkpoint(p)
        folder = latest if latest is not None else p
        config_file = folder / "config.json"
        if config_file.is_file() and "family" in files.read_json(files.inside(folder, config_file,
                                                                              what="config.json")):
            return "qkv", folder, load_config(folder)
    elif not p.exists():
        if not files.is_repo_id(str(source)):
            raise FileNotFoundError(f"{flag}: no such file or folder (nor a Hugging Face hub id like 'org/name')")
    folder = files.resolve(source)
    return "hf", folder, hf_config(folder)


def check_config(pre: Pretrained, config: ModelConfig) -> None:
    """Refuse a run whose model config differs from the checkpoint's beyond MAY_CHANGE, naming the fields (e.g. a
    tokenizer of another size would change vocab_size)."""
    changed = [f.name for f in fields(config)
               if f.name not in MAY_CHANGE and getattr(pre.config, f.name) != getattr(config, f.name)]
    diff = [f"{n}: {getattr(pre.config, n)!r} (checkpoint) != {getattr(config, n)!r} (this run)" for n in changed]
    if diff:
        raise ValueError(f"init={pre.source!r} (--init): the run would change the checkpoint's architecture: "
                         + "; ".join(diff))


def load_into(model: nn.Module, pre: Pretrained) -> None:
    """Copy the checkpoint's weights into ``model`` (built from the run's config) by name. A weight of another shape
    is refused; the model's weights the checkpoint lacks keep their initialisation (logged), the checkpoint's that the
    model lacks (a head this task does not train) are left out (logged)."""
    if pre.model is not None:
        source = pre.model
    elif pre.format == "qkv":
        source = load(pre.path)
    else:
        num_labels = model.config.num_labels if model.config.num_labels != pre.config.num_labels else None
        source = from_hf(pre.path, num_labels=num_labels)  # the folder's pooler with a new classifier
    fresh, dropped = transfer(source.state_dict(), model)  # from_hf logs the head weights it started afresh
    log.info("initialised from %s (%s)%s%s", pre.source, pre.format,
             f"; new, not in the checkpoint: {', '.join(fresh)}" if fresh else "",
             f"; left out of the checkpoint: {', '.join(dropped)}" if dropped else "")


def transfer(state: dict[str, torch.Tensor], model: nn.Module) -> tuple[list[str], list[str]]:
    """Copy ``state`` into ``model``'s tensors of the same name; returns (the model's names ``state`` lacks, the names
    of ``state`` the model lacks). ValueError names a tensor whose shape differs."""
    own = model.state_dict()
    for name in sorted(set(own) & set(state)):
        if own[name].shape != state[name].shape:
            raise ValueError(f"weight {name!r} is {tuple(state[name].shape)} in the checkpoint but "
                             f"{tuple(own[name].shape)} in the model to train")
    with torch.no_grad():
        for name in set(own) & set(state):
            own[name].copy_(state[name])
    return sorted(set(own) - set(state)), sorted(set(state) - set(own))
