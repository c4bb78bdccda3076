"""The ``qkv`` command: one table of subcommands (``COMMANDS``), one module each in this package (its flags and what
runs, side by side). Every error is one line (``qkv CMD: error: ...``, ``qkv.config_args.one_line``).

    qkv info --preset gpt2                       what a model is: parameters, FLOPs per token, memory
    qkv convert --from-hf DIR --out DIR          a Hugging Face folder -> qkv's own folder (and --to-hf back)

Shared by the commands: ``common.py`` (the table entry, one-line mistakes, warnings, input encoding), ``loading.py``
(--checkpoint / --hf / --preset and the qkv-or-Hugging-Face fork), ``decoding_flags.py`` (generate's and translate's
flags, generated from GenerationConfig).
"""
from __future__ import annotations

import argparse
import os
import sys

from ..config import join_negative_values
from ..config_args import OneLineParser, one_line
from . import bench, convert, demo, explore, generate, info, plot, tokenize, train, translate
from . import eval as evaluate  # the module of `qkv eval`, not the builtin
from .common import CLIError, Command, Notes, check_utf8

__all__ = ["main", "build_parser", "COMMANDS", "Command", "CLIError"]

COMMANDS: dict[str, Command] = {
    "train": train.COMMAND, "generate": generate.COMMAND, "translate": translate.COMMAND, "eval": evaluate.COMMAND,
    "demo": demo.COMMAND, "explore": explore.COMMAND, "info": info.COMMAND, "plot": plot.COMMAND,
    "bench": bench.COMMAND, "convert": convert.COMMAND, "tokenize": tokenize.COMMAND,
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="qkv", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="qkv: build, train, decode and inspect attention models.",
        epilog="examples:\n" + "\n".join(f"  {c.example}" for c in COMMANDS.values())
               + "\n\nEach command explains its options: qkv COMMAND --help")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.subcommands = {}
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help, epilog=f"example:\n  {cmd.example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.subcommands[name] = p
        cmd.add_arguments(p)
        p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return parser


# A negative number: "-1e-3", "-.5", "-inf". argparse takes "-1e-3" for an option (its rule knows no exponents).
def _join_negative_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--lr -1e-3`` -> ``--lr=-1e-3`` for the flags of the subcommand in ``argv`` (see config.join_negative_values)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in getattr(parser, "subcommands", {}) or command == "bench":
        return argv
    return join_negative_values(parser.subcommands[command], argv)


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(_join_negative_values(parser, argv))
    if not args.command:
        parser.print_help()
        return 0
    Notes.said = set()
    try:
        check_utf8(args)
        return COMMANDS[args.command].run(args) or 0
    except KeyboardInterrupt as e:  # a training run inside (qkv demo) says what it saved, and which signal
        print(f"qkv {args.command}: {e}" if str(e) else "qkv: interrupted", file=sys.stderr)
        return getattr(e, "exit_status", 130)
    except BrokenPipeError:  # the reader went away (``qkv ... | head``): stop quietly, as other commands do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:  # every failure is one line; --debug keeps the traceback
        if args.debug:
            raise
        print(f"qkv {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2 if isinstance(e, CLIError) else 1


if __name__ == "__main__":
    sys.exit(main())
