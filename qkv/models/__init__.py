"""Model families; the only code that reads ModelConfig."""
from .build import FAMILY_CLASSES, build, load
from .common import QKVModel
from .decoder import DecoderLM
from .encoder import Encoder
from .vit import ViT

__all__ = ["FAMILY_CLASSES", "build", "load", "QKVModel", "DecoderLM", "Encoder", "ViT"]
