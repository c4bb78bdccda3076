"""Claim: qkv's chunked linear-time ops, plain PyTorch, against flash-linear-attention's Triton kernels on a GPU:
chunked forward + backward of GLA, RWKV-6, Gated DeltaNet and RWKV-7 at H = 16 heads of D = 128, 32k tokens a
batch, bfloat16 inputs. Prints ms per call for each and the ratio qkv / fla, and checks that both compute the same
function (max |difference| of the outputs, relative to their scale).

    python bench/vs_fla.py --device cuda                       # B=1, T=32768, H=16, D=128
    python bench/vs_fla.py --device cuda --tokens 8192 --ops gla wkv7

Needs CUDA and the `flash-linear-attention` package (import name `fla`); without either it says so and exits 0.
Layouts: qkv's ops take (B, H, T, D); fla's take (B, T, H, D), so inputs are made once in fla's layout and
transposed views go to qkv (the transposes are part of qkv's timed call). qkv's gated forms build a (C, C, D) tensor
of decays per block (C = --chunk-size), so their memory grows as T * C * D; fla keeps such blocks on chip.
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

from qkv.ops import delta_rule, gla, wkv6, wkv7  # noqa: E402

OPS = ("gla", "wkv6", "gated_delta_rule", "wkv7")


def inputs(name, B, T, H, D, device, dtype):
    """Tensors in fla's (B, T, H, D) layout with each op's constraints (log gates <= 0, unit keys for the delta
    rule, RWKV-7's a = -kk and b = kk * a)."""
    def rand(*shape, s=1.0):
        return (torch.randn(*shape, device=device) * s).to(dtype)

    g = -0.1 * torch.rand(B, T, H, D, device=device)  # log decays, float32
    if name == "gla":
        return dict(q=rand(B, T, H, D), k=rand(B, T, H, D), v=rand(B, T, H, D), g=g)
    if name == "wkv6":
        return dict(r=rand(B, T, H, D), k=rand(B, T, H, D), v=rand(B, T, H, D), w=g, u=rand(H, D, s=0.5))
    if name == "gated_delta_rule":
        return dict(q=rand(B, T, H, D), k=F.normalize(rand(B, T, H, D).float(), dim=-1).to(dtype),
                    v=rand(B, T, H, D), g=g[..., 0], beta=torch.rand(B, T, H, device=device).to(dtype))
    kk = F.normalize(torch.randn(B, T, H, D, device=device), dim=-1)
    a = torch.rand(B, T, H, D, device=device)
    return dict(r=rand(B, T, H, D), w=-0.6 * torch.rand(B, T, H, D, device=device), k=rand(B, T, H, D),
                v=rand(B, T, H, D), a=(-kk).to(dtype), b=(kk * a).to(dtype))


def ours(name, x, chunk):
    """qkv's chunk form on (B, H, T, D) views; returns (B, T, H, D) like fla."""
    t = lambda y: y.transpose(1, 2)  # noqa: E731  (B, T, H, ...) <-> (B, H, T, ...)
    if name == "gla":
        out = gla(t(x["q"]), t(x["k"]), t(x["v"]), t(x["g"]), mode="chunk", chunk_size=chunk)
    elif name == "wkv6":
        out = wkv6(t(x["r"]), t(x["k"]), t(x["v"]), t(x["w"]), x["u"], mode="chunk", chunk_size=chunk)
    elif name == "gated_delta_rule":
        out = delta_rule(t(x["q"]), t(x["k"]), t(x["v"]), t(x["beta"]), g=t(x["g"]), mode="chunk", chunk_size=chunk)
    else:
        out = wkv7(t(x["r"]), t(x["k"]), t(x["v"]), t(x["w"]), t(x["a"]), t(x["b"]), mode="chunk", chunk_size=chunk)
    return t(out)


def theirs(name, x):
    """flash-linear-attention's chunk kernel for the same function; returns (B, T, H, D)."""
    if name == "gla":
        from fla.ops.gla import chunk_gla
        out = chunk_gla(q=x["q"], k=x["k"], v=x["v"], g=x["g"], scale=x["q"].shape[-1] ** -0.5)
    elif name == "wkv6":
        from fla.ops.rwkv6 import chunk_rwkv6
        out = chunk_rwkv6(r=x["r"], k=x["k"], v=x["v"], w=x["w"], u=x["u"], scale=1.0)
    elif name == "gated_delta_rule":
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
        out = chunk_gated_delta_rule(q=x["q"], k=x["k"], v=x["v"], g=x["g"], beta=x["beta"],
                                     scale=x["q"].shape[-1] ** -0.5)
    else:
        from fla.ops.rwkv7 import chunk_rwkv7
        out = chunk_rwkv7(r=x["r"], w=x["w"], k=x["k"], v=x["v"], a=x["a"], b=x["b"], scale=1.0)
    return out[0] if isinstance(out, tuple) else out


def timed(fn, x, repeats):
    """Best ms of forward + backward over ``repeats`` calls after a warm-up (Triton autotunes on its first call)."""
    x = {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in x.items()}

    def once():
        fn(x).float().sum().backward()
        for v in x.values():
            v.grad = None

    once()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tokens", type=int, default=32768, help="tokens per sequence (T)")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--dim", type=int, default=128, help="head size D")
    p.add_argument("--chunk-size", type=int, default=16, help="qkv's block length (its memory grows with it)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    args = p.parse_args(argv)
    given = argv if argv is not None else sys.argv[1:]
    print("# python bench/vs_fla.py " + " ".join(shlex.quote(a) for a in given))
    device = torch.device(args.device)
    if device.type != "cuda" or not torch.cuda.is_available():
        print(f"skipped: flash-linear-attention runs on CUDA only (device {args.device}, "
              f"cuda available: {torch.cuda.is_available()})")
        return 0
    try:
        import fla  # noqa: F401
    except ImportError:
        print("skipped: flash-linear-attention is not installed (pip install flash-linear-attention)")
        return 0
    dtype = getattr(torch, args.dtype)
    B, T, H, D = args.batch, args.tokens, args.heads, args.dim
    print(f"# torch {torch.__version__}, {torch.cuda.get_device_name(device)}, {args.dtype}, B={B} T={T} H={H} "
          f"D={D}, qkv chunk {args.chunk_size}; forward+backward, best of {args.repeats} after a warm-up")
    print(f"{'op':<17} {'qkv ms':>10} {'fla ms':>10} {'qkv/fla':>8} {'max|diff|/scale':>16}")
    torch.manual_seed(0)
    for name in args.ops:
        x = inputs(name, B, T, H, D, device, dtype)
        try:
            with torch.no_grad():
                a, b = ours(name, x, args.chunk_size).float(), theirs(name, x).float()
            diff = ((a - b).abs().max() / b.abs().max().clamp(min=1e-6)).item()
            t_ours = timed(lambda y: ours(name, y, args.chunk_size), x, args.repeats)
            t_fla = timed(lambda y: theirs(name, y), x, args.repeats)
        except (TypeError, ImportError, RuntimeError) as e:  # an fla API change, or out of memory: say which
            print(f"{name:<17} skipped: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
            torch.cuda.empty_cache()
            continue
        print(f"{name:<17} {t_ours:>10.1f} {t_fla:>10.1f} {t_ours / t_fla:>8.2f} {diff:>16.2e}", flush=True)
        del x
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
