"""Attention inline in Jupyter: every view as a rich HTML output, self-contained (inline CSS and JavaScript, data
inline, nothing fetched), so it shows offline and survives an exported notebook.

    from qkv.notebook import explore, maps_view, rollout_view
    explore(model, tokenizer, "twenty-one")        # the explorer: every layer and head, every kind, beam search
    maps_view(attention_maps(model, tok, s, t))    # any qkv.viz.AttentionMaps, e.g. a linear-time model's maps
    rollout_view(bert, ids, tokens)                # attention rollout (or flow=True) as a token x token table
    importance_view(head_importance(model, loss))  # qkv.interpret: the loss rise per head switched off
    neuron_view(model, ids, head=1, query=3)       # qkv.interpret: displays itself

The explorer is ``qkv.viz.explorer_page`` (the same page ``qkv explore`` serves) inside an ``<iframe srcdoc>``:
its script and styles stay in their own document, so several explorers in one notebook do not meet, and nothing
leaves the notebook. Importing this module inside IPython (or ``%load_ext qkv.notebook``) also teaches it to
display ``qkv.viz.AttentionMaps``.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .explore import Explorer
from .interpret import attention_flow, rollout, self_attention
from .viz import AttentionMaps, explorer_example, explorer_page

__all__ = ["HTMLView", "explorer_view", "maps_view", "explore", "matrix_view", "rollout_view", "importance_view",
           "enable"]

EXPLORER_HEIGHT = 820  # pixels: the explorer's links, heatmap and beam view without an inner scroll bar


@dataclass
class HTMLView:
    """One HTML fragment that Jupyter displays inline (``_repr_html_``) and ``save`` writes as a page.

    Example:

        >>> from qkv.notebook import HTMLView
        >>> view = HTMLView("<b>attention</b>", title="one view")   # Jupyter shows view._repr_html_() inline
        >>> view.page().splitlines()[0], view.save("view.html").name   # a plain HTML export
        ('<!DOCTYPE html>', 'view.html')
    """
    html: str
    title: str = "qkv"

    def _repr_html_(self) -> str:
        return self.html

    def page(self) -> str:
        """The fragment as a standalone HTML document (a plain export)."""
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}'
                f"</title></head><body>\n{self.html}\n</body></html>\n")

    def save(self, path) -> Path:
        """Write ``page()`` to path; returns the path."""
        path = Path(path)
        path.write_text(self.page(), encoding="utf-8")
        return path


def explorer_view(examples: Sequence[dict], *, title: str = "qkv attention explorer",
                  height: int = EXPLORER_HEIGHT) -> HTMLView:
    """The explorer page of ``examples`` (``qkv.viz.explorer_example`` dicts, at least one) in an iframe.

    Example:

        >>> import torch
        >>> from qkv.viz import AttentionMaps
        >>> w = torch.softmax(torch.randn(2, 4, 3, 3), -1)         # 2 layers of (H, T, S)
        >>> maps = AttentionMaps("masked", list(w), ["the", " cat", " sat"], ["the", " cat", " sat"])
        >>> from qkv.viz import explorer_example
        >>> from qkv.notebook import explorer_view
        >>> view = explorer_view([explorer_example([maps], source="the cat sat")], height=600)
        >>> view.html.startswith('<iframe class="qkv-explorer"'), "height:600px" in view.html
        (True, True)
    """
    if not isinstance(height, int) or height < 100:
        raise ValueError(f"height={height!r}: expected an int >= 100 (pixels)")
    page = explorer_page(list(examples), title=title)
    frame = (f'<iframe class="qkv-explorer" data-qkv="explorer" title="{html.escape(title)}" '
             f'style="width:100%;height:{height}px;border:1px solid #e5e7eb" '
             f'srcdoc="{html.escape(page, quote=True).replace(chr(10), "&#10;")}"></iframe>')  # one line: safe in Markdown
    return HTMLView(frame, title)


def maps_view(maps: AttentionMaps | Sequence[AttentionMaps], *, title: str = "qkv attention explorer",
              source: str = "", height: int = EXPLORER_HEIGHT) -> HTMLView:
    """The explorer for attention maps already computed (one example: its kinds, every layer and head).

    Example:

        >>> import torch
        >>> from qkv.viz import AttentionMaps
        >>> w = torch.softmax(torch.randn(2, 4, 3, 3), -1)         # 2 layers of (H, T, S)
        >>> maps = AttentionMaps("masked", list(w), ["the", " cat", " sat"], ["the", " cat", " sat"])
        >>> from qkv.notebook import maps_view
        >>> view = maps_view(maps, source="the cat sat")            # the explorer of maps already computed
        >>> view.html.startswith("<iframe"), "\\n" in view.html       # one line: safe inside Markdown too
        (True, False)
    """
    maps = [maps] if isinstance(maps, AttentionMaps) else list(maps)
    return explorer_view([explorer_example(maps, source=source)], title=title, height=height)


def explore(model, tokenizer, texts: str | Sequence[str], *, num_beams: int = 4, max_new_tokens: int | None = None,
            title: str | None = None, height: int = EXPLORER_HEIGHT) -> HTMLView:
    """Run a text model on one sentence or several and show the explorer: the output by beam search and greedy's,
    every layer's and head's self, masked and cross attention (implicit maps for linear-time mixers), and the beam
    search step by step (``qkv.explore.Explorer``). For an image-to-text model the texts are generated scenes'
    numbers ("0", "7"): each word's weights over the image's cells and the paper's figure. Bad input raises
    ``qkv.explore.ExploreInputError``.

    Example:

        >>> import qkv
        >>> from qkv.data import CharTokenizer
        >>> from qkv.notebook import explore
        >>> tok = CharTokenizer.train(iter(["the cat sat"]))
        >>> cfg = qkv.preset("gpt2-tiny", vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id)
        >>> view = explore(qkv.build(cfg).eval(), tok, "the cat", num_beams=2, max_new_tokens=3)   # beam search too
        >>> view.title, view.html.startswith('<iframe class="qkv-explorer"')
        ('qkv explorer: a language model', True)
    """
    explorer = Explorer(model, tokenizer, num_beams=num_beams, max_new_tokens=max_new_tokens)
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("texts=[]: expected a sentence or a list of sentences")
    return explorer_view([explorer.example(t) for t in texts], title=title or explorer.view.title, height=height)


_MATRIX_CSS = """<style>
.qkv-matrix{font:12px/1.3 system-ui,sans-serif;color:#222;overflow-x:auto}
.qkv-matrix table{border-collapse:collapse}
.qkv-matrix td{width:34px;height:20px;text-align:center;font-size:10px;border:1px solid #fff}
.qkv-matrix th{font-weight:500;font-family:ui-monospace,monospace;font-size:11px;padding:0 4px;white-space:pre}
.qkv-matrix th.col{writing-mode:vertical-rl;transform:rotate(180deg);height:auto;vertical-align:bottom}
.qkv-matrix .cap{margin:4px 0;font-weight:600}
</style>"""


def _show(token: str, visible_space: bool = True) -> str:
    """A label as HTML text; tokens get their whitespace made visible (a space as \u2423, an empty token \u2205)."""
    if not visible_space:
        return html.escape(token)
    return html.escape(token.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "\u2423") or "\u2205")


def matrix_view(matrix, queries: Sequence[str], keys: Sequence[str] | None = None, *, title: str = "",
                decimals: int = 2, tokens: bool = True) -> HTMLView:
    """A (T, S) matrix as an HTML table: query tokens down, key tokens across, every value printed in its cell
    and coloured by it (0 white, the largest dark). For rollout, flow, a mean over heads, any token x token map.
    tokens=False: the labels are names, not tokens (their spaces are not made visible).

    Example:

        >>> import torch
        >>> from qkv.notebook import matrix_view
        >>> view = matrix_view(torch.tensor([[1.0, 0.0], [0.25, 0.75]]), ["the", " cat"])   # (T, S), queries down
        >>> view.html.count("<td"), "0.75</td>" in view.html, "\u2423cat" in view.html     # a space shown as ␣
        (4, True, True)
    """
    keys = list(queries if keys is None else keys)
    m = torch.as_tensor(matrix).detach().to("cpu", torch.float64)
    if m.shape != (len(queries), len(keys)):
        raise ValueError(f"matrix has shape {tuple(m.shape)}: expected (T, S) = ({len(queries)}, {len(keys)}) "
                         f"from the token lists")
    top = float(m.abs().max()) if m.numel() else 0.0
    rows = ["<tr><th></th>" + "".join(f'<th class="col">{_show(k, tokens)}</th>' for k in keys) + "</tr>"]
    for t, q in enumerate(queries):
        cells = []
        for s in range(len(keys)):
            v = float(m[t, s])
            a = abs(v) / top if top > 0 else 0.0
            colour = "255,255,255" if a > 0.6 else "0,0,0"
            cells.append(f'<td style="background:rgba(37,99,235,{a:.3f});color:rgb({colour})" '
                         f'title="{_show(q, tokens)} \u2192 {_show(keys[s], tokens)}: {v:.4f}">{v:.{decimals}f}</td>')
        rows.append(f"<tr><th>{_show(q, tokens)}</th>" + "".join(cells) + "</tr>")
    caption = f'<div class="cap">{html.escape(title)}</div>' if title else ""
    return HTMLView(f'<div class="qkv-matrix" data-qkv="matrix">{_MATRIX_CSS}{caption}<table>{"".join(rows)}'
                    f"</table></div>", title or "qkv matrix")


def rollout_view(model, inputs: torch.Tensor, tokens: Sequence[str], *, attention_mask=None, flow: bool = False,
                 index: int = 0, decimals: int = 2) -> HTMLView:
    """Attention rollout (or, with flow=True, attention flow) of one example through the whole encoder, as a
    token x token table (``qkv.interpret.rollout``, ``attention_flow``). tokens: one label per position of
    ``inputs[index]`` (for a ViT: the class token, then the patches).

    Example:

        >>> import torch, qkv
        >>> from qkv.notebook import rollout_view
        >>> bert = qkv.build(qkv.preset("bert-tiny")).eval()
        >>> view = rollout_view(bert, torch.tensor([[2, 7, 5, 3]]), ["[CLS]", "a", "cat", "[SEP]"])   # (T, T) table
        >>> view.html.count("<td"), "attention rollout through 2 layers" in view.html
        (16, True)
    """
    weights = [w[index:index + 1] for w in self_attention(model, inputs, attention_mask)]
    T = weights[0].shape[-1]
    if len(tokens) != T:
        raise ValueError(f"tokens has {len(tokens)} labels: expected {T}, one per position")
    m = attention_flow(weights)[0] if flow else rollout(weights)[0, -1]
    name = "attention flow" if flow else "attention rollout"
    return matrix_view(m, list(tokens), title=f"{name} through {len(weights)} layers (rows: tokens after the "
                                               f"last layer; columns: input tokens)", decimals=decimals)


def importance_view(importance, *, decimals: int = 3) -> HTMLView:
    """Head importance (``qkv.interpret.head_importance``) as a table: one row per attention sublayer, one column
    per head, each cell the loss rise when that head alone is switched off (shaded by its size).

    Example:

        >>> import torch, qkv
        >>> from qkv.interpret import head_importance
        >>> from qkv.notebook import importance_view
        >>> model, ids = qkv.build(qkv.preset("gpt2-tiny")).eval(), torch.tensor([[1, 2, 3, 4]])
        >>> imp = head_importance(model, lambda m: torch.nn.functional.cross_entropy(m(ids[:, :-1])[0], ids[0, 1:]))
        >>> view = importance_view(imp)                              # M rows x H columns
        >>> view.html.count("<td"), "head 3" in view.html
        (8, True)
    """
    M, H = importance.scores.shape
    return matrix_view(importance.scores, importance.names, [f"head {h}" for h in range(H)], decimals=decimals,
                       tokens=False, title=f"loss rise when one head is off (base loss {importance.base:.4f})")


def enable() -> bool:
    """Teach the running IPython to display ``qkv.viz.AttentionMaps`` as the explorer (done on import when IPython
    runs). Returns False outside IPython.

    Example:

        >>> from qkv.notebook import enable
        >>> enable()                                                  # outside IPython there is nothing to teach
        False
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None:
        return False
    formatter = shell.display_formatter.formatters["text/html"]
    formatter.for_type(AttentionMaps, lambda maps: maps_view(maps).html)
    return True


def load_ipython_extension(ipython) -> None:
    """``%load_ext qkv.notebook``: the same as importing this module inside IPython."""
    enable()


enable()
