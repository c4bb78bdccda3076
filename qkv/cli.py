"""The ``qkv`` command: one table of subcommands. Each entry adds its flags and runs; errors are one line.

    qkv info --preset gpt2                       what a model is: parameters, FLOPs per token, memory
    qkv convert --from-hf DIR --out DIR          a Hugging Face folder -> qkv's own folder (and --to-hf back)
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Command:
    help: str
    example: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


class CLIError(Exception):
    """A mistake in what the user asked for: printed as one line, exit status 2."""


def _model_source(parser: argparse.ArgumentParser) -> None:
    g = parser.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", help="a named configuration (see `qkv info --list`)")
    g.add_argument("--checkpoint", help="a qkv model folder (config.json + model.safetensors), or a training "
                                        "output folder")
    g.add_argument("--hf", help="a local Hugging Face checkpoint folder")


def _load_model(args):
    import qkv
    if getattr(args, "preset", None):
        return qkv.build(qkv.preset(args.preset))
    if getattr(args, "hf", None):
        return qkv.from_hf(args.hf)
    return qkv.load(_model_folder(args.checkpoint))


def _model_folder(path):
    """A training output folder keeps its latest model under checkpoints/latest; accept either."""
    from pathlib import Path
    p = Path(path)
    for candidate in (p, p / "model", p / "checkpoints" / "latest" / "model", p / "latest" / "model"):
        if (candidate / "config.json").is_file():
            return candidate
    raise CLIError(f"--checkpoint {path}: no config.json there (nor in model/ or checkpoints/latest/model/)")


# -- info -------------------------------------------------------------------------------------------------------

def _info_args(p):
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--list", action="store_true", help="list the presets")
    g.add_argument("--preset", help="a named configuration, e.g. gpt2, llama-tiny, transformer-base")
    g.add_argument("--checkpoint", help="a qkv model folder")
    g.add_argument("--hf", help="a local Hugging Face checkpoint folder")
    p.add_argument("--seq-len", type=int, default=None, help="context length for the FLOPs count "
                                                               "(default: the model's max_positions)")


def _info(args):
    import qkv
    if args.list:
        for name, fields in sorted(qkv.PRESETS.items()):
            print(f"{name:18s} {fields['family']:16s} d_model={fields.get('d_model')} layers={fields.get('n_layers')}")
        return 0
    import torch
    with torch.device("meta"):  # sizes only: no memory, no initialisation time, even for big presets
        model = _load_model(args) if not args.preset else qkv.build(qkv.preset(args.preset))
    print(model.summary(args.seq_len))
    n = model.num_parameters()
    print(f"  training memory:  ~{16 * n / 2**30:.2f} GiB for weights, grads and AdamW state in fp32 "
          f"(activations extra)")
    print(model.config.to_json())
    return 0


# -- convert ----------------------------------------------------------------------------------------------------

def _convert_args(p):
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--from-hf", metavar="DIR", help="read a Hugging Face folder (config.json + weights)")
    g.add_argument("--from-rwkv", metavar="FILE", help="read an RWKV-LM .pth checkpoint")
    g.add_argument("--checkpoint", metavar="DIR", help="read a qkv model folder (for --to-hf)")
    p.add_argument("--to-hf", action="store_true", help="write a Hugging Face folder instead of a qkv folder")
    p.add_argument("--out", required=True, help="folder to write")


def _convert(args):
    import qkv
    if args.from_hf:
        model = qkv.from_hf(args.from_hf)
    elif args.from_rwkv:
        if not hasattr(qkv, "from_rwkv"):
            raise CLIError("RWKV checkpoints are not supported in this build")
        model = qkv.from_rwkv(args.from_rwkv)
    else:
        model = qkv.load(_model_folder(args.checkpoint))
    path = qkv.to_hf(model, args.out) if args.to_hf else model.save(args.out)
    print(f"wrote {path} ({model.num_parameters():,} parameters, {'Hugging Face' if args.to_hf else 'qkv'} format)")
    return 0


COMMANDS: dict[str, Command] = {
    "info": Command("a model's configuration, parameters, FLOPs per token and memory",
                    "qkv info --preset gpt2 --seq-len 1024", _info_args, _info),
    "convert": Command("checkpoints between formats: Hugging Face folders, RWKV-LM files, qkv folders",
                       "qkv convert --from-hf ./gpt2-hf --out ./gpt2-qkv", _convert_args, _convert),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qkv", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="qkv: build, train, decode and inspect attention models.",
        epilog="examples:\n" + "\n".join(f"  {c.example}" for c in COMMANDS.values())
               + "\n\nEach command explains its options: qkv COMMAND --help")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help, epilog=f"example:\n  {cmd.example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.add_arguments(p)
        p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command].run(args) or 0
    except KeyboardInterrupt:
        print("qkv: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, TypeError, FileNotFoundError, KeyError, RuntimeError) as e:
        if args.debug:
            raise
        print(f"qkv {args.command}: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, CLIError) else 1


if __name__ == "__main__":
    sys.exit(main())
