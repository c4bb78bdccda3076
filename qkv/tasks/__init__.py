"""What the training loop trains on: one record per task (``Task``), holding its loss, data loading and batches,
default tokenizer, memory footprint and metrics. The loop looks a task up by name and never branches on it.

Tasks:
  lm        causal LM (decoder)              x (B, T) -> logits (B, T, V) vs the next tokens y (B, T)
  seq2seq   translation (encoder_decoder)    teacher forcing: (source, BOS + target) -> logits vs target + EOS
  mlm       masked LM (encoder)              BERT's 15% masked tokens -> MLM-head logits vs the original ids
  image     image classification (vit)       pixels (B, C, H, W) -> logits (B, classes) vs labels (B,)
  classify  text classification (encoder)    text<TAB>label lines -> [CLS] pooler + classifier (B, C) vs labels (B,)
  caption   image to text (caption)          teacher forcing: (image, BOS + caption) -> logits vs caption + EOS
"""
from __future__ import annotations

from ..models.registry import FAMILIES
from .batches import (EndlessBatches, ImageBatches, LMBatches, MLMBatches, TaskData, batch_rows, count_targets,
                      shard_rows, take, to_device)
from .caption import CaptionBatch, CaptionLoss, Captioning, caption_metrics
from .classify import Classification, ClassifyLoss
from .image import ImageClassification, ImageLoss
from .lm import CausalLM, CausalLMLoss, MaskedLM, MaskedLMLoss
from .loss import IGNORE_INDEX, LossSums, TaskLoss, label_smoothed_nll, token_sums
from .seq2seq import Seq2SeqLoss, Translation, bleu_callback
from .task import Footprint, Task, perplexity

TASKS: dict[str, Task] = {t.name: t for t in (CausalLM(), Translation(), MaskedLM(), ImageClassification(),
                                               Classification(), Captioning())}



def get_task(name_or_task) -> Task:
    """The Task record of a name in TASKS (a Task is returned as it is)."""
    if isinstance(name_or_task, Task):
        return name_or_task
    if name_or_task not in TASKS:
        raise ValueError(f"task={name_or_task!r}: unknown; expected one of {', '.join(TASKS)}")
    return TASKS[name_or_task]


def task_for(family: str, task: str = "auto") -> Task:
    """The Task a model of ``family`` trains: ``task`` by name, or ("auto") the first its registry record names.
    A task the family's record does not list is refused (a decoder has no classification head to train)."""
    if family not in FAMILIES:
        raise ValueError(f"family={family!r}: no training task for it; expected one of {', '.join(FAMILIES)}")
    tasks = FAMILIES[family].tasks
    if task == "auto":
        return TASKS[tasks[0]]
    record = get_task(task)
    if record.name not in tasks:
        raise ValueError(f"task={record.name!r} (--task) does not train a {family!r} model; its tasks: "
                         f"{', '.join(tasks)}")
    return record


def prepare_data(model_config, cfg, tokenizer=None) -> TaskData:
    """The data of ``cfg.task`` ("auto": ``model_config``'s family's task) for ``cfg`` (see ``Task.prepare``)."""
    return task_for(model_config.family, getattr(cfg, "task", "auto")).prepare(model_config, cfg, tokenizer)


def train_tokenizer(cfg, task):
    """The tokenizer ``task`` (a name or a Task) trains on ``cfg.data`` when none is given."""
    return get_task(task).train_tokenizer(cfg)


__all__ = ["TASKS", "Task", "Footprint", "TaskData", "get_task", "task_for", "prepare_data",
           "train_tokenizer", "TaskLoss", "LossSums", "token_sums", "label_smoothed_nll", "IGNORE_INDEX", "perplexity",
           "CausalLM", "MaskedLM", "Translation", "ImageClassification", "CausalLMLoss", "MaskedLMLoss",
           "Classification", "ClassifyLoss", "Seq2SeqLoss", "ImageLoss", "bleu_callback", "LMBatches", "MLMBatches", "EndlessBatches", "ImageBatches",
           "shard_rows", "to_device", "count_targets", "batch_rows", "take",
           "Captioning", "CaptionLoss", "CaptionBatch", "caption_metrics"]
