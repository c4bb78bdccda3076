"""y = x W^T + b, the matmul every layer is made of, with a faster CPU kernel for decoding.

On CPU, ``F.linear`` in float32 goes to MKL's GEMM. When a decoder reads a few tokens per step (M = 1 to ~20
rows: greedy, beams, a speculative check), the weights are read cold from memory on every step, and there MKL is
slow: on a 2-core AMD EPYC, the 24 weight matrices of a 6 x 384 GPT took 3.9 ms for one token and 4.9 ms for five
with F.linear, 2.2 ms and 3.1 ms through oneDNN's linear (PyTorch's ``mkldnn._linear_pointwise``, the kernel
inductor itself uses on CPU). oneDNN costs about 15 us more per call, so small weights that sit in cache (a draft
model's) stay faster with MKL; the fast path is taken from ``ONEDNN_MIN_WEIGHTS`` weights up.

``backend``: "auto" (the fast path where it applies: float32 CPU tensors, no autograd, no autocast, not inside
torch.compile, weights large enough, oneDNN present), "torch" (always ``F.linear``: the reference), "onednn"
(force it where it can run at all; a ValueError where it cannot). Both give the same result up to float32
rounding (tested against a float64 product).

Most of oneDNN's time on a plain weight goes to reordering it into its blocked layout, on every call. ``pack_weight``
does that once; ``linear(..., packed=pack_weight(w))`` then multiplies from the copy: 1.6 ms for one token and
1.5 ms for five on the same 24 matrices, and 56 against F.linear's 73 ms for 512 rows. The copy costs the memory of
the weight again, so it is made only where asked (``qkv.nn.packed_weights``, which decoding uses). bfloat16
weights pack too: F.linear computes them with oneDNN already, reordering on every call; packed, the same 24
matrices took 0.93 against 1.66 ms for one row, with the same results.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ONEDNN_MIN_WEIGHTS = 1 << 17  # 131072 weights (512 KiB in float32): below this MKL's lower call cost wins
ONEDNN_DTYPES = (torch.float32, torch.bfloat16)
PACK_BATCH_HINT = 16  # the rows oneDNN's blocked layout is chosen for; 4 to 64 measured alike for 1 to 512 rows
BACKENDS = ("auto", "torch", "onednn")

_onednn_works: bool | None = None  # probed once, on first use


def onednn_available() -> bool:
    """oneDNN's linear is present and correct in this PyTorch build (probed once against F.linear)."""
    global _onednn_works
    if _onednn_works is None:
        try:
            x, w, b = torch.randn(3, 8), torch.randn(5, 8), torch.randn(5)
            with torch.no_grad():
                y = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
            _onednn_works = bool(torch.backends.mkldnn.is_available()) and \
                torch.allclose(y, F.linear(x, w, b), rtol=1e-5, atol=1e-5)
        except (AttributeError, RuntimeError, NotImplementedError):
            _onednn_works = False
    return _onednn_works


def _onednn_applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """oneDNN can compute this product: float32 or bfloat16 on the CPU, nothing to differentiate, eager mode, no
    autocast (which would have F.linear compute in its own precision), not empty."""
    return (x.device.type == "cpu" and x.dtype == weight.dtype and x.dtype in ONEDNN_DTYPES
            and not torch.is_autocast_enabled("cpu")
            and (bias is None or bias.dtype == x.dtype) and x.numel() > 0 and x.dim() >= 2
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                  or (bias is not None and bias.requires_grad)))
            and not torch.compiler.is_compiling() and onednn_available())


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """oneDNN's blocked copy of a float32 or bfloat16 CPU ``weight`` (out, in), for ``linear(..., packed=...)``. An
    opaque tensor: it can be multiplied with, not read, copied or saved. The caller keeps it in step with ``weight``.

    Example:

        >>> import torch
        >>> from qkv.ops import linear, pack_weight
        >>> x, w = torch.randn(4, 64), torch.randn(32, 64)
        >>> with torch.no_grad():
        ...     y = linear(x, w, packed=pack_weight(w))   # multiplied from oneDNN's blocked copy where it runs
        >>> torch.allclose(y, x @ w.T, atol=1e-4)
        True
    """
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"pack_weight takes a weight tensor (out, in), got {type(weight).__name__}")
    if not (weight.device.type == "cpu" and weight.dtype in ONEDNN_DTYPES and weight.dim() == 2):
        raise ValueError(f"pack_weight takes a 2-D float32 or bfloat16 CPU weight, got {weight.dtype} on "
                         f"{weight.device.type} of shape {tuple(weight.shape)}")
    if not onednn_available():
        raise ValueError("pack_weight needs PyTorch's oneDNN (mkldnn) linear, which this build lacks")
    with torch.no_grad():
        return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_BATCH_HINT)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
           backend: str = "auto", packed: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., in) @ weight (out, in)^T + bias (out,) -> (..., out). ``backend`` as the module docstring says;
    ``packed``: ``pack_weight(weight)``, multiplied from instead of ``weight`` whenever the oneDNN path runs.

    Example:

        >>> import torch
        >>> from qkv.ops import linear
        >>> x, w, b = torch.randn(2, 3, 8), torch.randn(16, 8), torch.randn(16)
        >>> y = linear(x, w, b)                       # (..., in) -> (..., out)
        >>> y.shape, torch.allclose(y, x @ w.T + b, atol=1e-5)
        (torch.Size([2, 3, 16]), True)
    """
    if packed is not None and (packed.shape != weight.shape or packed.dtype != weight.dtype):
        raise ValueError(f"packed is the copy of a {packed.dtype} weight of shape {tuple(packed.shape)}, not of this "
                         f"{weight.dtype} weight of shape {tuple(weight.shape)}: expected pack_weight(weight)")
    if backend == "auto":  # bfloat16's F.linear is oneDNN already: only its packed form differs
        if (packed is not None or (weight.dtype == torch.float32 and weight.numel() >= ONEDNN_MIN_WEIGHTS)) \
                and _onednn_applies(x, weight, bias):
            return torch.ops.mkldnn._linear_pointwise(x, weight if packed is None else packed, bias, "none", [], "")
        return F.linear(x, weight, bias)
    if backend == "torch":
        return F.linear(x, weight, bias)
    if backend == "onednn":
        if not _onednn_applies(x, weight, bias):
            raise ValueError(f"backend='onednn' computes float32 or bfloat16 CPU products without autograd in eager "
                             f"mode where PyTorch has oneDNN; got x {x.dtype} on {x.device.type} of shape "
                             f"{tuple(x.shape)}, weight {weight.dtype}, "
                             f"grad {'on' if torch.is_grad_enabled() else 'off'}")
        return torch.ops.mkldnn._linear_pointwise(x, weight if packed is None else packed, bias, "none", [], "")
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
