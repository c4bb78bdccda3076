"""Seeing attention: heatmap grids, an alignment plot, training curves and a self-contained HTML explorer.

Inputs are plain data, never a model: token strings and attention weights. A model returns, per attention
kind, a list over layers of weights (B, H, T, S); the caller picks one example and wraps it in
`AttentionMaps`. Shape letters: H heads, T query length, S key length.

Plots use matplotlib's object API (`Figure` + Agg canvas), so nothing touches pyplot's global state or the
user's chosen backend. The explorer is one HTML file with its CSS, JavaScript and data inline: it opens from
disk with no network. `AttentionMaps` and the explorer live in `qkv/viz_page.py` (its template beside it as
`viz_explorer.html`) and are imported from here, as every name of this module's `__all__` is.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

# The explorer's data and page live in viz_page.py (this module draws the PNGs); every name stays importable here.
from .viz_page import (EXPLORER_MIN_WEIGHT, KIND_NAMES, KINDS, Array, AttentionMaps, PathLike, explorer_data,
                       explorer_example, explorer_html, explorer_page)

__all__ = ["KINDS", "AttentionMaps", "visible_token", "plot_attention", "plot_alignment", "read_metrics", "plot_curves",
           "explorer_example", "explorer_data", "explorer_page", "explorer_html"]


# ---------------------------------------------------------------------------------------------------------------
# PNG plots
# ---------------------------------------------------------------------------------------------------------------

def _figure(width: float, height: float):
    """A Figure bound to an Agg canvas, never registered with pyplot (so no global state and nothing to close)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")   # constrained: room for suptitle and labels
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: PathLike, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def _token_fontsize(inches: float, n: int) -> float:
    """Tick-label size for n tokens along `inches` of axis: 60% of a row's height, between 5 and 10 pt."""
    return float(min(10.0, max(5.0, 0.6 * 72 * inches / max(n, 1))))


# How a whitespace token is drawn (the explorer's page draws them the same way: viz_explorer.html, shown()).
WHITESPACE_SIGNS = {"\n": "⏎", "\t": "⇥"}  # and "␣" for a space or any other blank


def visible_token(token: str) -> str:
    """A token as a person can see it: a token of whitespace only is spelt in signs ("␣" a space, "⏎" a line
    break, "⇥" a tab, "␣" any other blank), and a line break or tab inside any other token too (they would break
    a label's line); other text is left as it is ("" stays "").

    Example:

        >>> from qkv.viz import visible_token
        >>> [visible_token(t) for t in (" ", "\\n", "\\t", " cat")]   # only all-blank tokens change
        ['␣', '⏎', '⇥', ' cat']
    """
    text = token.replace("\r\n", "\n").replace("\r", "\n")
    if text.isspace():
        return "".join(WHITESPACE_SIGNS.get(c, "␣") for c in text)
    return "".join(WHITESPACE_SIGNS.get(c, c) for c in text)


def _label(token: str, width: int = 16) -> str:
    """A token as a tick label: whitespace made visible (``visible_token``), `$` escaped (matplotlib would read
    $...$ as TeX), and long tokens cut to `width` characters."""
    text = visible_token(token)
    text = text if len(text) <= width else text[: width - 1] + "…"
    return text.replace("$", r"\$")


# Colour scales of attention heatmaps. "linear": 0 to each head's largest weight, right for softmax rows. "log": a
# symmetric log scale over LOG_DECADES decades below each head's largest |weight|, for the implicit maps of
# recurrent mixers, whose rows fade geometrically into the past (a weight of 1e-2 is still a memory) and whose
# entries may be negative (retention, the delta rule): those are drawn red (> 0) and blue (< 0) about white 0.
SCALES = ("linear", "log")
LOG_DECADES = 3


def scale_note(scale: str, signed: bool = False) -> str:
    """How a figure's colours read, for its title."""
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}: expected one of {SCALES}")
    note = ("colour scaled per head" if scale == "linear" else
            f"colour: log scale, {LOG_DECADES} decades below each head's largest |weight|")
    return note + ("; red > 0, blue < 0" if signed else "")


def _colours(w: np.ndarray, scale: str, cmap: str, signed: bool | None = None):
    """(norm, cmap) for one (T, S) map: linear from 0 (or -max for signed maps) to its max |w|, or symmetric log.
    signed: draw it as a signed map (a figure with any negative weight draws every panel so); None: if w has one."""
    from matplotlib.colors import Normalize, SymLogNorm
    top = float(np.abs(w).max()) if w.size else 0.0
    top = top if top > 0 else 1.0
    signed = bool(w.size and w.min() < 0) if signed is None else signed
    low = -top if signed else 0.0
    if scale == "log":
        norm = SymLogNorm(linthresh=top * 10.0 ** -LOG_DECADES, linscale=0.2, vmin=low, vmax=top, base=10)
    else:
        norm = Normalize(vmin=low, vmax=top)
    return norm, ("RdBu_r" if signed else cmap)


