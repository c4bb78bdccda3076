"""Local attention (Luong et al. 2015, sec. 3.2): soft attention inside a window [p_t - D, p_t + D] of the source,
around an aligned position p_t chosen for each target step.

    local-m (monotonic)  p_t = t: source and target assumed roughly aligned word for word
    local-p (predictive) p_t = S * sigmoid(v_p^T tanh(W_p h_t))                      (eq. 9)
                         a_t(s) = align(h_t, h_s) * exp(-(s - p_t)^2 / (2 sigma^2)), sigma = D / 2   (eq. 10)

``align`` is the global model's softmax of scores (eq. 7), restricted to the window; the window is the "hard"
choice (a region of the source), the weights inside it are soft, and local-p's Gaussian favours the positions
near p_t (so the gradient reaches p_t through it; the window's edges pass none). Positions count the source's
tokens from 1, as the paper does (s = 1 .. S), skipping padding wherever it lies in the row, so a padded row sees
the windows it sees alone.

Glossary: B batch, H heads (1 in the recurrent models), T target steps, S source positions, D head size.
This is the one form: every key is scored and the window is a mask, O(S) per step rather than O(D); the
tests hold it equal to the paper's equations written out step by step.
"""
from __future__ import annotations

import torch

from .attention import attention


def source_positions(mask: torch.Tensor | None, S: int, *, device=None,
                     dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions (B or 1, S), lengths (B or 1, 1)): each key's place among its row's tokens, counted from 1
    (a padding key gets its last token's place: it is masked anyway), and each row's number of tokens S.

    mask: (B, S), 1 = token, 0 = padding, or None (no padding)."""
    if mask is None:
        positions = torch.arange(1, S + 1, device=device, dtype=dtype)[None]  # (1, S)
        return positions, torch.full((1, 1), float(S), device=device, dtype=dtype)
    counts = mask.to(dtype).cumsum(-1)  # (B, S)
    return counts, counts[:, -1:]


def predicted_centers(h: torch.Tensor, W_p: torch.Tensor, v_p: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Luong et al. 2015, eq. (9): p_t = S * sigmoid(v_p^T tanh(W_p h_t)), a real position in [0, S].

    h: (B, T, Dq) decoder states; W_p: (A, Dq); v_p: (A,); lengths: (B or 1, 1) source lengths S.
    Returns (B, T)."""
    return lengths * torch.sigmoid(torch.tanh(h @ W_p.transpose(-2, -1)) @ v_p)


def local_window(centers: torch.Tensor, positions: torch.Tensor, half_width: int) -> torch.Tensor:
    """(B, T, S) bool: source position s is in the window [p_t - D, p_t + D] of step t.

    centers: (B, T) aligned positions p_t; positions: (B or 1, S) from ``source_positions``; half_width: D."""
    return (positions[:, None, :] - centers[..., None]).abs() <= half_width


def gaussian_window(centers: torch.Tensor, positions: torch.Tensor, half_width: int) -> torch.Tensor:
    """(B, T, S) Luong et al. 2015, eq. (10)'s factor exp(-(s - p_t)^2 / (2 sigma^2)) with sigma = D / 2."""
    sigma = half_width / 2
    return torch.exp(-(positions[:, None, :] - centers[..., None]) ** 2 / (2 * sigma ** 2))


def local_attention(q, k, v, centers, positions, *, half_width: int, gaussian: bool, mask=None,
                    score: str = "dot", params=None, scale=None):
    """Soft attention inside each step's window (Luong et al. 2015, sec. 3.2).

    Args:
        q: (B, H, T, D) queries (the decoder states h_t); k: (B, H, S, Dk) keys; v: (B, H, S, Dv) values.
        centers: (B, T) the aligned positions p_t (local-m: t; local-p: ``predicted_centers``).
        positions: (B or 1, S) each key's place from ``source_positions``.
        half_width: D, an int >= 0 (>= 1 with ``gaussian``: sigma = D / 2 must be positive).
        gaussian: multiply the window's weights by eq. (10)'s Gaussian (local-p); they then sum to less than 1.
        mask: bool, True = may attend, broadcastable to (B, H, T, S) (the source padding).
        score, params, scale: as ``qkv.ops.attention``.

    Returns (out (B, H, T, Dv), weights (B, H, T, S)): zero outside the window, and a step whose window holds no
    token (local-m past the end of a short source) gets zero weights and a zero context.

    Example:

        >>> import torch
        >>> from qkv.ops import local_attention
        >>> q, k = torch.randn(1, 1, 3, 8), torch.randn(1, 1, 6, 8)  # 3 decoder steps over a source of S = 6
        >>> centers = torch.tensor([[1., 2., 3.]])                   # local-m: p_t = t
        >>> out, w = local_attention(q, k, k, centers, torch.arange(1., 7.)[None], half_width=1, gaussian=False)
        >>> (w[0, 0] > 0).int()                                      # each step reads [p_t - 1, p_t + 1]
        tensor([[1, 1, 0, 0, 0, 0],
                [1, 1, 1, 0, 0, 0],
                [0, 1, 1, 1, 0, 0]], dtype=torch.int32)
    """
    if not isinstance(half_width, int) or isinstance(half_width, bool) or half_width < (1 if gaussian else 0):
        raise ValueError(f"half_width must be an int >= {1 if gaussian else 0} (the window's half-width D"
                         f"{'; sigma = D / 2 must be positive' if gaussian else ''}), got {half_width!r}")
    window = local_window(centers, positions, half_width)[:, None]  # (B, 1, T, S)
    allowed = window if mask is None else window & mask
    _, weights = attention(q, k, v, score=score, mask=allowed, params=params, scale=scale, return_weights=True)
    if gaussian:
        weights = weights * gaussian_window(centers, positions, half_width)[:, None].to(weights.dtype)
    return weights @ v, weights
