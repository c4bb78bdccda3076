"""The command line of training, generated from TrainConfig in one place: ``qkv train`` (the CLI's subcommand) and
``python -m qkv.train`` (the entry ``torchrun`` starts on every process) both take these flags."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os

from ..config import ModelConfig, TrainConfig, add_dataclass_arguments, dataclass_from_args, load_config_file

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
    return add_arguments(argparse.ArgumentParser(
        prog="python -m qkv.train", description="Train a qkv model (under torchrun: on every process)."))


def configs_from_args(args) -> tuple[ModelConfig | None, TrainConfig]:
    """The model and training configs the flags (over the config file, over the preset) describe; with --init the
    model config is None (the checkpoint's is used) and a preset or model section is refused."""
    from ..presets import preset
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


def main(argv=None):
    """``python -m qkv.train FLAGS``: train, then log the summary (on rank 0) as JSON."""
    from .loop import train
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    model_config, train_config = configs_from_args(args)
    summary = train(model_config, train_config)
    if int(os.environ.get("RANK", "0")) == 0:
        log.info(json.dumps(dataclasses.asdict(summary), indent=1))
    return summary
