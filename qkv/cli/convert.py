"""``qkv convert``: checkpoints between formats (Hugging Face folders, RWKV-LM files, qkv folders), keeping what a
round trip carries besides the weights (``qkv.hub.carry``: tokenizer, settings, unmapped tensors)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import qkv

from ..hub import carry
from .common import CLIError, Command
from .loading import model_folder


def _convert_args(p):
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--from-hf", metavar="DIR", help="read a Hugging Face folder (config.json + weights)")
    g.add_argument("--from-rwkv", metavar="FILE", help="read an RWKV-LM .pth checkpoint")
    g.add_argument("--checkpoint", metavar="DIR", help="read a qkv model folder (for --to-hf)")
    p.add_argument("--to-hf", action="store_true", help="write a Hugging Face folder instead of a qkv folder")
    p.add_argument("--out", required=True, help="folder to write")


def _convert(args):
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out}: is a file; expected a new (or empty) folder to write the model into")
    if out.is_dir() and any(out.iterdir()):
        raise CLIError(f"--out {out}: the folder exists and is not empty; expected a new (or empty) folder (qkv "
                       f"never writes over files)")
    kept = carry.Kept()
    if args.from_hf:
        model = qkv.from_hf(args.from_hf)
        kept = carry.from_hf_folder(args.from_hf, model)
    elif args.from_rwkv:
        if not hasattr(qkv, "from_rwkv"):
            raise CLIError("RWKV checkpoints are not supported in this build")
        model = qkv.from_rwkv(args.from_rwkv)
    else:
        folder = model_folder(args.checkpoint)
        model = qkv.load(folder)
        kept = carry.from_qkv_folder(folder)
    # Written beside --out under a name of its own, renamed at the end: a full disk or a crash leaves no
    # half-written --out to block the rerun.
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        if args.to_hf:
            _, kept = carry.write_hf(kept, model, partial)
        else:
            carry.write_qkv(kept, model.save(partial))
        if out.is_dir():
            out.rmdir()  # empty, checked above
        os.replace(partial, out)
    except OSError as e:
        raise CLIError(f"--out {out}: writing {e.filename or partial} failed ({e.strerror or e}); nothing was left "
                       f"at --out: free some space (or choose another --out) and run the command again") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    print(f"wrote {out} ({model.num_parameters():,} parameters, {'Hugging Face' if args.to_hf else 'qkv'} format); "
          f"kept: {kept.summary()}")
    return 0


COMMAND = Command("checkpoints between formats: Hugging Face folders, RWKV-LM files, qkv folders",
                  "qkv convert --from-hf ./gpt2-hf --out ./gpt2-qkv", _convert_args, _convert)
