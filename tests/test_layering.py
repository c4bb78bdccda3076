"""Imports flow one way, function-level imports included: one table ranks every unit of qkv (``RANKS``), and a
module imports only units of a lower rank (or its own unit). No import circles, lazy ones included; a function-
level import of qkv says in a comment why it is there; no private name is imported across modules; the Hugging
Face converters are listed by hf.py, never registered into it. Read from the source with ``ast``."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "qkv"

# The layers, lowest first (docs/design.md draws the same table). A unit is a top-level module or package of qkv;
# "qkv" is the package's own __init__ (the public contract, re-exports only).
RANKS = {
    "repetition": 0,  # a decode's repeated tail, from plain ids: nothing of qkv
    "files": 0,  # leaf readers: paths, JSON, weights files, manifests, memory; they know nothing of models
    "ops": 1, "config": 1,  # pure tensor functions; the config dataclasses (config reads JSON through files)
    "viz": 1,  # drawings from plain numbers and tensors: nothing of qkv, so training and the explorer can call it
    "nn": 2, "presets": 2,  # modules from primitives; presets as data
    "models": 3,  # the families: the only readers of ModelConfig; their sizing against files
    "data": 4, "checkpoint": 4,  # tokenizers and datasets; run folders (model folders plus trainer state)
    "hub": 5,  # other projects' checkpoints -> models (it lists the tokenizer formats data reads)
    "decoding": 6,  # generation over any family's adapter
    "interpret": 6,  # rollout, flow, head ablation, the neuron view: over any model's attention sublayers
    "tasks": 7,  # training tasks: loss, batches, metrics (seq2seq's BLEU decodes, so decoding sits below)
    "train": 8,
    "viz_image": 8,  # each word over its image: reads the caption task's descriptions and the generated scenes
    "explore": 9, "qkv": 9,  # (the explorer draws an image model's words over its image with viz_image)
    "demo": 10,  # the main job: trains, decodes and opens the explorer
    "notebook": 10,  # the explorer's views and the interpretation views inline in Jupyter
    "cli": 11,  # the `qkv` command: qkv/cli/, one module per command and the pieces they share
    "__main__": 12,
}
# Modules that belong to another unit's rank: the explorer's server, the demo's folder guard, the config's value
# checks and command-line glue, the explorer page's data and HTML (which viz re-exports).
UNIT_OF = {"explore_server": "explore", "demo_folder": "demo", "config_rules": "config", "config_args": "config",
           "viz_page": "viz"}



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


def _imports(source: str, package: str, *, with_nodes: bool = False):
    """Every qkv import of a module's source in ``package``: (imported module, imported name or None), lazy ones
    included (with ``with_nodes``: and the ast node it comes from)."""
    for node in ast.walk(ast.parse(source)):
        found = []
        if isinstance(node, ast.Import):
            found = [(alias.name, None) for alias in node.names if alias.name.split(".")[0] == "qkv"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "qkv":
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.append((sub, None) if _exists(sub) else (target, alias.name))
        for edge in found:
            yield (*edge, node) if with_nodes else edge


FILES = sorted(ROOT.rglob("*.py"))
EDGES = {_module_name(f)[0]: list(_imports(f.read_text(encoding="utf-8"), _module_name(f)[1])) for f in FILES}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "qkv"


def _unit(module: str) -> str:
    return UNIT_OF.get(_layer(module), _layer(module))


def test_every_unit_has_a_rank():
    units = {_unit(m) for m in EDGES}
    assert units <= set(RANKS), f"units missing from RANKS: {sorted(units - set(RANKS))}"


def test_no_import_runs_up_or_across_a_layer():
    """Every edge, lazy ones included, from a unit to another goes to a strictly lower rank."""
    wrong = sorted((m, target) for m, edges in EDGES.items() for target, _ in edges
                   if _unit(target) != _unit(m) and RANKS[_unit(target)] >= RANKS[_unit(m)])
    assert not wrong, f"imports up (or across) a layer: {wrong}"


def _circles(edges: dict[str, list]) -> list[frozenset]:
    """The strongly connected components of more than one module (Tarjan), lazy imports included."""
    graph = {m: {t for t, _ in es if t in edges and t != m} for m, es in edges.items()}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = set()
            while True:
                w = stack.pop()
                on.discard(w)
                part.add(w)
                if w == v:
                    break
            if len(part) > 1:
                out.append(frozenset(part))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    circles = _circles(EDGES)
    assert not circles, f"import circles: {[sorted(c) for c in circles]}"


def _unexplained_lazy_imports(source: str, package: str) -> list[int]:
    """Lines of function-level qkv imports with no comment on the line or on the line just above."""
    lines = source.splitlines()
    out = set()
    for fn in ast.walk(ast.parse(source)):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and any(_imports(ast.unparse(node), package)):
                    n = node.lineno
                    if "#" not in lines[n - 1] and not lines[n - 2].strip().startswith("#"):
                        out.add(n)
    return sorted(out)


def test_function_level_imports_say_why():
    """An import inside a function is there for a reason (an optional dependency, start-up time, a circle kept on
    purpose): a comment on its line or the line above says which. Every file, no exceptions."""
    wrong = {}
    for f in FILES:
        lines = _unexplained_lazy_imports(f.read_text(encoding="utf-8"), _module_name(f)[1])
        if lines:
            wrong[f.relative_to(ROOT.parent).as_posix()] = lines
    assert not wrong, f"function-level imports of qkv without a comment saying why (file: lines): {wrong}"


def test_no_private_name_is_imported_across_modules():
    private = sorted((m, f"{target}.{name}") for m, edges in EDGES.items() for target, name in edges
                     if name is not None and name.startswith("_") and not name.startswith("__"))
    assert not private, f"private names imported from another module: {private}"


def test_the_file_readers_are_a_leaf():
    """qkv.files imports nothing of qkv but itself: any loader, and config.py, may use it."""
    wrong = {(m, t) for m, edges in EDGES.items() if _unit(m) == "files" for t, _ in edges if _unit(t) != "files"}
    assert not wrong


def test_hub_converters_are_listed_not_registered():
    """hf.py imports the converter modules and lists their CONVERTERS; they never import hf.py back."""
    converters = [m for m in EDGES if m.startswith("qkv.hub.hf_") and m not in ("qkv.hub.hf_maps", "qkv.hub.hf_fields")]
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
    assert _unit("qkv.explore_server") == "explore" and _unit("qkv.decoding.beam") == "decoding"


def test_the_rules_catch_a_circle_an_upward_import_and_a_silent_lazy_import():
    """The checks above can fail: a three-module circle is found, an upward edge is one, and an uncommented lazy
    import is reported while a commented one (or one of another project) is not."""
    edges = {"qkv.a": [("qkv.b", None)], "qkv.b": [("qkv.c", None)], "qkv.c": [("qkv.a", None)], "qkv.d": []}
    assert _circles(edges) == [frozenset({"qkv.a", "qkv.b", "qkv.c"})]
    assert RANKS[_unit("qkv.models.build")] <= RANKS[_unit("qkv.checkpoint")], "models -> checkpoint runs up"
    source = ("def f():\n    from ..ops import x\n\ndef g():\n    # start-up time\n    from ..ops import y\n"
              "def h():\n    import numpy\n    from ..nn import z  # optional dependency\n")
    assert _unexplained_lazy_imports(source, "qkv.nn") == [2]
