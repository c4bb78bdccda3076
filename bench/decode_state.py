"""Claim: a recurrent model decodes each token in the same time whatever the context (its state has a fixed size),
while softmax attention with a KV cache pays for every cached token. This script times single-token decode steps
of small decoders (2 layers, 256 wide) after a context of 1k, 8k and 32k tokens (64k with --contexts) and prints
ms/token per context and the ratio of the longest context to the shortest.

    python bench/decode_state.py                                # CPU, 1 thread, contexts 1k 8k 32k: ~2-4 minutes
    python bench/decode_state.py --contexts 1024 8192 65536     # the full claim (longer prefill on CPU)

Models: "softmax" (MultiHeadAttention + KVCache), "linear" (linear attention), "retention" (RetNet's multi-scale
retention), "rwkv4" .. "rwkv7", "gla", "deltanet", "gated_deltanet", "mamba2" and "memory" (Infini-attention's
segment buffer plus memory), built from the same sizes by qkv.build. Prefill: recurrent models run the context through
their chunk form with the cache (in pieces of --prefill-piece tokens); the softmax model's KV caches are filled
with random keys and values directly (what they hold does not change the time of a step). Each step is
model(one token, cache, last_only=True), the real decode path. A point is the best of --repeats runs of --steps
steps; the runs of one model cycle through the contexts in turn, so that a burst of load from other processes
hits every context alike, and best-of because such load only ever adds time. On CPU the clock is this process's
CPU time (--clock process, the default there: time spent waiting for a shared core is not the model's); --clock
wall measures wall time (the default on CUDA, where the work runs off the process).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

import qkv  # noqa: E402
from qkv.ops.checks import trusted_values  # noqa: E402

MODELS = {
    "softmax": dict(mixer="attention"),
    "linear": dict(mixer="linear"),
    "retention": dict(mixer="retention", position="rope"),
    "rwkv4": dict(mixer="rwkv4", n_heads=1),
    "rwkv5": dict(mixer="rwkv5"),
    "rwkv6": dict(mixer="rwkv6"),
    "rwkv7": dict(mixer="rwkv7"),
    "gla": dict(mixer="gla"),
    "deltanet": dict(mixer="deltanet"),
    "gated_deltanet": dict(mixer="gated_deltanet"),
    "memory": dict(mixer="memory"),
    "mamba2": dict(mixer="mamba2"),
}


def build(kind, args, device, dtype):
    fields = dict(family="decoder", vocab_size=256, d_model=args.width, n_layers=args.layers, n_heads=4,
                  position="none", norm="layer", activation="gelu", bias=False, tie_embeddings=False,
                  max_positions=max(args.contexts) + 1024)
    fields.update(MODELS[kind])
    return qkv.build(qkv.ModelConfig(**fields)).to(device=device, dtype=dtype).eval()


def prefill(model, kind, context, args, device, dtype):
    """A cache holding ``context`` tokens: the real prompt pass for recurrent models, random K/V for softmax."""
    cache = model.new_cache(1, max_len=context + args.steps * (args.repeats + 1) + 8 if kind == "softmax" else None)
    if kind == "softmax":
        cfg = model.config
        for layer in cache.layers:
            shape = (1, cfg.n_kv_heads, context, cfg.head_dim)
            layer.mixer.update(torch.randn(shape, device=device, dtype=dtype),
                               torch.randn(shape, device=device, dtype=dtype))
        cache.length = context
        return cache
    ids = torch.randint(0, 256, (1, context), device=device)
    for piece in ids.split(args.prefill_piece, 1):
        model(piece, cache, last_only=True)
    return cache


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model, cache, args, device, clock):
    """ms/token of one run of ``steps`` single-token steps."""
    token = torch.zeros(1, 1, dtype=torch.long, device=device)
    sync(device)
    start = clock()
    with trusted_values():  # as qkv.generate steps: the model's own tokens, no host reads
        for _ in range(args.steps):
            model(token, cache, last_only=True)
    sync(device)
    return (clock() - start) / args.steps * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 8192, 32768], help="context lengths")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--width", type=int, default=256, help="d_model")
    p.add_argument("--steps", type=int, default=16, help="decode steps per timed run")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per point (the best counts)")
    p.add_argument("--prefill-piece", type=int, default=4096, help="prompt tokens per prefill call")
    p.add_argument("--clock", choices=["process", "wall"], default=None,
                   help="process CPU time or wall time (default: process on CPU, wall on CUDA)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1 is steadiest on a shared machine)")
    p.add_argument("--flat", type=float, default=1.05, help="recurrent models pass if longest/shortest <= this")
    args = p.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    clock_name = args.clock or ("wall" if device.type == "cuda" else "process")
    clock = time.perf_counter if clock_name == "wall" else time.process_time
    given = argv if argv is not None else sys.argv[1:]
    cmd = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + given)
    print(f"# python {cmd}")
    print(f"# torch {torch.__version__}, device {device} ({torch.get_num_threads()} threads), dtype {args.dtype}, "
          f"{args.layers} layers x {args.width} wide, best of {args.repeats} x {args.steps} steps, {clock_name} time")
    ctx = sorted(args.contexts)
    header = f"{'model':<10}" + "".join(f"{f'{c // 1024}k ms/tok' if c % 1024 == 0 else f'{c} ms/tok':>14}"
                                         for c in ctx) + f"{f'{ctx[-1] // 1024}k/{ctx[0] // 1024}k':>10}  verdict"
    print(header)
    print("-" * len(header))
    failed = []
    with torch.no_grad():
        for kind in args.models:
            model = build(kind, args, device, dtype)
            caches = [prefill(model, kind, c, args, device, dtype) for c in ctx]
            ms = [float("inf")] * len(ctx)
            for r in range(args.repeats + 1):  # run 0 warms up
                for i, cache in enumerate(caches):
                    t = time_steps(model, cache, args, device, clock)
                    ms[i] = min(ms[i], t) if r else ms[i]
            del caches
            ratio = ms[-1] / ms[0]
            if kind == "softmax":
                verdict = "grows with context (KV cache)"
            else:
                verdict = "flat" if ratio <= args.flat else f"NOT flat (> {args.flat}x)"
                if ratio > args.flat:
                    failed.append(kind)
            print(f"{kind:<10}" + "".join(f"{m:>14.3f}" for m in ms) + f"{ratio:>9.2f}x  {verdict}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
