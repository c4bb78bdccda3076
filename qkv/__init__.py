"""qkv: one PyTorch library for the whole attention family. See README.md for the map of concepts to files."""
import importlib
import importlib.util

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


def __getattr__(name: str):
    """The other subpackages on first use (PEP 562): ``qkv.data.Tokenizer``, ``qkv.train``, ``qkv.viz`` work after a
    plain ``import qkv`` without every ``import qkv`` paying for them (tokenizers, datasets, plotting), and without
    import circles: by the time an attribute is asked for, this package is whole."""
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")  # the import binds it here too: asked for once
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    from pkgutil import iter_modules
    return sorted({*globals(), *(m.name for m in iter_modules(__path__) if not m.name.startswith("_"))})
