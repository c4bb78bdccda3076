"""Numeric precision of a run: which one "auto" means on a device, and the autocast context the steps run under.

Mixed precision keeps float32 master weights, gradients and optimizer moments; only the autocast region (matrix
products, attention) computes in bf16 / fp16, and the loss is taken in float32. bf16 has float32's exponent range,
so it needs no loss scaling; fp16 does (a GradScaler, in the loop).
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware: a CUDA GPU with bf16 units (Ampere and later), or a
    CPU with AVX512-BF16 or AMX. (Elsewhere bf16 is emulated, which is slower than float32.)"""
    if device.type == "cuda":
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # older torch: no emulation to exclude
            return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # torch's own probes of the CPU's instruction sets (absent from some builds: then no claim is made)
        probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(probe is not None and probe() for probe in probes)
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``precision`` with "auto" made concrete: bf16 (autocast) where ``device`` has native bf16, else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def autocast(precision: str, device: torch.device) -> Callable[[], ContextManager]:
    """A factory of the context each forward runs in: nothing for fp32, ``torch.autocast`` otherwise."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)
