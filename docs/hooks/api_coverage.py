"""The API reference covers every public name, by construction and by check.

By construction: a page line ``<!-- api: qkv.nn -->`` becomes one ``::: qkv.nn.Name`` entry (mkdocstrings) per name
in that module's ``__all__``, read when the site is built, so a name added to ``__all__`` gets its entry.
By check: after the build, each such name must have its anchor (``id="module.name"``) in the built page, or the
build fails naming the missing ones (an entry mkdocstrings could not render, a page without its marker).
"""
from __future__ import annotations

import importlib
import re
from pathlib import Path

MODULES = {"qkv": "api/qkv", "qkv.ops": "api/ops", "qkv.nn": "api/nn", "qkv.interpret": "api/interpret",
           "qkv.notebook": "api/notebook", "qkv.viz": "api/viz", "qkv.explore": "api/explore"}
SKIP = {"qkv": {"ops", "__version__"}}  # a subpackage with its own page, and a string
MARK = re.compile(r"^<!-- api: (?P<module>[\w.]+) -->$", re.M)


def public_names(module: str) -> list[str]:
    """The names of ``module.__all__`` that get an entry of their own."""
    return [n for n in importlib.import_module(module).__all__ if n not in SKIP.get(module, ())]


def on_page_markdown(markdown, page, config, files):
    return MARK.sub(lambda m: "\n".join(f"::: {m.group('module')}.{n}\n" for n in public_names(m.group("module"))),
                    markdown)


def on_post_build(config):
    missing = []
    for module, page in MODULES.items():
        built = Path(config.site_dir) / page / "index.html"
        text = built.read_text(encoding="utf-8") if built.exists() else ""
        missing += [f"{module}.{n}" for n in public_names(module) if f'id="{module}.{n}"' not in text]
    if missing:
        from mkdocs.exceptions import PluginError
        raise PluginError(f"the API reference lacks {len(missing)} public names: {', '.join(missing)}")
