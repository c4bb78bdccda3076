"""qkv: one PyTorch library for the whole attention family. See README.md for the map of concepts to files."""
from . import ops
from .config import ModelConfig, TrainConfig
from .decoding import GenerationConfig, generate, stream
from .hub import from_hf, from_rwkv, to_hf
from .models import build, load
from .nn import MultiHeadAttention
from .nn.cache import Cache, KVCache
from .presets import PRESETS, preset

__version__ = "0.1.0"
__all__ = ["ops", "Cache", "KVCache", "ModelConfig", "TrainConfig", "GenerationConfig", "generate", "stream", "from_hf", "from_rwkv",
           "to_hf", "build", "load", "MultiHeadAttention", "PRESETS", "preset", "__version__"]
