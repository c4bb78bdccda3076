"""The attention explorer's data and page: ``AttentionMaps`` (one example's weights for one attention kind, across
layers), the JSON payload the page reads (``explorer_example``, ``explorer_data``) and the page itself
(``explorer_page``, ``explorer_html``). Everything here is re-exported by ``qkv.viz``: import it from there.

Inputs are plain data, never a model: token strings and attention weights. Shape letters: H heads, T query length,
S key length. The page is one HTML file with its CSS, JavaScript and data inline: it opens from disk with no
network, and its template lives beside this file as ``viz_explorer.html`` (a package resource).
"""
from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np
import torch

__all__ = ["KINDS", "AttentionMaps", "explorer_example", "explorer_data", "explorer_page", "explorer_html"]

KINDS = ("self", "masked", "cross")
"""The attention kinds the explorer and ``AttentionMaps`` know: an encoder's bidirectional self-attention, a
decoder's causal (masked) self-attention, and cross-attention from the target to the source.

Example:

    >>> from qkv.viz import KINDS, AttentionMaps
    >>> KINDS
    ('self', 'masked', 'cross')
    >>> AttentionMaps("causal", [[[[1.0]]]], ["a"], ["a"])
    Traceback (most recent call last):
    ValueError: kind='causal': expected one of ('self', 'masked', 'cross')
"""
KIND_NAMES = {"self": "self-attention", "masked": "masked self-attention", "cross": "cross-attention"}
# Lines fainter than this are not drawn in the explorer; tests count lines against the same number.
EXPLORER_MIN_WEIGHT = 0.01

PathLike = Union[str, Path]
Array = Union[torch.Tensor, np.ndarray]


@dataclass
class AttentionMaps:
    """The attention weights of one example, for one attention kind, across layers.

    kind:    "self" (encoder, bidirectional), "masked" (decoder self-attention, causal) or "cross".
    layers:  one tensor per layer, each (H, T, S); rows are query positions, columns key positions. None for a
             layer that returns no map (a mixer without (T, S) weights); at least one layer has one.
    queries: the T query tokens (for cross-attention, the target side).
    keys:    the S key tokens (for cross-attention, the source side).
    Tensors and numpy arrays are accepted and stored as float32 CPU tensors.

    Example:

        >>> import torch
        >>> from qkv.viz import AttentionMaps
        >>> w = torch.softmax(torch.randn(2, 4, 3, 5), -1)          # 2 layers of (H, T, S)
        >>> maps = AttentionMaps("cross", list(w), ["le", "chat", "</s>"], ["the", "cat", "sat", ".", "</s>"])
        >>> maps.n_layers, maps.n_heads, maps.mean_heads(-1).shape  # the last layer's mean over heads: (T, S)
        (2, 4, torch.Size([3, 5]))
        >>> batch = [w[0].unsqueeze(0)]                             # one layer of a model's (B, H, T, S)
        >>> AttentionMaps.from_batch("cross", batch, ["le"], ["the", "cat"]).layers[0].shape   # cut to (H, T, S)
        torch.Size([4, 1, 2])
    """

    kind: str
    layers: list[torch.Tensor]
    queries: list[str]
    keys: list[str]

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}: expected one of {KINDS}")
        if all(w is None for w in self.layers):
            raise ValueError(f"layers={list(self.layers)}: expected at least one layer of weights (H, T, S)")
        self.queries = [str(t) for t in self.queries]
        self.keys = [str(t) for t in self.keys]
        T, S = len(self.queries), len(self.keys)
        layers, first = [], None
        for i, w in enumerate(self.layers):
            if w is None:
                layers.append(None)
                continue
            w = torch.as_tensor(w).detach().to("cpu", torch.float32)
            if w.dim() != 3 or w.shape[1:] != (T, S):
                raise ValueError(f"layers[{i}] has shape {tuple(w.shape)}: expected (H, T, S) = (H, {T}, {S}) "
                                 f"from len(queries)={T}, len(keys)={S}")
            if first is not None and w.shape[0] != layers[first].shape[0]:
                raise ValueError(f"layers[{i}] has {w.shape[0]} heads: expected {layers[first].shape[0]} as in "
                                 f"layers[{first}]")
            if not torch.isfinite(w).all():
                raise ValueError(f"layers[{i}] holds non-finite weights: expected finite attention probabilities")
            first = i if first is None else first
            layers.append(w)
        self.layers = layers

    @classmethod
    def from_batch(cls, kind: str, weights: Sequence[Array], queries: Sequence[str], keys: Sequence[str],
                   *, index: int = 0) -> "AttentionMaps":
        """Take example `index` from a model's per-layer weights, each (B, H, T, S); padding is the caller's
        to trim by passing only the real tokens (the weights are cut to len(queries) x len(keys))."""
        T, S = len(queries), len(keys)
        layers = [None if w is None else torch.as_tensor(w)[index, :, :T, :S] for w in weights]
        return cls(kind, layers, list(queries), list(keys))

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_heads(self) -> int:
        return next(w for w in self.layers if w is not None).shape[0]

    def mean_heads(self, layer: int = -1) -> torch.Tensor:
        """The weights of one layer averaged over heads: (T, S)."""
        if self.layers[layer] is None:
            raise ValueError(f"layer={layer}: that layer returns no attention map")
        return self.layers[layer].mean(dim=0)



