"""Rotary position embedding (RoPE, Su et al. 2021): rotate pairs of q/k features by position-dependent angles,
so that q_m . k_n depends on m - n only.

Layout: the "rotate half" convention (GPT-NeoX, Hugging Face Llama): feature i pairs with feature i + d/2. The
tables and the rotation are computed in float32 and cast back (bf16 angles drift at long positions).
"""
from __future__ import annotations

import torch


def rope_frequencies(rotary_dim: int, base: float = 10000.0, device=None) -> torch.Tensor:
    """(rotary_dim / 2,) inverse frequencies base^(-2i / rotary_dim)."""
    if rotary_dim <= 0 or rotary_dim % 2:
        raise ValueError(f"rotary_dim must be a positive even number, got {rotary_dim}")
    if base <= 0:
        raise ValueError(f"rope base must be > 0, got {base}")
    exponents = torch.arange(0, rotary_dim, 2, device=device, dtype=torch.float32) / rotary_dim
    return base ** -exponents


def rope_tables(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for the given integer positions: (..., T) -> two (..., T, rotary_dim) float32 tensors."""
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq  # (..., T, rotary_dim / 2)
    angles = torch.cat((angles, angles), dim=-1)  # (..., T, rotary_dim)
    return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` features of x (B, H, T, D); the rest pass through (partial rotary).

    cos, sin: (T, rotary_dim) or (B, T, rotary_dim) from ``rope_tables``."""
    if cos.dim() == 3:  # per-sequence positions (left padding): broadcast over heads
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    xf = x_rot.to(torch.promote_types(x.dtype, torch.float32))  # float32 at least: never downcast float64
    rotated = (xf * cos + _rotate_half(xf) * sin).to(x.dtype)
    return torch.cat((rotated, x_pass), dim=-1) if x_pass.shape[-1] else rotated
