"""The command line of training, generated from TrainConfig in one place: ``qkv train`` (the CLI's subcommand) and
``python -m qkv.train`` (the entry ``torchrun`` starts on every process) both take these flags."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys

from ..config import (ModelConfig, TrainConfig, add_dataclass_arguments, dataclass_from_args, join_negative_values,
                      load_config_file)
from ..config_args import OneLineParser, one_line
from ..presets import preset

log = logging.getLogger("qkv.train")


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--preset, --config and one flag per TrainConfig field (help from the field's comment)."""
    p.add_argument("--preset", help="model preset name (see `qkv info --list`), e.g. gpt-char-tiny")
    p.add_argument("--config", help="a YAML/JSON file with 'model' (or 'preset') and 'train' sections; flags "
                                    "override it")
    add_dataclass_arguments(p.add_argument_group("training (every TrainConfig field)"), TrainConfig,
                            defaults_to_none=True)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m qkv.train``: the flags of ``qkv train``, and its name in errors."""
    p = add_arguments(OneLineParser(
        prog="qkv train", description="Train a qkv model. The same flags as `qkv train`; this module is the entry "
                                      "torchrun starts on every process: torchrun --nproc_per_node N -m qkv.train ..."))
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return p


def configs_from_args(args) -> tuple[ModelConfig | None, TrainConfig]:
    """The model and training configs the flags (over the config file, over the preset) describe; with --init the
    model config is None (the checkpoint's is used) and a preset or model section is refused. A ValueError /
    TypeError names the flags (and their values) behind it: "--lr inf: lr must be ..."."""
    try:
        return _configs(args)
    except (TypeError, ValueError) as e:
        raise type(e)(name_flags(str(e), args, TrainConfig)) from None


def _configs(args) -> tuple[ModelConfig | None, TrainConfig]:
    file = load_config_file(args.config) if args.config else {}
    unknown = sorted(set(file) - {"model", "preset", "train"})
    if unknown:
        raise ValueError(f"config file {args.config!r}: unknown sections {unknown}; expected model, preset, train")
    for section, kind in (("model", dict), ("train", dict), ("preset", str)):
        if section in file and not isinstance(file[section], kind):
            raise ValueError(f"config file {args.config!r}: section {section!r} is a {type(file[section]).__name__}; "
                             f"expected {'a mapping of field names to values' if kind is dict else 'a preset name'}")
    if getattr(args, "init", None) or file.get("train", {}).get("init"):  # the architecture is the checkpoint's
        given = [flag for flag, on in ((f"--preset {args.preset}", args.preset),
                                       ("a 'model' section in --config", "model" in file),
                                       ("a 'preset' section in --config", "preset" in file)) if on]
        if given:
            raise ValueError(f"{given[0]}: the model comes from --init (its config.json), so flags that set the "
                             f"architecture do not apply when fine-tuning; drop it")
        return None, dataclass_from_args(TrainConfig, args, file.get("train", {}))
    name = args.preset or file.get("preset")
    if name is None and "model" not in file:
        raise ValueError("no model given: pass --preset NAME or a config file with a 'model' or 'preset' section")
    model = preset(name, **file.get("model", {})) if name else ModelConfig.from_dict(file["model"])
    return model, dataclass_from_args(TrainConfig, args, file.get("train", {}))


def model_name(args) -> str | None:
    """What the opening line calls the model: the preset (--preset, or the config file's), or --init's checkpoint;
    None for a 'model' section (the line then names the family)."""
    if getattr(args, "init", None):
        return str(args.init)
    if args.preset:
        return args.preset
    file = load_config_file(args.config) if args.config else {}
    return file.get("preset") if isinstance(file.get("preset"), str) else (file.get("train") or {}).get("init")


def stopped(e, prog: str) -> int:
    """A run ended by SIGINT / SIGTERM (``TrainingInterrupted``): its one line on stderr (what it saved) from the
    main process; returns the exit status a shell expects, 128 + the signal's number."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{prog}: {e}", file=sys.stderr)
    return e.exit_status


def name_flags(message: str, args, cls) -> str:
    """Put the flags (and their values) a config check names in front of its message: "--lr inf: lr must be ..."."""
    given = [f.name for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None
             and re.search(rf"(?<![\w-]){f.name}(?![\w-])", message)]
    if not given:
        return message
    shown = (lambda v: " ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v))
    return ", ".join(f"--{n.replace('_', '-')} {shown(getattr(args, n))}" for n in given) + f": {message}"


def main(argv=None):
    """``python -m qkv.train FLAGS``: train, then log the summary (on rank 0) as JSON; returns the summary. A bad
    flag, file or value ends the process with one line on stderr (status 2 for flags, 1 for the run), as `qkv
    train` does; ``--debug`` shows the traceback instead."""
    from .loop import train  # start-up time: building the parser (qkv train --help) loads no training loop
    from .stopping import TrainingInterrupted  # with the loop above
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(join_negative_values(parser, sys.argv[1:] if argv is None else list(argv)))
    try:
        model_config, train_config = configs_from_args(args)
    except (TypeError, ValueError, OSError) as e:
        if args.debug:
            raise
        parser.exit(2, f"{parser.prog}: error: {one_line(e)}\n")
    try:
        summary = train(model_config, train_config, name=model_name(args))
    except TrainingInterrupted as e:
        sys.exit(stopped(e, parser.prog))
    except Exception as e:  # a bad file or value, a run that diverged: one line, as from `qkv train`
        if args.debug:
            raise
        parser.exit(1, f"{parser.prog}: error: {one_line(e)}\n")
    if int(os.environ.get("RANK", "0")) == 0:
        log.info(json.dumps(dataclasses.asdict(summary), indent=1))
    return summary
