"""What qkv reads from other projects, listed from the registries themselves (the converters, the tokenizer
readers, the RoPE variants), so the README's lists, which quote ``qkv info --supported``, cannot drift."""
from __future__ import annotations

from ..data.sentencepiece import FORMATS
from ..ops.rope import ROPE_SCALINGS
from .hf import CONVERTERS


def supported_text() -> str:
    """The lists, as ``qkv info --supported`` prints them."""
    lines = ["Hugging Face architectures (config.json model_type: class; 'in/out' also exports with to_hf):"]
    for model_type, conv in sorted(CONVERTERS.items()):
        lines.append(f"  {model_type:12s} {conv.architecture:36s} {'in/out' if conv.state_to_hf else 'in'}")
    lines += ["Tokenizer files (Tokenizer.load(folder_or_hub_id)):",
              f"  {'tokenizer.json':38s} any Hugging Face fast tokenizer (BPE, WordPiece, Unigram, byte-level)"]
    lines += [f"  {files:38s} {what}" for files, what in FORMATS.items()]
    lines += [f"  {'qkv_tokenizer.json':38s} qkv's own (characters, or a tokenizer.json beside it)",
              "RoPE variants (config.json rope_parameters / rope_scaling rope_type: its parameters):",
              f"  {'default':10s} rope_theta"]
    for name, (required, optional) in ROPE_SCALINGS.items():
        lines.append(f"  {name:10s} {', '.join(required)}" + (f" [{', '.join(optional)}]" if optional else ""))
    return "\n".join(lines)
