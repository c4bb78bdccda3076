"""Decoding speed: qkv.generate against transformers' generate on the same weights.

A GPT-2 shaped model with random weights (default 6 layers, 384 wide, vocabulary 50257) is built in
transformers, saved, and imported with ``qkv.from_hf`` (the production converter). Both decode the same prompts
(32 tokens) for 128 new tokens, no EOS, greedy and 4-beam search, batch 1 and 8; tokens/s counts new tokens
per input times the batch. Each cell is the best of ``--repeats`` timed runs after a warm-up, the two libraries'
runs interleaved (on a shared machine the fastest run is the least disturbed one); the tokens of the two
libraries are compared as well.

The overhead rows measure the decoding machinery itself: ``qkv.generate`` (greedy, batch 1) against a bare loop
of the same model steps (the model called on each new token over a preallocated cache, argmax, nothing else), on
a tiny model (2 layers x 64, vocabulary 256), where the machinery's share is largest, and on the benchmark's
model. Each runs for N and 4N tokens: the slope is the cost per token (microseconds over the bare step, and that
as a share of it), the rest the cost per call (argument checks, the cache, packing the weights). They run on one
thread: the machinery is Python, and one thread keeps a shared machine's waits for a second one out of them.

qkv runs twice: eagerly, and with ``compile=True`` (every step after the prompt is one torch.compile'd graph over
the static cache; CUDA graphs on a GPU). The compiled run's first call, which compiles, is reported apart
("compile s") and kept out of its tokens/s.

    python bench/generate.py [--layers 6 --width 384 --prompt 32 --new 128 --threads 2 --repeats 3 --no-compile]
"""
from __future__ import annotations

import argparse
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
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip qkv's compiled decoding")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--profile", action="store_true", help="print cProfile's top functions of one qkv run")
    return p.parse_args()


def timed(fns, repeats):
    """Each function's best time over ``repeats`` rounds (the functions interleaved within a round, so a busy
    moment of a shared machine falls on all of them) and its last output; one warm-up call each first."""
    outs = [fn() for fn in fns]  # warm-up (allocator, lazy init, compilation)
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            outs[i] = fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best, outs


def bare_loop(model, ids, new):
    """The floor under ``qkv.generate``: prefill, then one model step per token over a preallocated cache and an
    argmax, with the same packed weights and without value checks, as generate runs its steps."""
    from qkv.nn.layers import packed_weights
    from qkv.ops.checks import trusted_values
    with torch.inference_mode(), packed_weights(model):
        cache = model.new_cache(ids.shape[0], ids.shape[1] + new)
        token = model(ids, cache, last_only=True)[:, -1:].argmax(-1)  # (B, 1)
        out = [token]
        with trusted_values():
            for _ in range(new - 1):
                token = model(token, cache, last_only=True)[:, -1:].argmax(-1)
                out.append(token)
        return torch.cat([ids] + out, 1)


def overhead_row(name, model, ids, new, repeats):
    """generate against the bare loop on the same model and prompt, each run for ``new`` and ``4 * new`` tokens:
    the slope between the two lengths is the cost per token (the decoding machinery's per step: generate's minus
    the bare loop's), what is left at zero tokens the cost per call (checks, the cache, packing)."""
    runs = [lambda n=n: qkv.generate(model, ids, max_new_tokens=n, eos_token_id=()) for n in (new, 4 * new)]
    runs += [lambda n=n: bare_loop(model, ids, n) for n in (new, 4 * new)]
    (g1, g4, b1, b4), outs = timed(runs, repeats)
    per_token = ((g4 - g1) - (b4 - b1)) / (3 * new) * 1e6
    step = (b4 - b1) / (3 * new) * 1e6
    per_call = ((g1 - b1) * 1e6 - per_token * new) / 1e3
    return dict(model=name, step_us=step, overhead_us=per_token, share=per_token / step, per_call_ms=per_call,
                same=torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[3]))


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    import transformers
    transformers.logging.set_verbosity_error()
    hf, ours = build_pair(args)
    rows = [speed_row(args, hf, ours, beams, batch) for beams in args.beams for batch in args.batches]
    tiny = qkv.build(qkv.preset("gpt2-tiny", max_positions=args.prompt + 4 * args.new)).eval().to(args.device)
    prompt = torch.randint(2, 256, (1, args.prompt), generator=torch.Generator().manual_seed(0)).to(args.device)
    torch.set_num_threads(1)  # the machinery is Python on one thread; one thread keeps other processes' load out
    overheads = [overhead_row("tiny 2 x 64, V 256", tiny, prompt, args.new, args.repeats),
                 overhead_row(f"bench {args.layers} x {args.width}, V {args.vocab}", ours,
                              prompt % args.vocab, args.new, args.repeats)]
    torch.set_num_threads(args.threads)
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
          f"{torch.__version__}, transformers {transformers.__version__}; best of {args.repeats}, interleaved")
    print(_header(args.compile))
    for row in rows:
        print(_format_row(row, args.compile))
    print(f"\ndecoding overhead: qkv.generate (greedy, batch 1) over a bare loop of the same model steps, from runs "
          f"of {args.new} and {4 * args.new} tokens, 1 thread")
    print("| model | bare step us/token | overhead us/token | share of the step | overhead ms/call | same tokens |")
    print("|---|---|---|---|---|---|")
    for r in overheads:
        print(f"| {r['model']} | {r['step_us']:.1f} | {r['overhead_us']:.1f} | {100 * r['share']:.1f}% | "
              f"{r['per_call_ms']:.2f} | {'yes' if r['same'] else 'NO'} |")
    print("\ncommand: python " + " ".join(sys.argv))


def build_pair(args):
    """transformers' GPT-2 with random weights, and qkv's import of the same folder."""
    import transformers
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
    return hf.to(args.device, dtype), ours.to(args.device, dtype)


def speed_row(args, hf, ours, beams, batch):
    """One cell of the table: both libraries (and qkv compiled) on the same prompts, interleaved."""
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

    row = dict(mode="greedy" if beams == 1 else f"beam {beams}", batch=batch)
    runs = [run_hf, run_qkv]
    if args.compile:
        start = time.perf_counter()
        first = run_qkv(compile=True)
        row["compile_s"] = time.perf_counter() - start
        runs.append(lambda: run_qkv(compile=True))
    times, outs = timed(runs, args.repeats)
    row.update(hf=batch * args.new / times[0], qkv=batch * args.new / times[1], same=torch.equal(outs[0], outs[1]))
    if args.compile:
        row["compiled"] = batch * args.new / times[2]
        row["same"] = row["same"] and torch.equal(outs[2], outs[1]) and torch.equal(first, outs[1])
    print(_format_row(row, args.compile), flush=True)
    return row


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
