"""qkv: one PyTorch library for the whole attention family. See README.md for the map of concepts to files."""
from . import ops
from .cache import Cache, KVCache
from .hub import from_hf, to_hf
from .config import ModelConfig
from .generate import generate, stream
from .models import build, load
from .nn import MultiHeadAttention
from .presets import PRESETS, preset

__version__ = "0.1.0"
__all__ = ["ops", "Cache", "KVCache", "from_hf", "to_hf", "ModelConfig", "generate", "stream", "build", "load", "MultiHeadAttention", "PRESETS", "preset",
           "__version__"]
