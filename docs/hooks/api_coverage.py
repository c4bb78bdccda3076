"""The API reference covers every public name: after the build, each name in ``__all__`` of qkv, qkv.ops, qkv.nn
and qkv.interpret must have its anchor (mkdocstrings' ``id="module.name"``) in the built reference, or the build
fails naming the missing ones."""
from __future__ import annotations

import importlib
from pathlib import Path

MODULES = {"qkv": "api/qkv", "qkv.ops": "api/ops", "qkv.nn": "api/nn", "qkv.interpret": "api/interpret"}
SKIP = {"qkv": {"ops", "__version__"}}  # a subpackage with its own page, and a string


def on_post_build(config):
    missing = []
    for module, page in MODULES.items():
        built = Path(config.site_dir) / page / "index.html"
        text = built.read_text(encoding="utf-8") if built.exists() else ""
        for name in importlib.import_module(module).__all__:
            if name not in SKIP.get(module, ()) and f'id="{module}.{name}"' not in text:
                missing.append(f"{module}.{name}")
    if missing:
        from mkdocs.exceptions import PluginError
        raise PluginError(f"the API reference lacks {len(missing)} public names: {', '.join(missing)}")