def _script_json(obj) -> str:
    """JSON that is safe inside <script>: `<`, `>` and `&` become \\u escapes, so no token can close the tag
    or open a comment; ensure_ascii already escapes U+2028/U+2029."""
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def explorer_example(maps_list: Sequence[AttentionMaps], *, source: str = "", label: str | None = None,
                     output: str | None = None, greedy: str | None = None, note: str | None = None,
                     beam: Mapping | None = None, output_label: str = "output", decimals: int = 4) -> dict:
    """One example of the explorer: the input text, the model's output (and greedy's, when it was run), and per
    attention kind its tokens and weights, layers x heads x T x S, rounded (null for a layer without a map).
    beam: the beam view's data as ``qkv.explore`` makes it (steps, final hypotheses, greedy), or None.

    Example:

        >>> import torch
        >>> from qkv.viz import AttentionMaps
        >>> w = torch.softmax(torch.randn(2, 4, 3, 3), -1)         # 2 layers of (H, T, S)
        >>> maps = AttentionMaps("masked", list(w), ["the", " cat", " sat"], ["the", " cat", " sat"])
        >>> from qkv.viz import explorer_example
        >>> example = explorer_example([maps], source="the cat sat", decimals=2)
        >>> layers = example["kinds"][0]["layers"]                  # nested lists: layers x H x T x S
        >>> example["label"], len(layers), len(layers[0]), len(layers[0][0]), len(layers[0][0][0])
        ('the cat sat', 2, 4, 3, 3)
    """
    if isinstance(maps_list, AttentionMaps):
        maps_list = [maps_list]
    return {
        "label": label if label is not None else source,
        "source": source,
        "output": output,
        "output_label": output_label,
        "greedy": greedy,
        "note": note,
        "beam": None if beam is None else dict(beam),
        "kinds": [{
            "kind": m.kind,
            "queries": m.queries,
            "keys": m.keys,
            "layers": [None if w is None else np.round(w.numpy().astype(np.float64), decimals).tolist()
                       for w in m.layers],
        } for m in maps_list],
    }


def explorer_data(maps_list: Sequence[AttentionMaps], *, title: str, decimals: int = 4) -> dict:
    """The explorer's JSON payload for one example: ``{"title", "min_weight", "live", "max_chars", "examples"}``
    with ``examples[0]`` from ``explorer_example``.

    Example:

        >>> import torch
        >>> from qkv.viz import AttentionMaps
        >>> w = torch.softmax(torch.randn(2, 4, 3, 3), -1)         # 2 layers of (H, T, S)
        >>> maps = AttentionMaps("masked", list(w), ["the", " cat", " sat"], ["the", " cat", " sat"])
        >>> from qkv.viz import explorer_data
        >>> data = explorer_data([maps], title="a decoder")          # the page's JSON payload
        >>> data["title"], len(data["examples"]), data["examples"][0]["kinds"][0]["kind"]
        ('a decoder', 1, 'masked')
    """
    return _payload([explorer_example(maps_list, decimals=decimals)], title=title)


