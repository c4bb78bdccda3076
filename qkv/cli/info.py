"""``qkv info``: what a model is (parameters, FLOPs per token, memory), the presets, what qkv reads."""
from __future__ import annotations

import json
import sys

import torch

import qkv

from ..files import check_fits
from ..hub.supported import supported_text
from ..models.common import load_config
from ..models.sizing import model_bytes, model_sizes
from ..models.summary import format_summary, summarize
from .common import Command, positive_flag
from .loading import load_model, model_folder


def _info_args(p):
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--list", action="store_true", help="list the presets")
    g.add_argument("--supported", action="store_true", help="list the Hugging Face architectures, tokenizer files "
                                                            "and RoPE variants qkv reads")
    g.add_argument("--preset", help="a named configuration, e.g. gpt2, llama-tiny, transformer-base")
    g.add_argument("--checkpoint", help="a qkv model folder")
    g.add_argument("--hf", help="a Hugging Face checkpoint folder or hub id (org/name)")
    p.add_argument("--seq-len", type=int, default=None, help="context length for the FLOPs count and the decoding "
                                                               "memory (default: the model's max_positions)")
    p.add_argument("--json", action="store_true", help="print the summary's numbers and the full config as JSON")


def _info(args):
    if args.list:
        for name, fields in sorted(qkv.PRESETS.items()):
            print(f"{name:18s} {fields['family']:16s} d_model={fields.get('d_model')} layers={fields.get('n_layers')}")
        return 0
    if args.supported:
        print(supported_text())
        return 0
    positive_flag(args.seq_len, "--seq-len")
    with torch.device("meta"):  # sizes only: no memory, no initialisation time, even for big presets
        if args.checkpoint:  # the config says everything info prints: the weights are not read
            config = load_config(model_folder(args.checkpoint))
            # a meta build holds no weights, but its module objects still cost memory: bound them first
            check_fits(model_bytes(config, dtype_bytes=0)[1],
                       what=f"{args.checkpoint}/config.json: building {model_sizes(config)}")
            model = qkv.build(config)
        else:
            model = load_model(args) if not args.preset else qkv.build(qkv.preset(args.preset))
    summary = summarize(model, args.seq_len)
    if args.json:
        print(json.dumps({"summary": summary.to_dict(), "config": model.config.to_dict()}, indent=2))
    else:
        print(format_summary(summary))
    for warning in summary.warnings:
        print(f"qkv info: warning: {warning}", file=sys.stderr)
    return 0


COMMAND = Command("a model's configuration, parameters, FLOPs per token and memory",
                  "qkv info --preset gpt2 --seq-len 1024", _info_args, _info)
