"""Decoding speed: qkv.generate against transformers' generate on the same weights.

A GPT-2 shaped model with random weights (default 6 layers, 384 wide, vocabulary 50257) is built in
transformers, saved, and imported with ``qkv.from_hf`` (the production converter). Both decode the same prompts
(32 tokens) for 128 new tokens, no EOS, greedy and 4-beam search, batch 1 and 8; tokens/s counts new tokens
per input times the batch. Each cell is the median of ``--repeats`` timed runs after a warm-up; the tokens of
the two libraries are compared as well.

qkv runs twice: eagerly, and with ``compile=True`` (every step after the prompt is one torch.compile'd graph over
the static cache; CUDA graphs on a GPU). The compiled run's first call, which compiles, is reported apart
("compile s") and kept out of its tokens/s.

    python bench/generate.py [--layers 6 --width 384 --prompt 32 --new 128 --threads 2 --repeats 3 --no-compile]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import qkv  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--beams", type=int, nargs="+", default=[1, 4])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip qkv's compiled decoding")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--profile", action="store_true", help="print cProfile's top functions of one qkv run")
    return p.parse_args()


def timed(fn, repeats):
    fn()  # warm-up (allocator, lazy init, compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    import transformers
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=args.vocab, n_positions=1024, n_embd=args.width,
                                     n_layer=args.layers, n_head=args.heads, bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        ours = qkv.from_hf(folder).eval()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 1
    dtype = getattr(torch, args.dtype)
    hf, ours = hf.to(args.device, dtype), ours.to(args.device, dtype)

    rows = []
    for beams in args.beams:
        for batch in args.batches:
            ids = torch.randint(2, args.vocab, (batch, args.prompt), generator=torch.Generator().manual_seed(batch))
            ids = ids.to(args.device)

            def run_hf():
                with torch.inference_mode():
                    return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new,
                                       min_new_tokens=args.new, do_sample=False, num_beams=beams,
                                       length_penalty=1.0, early_stopping=True)

            def run_qkv(compile=False):
                out = qkv.generate(ours, ids, max_new_tokens=args.new, num_beams=beams, eos_token_id=(),
                                   pad_token_id=1, compile=compile)
                out.cpu()  # waits for the device
                return out

            t_hf, out_hf = timed(run_hf, args.repeats)
            t_qkv, out_qkv = timed(run_qkv, args.repeats)
            row = dict(mode="greedy" if beams == 1 else f"beam {beams}", batch=batch,
                       hf=batch * args.new / t_hf, qkv=batch * args.new / t_qkv,
                       same=torch.equal(out_hf, out_qkv))
            if args.compile:
                start = time.perf_counter()
                first = run_qkv(compile=True)
                row["compile_s"] = time.perf_counter() - start
                t_c, out_c = timed(lambda: run_qkv(compile=True), args.repeats)
                row["compiled"] = batch * args.new / t_c
                row["same"] = row["same"] and torch.equal(out_c, out_qkv) and torch.equal(first, out_qkv)
            rows.append(row)
            print(_format_row(row, args.compile), flush=True)
    if args.profile:
        import cProfile
        import pstats
        ids = torch.randint(2, args.vocab, (1, args.prompt), device=args.device)
        with cProfile.Profile() as prof:
            qkv.generate(ours, ids, max_new_tokens=args.new, eos_token_id=())
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    print()
    print(f"GPT-2 {args.layers} layers x {args.width} wide, vocab {args.vocab}, random weights; prompt {args.prompt}, "
          f"{args.new} new tokens, no EOS; {args.device} {args.dtype}, {args.threads} threads, torch "
          f"{torch.__version__}, transformers {transformers.__version__}; median of {args.repeats}")
    print(_header(args.compile))
    for row in rows:
        print(_format_row(row, args.compile))
    print("\ncommand: python " + " ".join(sys.argv))


def _header(compiled):
    head = f"| {'mode':8} | {'batch':5} | {'transformers tok/s':18} | {'qkv tok/s':9} | {'qkv / hf':8} |"
    head += " compiled tok/s | compiled / hf | compile s |" if compiled else ""
    head += " same tokens |"
    return head + "\n|" + "|".join("-" * len(cell) for cell in head.split("|")[1:-1]) + "|"


def _format_row(r, compiled):
    line = f"| {r['mode']:8} | {r['batch']:5} | {r['hf']:18.1f} | {r['qkv']:9.1f} | {r['qkv'] / r['hf']:7.2f}x |"
    if compiled:
        line += f" {r['compiled']:14.1f} | {r['compiled'] / r['hf']:12.2f}x | {r['compile_s']:9.1f} |"
    return line + f" {'yes' if r['same'] else 'NO':11} |"


if __name__ == "__main__":
    main()
