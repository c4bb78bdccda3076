"""Positional information: attention itself is order-blind, so every family adds position somewhere.

- added to the embeddings: sinusoidal (Vaswani et al. 2017, sec. 3.5) and learned absolute positions;
- rotating q and k: RoPE (Su et al. 2021);
- biasing the logits: ALiBi (Press et al. 2022) and T5's bucketed relative bias (Raffel et al. 2020, sec. 2.1).
All take integer ``positions`` as tensors, so cached decoding just passes the positions of the new tokens.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..ops.checks import checks_values
from ..ops.rope import check_rope_scaling, dynamic_frequencies, scaled_frequencies, rope_tables


class SinusoidalPositions(nn.Module):
    """Fixed encodings PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)).

    ``interleaved=False`` puts all sines first and all cosines after (the Marian / fairseq layout); the
    frequencies are the same. No parameters; computed in float32 for the positions asked for.

    Example:

        >>> import torch
        >>> from qkv.nn import SinusoidalPositions
        >>> pe = SinusoidalPositions(8)(torch.arange(4))      # (T, d_model): sin, cos, sin, cos, ...
        >>> pe.shape, pe[0].tolist()                          # position 0: sin 0 = 0, cos 0 = 1
        (torch.Size([4, 8]), [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    """

    def __init__(self, d_model: int, *, base: float = 10000.0, interleaved: bool = True):
        super().__init__()
        if d_model % 2:
            raise ValueError(f"sinusoidal positions need an even d_model, got {d_model}")
        self.d_model, self.interleaved = d_model, interleaved
        self.register_buffer("inv_freq", base ** (-torch.arange(0, d_model, 2, dtype=torch.float32) / d_model),
                             persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """positions (..., T) -> (..., T, d_model) float32."""
        angles = positions.to(torch.float32).unsqueeze(-1) * self.inv_freq  # (..., T, d/2)
        if self.interleaved:
            return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)
        return torch.cat((angles.sin(), angles.cos()), dim=-1)


class LearnedPositions(nn.Embedding):
    """One learned vector per position (GPT-2, BERT, ViT). ``offset`` shifts the table (MBART keeps 2 spare rows).

    Example:

        >>> import torch
        >>> from qkv.nn import LearnedPositions
        >>> pos = LearnedPositions(16, 8)                   # max_positions 16, d_model 8
        >>> pos(torch.arange(5)).shape                      # (T,) -> (T, d_model)
        torch.Size([5, 8])
    """

    def __init__(self, max_positions: int, d_model: int, *, offset: int = 0):
        super().__init__(max_positions + offset, d_model)
        self.max_positions, self.offset = max_positions, offset

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        # A host read, skipped where values are trusted (decoding checks its positions before the run).
        if checks_values() and positions.numel() and int(positions.max()) >= self.max_positions:
            raise ValueError(f"position {int(positions.max())} is beyond the model's {self.max_positions} "
                             f"learned positions (max_positions)")
        return super().forward(positions + self.offset)


class RotaryEmbedding(nn.Module):
    """RoPE tables: positions -> (cos, sin), to be applied to q and k by ``MultiHeadAttention(rope=...)``.

    ``scaling`` extends the context as transformers' ``rope_parameters`` do (``qkv.ops.rope.ROPE_SCALINGS``:
    linear, dynamic, yarn, llama3, longrope). "dynamic" and "longrope" pick their frequencies from the longest
    position of each call (the largest of ``positions`` + 1), as transformers does, with tensor ops only.

    Example:

        >>> import torch
        >>> from qkv.nn import MultiHeadAttention, RotaryEmbedding
        >>> rope = RotaryEmbedding(4)                        # head_dim 4
        >>> cos, sin = rope(torch.arange(5))                 # (T, rotary_dim) each
        >>> out = MultiHeadAttention(8, 2)(torch.randn(1, 5, 8), causal=True, rope=(cos, sin))
        >>> cos.shape, out.shape
        (torch.Size([5, 4]), torch.Size([1, 5, 8]))
    """

    def __init__(self, head_dim: int, *, base: float = 10000.0, rotary_dim: int | None = None,
                 scaling: dict | None = None):
        super().__init__()
        self.rotary_dim, self.base = rotary_dim or head_dim, base
        self.scaling = None if scaling is None else check_rope_scaling(scaling, self.rotary_dim)
        inv_freq, self.attention_factor = scaled_frequencies(self.rotary_dim, base, self.scaling)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.kind = "default" if self.scaling is None else self.scaling["rope_type"]
        if self.kind == "longrope":
            self.register_buffer("long_inv_freq", scaled_frequencies(self.rotary_dim, base, self.scaling, long=True)[0],
                                 persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (T,) or (B, T) -> cos, sin of shape (..., T, rotary_dim), float32."""
        inv_freq = self.inv_freq
        if self.kind in ("dynamic", "longrope"):
            seq_len = positions.max() + 1  # a tensor: no host read
            if self.kind == "dynamic":
                inv_freq = dynamic_frequencies(self.rotary_dim, self.base, self.scaling, seq_len)
            else:
                longer = seq_len > self.scaling["original_max_position_embeddings"]
                inv_freq = torch.where(longer, self.long_inv_freq, self.inv_freq)
        return rope_tables(positions, inv_freq, self.attention_factor)


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """(H,) ALiBi slopes: the geometric sequence 2^(-8 i / n) for n a power of two; otherwise the slopes of the
    nearest lower power of two, then every other slope of the next power (Press et al. 2022, sec. 3).

    Example:

        >>> from qkv.nn import alibi_slopes
        >>> alibi_slopes(4).tolist()                         # 2^(-8 i / 4), i = 1..4
        [0.25, 0.0625, 0.015625, 0.00390625]
    """
    def powers(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(n_heads))
    slopes = powers(closest)
    if closest < n_heads:
        slopes += powers(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


class ALiBi(nn.Module):
    """Linear biases: logit(i, j) -= slope_h * |i - j|. No parameters, extrapolates to unseen lengths.

    Example:

        >>> import torch
        >>> from qkv.nn import ALiBi
        >>> bias = ALiBi(4)(torch.arange(3), torch.arange(3))   # (1, H, T, S), added to the logits
        >>> bias.shape, bias[0, 0].tolist()                       # head 0, slope 1/4
        (torch.Size([1, 4, 3, 3]), [[-0.0, -0.25, -0.5], [-0.25, -0.0, -0.25], [-0.5, -0.25, -0.0]])
    """

    def __init__(self, n_heads: int):
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(n_heads), persistent=False)

    def forward(self, q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor:
        """(T,), (S,) integer positions -> (1, H, T, S) float32 bias."""
        distance = (q_positions[:, None] - k_positions[None, :]).abs().to(torch.float32)  # (T, S)
        return -(self.slopes[:, None, None] * distance).unsqueeze(0)


class T5RelativeBias(nn.Module):
    """T5's learned bias per (head, bucket of relative distance). Small distances get a bucket each; larger ones
    share log-spaced buckets up to ``max_distance``; bidirectional models split the buckets between the two
    directions (Raffel et al. 2020, sec. 2.1).

    Example:

        >>> import torch
        >>> from qkv.nn import T5RelativeBias
        >>> rel = T5RelativeBias(2, num_buckets=8, max_distance=16)
        >>> b = rel(torch.arange(4), torch.arange(6))       # (1, H, T, S)
        >>> b.shape, torch.equal(b[0, :, 1, 2], b[0, :, 2, 3])   # the same distance, the same bias
        (torch.Size([1, 2, 4, 6]), True)
    """

    def __init__(self, n_heads: int, *, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True):
        super().__init__()
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.bias = nn.Embedding(num_buckets, n_heads)

    def bucket(self, relative: torch.Tensor) -> torch.Tensor:
        """relative = key position - query position (any shape) -> bucket ids in [0, num_buckets)."""
        n = self.num_buckets
        bucket = torch.zeros_like(relative)
        if self.bidirectional:
            n //= 2
            bucket = bucket + (relative > 0).long() * n  # keys after the query use the upper half
            distance = relative.abs()
        else:
            distance = (-relative).clamp(min=0)  # a causal model only looks back
        exact = n // 2
        # log-spaced buckets from `exact` up to `max_distance`, the last one open-ended
        log_ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(self.max_distance / exact)
        far = (exact + (log_ratio * (n - exact)).long()).clamp(max=n - 1)
        return bucket + torch.where(distance < exact, distance, far)

    def forward(self, q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor:
        """(T,), (S,) integer positions -> (1, H, T, S) bias, in the parameter dtype."""
        relative = k_positions[None, :] - q_positions[:, None]  # (T, S)
        return self.bias(self.bucket(relative)).permute(2, 0, 1).unsqueeze(0)
