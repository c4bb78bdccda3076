"""Norms and feed-forward networks, the parts of a block around the token mixer, and the Linear layer they use."""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.linear import ONEDNN_DTYPES, ONEDNN_MIN_WEIGHTS, linear, onednn_available, pack_weight


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict keys) computed by ``qkv.ops.linear``: without autograd on CPU,
    large float32 weights take oneDNN's kernel, and inside ``packed_weights`` float32 and bfloat16 ones take it from
    a packed copy.

    Example:

        >>> import torch
        >>> from qkv.nn import Linear
        >>> layer = Linear(8, 4)                                # nn.Linear's parameters and state-dict keys
        >>> x = torch.randn(2, 3, 8)
        >>> reference = torch.nn.functional.linear(x, layer.weight, layer.bias)
        >>> sorted(layer.state_dict()), layer(x).shape, torch.allclose(layer(x), reference)
        (['bias', 'weight'], torch.Size([2, 3, 4]), True)
    """

    packed: tuple | None = None  # (the weight's identity when packed, pack_weight(weight)), set by packed_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = None if torch.compiler.is_compiling() else self.packed  # a compiler chooses its own kernels
        if packed is not None and packed[0] != _identity(self.weight):
            packed = None  # the weight was replaced or changed in place since: multiply from the weight itself
        return linear(x, self.weight, self.bias, packed=None if packed is None else packed[1])

    def __getstate__(self):
        """Copies and pickles leave the packed copy behind (an opaque oneDNN tensor has no storage to copy)."""
        state = self.__dict__.copy()
        state.pop("packed", None)
        return state


def _identity(weight: torch.Tensor) -> tuple[int, int]:
    """Where the weight lives and how often it was written in place (inference tensors keep no count)."""
    try:
        return weight.data_ptr(), weight._version
    except RuntimeError:
        return weight.data_ptr(), 0


@contextmanager
def packed_weights(model: nn.Module, *, max_bytes: int | None = None):
    """Inside, every ``Linear`` of ``model`` with a large weight on CPU (float32 or bfloat16, at least
    ``ONEDNN_MIN_WEIGHTS``) multiplies through oneDNN from a packed copy made on entering and dropped on leaving:
    about twice the speed of a decode step, for one more copy of those weights in memory. Nothing is packed (plain
    weights, the same results up to rounding) where the copies would take more than ``max_bytes``. Nested use
    packs nothing twice.

    Example:

        >>> import torch
        >>> from qkv.nn import Linear, packed_weights
        >>> model, x = torch.nn.Sequential(Linear(512, 512)), torch.randn(1, 512)   # 262144 weights: large enough
        >>> with torch.no_grad(), packed_weights(model):
        ...     y = model(x)                                  # multiplied from oneDNN's packed copy
        >>> torch.allclose(y, model(x), atol=1e-4)            # the same results up to rounding
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"packed_weights takes a model (an nn.Module), got {type(model).__name__}")
    if max_bytes is not None and (not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0):
        raise ValueError(f"max_bytes must be None or an int >= 0, got {max_bytes!r}")
    layers = [m for m in model.modules() if isinstance(m, Linear) and m.packed is None
              and m.weight.device.type == "cpu" and m.weight.dtype in ONEDNN_DTYPES
              and m.weight.numel() >= ONEDNN_MIN_WEIGHTS]
    nbytes = sum({id(m.weight): m.weight.nbytes for m in layers}.values())
    if not layers or not onednn_available() or (max_bytes is not None and nbytes > max_bytes):
        yield
        return
    packs: dict[int, torch.Tensor] = {}  # one copy of a weight shared by two layers (a tied head)
    try:
        for m in layers:
            if id(m.weight) not in packs:
                packs[id(m.weight)] = pack_weight(m.weight)
            m.packed = (_identity(m.weight), packs[id(m.weight)])
        yield
    finally:
        for m in layers:
            m.packed = None


class RMSNorm(nn.Module):
    """x / rms(x) * g (Zhang & Sennrich 2019): LayerNorm without centring or bias. Computed in float32.

    ``offset`` scales by (offset + g) instead (Gemma: offset 1, gains stored around 0, initialised at 1 - offset);
    that form also multiplies before casting back, in float32, as Gemma does.

    Example:

        >>> import torch
        >>> from qkv.nn import RMSNorm
        >>> y = RMSNorm(8)(torch.randn(2, 3, 8) * 5)
        >>> torch.allclose(y.pow(2).mean(-1), torch.ones(2, 3), atol=1e-3)    # unit root mean square, no centring
        True
    """

    def __init__(self, dim: int, *, eps: float = 1e-6, offset: float = 0.0):
        super().__init__()
        self.eps, self.offset = eps, offset
        self.weight = nn.Parameter(torch.full((dim,), 1.0 - offset))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # float32 at least: never downcast float64
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.offset:
            return (normed * (self.offset + self.weight.to(normed.dtype))).to(x.dtype)
        # Cast back, then scale in the input dtype (Llama's order), so bf16 in gives bf16 out even when the
        # gain is float32 (autocast / mixed precision keep parameters in float32).
        return normed.to(x.dtype) * self.weight.to(x.dtype)


