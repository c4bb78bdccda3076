"""Sequence classification (Devlin et al. 2019, sec. 4.1): an encoder's [CLS] position through the pooler and a
linear classifier, trained with cross-entropy on a ``.tsv`` of ``text<TAB>label`` lines.

Labels are strings; the run maps them to ids in sorted order and keeps the list in the model config
(``config.extra["labels"]``), so every checkpoint carries the names its logits stand for. At each evaluation it
reports accuracy, the F1 of each class and their mean (macro-F1), from the confusion matrix summed over the
validation batches and processes.

Glossary: B batch, T tokens, C classes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
import numpy as np
import torch

from ..data import read_lines
from .batches import take
from .loss import LossSums, TaskLoss, token_sums
from .task import Footprint, Task

log = logging.getLogger("qkv.train")

# A first line whose label column is one of these words, and which no other line uses as a label, is a header.
HEADER_LABELS = ("label", "labels", "class", "category", "target")


# -- the file ------------------------------------------------------------------------------------------------------

def read_labelled(path, arg: str = "data") -> list[tuple[str, str]]:
    """The (text, label) pairs of a ``.tsv`` file, one ``text<TAB>label`` per line; blank lines are skipped. A header
    line (label column one of HEADER_LABELS, a word no other line uses as its label) is skipped. ValueError names
    ``file:line`` of a line that is not two tab-separated, non-empty columns."""
    rows, lines = [], read_lines(path, arg)
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 2 or not cols[0].strip() or not cols[1].strip():
            what = f"{len(cols)} tab-separated columns" if len(cols) != 2 else "an empty column"
            raise ValueError(f"{path}:{n}: {what} in {line[:60]!r}; expected text<TAB>label")
        rows.append((n, cols[0], cols[1].strip()))
    if rows and rows[0][2].lower() in HEADER_LABELS and all(r[2] != rows[0][2] for r in rows[1:]):
        rows = rows[1:]
    if not rows:
        raise ValueError(f"{arg}={str(path)!r}: no labelled lines; expected text<TAB>label per line")
    return [(text, label) for _, text, label in rows]


def label_ids(pairs, labels: list[str], path) -> list[int]:
    """Each pair's label id; ValueError names the first label not in ``labels``."""
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted({lab for _, lab in pairs if lab not in index})
    if unknown:
        raise ValueError(f"{path}: labels {unknown[:5]} are not among the model's {len(labels)} labels {labels[:10]}")
    return [index[lab] for _, lab in pairs]


# -- metrics -------------------------------------------------------------------------------------------------------

def confusion_matrix(predicted: torch.Tensor, gold: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts: row = gold class, column = predicted class. predicted, gold: (N,) ids."""
    flat = gold.long() * num_classes + predicted.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def f1_scores(confusion) -> tuple[list[float], float]:
    """(the F1 of each class, their unweighted mean: macro-F1) from a (C, C) confusion matrix (rows gold).

    F1_c = 2 TP / (2 TP + FP + FN): the harmonic mean of precision TP / (TP + FP) and recall TP / (TP + FN),
    written so a class never predicted nor present (0 / 0) scores 0, as scikit-learn's default does."""
    m = torch.as_tensor(confusion, dtype=torch.float64)
    tp = m.diagonal()
    fp, fn = m.sum(0) - tp, m.sum(1) - tp
    denom = 2 * tp + fp + fn
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1e-300), torch.zeros_like(tp))
    return f1.tolist(), float(f1.mean())


def classification_metrics(confusion, labels: list[str], prefix: str = "val_") -> dict[str, float]:
    """Accuracy, ``f1/<label>`` per class and macro-F1 from a confusion matrix."""
    m = torch.as_tensor(confusion, dtype=torch.float64)
    per_class, macro = f1_scores(m)
    out = {f"{prefix}acc": float(m.trace() / m.sum().clamp(min=1)), f"{prefix}macro_f1": macro}
    out.update({f"{prefix}f1/{name}": f for name, f in zip(labels, per_class)})
    return out


# -- batches -------------------------------------------------------------------------------------------------------

