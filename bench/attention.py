"""Claim (issue 2): qkv.ops.attention's fast path costs nothing over raw PyTorch SDPA.

Times forward and forward+backward of causal scaled-dot attention, (B, H, T, D) inputs, for
  sdpa      torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
  qkv       qkv.ops.attention(q, k, v, causal=True)                       (the fast path)
  explicit  qkv.ops.attention(q, k, v, causal=True, return_weights=True)  (the reference path; materialises
            the (B, H, T, T) weights, so it is skipped above --explicit-cap-mib)
and prints a table of median milliseconds, the ratios qkv/sdpa and explicit/sdpa, and the command line.
The three are timed interleaved (sdpa, qkv, explicit, sdpa, ...) so that load from other processes hits all
of them alike. Run from anywhere: the script measures the qkv of the checkout it lives in.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from qkv.ops import attention  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--batch", type=int, default=1, help="B")
    p.add_argument("--heads", type=int, default=8, help="H")
    p.add_argument("--dim", type=int, default=64, help="D, the head size")
    p.add_argument("--min-T", dest="min_T", type=int, default=256, help="first sequence length")
    p.add_argument("--max-T", dest="max_T", type=int, default=None,
                   help="last sequence length, doubling from --min-T (default 8192 on GPU, 2048 on CPU, where "
                        "8192 takes minutes per call pair)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per entry; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per entry before timing")
    p.add_argument("--min-time", dest="min_time", type=float, default=0.05,
                   help="seconds per timed repeat at least: short calls are run several times per repeat")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice); 1 is steadier on a busy machine")
    p.add_argument("--explicit-cap-mib", dest="explicit_cap_mib", type=float, default=256.0,
                   help="skip the explicit path when one (B, H, T, T) float32 tensor exceeds this many MiB "
                        "(it holds several)")
    return p.parse_args(argv)


def command_line(args) -> str:
    return (f"python bench/attention.py --device {args.device} --dtype {args.dtype} --batch {args.batch} "
            f"--heads {args.heads} --dim {args.dim} --min-T {args.min_T} --max-T {args.max_T} "
            f"--repeats {args.repeats} --warmup {args.warmup} --min-time {args.min_time:g} "
            f"--explicit-cap-mib {args.explicit_cap_mib:g}"
            + ("" if args.threads is None else f" --threads {args.threads}"))


def make_fns(q, k, v, grad_out):
    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def fast():
        return attention(q, k, v, causal=True)

    def explicit():
        return attention(q, k, v, causal=True, return_weights=True)[0]

    def with_backward(fn):
        def run():
            out = fn()
            q.grad = k.grad = v.grad = None
            out.backward(grad_out)
        return run

    forward = {"sdpa": sdpa, "qkv": fast, "explicit": explicit}
    return forward, {name: with_backward(fn) for name, fn in forward.items()}


def time_interleaved(fns: dict, repeats: int, warmup: int, min_time: float, device: torch.device) -> dict:
    """Median seconds per call of each fn. Each repeat runs a fn ``number`` times (calibrated so a repeat lasts
    ``min_time`` at least: a single short call is mostly timer and scheduler noise); the fns take turns, so
    drifting load from other processes affects all alike."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    number = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        number[name] = max(1, math.ceil(min_time / (time.perf_counter() - t0)))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(number[name]):
                fn()
            sync()
            times[name].append((time.perf_counter() - t0) / number[name])
    return times


def summarise(times: dict) -> dict:
    """Median ms per fn, and each fn's ratio to sdpa as the median of the per-repeat ratios: the repeats are
    paired (timed back to back), so a load spike cancels in the ratio instead of skewing one median."""
    out = {name: (statistics.median(ts), None) for name, ts in times.items()}
    for name, ts in times.items():
        out[name] = (out[name][0], statistics.median(t / s for t, s in zip(ts, times["sdpa"])))
    return out


def main(argv=None):
    args = parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.max_T is None:
        args.max_T = 2048 if device.type == "cpu" else 8192
    B, H, D = args.batch, args.heads, args.dim
    torch.manual_seed(0)
    lengths = []
    T = args.min_T
    while T <= args.max_T:
        lengths.append(T)
        T *= 2

    rows = []
    for T in lengths:
        q, k, v = (torch.randn(B, H, T, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
        grad_out = torch.randn(B, H, T, D, device=device, dtype=dtype)
        forward, backward = make_fns(q, k, v, grad_out)
        weights_mib = B * H * T * T * 4 / 2 ** 20
        if weights_mib > args.explicit_cap_mib:
            forward.pop("explicit"), backward.pop("explicit")
        with torch.no_grad():
            fwd = summarise(time_interleaved(forward, args.repeats, args.warmup, args.min_time, device))
        fwd_bwd = summarise(time_interleaved(backward, args.repeats, args.warmup, args.min_time, device))
        flops = 4 * B * H * T * T * D / 2  # causal forward: two matmuls of 2*T*T*D over half the (T, T) square
        rows.append((T, fwd, fwd_bwd, flops, weights_mib))
        del q, k, v, grad_out, forward, backward

    def ms(entry):
        return "skipped" if entry is None else f"{1e3 * entry[0]:.2f}"

    def ratio(entry):
        return "-" if entry is None else f"{entry[1]:.3f}"

    print(f"# causal scaled-dot attention, B={B} H={H} D={D}, {args.dtype} on {args.device} "
          f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__})")
    print(f"# ms: median of {args.repeats} interleaved repeats (each >= {args.min_time:g} s) after {args.warmup} "
          f"warmup calls; ratios: median of the per-repeat ratios; explicit path skipped where one (B,H,T,T) "
          f"float32 tensor > {args.explicit_cap_mib:g} MiB")
    print()
    print("| T | pass | sdpa ms | qkv ms | explicit ms | qkv/sdpa | explicit/sdpa | sdpa TFLOP/s |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for T, fwd, fwd_bwd, flops, _ in rows:
        for label, t, work in (("fwd", fwd, flops), ("fwd+bwd", fwd_bwd, 3.5 * flops)):  # bwd = 2.5x fwd FLOPs
            expl = t.get("explicit")
            print(f"| {T} | {label} | {ms(t['sdpa'])} | {ms(t['qkv'])} | {ms(expl)} | {ratio(t['qkv'])} | "
                  f"{ratio(expl)} | {work / t['sdpa'][0] / 1e12:.3f} |")
    print()
    print(f"reproduce: {command_line(args)}")


if __name__ == "__main__":
    main()