def _payload(examples: Sequence[Mapping], *, title: str, live: bool = False, max_chars: int = 0,
             token: str | None = None) -> dict:
    return {"title": title, "min_weight": EXPLORER_MIN_WEIGHT, "live": live, "max_chars": max_chars,
            "token": token, "examples": [dict(e) for e in examples]}


def explorer_page(examples: Sequence[Mapping], *, title: str = "qkv attention explorer", live: bool = False,
                  max_chars: int = 0, token: str | None = None) -> str:
    """The explorer as one HTML string with its examples inline (``explorer_example`` dicts, at least one).
    live=True shows the form that asks the server it came from (``qkv explore``) for new examples; max_chars is
    the longest input it sends, token the server's token it echoes with each request (``qkv.explore_server``).

    Example:

        >>> import torch
        >>> from qkv.viz import AttentionMaps
        >>> w = torch.softmax(torch.randn(2, 4, 3, 3), -1)         # 2 layers of (H, T, S)
        >>> maps = AttentionMaps("masked", list(w), ["the", " cat", " sat"], ["the", " cat", " sat"])
        >>> from qkv.viz import explorer_example, explorer_page
        >>> page = explorer_page([explorer_example([maps], source="the cat sat")], title="a decoder")
        >>> page.lstrip().lower().startswith("<!doctype html>"), "<script src" in page   # one file, nothing fetched
        (True, False)
    """
    if not examples:
        raise ValueError("examples=[]: expected at least one example")
    template = resources.files("qkv").joinpath("viz_explorer.html").read_text(encoding="utf-8")
    fill = {"TITLE": html.escape(title),
            "DATA": _script_json(_payload(examples, title=title, live=live, max_chars=max_chars, token=token))}
    # One pass, so a title that happens to contain "{{DATA}}" is not filled twice.
    return re.sub(r"\{\{(TITLE|DATA)\}\}", lambda m: fill[m.group(1)], template)


def explorer_html(maps_list: Sequence[AttentionMaps] | Sequence[Mapping], path: PathLike, *,
                  title: str = "qkv attention explorer") -> Path:
    """Write one self-contained HTML file to explore attention: pick the example, the kind, layer and head (or
    the mean of heads), hover a query token to draw lines to the keys it attends to, with opacity proportional
    to weight, beside the head's (T, S) heatmap; where an example carries a beam search, each step's candidates.
    No network: CSS, JavaScript and data are inline.

    maps_list: the AttentionMaps of one example, or several examples made by ``explorer_example``.
    The page exposes `window.qkvExplorer` and, after rendering, `data-status="ok"` plus counts on <body>;
    `?example=&kind=&layer=&head=&focus=` in the URL choose the initial view (see the template). Returns the path.

    Example:

        >>> import torch
        >>> from qkv.viz import AttentionMaps
        >>> w = torch.softmax(torch.randn(2, 4, 3, 3), -1)         # 2 layers of (H, T, S)
        >>> maps = AttentionMaps("masked", list(w), ["the", " cat", " sat"], ["the", " cat", " sat"])
        >>> from qkv.viz import explorer_html
        >>> path = explorer_html([maps], "explorer.html")          # open it from disk: no server, no network
        >>> page = path.read_text()
        >>> path.name, "window.qkvExplorer" in page, '" cat"' in page     # the script and the tokens inline
        ('explorer.html', True, True)
    """
    if isinstance(maps_list, (AttentionMaps, Mapping)):
        maps_list = [maps_list]
    if not maps_list:
        raise ValueError("maps_list=[]: expected at least one AttentionMaps")
    examples = maps_list if isinstance(maps_list[0], Mapping) else [explorer_example(maps_list)]
    path = Path(path)
    path.write_text(explorer_page(examples, title=title), encoding="utf-8")
    return path