def _heatmap(ax, w: np.ndarray, queries: Sequence[str], keys: Sequence[str], *, ylabels: bool, xlabels: bool,
             size: float, cmap: str = "Blues", scale: str = "linear", signed: bool | None = None):
    """Draw one (T, S) heatmap on `ax` (about `size` inches square), coloured from 0 to its own maximum (or as
    `scale` says, see SCALES); returns the image."""
    T, S = w.shape
    norm, cmap = _colours(w, scale, cmap, signed)
    im = ax.imshow(w, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(S))
    ax.set_yticks(range(T))
    ax.set_xticklabels([_label(k) for k in keys] if xlabels else [], rotation=90, fontsize=_token_fontsize(size, S))
    ax.set_yticklabels([_label(q) for q in queries] if ylabels else [], fontsize=_token_fontsize(size, T))
    ax.tick_params(length=0, pad=2)
    return im


def plot_attention(maps: AttentionMaps | Sequence[AttentionMaps], path: PathLike, *, title: str | None = None,
                   dpi: int = 100, scale: str = "linear") -> Path:
    """Save a grid of heatmaps, one per (layer, head): rows are layers, columns heads.

    Each panel is a (T, S) matrix with query tokens on y and key tokens on x (labelled on the left column and
    the bottom row, which every panel shares), coloured from 0 to that head's own maximum so diffuse and sharp
    heads are both visible. ``scale="log"`` colours by a symmetric log scale instead (see SCALES), for the
    decay-dominated, possibly signed maps of recurrent mixers; the title says which scale the figure uses. One
    colour bar reads every panel as a share of its head's largest |weight|, which each panel's title gives.
    Whitespace tokens are labelled with visible signs (``visible_token``). Several maps (an encoder-decoder's
    self, masked and cross attention) go into the one PNG, a grid each, stacked in their order under their kind's
    name (``title`` then heads the whole figure). Returns the path of the PNG.

    Example:

        >>> import torch
        >>> from qkv.viz import AttentionMaps
        >>> w = torch.softmax(torch.randn(2, 4, 3, 3), -1)         # 2 layers of (H, T, S)
        >>> maps = AttentionMaps("masked", list(w), ["the", " cat", " sat"], ["the", " cat", " sat"])
        >>> from qkv.viz import plot_attention
        >>> path = plot_attention(maps, "attention.png")             # a grid: 2 layers x 4 heads
        >>> path.name, path.read_bytes()[:4] == b"\\x89PNG"
        ('attention.png', True)
    """
    blocks = [maps] if isinstance(maps, AttentionMaps) else list(maps)
    if not blocks:
        raise ValueError("maps: expected an AttentionMaps or a non-empty list of them, got an empty list")
    signed = any(w is not None and bool((w < 0).any()) for m in blocks for w in m.layers)
    sizes = [_grid_size(m) for m in blocks]  # (cell, margin, width, height) of each grid, in inches
    if len(blocks) == 1:
        fig = _figure(sizes[0][2], sizes[0][3])
        _grid(fig, blocks[0], sizes[0][0], scale=scale, signed=signed,
              title=f"{title or KIND_NAMES[blocks[0].kind]} ({scale_note(scale, signed)})")
        return _save(fig, path, dpi)
    head = 0.5 if title else 0.0
    fig = _figure(max(w for _, _, w, _ in sizes), sum(h for *_, h in sizes) + head)
    parts = fig.subfigures(len(blocks), 1, height_ratios=[h for *_, h in sizes])
    for part, m, (cell, *_) in zip(parts, blocks, sizes):
        _grid(part, m, cell, scale=scale, signed=signed,
              title=f"{KIND_NAMES[m.kind]} ({scale_note(scale, signed)})")
    if title:
        fig.suptitle(title, fontsize=14)
    return _save(fig, path, dpi)


def _grid_size(maps: AttentionMaps) -> tuple[float, float, float, float]:
    """(panel side, label margin, width, height) in inches of one grid of L x H panels."""
    L, H = maps.n_layers, maps.n_heads
    T, S = len(maps.queries), len(maps.keys)
    # Panels grow with the token count (~0.15 in a token) so labels stay readable; the margin holds the
    # longest token at its font size (a character is about 0.6 em wide).
    cell = min(5.0, max(1.8, 0.14 * max(T, S) + 0.5))
    longest = max((len(_label(t)) for t in maps.queries + maps.keys), default=1)
    margin = min(2.5, 0.3 + 0.6 * longest * _token_fontsize(cell, max(T, S)) / 72)
    return cell, margin, H * cell + margin + 0.3 + _COLOURBAR_INCHES, L * (cell + 0.3) + margin + 0.5


