"""Checkpoints of other projects, in and out: Hugging Face folders (hf.py) and RWKV-LM files (rwkv.py)."""
from .hf import CONVERTERS, from_hf, to_hf
from .rwkv import from_rwkv

__all__ = ["CONVERTERS", "from_hf", "to_hf", "from_rwkv"]
