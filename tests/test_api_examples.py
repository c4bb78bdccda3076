"""Every public name of the API reference carries a runnable example, and every example runs.

The names are the ones the site documents: each ``__all__`` of the modules in ``docs/hooks/api_coverage.py``
(``MODULES``, less ``SKIP``), read from that hook so the reference and this test cannot disagree. An example is a
``>>>`` block in the name's docstring (a function's, a class's, or, for data such as ``qkv.ops.SCORES``, the
string right after its assignment, which mkdocstrings shows as its docstring). Each runs as a doctest on CPU with
a fixed seed; a name without an example fails, so a new public name comes with one.
"""
from __future__ import annotations

import ast
import doctest
import importlib
import importlib.util
import inspect
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
FLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS


def _hook():
    spec = importlib.util.spec_from_file_location("api_coverage", ROOT / "docs" / "hooks" / "api_coverage.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    return hook


HOOK = _hook()
NAMES = [f"{module}.{name}" for module in HOOK.MODULES for name in HOOK.public_names(module)]


def _attribute_doc(module: str, name: str) -> tuple[str, str, int] | None:
    """The docstring griffe gives data: the string right after its last top-level assignment in the module that
    defines it (followed through ``from .x import name``). (text, file, line) or None."""
    path = Path(importlib.import_module(module).__file__)
    body = ast.parse(path.read_text(encoding="utf-8")).body
    found = None
    for i, node in enumerate(body):
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            original = next(a.name for a in node.names if (a.asname or a.name) == name)
            package = module if path.name == "__init__.py" else module.rpartition(".")[0]
            source = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            found = ("import", source, original)
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) \
            else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            after = body[i + 1] if i + 1 < len(body) else None
            doc = after.value.value if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) \
                and isinstance(after.value.value, str) else None
            found = ("doc", doc, after.lineno if doc else node.lineno)
    if found is None:
        return None
    if found[0] == "import":
        return _attribute_doc(found[1], found[2])
    return (inspect.cleandoc(found[1]), str(path), found[2]) if found[1] else None


def docstring(qualname: str) -> tuple[str, str, int]:
    """(docstring, file, line) of a public name, as the API reference shows it."""
    module, _, name = qualname.rpartition(".")
    obj = getattr(importlib.import_module(module), name)
    if inspect.isroutine(obj) or inspect.isclass(obj) or inspect.ismodule(obj):
        target = inspect.unwrap(obj)
        try:
            file, line = inspect.getsourcefile(target), inspect.getsourcelines(target)[1]
        except (TypeError, OSError):
            file, line = module, 0
        return inspect.cleandoc(obj.__doc__ or ""), file or module, line
    return _attribute_doc(module, name) or ("", module, 0)


def test_the_names_are_the_references():
    """The list is not empty and holds each module's names (a broken hook import would make every test vacuous)."""
    assert len(NAMES) > 100
    for module in HOOK.MODULES:
        assert any(n.startswith(module + ".") for n in NAMES), module


def run_example(qualname: str, text: str, file: str = "<docstring>", line: int = 0) -> None:
    """Run the ``>>>`` examples of one docstring; AssertionError naming ``qualname`` when there is none or one
    fails (with doctest's report: the line, what was expected, what came)."""
    test = doctest.DocTestParser().get_doctest(text, {}, qualname, file, line)
    assert test.examples, f"{qualname} has no example: add a '>>>' block under 'Example:' to its docstring"
    torch.manual_seed(0)
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    try:
        result = runner.run(test, out=report.append, clear_globs=True)
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)
    assert result.failed == 0, f"the example of {qualname} broke:\n" + "".join(report)


@pytest.mark.parametrize("qualname", NAMES)
def test_example_runs(qualname, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    run_example(qualname, *docstring(qualname))


def test_a_name_without_an_example_or_with_a_broken_one_fails():
    with pytest.raises(AssertionError, match="qkv.fake has no example"):
        run_example("qkv.fake", "Shapes only.\n\nExample::\n\n    (B, T) -> (B, T, V)")
    with pytest.raises(AssertionError, match=r"(?s)the example of qkv.fake broke:.*Expected:\s+3.*Got:\s+4"):
        run_example("qkv.fake", "Example:\n\n    >>> 2 + 2\n    3\n")
    run_example("qkv.fake", "Example:\n\n    >>> import torch\n    >>> torch.ones(2, 3).sum(-1)\n    tensor([3., 3.])\n")


def test_data_finds_the_string_after_its_assignment():
    """Data has no __doc__ of its own: its docstring is the string after the assignment, followed through imports
    (qkv.ops.SCORES is assigned in qkv/ops/attention.py), as mkdocstrings reads it."""
    text, file, _ = docstring("qkv.ops.SCORES")
    assert file.endswith("attention.py") and ">>> SCORES" in text
    assert docstring("qkv.__version__")[0] == ""  # a string with no docstring: SKIP keeps it out of NAMES
