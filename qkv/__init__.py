"""qkv: one PyTorch library for the whole attention family. See README.md for the map of concepts to files."""
from . import ops
from .nn import MultiHeadAttention

__version__ = "0.1.0"
__all__ = ["ops", "MultiHeadAttention", "__version__"]
