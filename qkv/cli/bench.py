"""``qkv bench``: run a benchmark script from bench/ (each prints its ratio to a peer); the scripts ship with the
source tree."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from .common import CLIError, Command


def _bench_args(p):
    p.add_argument("name", nargs="?", help="which benchmark (a script in bench/); none: list them")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed on to the script (see its --help)")


def _bench(args):
    root = Path(__file__).resolve().parents[2] / "bench"
    scripts = sorted(p.stem for p in root.glob("*.py")) if root.is_dir() else []
    if not scripts:
        raise CLIError("the bench/ scripts ship with the source tree, not the installed package: run from a clone")
    if not args.name:
        print("benchmarks (qkv bench NAME [args]):\n  " + "\n  ".join(scripts))
        return 0
    if args.name not in scripts:
        raise CLIError(f"unknown benchmark {args.name!r}; available: {', '.join(scripts)}")
    return subprocess.call([sys.executable, str(root / f"{args.name}.py"), *args.args])


COMMAND = Command("run a benchmark script from bench/ (each prints its ratio to a peer)",
                  "qkv bench attention --max-T 2048", _bench_args, _bench)
