"""The Task record: everything the training loop needs to know about what it trains, in one place per task.

The loop never asks which task it runs: it calls ``task.prepare`` for data (files checked, tokenizer chosen or
trained, the model config following its vocabulary, batches), ``task.loss`` to wrap the model (batch -> sums),
``task.footprint`` for the memory check, ``task.metrics`` for evaluation and ``task.eval_callback`` for extra
metrics such as translation's BLEU. A new task (e.g. classification) is a subclass registered in ``TASKS``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from .. import data as qd
from .batches import TaskData
from .loss import TaskLoss

log = logging.getLogger("qkv.train")


@dataclass
class Footprint:
    """What one micro-batch of a task holds, for the memory check: ``tokens`` positions with logits of ``width``
    entries each, ``input_bytes`` of inputs; ``what`` names the flags that set it."""
    tokens: int
    what: str
    width: int
    width_name: str
    input_bytes: int


def perplexity(nll: float) -> float:
    return math.exp(nll) if nll < 700 else float("inf")


class Task:
    """One training task. Subclasses set the class attributes and implement ``load`` and ``footprint``."""
    name: str = ""
    loss: type[TaskLoss] = TaskLoss  # wraps the model: batch -> LossSums
    tokenizer: str | None = "char"  # the tokenizer type trained on --data when none is given; None: reads no text
    tokenizer_kinds: tuple[str, ...] = ("bpe", "char")  # types this task may train (--tokenizer-type)
    specials: bool = True  # the trained tokenizer has special tokens (pad, bos, eos, unk, mask)
    sentences: bool = False  # text comes as sentences (BPE puts a space before each) rather than as one flow
    special_ids: tuple[str, ...] = ("pad_token_id", "bos_token_id", "eos_token_id")  # config fields following it
    row_batches: bool = True  # batch_size counts rows, split over the processes (False: a token budget)
    data_folders: bool = False  # --data / --val-data may be folders
    fixed_shapes: bool = False  # every training batch has the same shape (so compiled code is compiled once)
    uses_block_size: bool = False  # text is cut to block_size tokens (the loop resolves its default)

    # -- data --------------------------------------------------------------------------------------------------
    def prepare(self, model_config, cfg, tokenizer=None) -> TaskData:
        """Read, tokenize and batch ``cfg.data``; the vocabulary size (and special ids) of the model config follow
        the tokenizer's. Raises ValueError / FileNotFoundError naming the file and what was expected."""
        self.check_paths(cfg)
        if self.tokenizer is not None:
            if tokenizer is None:
                tokenizer = qd.Tokenizer.load(cfg.tokenizer) if cfg.tokenizer else self.train_tokenizer(cfg)
            model_config = self.follow_tokenizer(model_config, tokenizer)
        train, val = self.load(model_config, cfg, tokenizer)
        return TaskData(self, train, val, tokenizer, model_config)

    def check_paths(self, cfg) -> None:
        if cfg.data is None:
            raise ValueError("data: no training data given; pass data= (a text file for language models)")
        for name in ("data", "data_tgt", "val_data", "val_data_tgt"):
            path, flag = getattr(cfg, name), f"--{name.replace('_', '-')}"
            if path is not None and not Path(path).exists():
                raise FileNotFoundError(f"{name}={str(path)!r}: no such file or folder ({flag})")
            if path is not None and not self.data_folders and not Path(path).is_file():
                raise ValueError(f"{name}={str(path)!r} ({flag}): is a folder; expected a text file")
        if cfg.val_data_tgt is not None and cfg.val_data is None:
            raise ValueError(f"val_data_tgt={cfg.val_data_tgt!r} (--val-data-tgt) was given without --val-data, its "
                             f"source side")

    def load(self, model_config, cfg, tokenizer) -> tuple[object, object]:
        """(the endless train stream, a function giving a fresh iterator of validation batches, or None)."""
        raise NotImplementedError

    # -- tokenizer ---------------------------------------------------------------------------------------------
    def tokenizer_texts(self, cfg, kind: str):
        """The files (or an iterator of texts) the default tokenizer is trained on."""
        return [cfg.data]

    def train_tokenizer(self, cfg):
        """Train ``cfg.tokenizer_type`` ("auto": this task's default) on the task's texts. BPE: at most 8000 tokens,
        digits split one by one, a space before every sentence for sentence tasks (so a word is the same token at
        its start); flowing text stays as it is. Characters: nanoGPT's vocabulary (plus specials if the task needs
        them)."""
        kind = self.tokenizer if cfg.tokenizer_type == "auto" else cfg.tokenizer_type
        if kind not in self.tokenizer_kinds:
            raise ValueError(f"tokenizer_type={kind!r} (--tokenizer-type) is not for a {self.name} model; expected "
                             f"one of {', '.join(map(repr, self.tokenizer_kinds))}"
                             + (" (wordpiece is for masked LMs: it lowercases and does not give the text back)"
                                if kind == "wordpiece" else ""))
        texts = self.tokenizer_texts(cfg, kind)
        specials = None if self.specials else ()
        if kind == "bpe":
            return qd.train_bpe(texts, vocab_size=8000, individual_digits=True, prefix_space=self.sentences,
                                specials=specials)
        if kind == "wordpiece":
            return qd.train_wordpiece(texts, vocab_size=8000, lowercase=True)
        return qd.CharTokenizer.train(texts, specials=specials)

    def follow_tokenizer(self, model_config, tokenizer):
        """``model_config`` with the tokenizer's vocabulary size and, for ``special_ids``, its special ids."""
        roles = {"pad_token_id": "pad_id", "bos_token_id": "bos_id", "eos_token_id": "eos_id",
                 "decoder_start_token_id": "bos_id"}
        changes = {}
        if tokenizer.vocab_size != model_config.vocab_size:
            changes["vocab_size"] = tokenizer.vocab_size
        for field in self.special_ids:
            i = getattr(tokenizer, roles[field])
            if i is not None and getattr(model_config, field) != i:
                changes[field] = i
        if changes:
            log.info("model config follows the tokenizer: %s", changes)
            model_config = model_config.replace(**changes)
        return model_config

    # -- memory, metrics ---------------------------------------------------------------------------------------
    def footprint(self, model_config, cfg) -> Footprint:
        raise NotImplementedError

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """Validation metrics from the sums over every validation batch and process: loss and perplexity per
        target, and the argmax's accuracy."""
        count = max(sums["count"], 1)
        nll = sums["nll"] / count
        return {"val_loss": nll, "val_ppl": perplexity(nll), "val_acc": sums["correct"] / count}

    def eval_callback(self, cfg, tokenizer):
        """The extra metrics this task reports at each evaluation when the caller gives none: (model, step) -> dict."""
        return None

    def __repr__(self) -> str:
        return f"<task {self.name}>"