class LayerNorm(nn.LayerNorm):
    """LayerNorm (Ba et al. 2016), computed in float32 and cast back, with an optional bias.

    Example:

        >>> import torch
        >>> from qkv.nn import LayerNorm
        >>> y = LayerNorm(8)(torch.randn(2, 3, 8) * 5 + 1)
        >>> mean, var = y.mean(-1), y.var(-1, unbiased=False)              # per position, over d_model
        >>> torch.allclose(mean, torch.zeros(2, 3), atol=1e-5), torch.allclose(var, torch.ones(2, 3), atol=1e-3)
        (True, True)
    """

    def __init__(self, dim: int, *, eps: float = 1e-5, bias: bool = True):
        super().__init__(dim, eps=eps, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float32, torch.float64):
            return super().forward(x)
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


NORMS = ("layer", "rms")
"""The norms ``make_norm`` builds, by name (``ModelConfig.norm``).

Example:

    >>> from qkv.nn import NORMS
    >>> NORMS
    ('layer', 'rms')
"""


def make_norm(kind: str, dim: int, *, eps: float, bias: bool = True, offset: float = 0.0) -> nn.Module:
    """A norm by name; ``offset`` is RMSNorm's gain offset (see ``RMSNorm``), which LayerNorm does not have.

    Example:

        >>> from qkv.nn import NORMS, make_norm
        >>> [type(make_norm(kind, 8, eps=1e-5)).__name__ for kind in NORMS]
        ['LayerNorm', 'RMSNorm']
    """
    if kind == "layer":
        if offset:
            raise ValueError(f"norm offset {offset} is an RMSNorm option; LayerNorm has none")
        return LayerNorm(dim, eps=eps, bias=bias)
    if kind == "rms":
        return RMSNorm(dim, eps=eps, offset=offset)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


PLAIN_ACTIVATIONS = {
    "relu": F.relu,  # the original Transformer
    "gelu": F.gelu,  # BERT (erf form)
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's "gelu_new"
    "silu": F.silu,
}
_GATED = {"swiglu": F.silu, "geglu": F.gelu, "geglu_tanh": lambda x: F.gelu(x, approximate="tanh"),
          "reglu": F.relu}
ACTIVATIONS = tuple(PLAIN_ACTIVATIONS) + tuple(_GATED)
"""The activations ``FeedForward`` takes by name: the plain ones, then the gated ones (``*glu``).

Example:

    >>> import torch
    >>> from qkv.nn import ACTIVATIONS, FeedForward
    >>> {"relu", "gelu", "swiglu"} <= set(ACTIVATIONS)
    True
    >>> all(FeedForward(8, 16, activation=a)(torch.randn(1, 2, 8)).shape == (1, 2, 8) for a in ACTIVATIONS)
    True
"""


class FeedForward(nn.Module):
    """The position-wise FFN: W_2 act(W_1 x) (Vaswani et al. 2017, sec. 3.3), or a gated one,
    W_2 (act(W_gate x) * W_up x) (Shazeer 2020: SwiGLU, GeGLU).

    Gated variants keep gate and up in one matrix ``w_in`` of 2 * d_ff rows, [W_gate; W_up]: one matmul.
    ``dropout`` acts on the hidden activations (T5 puts it there; GPT-2 and BERT do not).

    Example:

        >>> import torch
        >>> from qkv.nn import FeedForward
        >>> ffn = FeedForward(16, 32, activation="swiglu")     # gated: w_in holds [W_gate; W_up], 2 * d_ff rows
        >>> ffn(torch.randn(2, 5, 16)).shape, tuple(ffn.w_in.weight.shape)
        (torch.Size([2, 5, 16]), (64, 16))
    """

    def __init__(self, d_model: int, d_ff: int, *, activation: str = "relu", bias: bool = True, dropout: float = 0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.gated = activation in _GATED
        self.act = _GATED[activation] if self.gated else PLAIN_ACTIVATIONS[activation]
        self.d_ff = d_ff
        self.w_in = Linear(d_model, (2 if self.gated else 1) * d_ff, bias=bias)
        self.w_out = Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.w_in(x)
        if self.gated:
            gate, up = h.split(self.d_ff, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.w_out(self.dropout(h) if self.dropout.p else h)
