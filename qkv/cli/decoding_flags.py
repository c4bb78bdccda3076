"""The decoding flags of ``qkv generate`` and ``qkv translate`` (generated from GenerationConfig's fields,
``qkv/decoding/args.py``), the config they make, and a file of inputs decoded in batches."""
from __future__ import annotations

import sys

import torch
from tqdm.auto import tqdm

from ..decoding import GenerationConfig, generate_many
from ..decoding.args import add_decoding_arguments, config_from_arguments
from .common import CLIError, positive_flag


def decoding_args(p, defaults, *, speculative: bool = False):
    """The decoding flags, generated from GenerationConfig's fields (``qkv/decoding/args.py``; help shows this
    command's ``defaults``), and the flags of the command itself."""
    # Defaults are None so that, with --hf, the folder's generation_config.json fills what no flag gives.
    add_decoding_arguments(p, defaults, speculative=speculative)
    p.add_argument("--seed", type=int, help="seed for sampling (reproducible output)")
    p.add_argument("--show-scores", action="store_true",
                   help="after each output, a tab and its score: the beam score (sum log p / length ** "
                        "length_penalty), or the summed log-probability of the generated tokens"
                        + ("; with --draft / --prompt-lookup also plain decoding of the prompt, run after it (both "
                           "models warmed up first), and the tokens per second of both on stderr" if speculative
                           else ""))
    p.add_argument("--stream", action="store_true",
                   help="--file: decode one line at a time, printing tokens as they come (default: batches of "
                        "similar length, printed in the file's order)")
    p.add_argument("--tokens-per-batch", type=int, default=32768,
                   help="--file: rows x (longest input + max new tokens) x beams per batch (default: 32768, about "
                        "the padded size of the library's translate batches of 64 sentences with 4 beams; lower it "
                        "for a large model on a small machine)")
    p.set_defaults(qkv_defaults=defaults, qkv_speculative=speculative)


def check_decoding(args) -> None:
    """The decoding flags, checked by their names (over the command's defaults) before any model is loaded."""
    positive_flag(args.tokens_per_batch, "--tokens-per-batch")
    decoding_config(args)


def decoding_config(args, folder=None):
    """The GenerationConfig of the command: the flags over a Hugging Face folder's generation settings (--hf:
    what transformers' generate would use, so both print the same text) or over the command's defaults."""
    base = args.qkv_defaults if folder is None else GenerationConfig.from_folder(folder)
    try:
        return config_from_arguments(args, base, speculative=args.qkv_speculative)
    except ValueError as e:
        raise CLIError(str(e)) from None


def generator(args):
    """--seed: a torch.Generator for sampling, or None."""
    return torch.Generator().manual_seed(args.seed) if args.seed is not None else None


def decode_lines(model, inputs, config, args, show):
    """--file without --stream: every non-blank line decoded in batches of similar length (qkv.decoding.batch),
    progress on stderr, then ``show(line index, tokens, score)`` for each line in the file's order (None: a blank
    line)."""
    if config.num_return_sequences > 1:
        raise CLIError(f"num_return_sequences={config.num_return_sequences} (generation_config.json): --file "
                       f"prints one answer per line; add --stream to print them all")
    present = [i for i, x in enumerate(inputs) if x is not None]
    with tqdm(total=len(present), file=sys.stderr, unit="line", dynamic_ncols=True, desc="decode") as bar:
        answers = generate_many(model, [inputs[i] for i in present], config.replace(return_scores=args.show_scores),
                                tokens_per_batch=args.tokens_per_batch, progress=bar.update,
                                generator=generator(args))
    by_line = dict(zip(present, answers))
    for i in range(len(inputs)):
        answer = by_line.get(i)
        show(i, None if answer is None else answer.tokens, None if answer is None else answer.score)
