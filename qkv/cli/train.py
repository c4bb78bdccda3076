"""``qkv train``: the flags of ``python -m qkv.train`` (``qkv/train/args.py``, generated from TrainConfig), then the
run's summary as JSON."""
from __future__ import annotations

import dataclasses
import json
import logging

from ..train import TrainingInterrupted, configs_from_args, train
from ..train.args import add_arguments, model_name, stopped
from .common import CLIError, Command


def _train(args):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        model_config, train_config = configs_from_args(args)  # its errors name the flags already
    except (TypeError, ValueError) as e:
        raise CLIError(str(e)) from None
    try:
        summary = train(model_config, train_config, name=model_name(args))
    except TrainingInterrupted as e:  # Ctrl-C / SIGTERM: the checkpoint it saved, and 130 / 143
        return stopped(e, "qkv train")
    print(json.dumps(dataclasses.asdict(summary), indent=1))
    return 0


# add_arguments: the same flags as ``python -m qkv.train`` (torchrun's entry)
COMMAND = Command("train any model on your data: text (LM), parallel files (translation), images (ViT), "
                  "text<TAB>label lines (--task classify); --init fine-tunes a pretrained checkpoint",
                  "qkv train --preset gpt-char-tiny --data input.txt --max-steps 2000 --out-dir runs/shk",
                  add_arguments, _train)
