"""Every ``qkv.<name>`` chain that README.md's Python blocks use (code and comments: ``qkv.data.Tokenizer.load``,
``qkv.TrainConfig``, ``qkv.to_hf``, ...) resolves after a plain ``import qkv``, in a fresh interpreter where nothing
else has imported a subpackage first."""
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAIN = re.compile(r"(?<![\w.])qkv(?:\.[A-Za-z_]\w*)+")

# Resolved attribute by attribute, as user code does: no import statement but the first.
RESOLVE = """
import json, sys
import qkv
missing = []
for chain in json.loads(sys.argv[1]):
    obj = qkv
    for k, name in enumerate(chain.split(".")[1:], 2):
        if not hasattr(obj, name):
            missing.append(".".join(chain.split(".")[:k]))
            break
        obj = getattr(obj, name)
print(json.dumps(missing))
"""


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, re.S | re.M)


def readme_chains() -> list[str]:
    blocks = python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    return sorted({m.group(0) for block in blocks for m in CHAIN.finditer(block)})


def _unresolved(chains: list[str]) -> list[str]:
    out = subprocess.run([sys.executable, "-c", RESOLVE, json.dumps(chains)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_readme_python_blocks_use_qkv_names():
    chains = readme_chains()
    assert {"qkv.data.Tokenizer.load", "qkv.TrainConfig", "qkv.to_hf", "qkv.ops.attention"} <= set(chains), chains


def test_every_readme_name_resolves_after_a_plain_import_qkv():
    """A chain that does not resolve is named up to its first missing attribute; ``qkv.no_such_thing`` checks that
    the resolver can fail."""
    chains = readme_chains()
    assert _unresolved(chains + ["qkv.no_such_thing", "qkv.data.NoSuchTokenizer"]) == [
        "qkv.no_such_thing", "qkv.data.NoSuchTokenizer"]


def test_subpackages_load_on_first_use_not_at_import():
    """``import qkv`` stays light: the data, training and plotting subpackages load when first used."""
    code = ("import sys, qkv; "
            "heavy = [m for m in ('qkv.data', 'qkv.train', 'qkv.viz', 'qkv.tasks') if m in sys.modules]; "
            "assert not heavy, heavy; qkv.data.Tokenizer; assert 'qkv.data' in sys.modules; "
            "assert 'data' in dir(qkv) and 'train' in dir(qkv)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
