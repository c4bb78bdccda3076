"""Attention masks as boolean tensors: True = the query may attend to the key.

Every mask here has shape (T, S) (or broadcasts to (B, H, T, S)) and is built from positions, so one rule covers
training (T == S) and cached decoding (T new queries at the end of S keys): query i sits at key position
``i + (S - T)``. That bottom-right alignment is what makes a cached step see exactly what a full pass sees.
"""
from __future__ import annotations

import torch


def _positions(T: int, S: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Query positions (T, 1) and key positions (1, S), queries aligned to the end of the keys."""
    q_pos = torch.arange(S - T, S, device=device).unsqueeze(1)  # (T, 1)
    k_pos = torch.arange(S, device=device).unsqueeze(0)  # (1, S)
    return q_pos, k_pos


def causal_mask(T: int, S: int | None = None, *, device=None) -> torch.Tensor:
    """(T, S) lower-triangular mask: a query sees itself and the keys before it, never a later one.

    Example:

        >>> from qkv.ops import causal_mask
        >>> causal_mask(3).int()            # (T, S): query t sees keys 0..t
        tensor([[1, 0, 0],
                [1, 1, 0],
                [1, 1, 1]], dtype=torch.int32)
        >>> causal_mask(2, 4).int()         # T < S: the queries are the last T positions (a cache holds 2 more)
        tensor([[1, 1, 1, 0],
                [1, 1, 1, 1]], dtype=torch.int32)
    """
    S = T if S is None else S
    q_pos, k_pos = _positions(T, S, device)
    return k_pos <= q_pos


def window_mask(T: int, S: int | None = None, *, window: int, causal: bool = True, device=None) -> torch.Tensor:
    """(T, S) local attention: a query sees itself and the ``window`` positions before it (and, when not
    causal, the ``window`` positions after it too).

    Example:

        >>> from qkv.ops import window_mask
        >>> window_mask(4, window=1).int()   # causal: itself and the one key before it
        tensor([[1, 0, 0, 0],
                [1, 1, 0, 0],
                [0, 1, 1, 0],
                [0, 0, 1, 1]], dtype=torch.int32)
    """
    if not isinstance(window, int) or isinstance(window, bool) or window < 0:
        raise ValueError(f"window must be an int >= 0 (how many neighbours a query sees), got {window!r}")
    S = T if S is None else S
    q_pos, k_pos = _positions(T, S, device)
    near = (q_pos - k_pos).abs() <= window
    return near & (k_pos <= q_pos) if causal else near


def global_mask(T: int, S: int, global_tokens, *, device=None) -> torch.Tensor:
    """(T, S) pattern of global tokens (Longformer, Beltagy et al. 2020, sec. 3.1): a global position attends
    to every key and every query attends to it. Combine with a local mask by ``|``.

    ``global_tokens`` is a sequence of key positions or a bool tensor (S,).

    Example:

        >>> from qkv.ops import global_mask, window_mask
        >>> m = global_mask(4, 4, [0]) | window_mask(4, window=1, causal=False)   # Longformer: global token 0 + local
        >>> m.int()
        tensor([[1, 1, 1, 1],
                [1, 1, 1, 0],
                [1, 1, 1, 1],
                [1, 0, 1, 1]], dtype=torch.int32)
    """
    if isinstance(global_tokens, torch.Tensor) and global_tokens.dtype == torch.bool:
        if global_tokens.shape != (S,):
            raise ValueError(f"global_tokens as a bool tensor must have shape ({S},), got {tuple(global_tokens.shape)}")
        is_global = global_tokens.to(device)
    else:
        idx = torch.as_tensor(list(global_tokens) if not isinstance(global_tokens, torch.Tensor) else global_tokens,
                              dtype=torch.long, device=device)
        if idx.numel() and (idx.min() < 0 or idx.max() >= S):
            raise ValueError(f"global_tokens must be positions in [0, {S}), got {idx.tolist()}")
        is_global = torch.zeros(S, dtype=torch.bool, device=device)
        is_global[idx] = True
    q_pos, _ = _positions(T, S, device)
    q_global = is_global[q_pos.squeeze(1)].unsqueeze(1)  # (T, 1): is the query itself a global position?
    return q_global | is_global.unsqueeze(0)


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, 1, S) key-padding mask from a (B, S) tensor of 1 = real token, 0 = padding (Hugging Face style).

    Example:

        >>> import torch
        >>> from qkv.ops import padding_mask
        >>> m = padding_mask(torch.tensor([[1, 1, 0], [1, 1, 1]]))   # (B, S) 1 = token, 0 = padding
        >>> m.shape, m[0, 0, 0].tolist()                              # (B, 1, 1, S), broadcast over H and T
        (torch.Size([2, 1, 1, 3]), [True, True, False])
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (B, S) with 1 for tokens and 0 for padding, "
                         f"got shape {tuple(attention_mask.shape)}")
    return attention_mask.bool()[:, None, None, :]


def static_mask(slots: torch.Tensor, capacity: int, window: int | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B or 1, 1, T, capacity) mask for static decoding: queries at cache positions ``slots`` (T,) over every
    position of a preallocated cache. A query sees the written positions up to its own (and, with ``window``, only
    the ``window`` before it), and no padding (``attention_mask`` (B, capacity), 1 = token). Positions not yet
    written lie after every query, so the causal rule hides them too."""
    k_pos = torch.arange(capacity, device=slots.device)[None, :]  # (1, S)
    q_pos = slots[:, None]  # (T, 1)
    allowed = k_pos <= q_pos
    if window is not None:
        allowed = allowed & (q_pos - k_pos <= window)
    allowed = allowed[None, None]  # (1, 1, T, S)
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, None, :]
    return allowed