def _grid(fig, maps: AttentionMaps, cell: float, *, scale: str, signed: bool, title: str) -> None:
    """One kind's L x H panels, its colour bar and its title, into ``fig`` (a figure or a subfigure)."""
    L, H = maps.n_layers, maps.n_heads
    axes = fig.subplots(L, H, squeeze=False)
    for l in range(L):
        for h in range(H):
            ax = axes[l][h]
            if maps.layers[l] is None:
                ax.set_axis_off()
                ax.text(0.5, 0.5, "no map", ha="center", va="center", transform=ax.transAxes, color="gray")
                continue
            w = maps.layers[l][h].numpy()
            _heatmap(ax, w, maps.queries, maps.keys, ylabels=h == 0, xlabels=l == L - 1, size=cell, scale=scale,
                     signed=signed)
            ax.set_title(f"layer {l} · head {h} (max {float(np.abs(w).max()) if w.size else 0.0:.2g})", fontsize=8)
    _colourbar(fig, axes, scale, signed)
    fig.suptitle(title, fontsize=12)


_COLOURBAR_INCHES = 0.9  # the colour bar and its label, right of the grid


def _colourbar(fig, axes, scale: str, signed: bool):
    """One colour bar for a grid whose panels are each scaled to their own largest |weight|: it reads a colour as
    a share of that largest weight (-1 to 1 for signed maps), on the figure's scale."""
    from matplotlib.cm import ScalarMappable
    norm, cmap = _colours(np.array([[-1.0 if signed else 0.0, 1.0]]), scale, "Blues", signed)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.9, aspect=30, pad=0.02)
    bar.set_label("weight / the head's largest |weight| (in its title)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return bar


def plot_alignment(weights: Array, queries: Sequence[str], keys: Sequence[str], path: PathLike, *,
                   title: str | None = None, dpi: int = 100) -> Path:
    """Save one large heatmap of weights (T, S), e.g. cross-attention of the last layer averaged over heads,
    where a word alignment between source (keys, x) and target (queries, y) shows as a near-diagonal path.
    Each row's strongest key is marked with a dot. Returns the path of the PNG.

    Example:

        >>> import torch
        >>> from qkv.viz import plot_alignment
        >>> w = torch.softmax(torch.randn(3, 4), -1)                # (T, S), e.g. cross-attention averaged over heads
        >>> path = plot_alignment(w, ["le", "chat", "</s>"], ["the", "cat", ".", "</s>"], "alignment.png")
        >>> path.name, path.stat().st_size > 0
        ('alignment.png', True)
    """
    w = torch.as_tensor(weights).detach().to("cpu", torch.float32).numpy()
    T, S = len(queries), len(keys)
    if w.shape != (T, S):
        raise ValueError(f"weights has shape {w.shape}: expected (T, S) = ({T}, {S}) from the token lists")
    side = min(12.0, max(4.0, 0.3 * max(T, S) + 2.0))
    fig = _figure(side * max(S, 1) / max(T, S, 1) + 2.0, side * max(T, 1) / max(T, S, 1) + 1.5)
    ax = fig.subplots()
    im = _heatmap(ax, w, queries, keys, ylabels=True, xlabels=True, size=side, cmap="viridis")
    if T and S:
        ax.scatter(w.argmax(axis=1), range(T), s=12, c="white", marker="o", linewidths=0)
    ax.set_xlabel("source (keys)")
    ax.set_ylabel("target (queries)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title or "alignment", fontsize=12)
    return _save(fig, path, dpi)


def read_metrics(source: PathLike | Iterable[Mapping]) -> list[dict]:
    """Records from a metrics .jsonl file (one JSON object a line, blank lines skipped) or an iterable of dicts.

    Example:

        >>> from pathlib import Path
        >>> from qkv.viz import read_metrics
        >>> lines = ['{"step": 1, "train_loss": 4.0}', "", '{"step": 2, "train_loss": 3.5}']
        >>> _ = Path("metrics.jsonl").write_text("\\n".join(lines) + "\\n")
        >>> read_metrics("metrics.jsonl")                          # blank lines skipped
        [{'step': 1, 'train_loss': 4.0}, {'step': 2, 'train_loss': 3.5}]
    """
    if isinstance(source, (str, Path)):
        records = []
        for n, line in enumerate(Path(source).read_text().splitlines(), 1):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{source}:{n}: not a JSON object ({e.msg})") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{source}:{n}: {type(record).__name__} where a JSON object was expected")
                records.append(record)
        return records
    return [dict(r) for r in source]


# Held-out quality series a run may log, drawn on their own axis in percent: (key, label, scale to percent).
QUALITY_SERIES = (("val_acc", "token accuracy (%)", 100.0), ("val_exact", "exact match (%)", 100.0),
                  ("val_bleu", "BLEU", 1.0))


def plot_curves(metrics: PathLike | Iterable[Mapping], path: PathLike, *, keys: Sequence[str] | None = None,
                log_y: bool = False, log_panel: bool = True, title: str | None = None,
                label_smoothing: float | None = None, dpi: int = 100) -> Path:
    """Save training curves: each series in `keys` (default: every key containing "loss", plus "train_nll")
    against "step"; beside it the same losses on a log scale (``log_panel``; not with ``log_y``, which draws the
    first panel so), where the late, small improvements a linear axis flattens stay visible; and by default a
    panel with the held-out quality a run logged (token accuracy, exact match, BLEU, in percent), when it
    logged any.

    Losses on one definition: val_loss is the plain cross-entropy; with label smoothing the optimised train_loss
    is not (it adds eps * the mean -log p over the vocabulary), so runs log train_nll, the plain cross-entropy of
    the training batches, which is drawn solid as "train" and train_loss dashed, and the panel says so.
    Records may omit any series (validation every N steps, a crashed log line): each series is drawn through
    the steps where it has a finite value, with markers when it is sparse. label_smoothing, when known (the
    training loop passes its eps), names train_loss for what it is. Returns the path of the PNG.

    Example:

        >>> from qkv.viz import plot_curves
        >>> records = [{"step": s, "train_loss": 4 / s, "val_loss": 4.5 / s, "val_acc": s / 10} for s in range(1, 6)]
        >>> path = plot_curves(records, "curves.png")               # losses, the same on a log scale, accuracy in %
        >>> path.name, path.read_bytes()[:4] == b"\\x89PNG"
        ('curves.png', True)
    """
    records = [r for r in read_metrics(metrics) if isinstance(r.get("step"), (int, float))]
    default = keys is None
    if keys is None:
        keys = sorted({k for r in records for k in r if "loss" in k or k == "train_nll"})
    smoothed = "train_nll" in keys and "train_loss" in keys
    plain = label_smoothing == 0 and not smoothed
    labels = {"train_nll": "train (cross-entropy)", "val_loss": "validation (cross-entropy)",
              "train_loss": f"train (with label smoothing {label_smoothing or ''}: the optimised loss)".replace(" :", ":")
              if smoothed else "train (cross-entropy)" if plain else "train_loss"}
    quality = [q for q in QUALITY_SERIES if default and any(_finite(r.get(q[0])) for r in records)]
    log_panel = log_panel and not log_y
    fig = _figure(7.0 + 5.0 * log_panel + 5.0 * bool(quality), 4.2)
    axes = fig.subplots(1, 1 + log_panel + bool(quality), squeeze=False)[0]
    for i, log in enumerate([log_y] + [True] * log_panel):
        _loss_panel(axes[i], records, keys, labels, smoothed, log)
    axes[0].set_title(title or ("training curves: solid lines on one definition (cross-entropy)" if smoothed
                                else "training curves: train and validation both cross-entropy" if plain
                                else "training curves"), fontsize=11)
    if log_panel:
        axes[1].set_title("the same, log scale", fontsize=11)
    if quality:
        qa = axes[-1]
        for key, label, scale in quality:
            pts = sorted((r["step"], scale * float(r[key])) for r in records if _finite(r.get(key)))
            qa.plot(*zip(*pts), label=label, marker="o", markersize=3, linewidth=1.4)
        qa.set_xlabel("step")
        qa.set_ylabel("percent (BLEU: 0-100)")
        qa.set_ylim(0, 101)
        qa.grid(True, alpha=0.3)
        qa.legend(frameon=False, fontsize=8)
        qa.set_title("held-out quality", fontsize=11)
    return _save(fig, path, dpi)


def _loss_panel(ax, records, keys, labels, smoothed: bool, log: bool) -> None:
    """The loss series on one axis, linear or log (where only positive values are drawn)."""
    for key in keys:
        pts = [(r["step"], float(r[key])) for r in records if _finite(r.get(key)) and (not log or r[key] > 0)]
        if not pts:
            continue
        steps, values = zip(*sorted(pts))
        sparse = len(pts) < 0.5 * len(records) or len(pts) < 20
        ax.plot(steps, values, label=labels.get(key, key), marker="o" if sparse else None, markersize=3,
                linewidth=1.0 if key == "train_loss" and smoothed else 1.4,
                linestyle="--" if key == "train_loss" and smoothed else "-")
    if log and ax.lines:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss per target token" + (" (log scale)" if log else ""))
    ax.grid(True, alpha=0.3, which="both" if log else "major")
    if ax.lines:
        ax.legend(frameon=False, fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

