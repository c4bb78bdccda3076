"""The README's lists of supported architectures, tokenizer files and RoPE variants are ``qkv info --supported``'s
output, generated from the registries: this test fails when one changes without the other."""
import re
from pathlib import Path

from qkv.hub.supported import supported_text

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quotes_the_supported_lists_exactly():
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- qkv info --supported -->\n```\n(.*?)\n```\n<!-- end qkv info --supported -->", text, re.S)
    assert block, "README.md lacks the qkv info --supported block"
    assert block.group(1) == supported_text(), "README.md is out of date: paste `qkv info --supported` into it"
