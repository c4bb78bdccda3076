"""Claim: the linear-time ops (chunk form) scale as O(T) while softmax attention scales as O(T^2), so past some
sequence length they are faster. This script times one layer-sized call of each, forward and forward+backward,
over T = 512, 1024, ... and prints the time ratios to softmax attention and where the lines cross.

    python bench/scaling.py --threads 1           # CPU, float32, up to T = 8192: ~1.5-3 minutes on 2 shared cores
    python bench/scaling.py --device cuda --dtype bfloat16 --max-T 65536

Softmax attention is torch.nn.functional.scaled_dot_product_attention(is_causal=True), which picks PyTorch's
fused kernel (flash attention on CPU and CUDA): O(T^2) time but O(T) memory. The rivals are
qkv.ops.linear_attention, qkv.ops.retention, qkv.ops.wkv4, qkv.ops.gla, qkv.ops.wkv6 (RWKV-6), qkv.ops.delta_rule
(Gated DeltaNet) and qkv.ops.wkv7 (RWKV-7), all with mode="chunk" (--ops picks some). The gated forms build a
(C, C, D) tensor of decays per block (C = --gated-chunk-size), so their work grows as T * C * D: still O(T).

Peak memory is measured only on CUDA (torch.cuda.max_memory_allocated over the call, inputs excluded). PyTorch
keeps no peak counter for CPU allocations, so on CPU the memory columns say "n/a" rather than guess.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

from qkv.ops import delta_rule, gla, linear_attention, retention, wkv4, wkv6, wkv7  # noqa: E402


def make_ops(B, H, T, D, device, dtype, chunk_size, wkv_chunk, gated_chunk=16):
    """name -> (inputs, fn): each fn maps its inputs to one output tensor of a layer with H heads of size D."""
    def rand(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    def gates(*shape, strength=0.1):  # log decays in (-strength, 0)
        return -strength * torch.rand(*shape, device=device, dtype=torch.float32)

    def unit(*shape):
        return F.normalize(rand(*shape), dim=-1)

    qkv_ = lambda: [rand(B, H, T, D) for _ in range(3)]  # (B, H, T, D) each
    decay = 1 - 2.0 ** (-5 - torch.arange(H, dtype=torch.float32, device=device))  # RetNet's gammas
    C = H * D
    w = torch.rand(C, device=device) + 0.1  # RWKV-4 works per channel: k, v (B, T, C), C = H * D
    u = torch.randn(C, device=device)
    return {
        "softmax (sdpa)": (qkv_(), lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)),
        "linear_attention": (qkv_(), lambda q, k, v: linear_attention(q, k, v, mode="chunk", chunk_size=chunk_size)),
        "retention": (qkv_(), lambda q, k, v: retention(q, k, v, decay, mode="chunk", chunk_size=chunk_size)),
        "wkv4": ([rand(B, T, C), rand(B, T, C)], lambda k, v: wkv4(w, u, k, v, mode="chunk", chunk_size=wkv_chunk)),
        "gla": (qkv_() + [gates(B, H, T, D)],
                lambda q, k, v, g: gla(q, k, v, g, mode="chunk", chunk_size=gated_chunk)),
        "wkv6": (qkv_() + [gates(B, H, T, D), rand(H, D)],
                 lambda r, k, v, w, u: wkv6(r, k, v, w, u, mode="chunk", chunk_size=gated_chunk)),
        "gated_delta_rule": ([rand(B, H, T, D), unit(B, H, T, D), rand(B, H, T, D),
                              torch.rand(B, H, T, device=device, dtype=dtype), gates(B, H, T)],
                             lambda q, k, v, beta, g: delta_rule(q, k, v, beta, g=g, mode="chunk",
                                                                 chunk_size=gated_chunk)),
        "wkv7": ([rand(B, H, T, D), rand(B, H, T, D), rand(B, H, T, D), gates(B, H, T, D, strength=0.6),
                  unit(B, H, T, D), torch.rand(B, H, T, D, device=device, dtype=dtype)],
                 lambda r, k, v, w, kk, a: wkv7(r, k, v, w, -kk, kk * a, mode="chunk", chunk_size=gated_chunk)),
    }


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, inputs, backward, device, repeats):
    """Best seconds over >= `repeats` calls after a warm-up, and peak bytes (CUDA only, else None), of one call."""
    inputs = [x.detach().requires_grad_(backward) for x in inputs]

    def once():
        if backward:
            fn(*inputs).float().sum().backward()
            for x in inputs:
                x.grad = None
        else:
            with torch.no_grad():
                fn(*inputs)

    once()  # warm-up: kernel selection, allocator caches
    sync(device)
    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        once()
        sync(device)
        peak = torch.cuda.max_memory_allocated(device) - base
    # Best of several calls: the minimum is the least disturbed by other processes sharing the machine.
    best, spent, n = float("inf"), 0.0, 0
    while n < repeats or (spent < 0.5 and n < 20):
        t0 = time.perf_counter()
        once()
        sync(device)
        dt = time.perf_counter() - t0
        best, spent, n = min(best, dt), spent + dt, n + 1
    return best, peak


def crossing(Ts, times, ref):
    """The first T from which the op stays faster than the reference, as text."""
    for i, T in enumerate(Ts):
        if all(times[j] < ref[j] for j in range(i, len(Ts))):
            return f"T >= {T}" if i else f"already at T = {T}"
    return f"not up to T = {Ts[-1]}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--min-T", type=int, default=512)
    p.add_argument("--max-T", type=int, default=None, help="largest T (default 8192 on CPU, 65536 on CUDA)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--dim", type=int, default=64, help="head size D")
    p.add_argument("--chunk-size", type=int, default=64, help="block length of linear_attention and retention")
    p.add_argument("--wkv-chunk-size", type=int, default=16, help="block length of wkv4 (its work grows with it)")
    p.add_argument("--gated-chunk-size", type=int, default=16,
                   help="block length of gla, wkv6, gated_delta_rule and wkv7 (their work grows with it)")
    p.add_argument("--ops", nargs="+", default=None, help="only these rivals (default: all); softmax always runs")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default PyTorch's); 1 is steadiest")
    p.add_argument("--repeats", type=int, default=3, help="least timed calls per point (more while under 0.5 s)")
    args = p.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    max_T = args.max_T or (65536 if device.type == "cuda" else 8192)
    Ts = [T for T in (2**i for i in range(6, 20)) if args.min_T <= T <= max_T]

    cmd = "python bench/scaling.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    print(f"# {cmd.strip()}")
    print(f"# torch {torch.__version__}, device {device} ({torch.get_num_threads()} threads), dtype {args.dtype}, "
          f"B={args.batch} H={args.heads} D={args.dim} "
          f"chunk={args.chunk_size} (wkv4: {args.wkv_chunk_size}, gated: {args.gated_chunk_size}); best of >= "
          f"{args.repeats} calls after a warm-up")
    results = {}  # (op, pass) -> list of seconds over Ts
    header = (f"{'T':>6} | {'op':<17} | {'fwd ms':>9} {'x sdpa':>7} | {'fwd+bwd ms':>10} {'x sdpa':>7} | "
              f"{'peak MiB f/fb':>13}")
    print(header)
    print("-" * len(header))
    for T in Ts:
        ops = make_ops(args.batch, args.heads, T, args.dim, device, dtype, args.chunk_size, args.wkv_chunk_size,
                       args.gated_chunk_size)
        unknown = sorted(set(args.ops or ()) - set(ops))
        if unknown:
            p.error(f"--ops {' '.join(unknown)}: unknown; choose from {', '.join(o for o in ops if 'sdpa' not in o)}")
        ops = {n: op for n, op in ops.items() if args.ops is None or n in args.ops or n == "softmax (sdpa)"}
        for name, (inputs, fn) in ops.items():
            (tf, mf), (tb, mb) = (measure(fn, inputs, bw, device, args.repeats) for bw in (False, True))
            results.setdefault((name, "f"), []).append(tf)
            results.setdefault((name, "fb"), []).append(tb)
            rf = tf / results[("softmax (sdpa)", "f")][-1]
            rb = tb / results[("softmax (sdpa)", "fb")][-1]
            mem = "n/a" if mf is None else f"{mf / 2**20:.0f}/{mb / 2**20:.0f}"
            row = f"{T:>6} | {name:<17} | {tf * 1e3:>9.1f} {rf:>7.2f} | {tb * 1e3:>10.1f} {rb:>7.2f} | {mem:>13}"
            print(row, flush=True)
    print()
    for name in ops:
        if name == "softmax (sdpa)":
            continue
        f = crossing(Ts, results[(name, "f")], results[("softmax (sdpa)", "f")])
        fb = crossing(Ts, results[(name, "fb")], results[("softmax (sdpa)", "fb")])
        print(f"{name:<17} faster than softmax: forward {f}; forward+backward {fb}")
    if device.type != "cuda":
        print("peak memory: not measured on CPU (PyTorch has no CPU allocator peak counter); use --device cuda.")


if __name__ == "__main__":
    main()
