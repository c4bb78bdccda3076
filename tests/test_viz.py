"""qkv.viz: the PNG plots are real images that grow with the grid, and the HTML explorer is offline, escapes
its data, and renders in a real headless Chromium (skipped when `chromium` is not installed)."""
import json
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from qkv.viz import (EXPLORER_MIN_WEIGHT, AttentionMaps, explorer_data, explorer_html, plot_alignment,
                     plot_attention, plot_curves, read_metrics)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Tokens that would break naive HTML, JSON-in-script or matplotlib (TeX) handling.
NASTY = '</script><b id="pwned">&amp;"\'$x$'


def softmax_maps(kind, n_layers, n_heads, queries, keys, *, causal=False, sharpness=2.0):
    """Random attention probabilities (H, T, S) per layer; causal rows put zero weight on future keys, and a
    high sharpness leaves many weights under the explorer's line threshold."""
    T, S = len(queries), len(keys)
    layers = []
    for _ in range(n_layers):
        scores = sharpness * torch.randn(n_heads, T, S)
        if causal:
            scores = scores.masked_fill(~torch.ones(T, S, dtype=torch.bool).tril(), float("-inf"))
        layers.append(scores.softmax(-1))
    return AttentionMaps(kind, layers, queries, keys)


def png_size(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size  # (width, height)


# --- the container -------------------------------------------------------------------------------------------

def test_attention_maps_rejects_bad_shapes_naming_the_argument():
    w = torch.rand(2, 3, 4)
    with pytest.raises(ValueError, match="kind"):
        AttentionMaps("sideways", [w], list("abc"), list("abcd"))
    with pytest.raises(ValueError, match=r"layers\[0\].*\(H, 3, 5\)"):
        AttentionMaps("self", [w], list("abc"), list("abcde"))
    with pytest.raises(ValueError, match=r"layers\[1\] has 3 heads"):
        AttentionMaps("self", [w, torch.rand(3, 3, 4)], list("abc"), list("abcd"))
    with pytest.raises(ValueError, match="layers"):
        AttentionMaps("self", [], list("abc"), list("abcd"))
    with pytest.raises(ValueError, match="non-finite"):
        AttentionMaps("self", [torch.full((2, 3, 4), float("nan"))], list("abc"), list("abcd"))


def test_from_batch_takes_one_example_and_trims_padding():
    weights = [torch.rand(2, 3, 6, 6) for _ in range(2)]  # (B, H, T, S), T = S = 6 with padding
    maps = AttentionMaps.from_batch("self", [w.numpy() for w in weights], list("abcd"), list("abcd"), index=1)
    assert (maps.n_layers, maps.n_heads) == (2, 3)
    assert maps.layers[0].dtype == torch.float32
    torch.testing.assert_close(maps.layers[1], weights[1][1, :, :4, :4])
    torch.testing.assert_close(maps.mean_heads(), weights[1][1, :, :4, :4].mean(0))


# --- PNG plots -----------------------------------------------------------------------------------------------

def test_plot_attention_png_grows_with_layers_and_heads(tmp_path):
    toks = "the cat sat on the mat".split()
    small = png_size(plot_attention(softmax_maps("self", 1, 1, toks, toks), tmp_path / "a.png"))
    wide = png_size(plot_attention(softmax_maps("self", 1, 3, toks, toks), tmp_path / "b.png"))
    tall = png_size(plot_attention(softmax_maps("self", 3, 1, toks, toks), tmp_path / "c.png"))
    assert small[0] > 100 and small[1] > 100
    assert wide[0] > 2 * small[0] and wide[1] == pytest.approx(small[1], rel=0.1)
    assert tall[1] > 2 * small[1] and tall[0] == pytest.approx(small[0], rel=0.1)


def test_plot_attention_handles_30_tokens_and_odd_text(tmp_path):
    toks = [f"w{i}" for i in range(27)] + [NASTY, "a\nb", "x" * 40]
    w, h = png_size(plot_attention(softmax_maps("masked", 2, 2, toks, toks, causal=True), tmp_path / "m.png",
                                   title="30 tokens"))
    assert 600 < w < 2000 and 600 < h < 2000  # readable, and not absurdly large


def test_plot_alignment_checks_shape_and_writes_png(tmp_path):
    src, tgt = "the cat sat".split(), "die Katze saß .".split()
    w, h = png_size(plot_alignment(torch.rand(4, 3).softmax(-1), tgt, src, tmp_path / "al.png"))
    assert w > 200 and h > 200
    with pytest.raises(ValueError, match=r"weights has shape \(3, 4\)"):
        plot_alignment(np.ones((3, 4)), tgt, src, tmp_path / "bad.png")


def test_plot_curves_tolerates_sparse_missing_and_bad_values(tmp_path):
    records = []
    for step in range(0, 200, 10):
        r = {"step": step, "train_loss": 3.0 * math.exp(-step / 80) + 1.0}
        if step % 50 == 0:
            r["val_loss"] = r["train_loss"] + 0.2  # validation every 5 records
        records.append(r)
    records += [{"note": "no step"}, {"step": 200, "train_loss": None}, {"step": 210, "train_loss": float("nan")}]
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    assert len(read_metrics(jsonl)) == len(records)
    a = png_size(plot_curves(jsonl, tmp_path / "plots" / "curves.png", log_panel=False))  # makes the folder
    b = png_size(plot_curves(records, tmp_path / "curves_log.png", log_y=True))
    c = png_size(plot_curves([], tmp_path / "empty.png", log_panel=False))
    assert a == b == c and a[0] > 300
    both = png_size(plot_curves(jsonl, tmp_path / "both.png"))  # by default the log-scale view beside
    assert both[0] > 1.5 * a[0] and both[1] == a[1]
    jsonl.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        read_metrics(jsonl)
    jsonl.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: list"):
        read_metrics(jsonl)


def test_plots_leave_pyplot_and_backend_alone(tmp_path):
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    toks = list("abcd")
    plot_attention(softmax_maps("self", 1, 2, toks, toks), tmp_path / "a.png")
    plot_curves([{"step": 1, "train_loss": 1.0}], tmp_path / "c.png")
    assert plt.get_fignums() == []
    assert matplotlib.get_backend() == backend


# --- the HTML explorer, as text ------------------------------------------------------------------------------

@pytest.fixture
def explorer_maps():
    src = "the cat sat on the mat .".split()
    tgt = ["<s>", "die", "Katze", NASTY, "auf", "der", "Matte"]
    return [softmax_maps("self", 2, 3, src, src),
            softmax_maps("masked", 2, 4, tgt, tgt, causal=True),
            softmax_maps("cross", 3, 4, tgt, src, sharpness=6.0)]


def script_json(page):
    return re.search(r'<script type="application/json" id="qkv-data">(.*?)</script>', page, re.S).group(1)


def test_explorer_is_one_offline_file(tmp_path, explorer_maps):
    page = explorer_html(explorer_maps, tmp_path / "e.html", title="t").read_text(encoding="utf-8")
    assert not re.search(r"https?://", page)
    # one <img>, the image models' figure, with no src in the markup: the script sets it to an inline PNG only
    figure = re.findall(r"<img\b[^>]*>", page, re.I)
    assert len(figure) == 1 and 'id="image-figure"' in figure[0] and "src" not in figure[0]
    assert 'indexOf("data:image/png;base64,") === 0' in page
    page = page.replace(figure[0], "")
    assert not re.search(r"<(link|img|iframe)\b|\bsrc\s*=|@import|url\(", page, re.I)
    assert page.count("<script") == 2  # the data and the code, both inline


def test_explorer_escapes_tokens_and_title(tmp_path, explorer_maps):
    page = explorer_html(explorer_maps, tmp_path / "e.html", title=NASTY).read_text(encoding="utf-8")
    payload = script_json(page)
    assert "</" not in payload and "<" not in payload and "&" not in payload
    data = json.loads(payload)
    assert data["title"] == NASTY
    assert data["examples"][0]["kinds"][1]["queries"][3] == NASTY
    assert '<b id="pwned">' not in page
    assert "&lt;/script&gt;&lt;b id=&quot;pwned&quot;&gt;" in page  # the title, HTML-escaped
    layers = data["examples"][0]["kinds"][2]["layers"]
    assert (len(layers), len(layers[0]), len(layers[0][0]), len(layers[0][0][0])) == (3, 4, 7, 7)


def test_explorer_accepts_one_map_and_rejects_none(tmp_path, explorer_maps):
    assert explorer_html(explorer_maps[0], tmp_path / "one.html").exists()
    with pytest.raises(ValueError, match="maps_list"):
        explorer_html([], tmp_path / "none.html")


# --- the HTML explorer, in a real headless Chromium ----------------------------------------------------------

# Debian's `chromium` package; QKV_CHROMIUM may name another Chromium/Chrome binary.
CHROMIUM = os.environ.get("QKV_CHROMIUM") or shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")


class DomSummary(HTMLParser):
    """From a dumped DOM: <body>'s attributes, and per data-testid the elements' attributes and text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.body, self.by_testid, self.ids, self._open = {}, {}, set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.body = attrs
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if "data-testid" in attrs:
            item = {"tag": tag, "attrs": attrs, "text": ""}
            self.by_testid.setdefault(attrs["data-testid"], []).append(item)
            self._open.append(item)
        elif tag not in ("br", "meta", "input"):
            self._open.append(None)

    def handle_endtag(self, tag):
        if self._open:
            self._open.pop()

    def handle_data(self, data):
        if self._open and self._open[-1] is not None:
            self._open[-1]["text"] += data

    def count(self, testid):
        return len(self.by_testid.get(testid, []))


def render(path, tmp_path, query=""):
    """Load file://path?query in headless Chromium; return the parsed DOM after scripts ran, and stderr
    (with --enable-logging, page console messages such as "Uncaught ..." appear there)."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
           "--window-size=1200,800", "--virtual-time-budget=2000", "--dump-dom",
           path.resolve().as_uri() + (f"?{query}" if query else "")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert "<body" in proc.stdout, f"chromium printed no DOM (rc={proc.returncode}): {proc.stderr[-2000:]}"
    dom = DomSummary()
    dom.feed(proc.stdout)
    return dom, proc.stderr


@needs_chromium
def test_explorer_renders_in_chromium_without_script_errors(tmp_path, explorer_maps):
    path = explorer_html(explorer_maps, tmp_path / "e.html", title="render test")
    dom, stderr = render(path, tmp_path, "kind=masked&layer=1")
    assert dom.body.get("data-status") == "ok", dom.body
    assert "Uncaught" not in stderr
    masked = explorer_maps[1]
    T = len(masked.queries)
    assert (dom.body["data-kind"], dom.body["data-layer"], dom.body["data-head"]) == ("masked", "1", "0")
    assert int(dom.body["data-n-query"]) == dom.count("token-query") == T
    assert int(dom.body["data-n-key"]) == dom.count("token-key") == T
    assert int(dom.body["data-n-heads"]) == masked.n_heads
    assert dom.count("head-option") == masked.n_heads + 1  # every head, plus "mean"
    assert dom.count("layer-option") == masked.n_layers
    assert [b["text"] for b in dom.by_testid["kind-option"]] == ["self", "masked", "cross"]
    assert dom.count("heat-cell") == T * T
    # The nasty token arrives as text, never as markup.
    assert [t["text"] for t in dom.by_testid["token-query"]] == masked.queries
    assert "pwned" not in dom.ids
    # Nothing focused: a faint line for every (query, key) weight above the threshold.
    weights = explorer_data(explorer_maps, title="")["examples"][0]["kinds"][1]["layers"][1][0]
    expected = sum(v >= EXPLORER_MIN_WEIGHT for row in weights for v in row)
    assert int(dom.body["data-n-lines"]) == dom.count("attn-line") == expected


def expected_lines(data, kind, layer, head, query):
    """Keys with weight >= the threshold in one row of the page's data (head "mean": summed in the page's order)."""
    heads = data["examples"][0]["kinds"][kind]["layers"][layer]
    if head == "mean":
        row = [sum(heads[h][query][s] for h in range(len(heads))) / len(heads) for s in range(len(heads[0][0]))]
    else:
        row = heads[head][query]
    return [s for s, v in enumerate(row) if v >= EXPLORER_MIN_WEIGHT]


@needs_chromium
@pytest.mark.parametrize("kind, head, query", [(1, 2, 2), (2, 3, 4), (2, "mean", 2)],
                         ids=["masked-head", "cross-head", "cross-mean"])
def test_explorer_focus_draws_one_line_per_attended_key(tmp_path, explorer_maps, kind, head, query):
    path = explorer_html(explorer_maps, tmp_path / "e.html", title="focus test")
    dom, stderr = render(path, tmp_path, f"kind={kind}&layer=1&head={head}&focus={query}")
    assert dom.body.get("data-status") == "ok", dom.body
    assert "Uncaught" not in stderr
    assert dom.body["data-focus"] == str(query) and dom.body["data-head"] == str(head)
    keys = expected_lines(explorer_data(explorer_maps, title=""), kind, 1, head, query)
    if kind == 1:
        assert max(keys) <= query  # causal: query 2 reads keys 0..2 only, and the page shows exactly that
    assert int(dom.body["data-n-lines"]) == dom.count("attn-line") == len(keys)
    # The focused query's key tokens carry its weights.
    key_weights = [float(k["attrs"]["data-weight"]) for k in dom.by_testid["token-key"]]
    assert [s for s, v in enumerate(key_weights) if v >= EXPLORER_MIN_WEIGHT] == keys


@needs_chromium
def test_explorer_reports_script_errors_in_the_dom(tmp_path, explorer_maps):
    """The status attribute is not vacuous: broken data makes the page say so."""
    path = explorer_html(explorer_maps, tmp_path / "e.html", title="broken")
    page = path.read_text(encoding="utf-8")
    path.write_text(page.replace(script_json(page), '{"kinds": 1}'), encoding="utf-8")
    dom, _ = render(path, tmp_path)
    assert dom.body.get("data-status", "").startswith("error"), dom.body


def test_plot_curves_adds_a_quality_panel_and_draws_both_loss_definitions(tmp_path):
    records = [{"step": s, "train_loss": 2.0 / s + 0.5, "train_nll": 2.0 / s} for s in range(1, 60)]
    records += [{"step": s, "val_loss": 2.1 / s, "val_acc": 1 - 1 / s, "val_exact": 1 - 2 / (s + 1),
                 "val_bleu": 100 - 50 / s} for s in (10, 30, 59)]
    loss_only = png_size(plot_curves([r for r in records if "val_acc" not in r], tmp_path / "a.png"))
    both = png_size(plot_curves(records, tmp_path / "b.png", label_smoothing=0.1))
    assert both[0] > 1.3 * loss_only[0] and both[1] == loss_only[1]  # a third panel: held-out quality
    chosen = png_size(plot_curves(records, tmp_path / "c.png", keys=["train_loss"]))
    assert chosen == loss_only  # keys given: those losses only (linear and log)


# --- whitespace tokens, colour bars, the log-scale loss view --------------------------------------------------

def test_whitespace_tokens_get_visible_signs_and_other_text_stays():
    from qkv.viz import visible_token
    assert [visible_token(t) for t in (" ", "\n", "\t", "  ", " \n", "\r\n", "\u00a0")] == \
        ["␣", "⏎", "⇥", "␣␣", "␣⏎", "⏎", "␣"]
    assert visible_token(" cat") == " cat" and visible_token("a\nb") == "a⏎b" and visible_token("") == ""


def drawn(monkeypatch):
    """The Figure each plot saves, kept to inspect instead of reading pixels back."""
    import qkv.viz
    figures = []
    save = qkv.viz._save
    monkeypatch.setattr(qkv.viz, "_save", lambda fig, path, dpi: (figures.append(fig), save(fig, path, dpi))[1])
    return figures


@pytest.mark.parametrize("signed", [False, True])
def test_plot_attention_has_one_colour_bar_and_labels_whitespace_tokens(tmp_path, monkeypatch, signed):
    figures = drawn(monkeypatch)
    toks = ["the", " ", "cat", "\n", "sat"]
    maps = softmax_maps("self", 2, 2, toks, toks)
    if signed:  # a map with negative weights (retention, the delta rule): every panel drawn signed
        maps.layers[1] = maps.layers[1] - 0.3
    plot_attention(maps, tmp_path / "a.png")
    fig = figures[-1]
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and "largest |weight|" in bars[0].get_ylabel()
    low, high = bars[0].get_ylim()
    assert (low, high) == ((-1.0, 1.0) if signed else (0.0, 1.0))
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 4 and all("(max " in ax.get_title() for ax in panels)
    assert [t.get_text() for t in panels[0].get_yticklabels()] == ["the", "␣", "cat", "⏎", "sat"]
    images = [ax.images[0] for ax in panels]
    assert all((im.norm.vmin < 0) == signed for im in images)  # unsigned panels of a signed figure too


def test_plot_curves_shows_the_losses_on_a_log_scale_beside(tmp_path, monkeypatch):
    figures = drawn(monkeypatch)
    records = [{"step": s, "train_loss": 5.0 * 0.9 ** s + 0.01} for s in range(1, 80)]
    plot_curves(records, tmp_path / "c.png")
    linear, log = figures[-1].axes
    assert (linear.get_yscale(), log.get_yscale()) == ("linear", "log") and "log" in log.get_title()
    assert [line.get_label() for line in log.lines] == [line.get_label() for line in linear.lines]
    plot_curves(records, tmp_path / "d.png", log_y=True)
    assert [ax.get_yscale() for ax in figures[-1].axes] == ["log"]  # already log: no second view


@needs_chromium
def test_explorer_heatmap_has_a_colour_bar_and_whitespace_labels_in_chromium(tmp_path):
    toks = ["the", " ", "cat", "\n"]
    maps = softmax_maps("self", 1, 2, toks, toks)
    path = explorer_html(maps, tmp_path / "e.html", title="colour bar")
    dom, stderr = render(path, tmp_path, "head=1")
    assert dom.body.get("data-status") == "ok", dom.body
    top = float(maps.layers[0][1].max())
    assert float(dom.body["data-colorbar-max"]) == pytest.approx(top, abs=1e-4)
    assert [e["text"] for e in dom.by_testid["colorbar-low"]] == ["0"]
    assert [e["text"] for e in dom.by_testid["colorbar-high"]] == [f"{top:.3f}"]
    assert "hidden" not in dom.by_testid["colorbar"][0]["attrs"]
    assert [e["text"] for e in dom.by_testid["token-query"]] == ["the", "␣", "cat", "⏎"]
    assert [e["text"] for e in dom.by_testid["heat-key-label"]] == ["the", "␣", "cat", "⏎"]
    assert dom.by_testid["token-key"][1]["attrs"]["title"] == '" "'  # the exact text on hover
