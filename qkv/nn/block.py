"""The residual block every family stacks: token mixer, optional cross-attention, FFN, each with residual + norm.

pre-norm (GPT-2, Llama, T5):          x = x + dropout(f(norm(x)))
post-norm ("Add & Norm", original):   x = norm(x + dropout(f(x)))      (Vaswani et al. 2017, sec. 5.4)
sandwich (Gemma 2/3):                 x = x + dropout(norm'(f(norm(x))))   a second norm on the sublayer's output
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .layers import make_norm


@dataclass
class BlockWeights:
    """Attention weights of one block, (B, H, T, S) each, when asked for (None where the block has none).

    Example:

        >>> import torch
        >>> from qkv.nn import Block, FeedForward, MultiHeadAttention
        >>> block = Block(8, MultiHeadAttention(8, 2), FeedForward(8, 16), cross=MultiHeadAttention(8, 2))
        >>> _, w = block(torch.randn(1, 3, 8), context=torch.randn(1, 6, 8), causal=True, return_weights=True)
        >>> w.self_attn.shape, w.cross_attn.shape                        # (B, H, T, T), (B, H, T, S)
        (torch.Size([1, 2, 3, 3]), torch.Size([1, 2, 3, 6]))
    """
    self_attn: torch.Tensor | None = None
    cross_attn: torch.Tensor | None = None


class Block(nn.Module):
    """One layer. ``mixer`` has MultiHeadAttention's forward contract (softmax attention or a linear-time layer);
    ``cross`` is a MultiHeadAttention over the encoder output (decoders of encoder-decoder models only).
    ``window`` is recorded for the stack, which passes it (or a mask holding it) to the mixer at each call.

    Example:

        >>> import torch
        >>> from qkv.nn import Block, FeedForward, MultiHeadAttention
        >>> block = Block(16, MultiHeadAttention(16, 4), FeedForward(16, 64, activation="gelu"), norm="layer")
        >>> x = torch.randn(2, 5, 16)                                   # (B, T, d_model)
        >>> y, weights = block(x, causal=True, return_weights=True)
        >>> y.shape, weights.self_attn.shape, weights.cross_attn        # (B, T, d_model), (B, H, T, T)
        (torch.Size([2, 5, 16]), torch.Size([2, 4, 5, 5]), None)
    """

    def __init__(self, d_model: int, mixer: nn.Module, ffn: nn.Module, *, cross: nn.Module | None = None,
                 norm: str = "layer", prenorm: bool = True, eps: float = 1e-5, norm_bias: bool = True,
                 dropout: float = 0.0, window: int | None = None, norm_offset: float = 0.0, sandwich: bool = False):
        super().__init__()
        self.prenorm = prenorm
        self.window = window  # sliding-window attention: the mixer sees this many earlier tokens (None: all)
        self.mixer, self.cross, self.ffn = mixer, cross, ffn

        def new_norm():
            return make_norm(norm, d_model, eps=eps, bias=norm_bias, offset=norm_offset)

        self.norm_mixer = new_norm()
        self.norm_cross = new_norm() if cross is not None else None
        self.norm_ffn = new_norm()
        # sandwich norms: on the mixer's and the FFN's outputs (the cross-attention sublayer has none)
        self.post_norm_mixer = new_norm() if sandwich else None
        self.post_norm_ffn = new_norm() if sandwich else None
        self.dropout = nn.Dropout(dropout)

    def _sublayer(self, x, norm, fn, post_norm=None):
        """Residual + norm around fn; returns (new x, fn's extra output or None)."""
        y = fn(norm(x) if self.prenorm else x)
        extra = None
        if isinstance(y, tuple):
            y, extra = y
        if post_norm is not None:
            y = post_norm(y)
        x = x + (self.dropout(y) if self.dropout.p else y)  # no module call at p = 0: decoding's hot path
        return (x if self.prenorm else norm(x)), extra

    def forward(self, x: torch.Tensor, *, context: torch.Tensor | None = None, mask=None, causal: bool = False,
                context_mask=None, cache=None, rope=None, bias=None, context_bias=None, window: int | None = None,
                return_weights: bool = False, token_mask=None):
        """x: (B, T, d_model); context: (B, S, d_model) encoder output when the block has cross-attention.

        mask / causal / window / rope / bias / token_mask go to the mixer; context_mask / context_bias to
        cross-attention. cache: a ``qkv.nn.cache.LayerCache`` (its ``mixer`` and ``cross`` entries) or None.
        Returns x, or (x, BlockWeights) when ``return_weights``."""
        weights = BlockWeights()
        mixer_cache = None if cache is None else cache.mixer
        x, weights.self_attn = self._sublayer(x, self.norm_mixer, lambda h: self.mixer(
            h, mask=mask, causal=causal, cache=mixer_cache, rope=rope, bias=bias, window=window,
            return_weights=return_weights, token_mask=token_mask), self.post_norm_mixer)
        if self.cross is not None:
            if context is None:
                raise ValueError("this block has cross-attention: pass context (the encoder output, (B, S, d_model))")
            cross_cache = None if cache is None else cache.cross
            x, weights.cross_attn = self._sublayer(x, self.norm_cross, lambda h: self.cross(
                h, context, mask=context_mask, cache=cross_cache, bias=context_bias, return_weights=return_weights))
        x, _ = self._sublayer(x, self.norm_ffn, self.ffn, self.post_norm_ffn)
        return (x, weights) if return_weights else x
