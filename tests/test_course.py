"""The course runs: every snippet of every page of docs/course executes on a CPU and leaves a figure (the docs
build runs the same snippets through docs/hooks/course.py and shows their output), every page names files of
qkv that exist, and every page is in the site's navigation."""
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT / "docs" / "course"
PAGES = sorted(p for p in COURSE.glob("*.md") if p.name != "index.md")


def _hook():
    spec = importlib.util.spec_from_file_location("course_hook", ROOT / "docs" / "hooks" / "course.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_is_a_page_for_each_part_of_the_notes_and_each_is_in_the_nav():
    assert len(PAGES) == 12
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    index = (COURSE / "index.md").read_text(encoding="utf-8")
    for page in PAGES:
        assert f"course/{page.name}" in nav and f"({page.name})" in index, page.name


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_each_page_names_real_files_and_its_snippets_draw_a_figure(page):
    pytest.importorskip("matplotlib")
    text = page.read_text(encoding="utf-8")
    files = re.findall(r"`(qkv/[\w/]+\.py)`", text)
    assert files, f"{page.name} names no file of qkv"
    missing = [f for f in files if not (ROOT / f).is_file()]
    assert not missing, f"{page.name} names files that do not exist: {missing}"
    hook = _hook()
    found = hook.snippets(text)
    assert found, f"{page.name}: expected a runnable snippet, found none"
    for name, code in found:
        printed, fig, shown = hook.run(name, code)
        assert printed.strip() and fig.axes, name
        assert all("\n" not in h and "<" in h for h in shown)


def test_a_snippet_that_stops_running_or_draws_nothing_fails():
    hook = _hook()
    with pytest.raises(ZeroDivisionError):
        hook.run("broken", "1 / 0")
    with pytest.raises(ValueError, match="expected a matplotlib Figure in `fig`"):
        hook.run("no-figure", "x = 1")
    with pytest.raises(ValueError, match="_repr_html_"):
        hook.run("bad-html", "from matplotlib.figure import Figure\nfig = Figure()\nfig.subplots()\nhtml = 'x'")
    page = "<!-- run: a -->\n```python\nprint(1)\n```\n\ntext\n\n```python\nnot run\n```\n"
    assert hook.snippets(page) == [("a", "print(1)")]


def test_the_api_reference_check_names_what_is_missing(tmp_path):
    pytest.importorskip("mkdocs")
    spec = importlib.util.spec_from_file_location("api_hook", ROOT / "docs" / "hooks" / "api_coverage.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    import qkv
    import qkv.interpret
    import qkv.nn
    import qkv.ops
    from mkdocs.exceptions import PluginError

    class Config:
        site_dir = str(tmp_path)
    for module, page in hook.MODULES.items():
        names = [n for n in __import__(module, fromlist=["x"]).__all__ if n not in hook.SKIP.get(module, ())]
        (tmp_path / page).mkdir(parents=True)
        (tmp_path / page / "index.html").write_text("".join(f'<h2 id="{module}.{n}">' for n in names))
    hook.on_post_build(Config())  # complete: passes
    expanded = hook.on_page_markdown("# x\n\n<!-- api: qkv.nn -->\n", None, None, None)
    assert expanded.count(":::") == len(qkv.nn.__all__) and "::: qkv.nn.MultiHeadAttention\n" in expanded
    text = (tmp_path / "api/ops/index.html").read_text().replace('id="qkv.ops.attention"', "")
    (tmp_path / "api/ops/index.html").write_text(text)
    with pytest.raises(PluginError, match="lacks 1 public names: qkv.ops.attention"):
        hook.on_post_build(Config())