@dataclass
class ClassifyBatch:
    """B texts padded on the right: input_ids (B, T), attention_mask (B, T) 1 = token, labels (B,) class ids."""
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def collate(rows: list[list[int]], labels: list[int], pad_id: int) -> ClassifyBatch:
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ClassifyBatch(ids, mask, torch.tensor(labels, dtype=torch.long))


class ClassifyBatches:
    """Training batches: batch ``step`` holds rows drawn from a generator seeded by (seed, step), so a resumed run
    draws the very batches an uninterrupted one would. ``labels``: the class names, id order."""

    def __init__(self, rows, ids, labels, batch_size: int, pad_id: int, *, seed: int):
        self.rows, self.ids, self.labels, self.batch_size, self.pad_id = rows, ids, labels, batch_size, pad_id
        self.seed, self.step = seed, 0

    def __next__(self):
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.step]).generate_state(1)[0]))
        self.step += 1
        pick = torch.randint(len(self.rows), (self.batch_size,), generator=g).tolist()
        return collate([self.rows[i] for i in pick], [self.ids[i] for i in pick], self.pad_id)

    def state_dict(self):
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state):
        self.seed, self.step = int(state["seed"]), int(state["step"])


def in_order(rows, ids, batch_size: int, pad_id: int):
    """Every row once, in file order, ``batch_size`` at a time (evaluation)."""
    for i in range(0, len(rows), batch_size):
        yield collate(rows[i:i + batch_size], ids[i:i + batch_size], pad_id)


def encode_texts(tokenizer, texts, max_len: int, path) -> list[list[int]]:
    """Each text with the tokenizer's specials ([CLS] ... [SEP]), cut to ``max_len`` tokens (kept its last one)."""
    rows, cut = [], 0
    for ids in tokenizer.encode_batch(list(texts), add_special=True):
        if not ids:
            raise ValueError(f"{path}: a text encodes to no tokens")
        if len(ids) > max_len:
            ids, cut = ids[:max_len - 1] + ids[-1:], cut + 1
        rows.append(ids)
    if cut:
        log.warning("%s: %d text(s) longer than %d tokens were cut", path, cut, max_len)
    return rows


# -- the loss and the task -----------------------------------------------------------------------------------------

class ClassifyLoss(TaskLoss):
    def logits(self, batch):
        hidden = self.model(batch.input_ids, batch.attention_mask)  # (B, T, d)
        return self.model.classify(hidden), batch.labels  # (B, C), (B,)

    def sums(self, batch) -> LossSums:
        logits, labels = self.logits(batch)
        s = token_sums(logits, labels, self.eps, accuracy=not self.training)
        if self.rewards and self.training:  # attention picks trained by REINFORCE (TaskLoss.reinforce_terms)
            s.loss = s.loss + self.reinforce_terms(logits, labels)
        if not self.training:  # the confusion matrix, summed over batches and processes like the other sums
            s.extra["confusion"] = confusion_matrix(logits.argmax(-1), labels, logits.shape[-1]).double()
        return s


