"""``qkv demo``: the main job (``qkv.demo.run_demo``): train a small Transformer to translate, then show where it
attends."""
from __future__ import annotations

import logging

from ..demo import run_demo
from .common import Command


def _demo_args(p):
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo); an interrupted run "
                                                      "resumes from its last checkpoint with its saved tokenizer, a "
                                                      "finished one is evaluated again without training; a folder "
                                                      "holding anything else is refused (see --overwrite)")
    p.add_argument("--src", help="your own source-language file, one sentence a line (default: qkv's generated "
                                 "English -> Spanish task)")
    p.add_argument("--tgt", help="the target-language file aligned with --src")
    p.add_argument("--val-src", help="held-out source file (with --src; default: a share of --src/--tgt is held "
                                     "out, chosen by a hash of each source)")
    p.add_argument("--val-tgt", help="held-out target file (with --val-src)")
    p.add_argument("--max-steps", type=int, help="training steps (default: the demo's tuned value)")
    p.add_argument("--seed", type=int, default=0, help="seed for data, weights and order (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true", help="replace what the demo writes in --out (data/, train/, "
                                                           "results.json, figures, explorer.html) even where no demo "
                                                           "made it; other files are left alone")


def _demo(args):
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    run_demo(args.out, src=args.src, tgt=args.tgt, val_src=args.val_src, val_tgt=args.val_tgt,
             max_steps=args.max_steps, seed=args.seed, progress=not args.no_progress, overwrite=args.overwrite)
    return 0


COMMAND = Command("the main job: train a small Transformer to translate, then show where it attends",
                  "qkv demo --out runs/demo", _demo_args, _demo)
