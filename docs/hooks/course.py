"""The course runs: every snippet marked ``<!-- run: NAME -->`` above a ```` ```python ```` block is executed when
the site is built, its printed output is shown under it, and the matplotlib Figure it leaves in ``fig`` is saved
and shown as ``NAME.png``. A snippet may also leave ``html``: an object with ``_repr_html_`` (a ``qkv.notebook`` view,
a neuron view) or a list of them, shown live in the page under the figure, as Jupyter would show it. A snippet
that raises, or leaves no figure, fails the build; ``tests/test_course.py`` runs the same snippets in CI without
mkdocs.

Figures are written to build/docs-figures (never committed) and handed to mkdocs as files of the site.
"""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

RUN = re.compile(r"<!-- run: (?P<name>[a-z0-9-]+) -->\n```python\n(?P<code>.*?)\n```\n", re.S)
FIGURES = "figures"  # beside the course pages: course/figures/NAME.png
_outputs: dict[str, tuple[str, list[str]]] = {}


def snippets(markdown: str) -> list[tuple[str, str]]:
    """(name, code) of every runnable snippet of a page, in order."""
    return [(m.group("name"), m.group("code")) for m in RUN.finditer(markdown)]


def run(name: str, code: str):
    """Execute one snippet in a fresh namespace with torch seeded; returns (what it printed, its Figure, the HTML
    fragments of what it left in ``html``)."""
    import torch
    from matplotlib.figure import Figure
    torch.manual_seed(0)
    namespace = {"__name__": f"course_{name.replace('-', '_')}"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"<course snippet {name}>", "exec"), namespace)  # noqa: S102 (our own pages)
    fig = namespace.get("fig")
    if not isinstance(fig, Figure):
        raise ValueError(f"course snippet {name!r}: expected a matplotlib Figure in `fig`, got {type(fig).__name__}")
    shown = namespace.get("html", [])
    shown = shown if isinstance(shown, (list, tuple)) else [shown]
    if not all(hasattr(h, "_repr_html_") for h in shown):
        raise ValueError(f"course snippet {name!r}: `html` must hold objects with _repr_html_")
    # one line each: Markdown passes a block of raw HTML through untouched only while it has no blank line
    return out.getvalue(), fig, [h._repr_html_().replace("\n", " ") for h in shown]


def on_files(files, config):
    """Run every course snippet once per build, save its figure, and add the figure to the site's files."""
    from mkdocs.structure.files import File
    root = Path(config.config_file_path).parent / "build" / "docs-figures"
    seen = set()
    for f in list(files):
        if not (f.src_uri.startswith("course/") and f.src_uri.endswith(".md")):
            continue
        for name, code in snippets(Path(f.abs_src_path).read_text(encoding="utf-8")):
            if name in seen:
                raise ValueError(f"{f.src_uri}: a second course snippet named {name!r}")
            seen.add(name)
            printed, fig, shown = run(name, code)
            uri = f"course/{FIGURES}/{name}.png"
            (root / uri).parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(root / uri, dpi=90)
            _outputs[name] = printed, shown
            files.append(File(uri, str(root), config.site_dir, config.use_directory_urls))
    return files


def on_page_markdown(markdown, page, config, files):
    """Under each snippet: what it printed, then its figure."""
    def show(m):
        name = m.group("name")
        printed, shown = _outputs.get(name, ("", []))
        text = f"\n```text\n{printed.rstrip()}\n```\n" if printed.strip() else ""
        live = "".join(f'\n<div class="qkv-live">{h}</div>\n' for h in shown)
        return f"{m.group(0)}{text}\n![the figure of this snippet]({FIGURES}/{name}.png)\n{live}"
    return RUN.sub(show, markdown)
