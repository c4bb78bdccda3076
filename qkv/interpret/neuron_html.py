"""The neuron view as HTML: one self-contained fragment (inline CSS, no script, no network), for Jupyter's rich
display and for any page. Every number is printed; colours only repeat them (red > 0, blue < 0, by magnitude)."""
from __future__ import annotations

import html

import torch

# Vectors longer than this are cut, the rest said in words: a head of 128 features would not fit a row.
MAX_FEATURES = 24

_CSS = """<style>
.qkv-neuron{font:12px/1.35 system-ui,sans-serif;color:#222;overflow-x:auto}
.qkv-neuron h4{margin:6px 0;font-size:14px}
.qkv-neuron table{border-collapse:collapse;margin:4px 0 10px}
.qkv-neuron td,.qkv-neuron th{border:1px solid #ddd;padding:1px 4px;text-align:right;white-space:nowrap}
.qkv-neuron th{background:#f4f4f4;font-weight:600}
.qkv-neuron td.tok{text-align:left;font-family:ui-monospace,monospace;background:#fafafa}
.qkv-neuron tr.masked td{color:#aaa}
.qkv-neuron .bar{display:inline-block;height:9px;background:#3b6fb6;vertical-align:middle;margin-right:4px}
.qkv-neuron .note{color:#555;margin:2px 0 6px}
</style>"""


def _fmt(x: float, decimals: int) -> str:
    if x == float("-inf"):
        return "-inf"
    return f"{x:.{decimals}f}"


def _cell(x: float, top: float, decimals: int) -> str:
    a = 0.0 if top <= 0 or x != x or abs(x) == float("inf") else min(1.0, abs(x) / top) * 0.55
    rgb = "214,39,40" if x > 0 else "31,119,180"
    return f'<td style="background:rgba({rgb},{a:.2f})">{_fmt(x, decimals)}</td>'


def _cells(v: torch.Tensor, decimals: int, top: float | None = None) -> str:
    v = v.tolist()[:MAX_FEATURES]
    top = max((abs(x) for x in v), default=0.0) if top is None else top
    return "".join(_cell(x, top, decimals) for x in v)


def _token(text: str | None, i: int) -> str:
    label = f"#{i}" if text is None else text.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "\u2423")
    return f'<td class="tok">{html.escape(label)}</td>'


def neuron_html(view, *, decimals: int = 3) -> str:
    """The HTML of a ``NeuronView``: the query vector; a table with one row per key (its token, its vector, the
    score's terms, the logit, the softmax weight); the weighted sum of the values, the head's output.

    Example:

        >>> import torch
        >>> from qkv.nn import MultiHeadAttention
        >>> from qkv.interpret import neuron_html, neuron_view_of
        >>> view = neuron_view_of(MultiHeadAttention(8, 2), torch.randn(1, 3, 8), head=0, query=1)
        >>> page = neuron_html(view, decimals=2)              # also view.to_html(); Jupyter shows the view itself
        >>> page.count("<tr") >= 3, "<script" in page          # a row per key, no script
        (True, False)
    """
    S, D = view.keys.shape
    keys = view.key_tokens or [None] * S
    cut = f" (first {MAX_FEATURES} of {D} features shown)" if D > MAX_FEATURES else ""
    per_key = [t for t in view.terms if t.value.dim() == 2 and t.value.shape[0] == S]
    columns = [t for t in view.terms if t.value.dim() == 1 and t.value.shape[0] == S]
    once = [t for t in view.terms if t not in per_key and t not in columns]
    title = (f"{view.kind} attention, layer {view.layer}, head {view.head}: query {view.query}"
             + (f" ({view.query_token!r})" if view.query_token is not None else "") + f", score {view.score}")
    out = [f'<div class="qkv-neuron" data-qkv="neuron">{_CSS}<h4>{html.escape(title)}</h4>',
           f'<div class="note">query vector q{cut}</div><table><tr><th>q</th>{_cells(view.q, decimals)}</tr>']
    for t in once:
        out.append(f"<tr><th>{html.escape(t.name)}</th>{_cells(t.value, decimals)}</tr>")
    out.append("</table>")
    scale = "" if view.scale is None else f"; scale {view.scale:.6g}"
    cap = "" if view.softcap is None else f"; soft cap {view.softcap:g}"
    out.append(f'<div class="note">one row per key{cut}: the key vector, '
               + ", ".join(html.escape(f"{t.name} ({t.formula})") for t in per_key + columns)
               + f"{scale}{cap}; then the logit and the softmax weight</div><table><tr><th>key</th><th>k</th>"
               + "".join(f"<th>{html.escape(t.name)}</th>" for t in per_key + columns)
               + ("<th>score</th>" if view.scale is not None or view.softcap is not None else "")
               + ("<th>bias</th>" if view.bias is not None else "") + "<th>logit</th><th>weight</th></tr>")
    tops = {id(t): float(t.value.abs().max()) for t in per_key}
    ktop = float(view.keys.abs().max()) if view.keys.numel() else 0.0
    for s in range(S):
        row = [_token(keys[s], s), f'<td><table style="margin:0"><tr>{_cells(view.keys[s], decimals, ktop)}'
                                   f"</tr></table></td>"]
        for t in per_key:
            row.append(f'<td><table style="margin:0"><tr>{_cells(t.value[s], decimals, tops[id(t)])}</tr></table></td>')
        row += [f"<td>{_fmt(float(t.value[s]), decimals)}</td>" for t in columns]
        if view.scale is not None or view.softcap is not None:
            row.append(f"<td>{_fmt(float(view.raw[s]), decimals)}</td>")
        if view.bias is not None:
            row.append(f"<td>{_fmt(float(view.bias[s]), decimals)}</td>")
        w = float(view.weights[s])
        row += [f"<td>{_fmt(float(view.logits[s]), decimals)}</td>",
                f'<td style="text-align:left"><span class="bar" style="width:{round(60 * w)}px"></span>'
                f"{w:.{decimals}f}</td>"]
        out.append(f'<tr class="{"" if view.allowed[s] else "masked"}">' + "".join(row) + "</tr>")
    out.append("</table>")
    out.append(f'<div class="note">output = sum over keys of weight x value (the head\'s output before W_O)</div>'
               f"<table><tr><th>output</th>{_cells(view.output, decimals)}</tr></table></div>")
    return "".join(out)
