"""Training: teacher forcing, cross-entropy with label smoothing, AdamW with warmup and decay, gradient clipping and
accumulation, mixed precision, DDP / FSDP2, evaluation, atomic checkpoints and exact resume.

    summary = qkv.train.train(qkv.preset("gpt-char-tiny"), TrainConfig(data="input.txt", max_steps=2000))

The same entry runs on several processes under ``torchrun --nproc_per_node N -m qkv.train ...``: every process
draws the same global batch and keeps its share of the rows, and the loss of a step is the sum over all its
targets divided by their number, so N processes follow one process's loss curve.

One optimizer step (step s = 1 .. max_steps):
  batches = grad_accum global micro-batches;  N = targets in all of them
  for each: loss_sum = sum of per-target losses of this process's rows; backward(loss_sum * world / N)
            (DDP and FSDP average gradients over processes; * world turns that average into the sum)
  clip the gradient norm, AdamW step at lr(s), scheduler step

Where things are: ``loop`` (the loop, and setting a run up), ``processes`` (distributed set-up), ``checkpointing``
(the run folder, resume, save), ``state_checks`` (a saved trainer state's values, checked before resuming),
``stopping`` (SIGINT / SIGTERM: a checkpoint at the next step, then the end), ``evaluation``, ``log``
(metrics.jsonl, the opening line, progress bar, plot), ``optim`` (AdamW, schedules), ``precision`` (what "auto"
means, autocast), ``compiling`` (regional compile of the blocks, and when), ``args`` (the flags of ``qkv train``
and ``python -m qkv.train``); what is trained: ``qkv.tasks``.
"""
from ..tasks import bleu_callback, prepare_data
from .args import add_arguments, build_parser, configs_from_args, main
from .checkpointing import RESUME_MUST_MATCH, NonFiniteWeightError
from .loop import DEFAULT_BLOCK_CAP, NonFiniteLossError, TrainSummary, train
from .optim import learning_rate, make_optimizer, transformer_lr
from .precision import native_bf16, resolve_precision
from .processes import check_device
from .stopping import TrainingInterrupted

__all__ = ["train", "TrainSummary", "NonFiniteLossError", "NonFiniteWeightError", "TrainingInterrupted",
           "DEFAULT_BLOCK_CAP", "learning_rate", "transformer_lr", "make_optimizer",
           "bleu_callback", "prepare_data", "RESUME_MUST_MATCH", "check_device", "native_bf16", "resolve_precision",
           "add_arguments", "build_parser", "configs_from_args", "main"]