class Classification(Task):
    """An encoder with its classification head on ``text<TAB>label`` lines; validation from --val-data, else a
    seeded random ``val_fraction`` of the lines."""
    name = "classify"
    loss = ClassifyLoss
    tokenizer = "bpe"
    tokenizer_kinds = ("bpe", "char", "wordpiece")
    sentences = True
    special_ids = ("pad_token_id",)
    uses_block_size = True  # texts are cut to block_size tokens

    def __init__(self, labels: list[str] | None = None):
        self.labels = labels  # the class names, once a run's data named them (metrics are keyed by them)

    def check_paths(self, cfg):
        super().check_paths(cfg)
        for name in ("data_tgt", "val_data_tgt"):
            if getattr(cfg, name) is not None:
                raise ValueError(f"{name} (--{name.replace('_', '-')}) is for translation; the classify task reads "
                                 f"text<TAB>label lines from --data (and --val-data)")

    def tokenizer_texts(self, cfg, kind):
        return iter([t for t, _ in read_labelled(cfg.data)])

    def prepare(self, model_config, cfg, tokenizer=None):
        data = super().prepare(model_config, cfg, tokenizer)
        labels = data.train.labels
        data.model_config = data.model_config.replace(
            num_labels=len(labels), extra={**data.model_config.extra, "labels": labels})
        data.task = type(self)(labels)  # this run's record: its metrics name the classes
        return data

    def load(self, model_config, cfg, tokenizer):
        if tokenizer.pad_id is None:
            raise ValueError("the tokenizer has no padding token; the classify task pads texts to batch them")
        pairs = read_labelled(cfg.data)
        saved = model_config.extra.get("labels") if model_config.num_labels else None
        labels = list(saved) if saved else sorted({lab for _, lab in pairs})
        if len(labels) < 2:
            raise ValueError(f"data={cfg.data!r}: {len(labels)} distinct label(s) {labels}; expected 2 or more")
        val_pairs = read_labelled(cfg.val_data, "val_data") if cfg.val_data else None
        if val_pairs is None:  # hold out a seeded random share of the lines, so a file sorted by label still works
            order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
            n_val = int(len(pairs) * cfg.val_fraction)
            if n_val == 0:
                raise ValueError(f"data={cfg.data!r}: {len(pairs)} lines leave none for validation at val_fraction="
                                 f"{cfg.val_fraction}; pass --val-data or more lines")
            val_pairs, pairs = [pairs[i] for i in order[:n_val]], [pairs[i] for i in order[n_val:]]
        max_len = min(cfg.block_size or model_config.max_positions, model_config.max_positions)
        rows = encode_texts(tokenizer, [t for t, _ in pairs], max_len, cfg.data)
        train = ClassifyBatches(rows, label_ids(pairs, labels, cfg.data), labels, cfg.batch_size, tokenizer.pad_id,
                                seed=cfg.seed)
        v_rows = encode_texts(tokenizer, [t for t, _ in val_pairs], max_len, cfg.val_data or cfg.data)
        v_ids = label_ids(val_pairs, labels, cfg.val_data or cfg.data)
        return train, lambda: take(in_order(v_rows, v_ids, cfg.batch_size, tokenizer.pad_id), cfg.eval_steps)

    def footprint(self, model_config, cfg):
        T = min(cfg.block_size or model_config.max_positions, model_config.max_positions)
        return Footprint(cfg.batch_size, f"batch_size={cfg.batch_size}", max(model_config.num_labels, 2), "num_labels",
                         24 * cfg.batch_size * T)  # ids and mask (B, T) int64, labels

    def metrics(self, sums):
        out = super().metrics(sums)
        out.pop("val_ppl", None)  # a perplexity over classes says nothing useful
        n = sums["confusion"].shape[0]
        labels = self.labels if self.labels and len(self.labels) == n else [str(i) for i in range(n)]
        return {**out, **classification_metrics(sums["confusion"], labels)}


def predict(model, tokenizer, texts: list[str], *, batch_size: int = 32) -> torch.Tensor:
    """Class ids (N,) an encoder with a classification head gives ``texts`` (its config's max_positions)."""
    rows = encode_texts(tokenizer, texts, model.config.max_positions, "texts")
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    out, dev, was_training = [], next(model.parameters()).device, model.training
    model.eval()
    with torch.no_grad():
        for b in in_order(rows, [0] * len(rows), batch_size, pad):
            out.append(model.classify(model(b.input_ids.to(dev), b.attention_mask.to(dev))).argmax(-1).cpu())
    model.train(was_training)
    return torch.cat(out)


def load_classifier_data(path, labels: list[str]) -> tuple[list[str], torch.Tensor]:
    """(texts, gold ids (N,)) of a ``.tsv`` for a model whose labels are ``labels``."""
    pairs = read_labelled(path)
    return [t for t, _ in pairs], torch.tensor(label_ids(pairs, labels, path))


def model_labels(model) -> list[str]:
    """The class names a classifier's logits stand for: ``config.extra["labels"]`` (a qkv run), else "0".."C-1"."""
    saved = model.config.extra.get("labels")
    n = model.config.num_labels
    return list(saved) if saved and len(saved) == n else [str(i) for i in range(n)]


__all__ = ["Classification", "ClassifyLoss", "ClassifyBatch", "ClassifyBatches", "read_labelled", "f1_scores",
           "confusion_matrix", "classification_metrics", "predict", "load_classifier_data", "model_labels"]
