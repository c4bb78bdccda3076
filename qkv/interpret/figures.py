"""Figures of the analyses: a token-by-token matrix (rollout, flow) and a layers-by-heads grid (head importance).

matplotlib's object API (a Figure bound to an Agg canvas), so nothing touches pyplot's global state; the caller
saves with ``fig.savefig(path)`` or lets Jupyter display the Figure.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .ablation import HeadImportance


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_token_matrix(matrix, tokens: Sequence[str], *, title: str = "attention rollout", cmap: str = "Blues"):
    """A (T, T) matrix (e.g. ``rollout(w)[0, -1]`` or ``attention_flow(w)[0]``) as a heatmap: rows are the tokens
    after the stack (queries), columns the input tokens. Returns a matplotlib Figure.

    Example:

        >>> import torch
        >>> from qkv.interpret import plot_token_matrix, rollout
        >>> weights = [torch.softmax(torch.randn(1, 2, 4, 4), -1) for _ in range(3)]   # L x (B, H, T, T)
        >>> fig = plot_token_matrix(rollout(weights)[0, -1], ["the", "cat", "sat", "."])
        >>> fig.savefig("rollout.png"); type(fig).__name__, [t.get_text() for t in fig.axes[0].get_xticklabels()]
        ('Figure', ['the', 'cat', 'sat', '.'])
    """
    m = torch.as_tensor(matrix).detach().to("cpu", torch.float64)
    T = len(tokens)
    if m.shape != (T, T):
        raise ValueError(f"matrix has shape {tuple(m.shape)}: expected (T, T) = ({T}, {T}) from len(tokens)")
    side = min(9.0, 2.5 + 0.3 * T)
    fig = _figure(side + 1.0, side)
    ax = fig.subplots()
    im = ax.imshow(m.numpy(), cmap=cmap, vmin=0.0, interpolation="nearest")
    ax.set_xticks(range(T), [t.replace("$", r"\$") for t in tokens], rotation=90, fontsize=8)
    ax.set_yticks(range(T), [t.replace("$", r"\$") for t in tokens], fontsize=8)
    ax.set_xlabel("input token")
    ax.set_ylabel("token after the last layer")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=11)
    return fig


def plot_head_importance(importance: HeadImportance, *, title: str = "loss rise when one head is off"):
    """A (M, H) grid of ``importance.scores``, one row per attention sublayer, red where switching the head off
    raises the loss and blue where it lowers it, each cell labelled with its value. Returns a Figure.

    Example:

        >>> import torch, qkv
        >>> from qkv.interpret import head_importance, plot_head_importance
        >>> model, ids = qkv.build(qkv.preset("gpt2-tiny")).eval(), torch.tensor([[1, 2, 3, 4]])
        >>> imp = head_importance(model, lambda m: torch.nn.functional.cross_entropy(m(ids[:, :-1])[0], ids[0, 1:]))
        >>> fig = plot_head_importance(imp)                     # a matplotlib Figure: (M, H) cells
        >>> type(fig).__name__, fig.axes[0].get_title()
        ('Figure', 'loss rise when one head is off (base loss ...)')
    """
    s = importance.scores.numpy()
    M, H = s.shape
    fig = _figure(1.2 + 0.9 * H, 1.0 + 0.5 * M)
    ax = fig.subplots()
    top = float(abs(s[s == s]).max()) if (s == s).any() else 1.0
    ax.imshow(s, cmap="RdBu_r", vmin=-top or -1.0, vmax=top or 1.0, aspect="auto")
    for m in range(M):
        for h in range(H):
            if s[m, h] == s[m, h]:
                ax.text(h, m, f"{s[m, h]:+.3f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(H), [f"head {h}" for h in range(H)], fontsize=8)
    ax.set_yticks(range(M), importance.names, fontsize=8)
    ax.set_title(f"{title} (base loss {importance.base:.3f})", fontsize=10)
    return fig
