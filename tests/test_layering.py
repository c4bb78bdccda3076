"""Imports flow one way: ops <- nn <- models <- decoding / train <- cli, hub -> models; config.py imports nothing of
qkv; no private name is imported across modules; the Hugging Face converters are listed by hf.py, never registered
into it (no cycle). Read from the source with ``ast``, lazy imports inside functions included."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "qkv"


def _module_name(path: Path) -> tuple[str, str]:
    """(module, package it sits in): qkv/nn/cache.py -> ("qkv.nn.cache", "qkv.nn")."""
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        name = ".".join(parts[:-1])
        return name, name
    return ".".join(parts), ".".join(parts[:-1])


def _exists(name: str) -> bool:
    path = ROOT.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(source: str, package: str):
    """Every qkv import of a module's source in ``package``: (imported module, imported name or None), lazy ones
    included."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "qkv":
                    yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "qkv":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub, None) if _exists(sub) else (target, alias.name)


FILES = sorted(ROOT.rglob("*.py"))
EDGES = {_module_name(f)[0]: list(_imports(f.read_text(encoding="utf-8"), _module_name(f)[1])) for f in FILES}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "qkv"


# what each layer may import from qkv (besides itself)
ALLOWED = {
    "ops": set(),
    "nn": {"ops"},
    "config": set(),
    "presets": {"config"},
}
# what each layer must never import, however lazily
FORBIDDEN = {
    "models": {"decoding", "train", "tasks", "cli", "explore", "demo", "viz", "hub", "data"},
    "hub": {"decoding", "train", "tasks", "cli", "explore", "demo"},
    "decoding": {"train", "tasks", "cli", "explore", "demo"},
}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_low_layers_import_only_below_themselves(layer):
    wrong = {(m, target) for m, edges in EDGES.items() if _layer(m) == layer
             for target, _ in edges if _layer(target) not in ALLOWED[layer] | {layer}}
    assert not wrong, f"qkv.{layer} imports above itself: {sorted(wrong)}"


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_layer_imports_a_layer_above_it(layer):
    wrong = {(m, target) for m, edges in EDGES.items() if _layer(m) == layer
             for target, _ in edges if _layer(target) in FORBIDDEN[layer]}
    assert not wrong, f"qkv.{layer} imports a layer above it: {sorted(wrong)}"


def test_no_private_name_is_imported_across_modules():
    private = sorted((m, f"{target}.{name}") for m, edges in EDGES.items() for target, name in edges
                     if name is not None and name.startswith("_") and not name.startswith("__"))
    assert not private, f"private names imported from another module: {private}"


def test_hub_converters_are_listed_not_registered():
    """hf.py imports the converter modules and lists their CONVERTERS; they never import hf.py back."""
    converters = [m for m in EDGES if m.startswith("qkv.hub.hf_") and m != "qkv.hub.hf_maps"]
    assert converters
    for m in converters:
        assert all(target != "qkv.hub.hf" for target, _ in EDGES[m]), f"{m} imports qkv.hub.hf (a cycle)"
    import qkv.hub.hf as hf
    import importlib
    listed = {c.model_type for m in converters for c in importlib.import_module(m).CONVERTERS}
    assert listed == set(hf.CONVERTERS)


def test_the_reader_resolves_what_the_rules_look_for():
    """Relative imports, lazy ones and private names come out as the rules above read them."""
    source = "from ..models import registry\ndef f():\n    from ..ops.checks import _TRUSTED\n    import qkv.cli\n"
    assert list(_imports(source, "qkv.nn")) == [("qkv.models.registry", None), ("qkv.ops.checks", "_TRUSTED"),
                                                ("qkv.cli", None)]
    assert [_layer(t) for t, _ in _imports(source, "qkv.nn")] == ["models", "ops", "cli"]
