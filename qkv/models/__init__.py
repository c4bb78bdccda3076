"""Model families; the only code that reads ModelConfig."""
from .build import FAMILY_CLASSES, build, load
from .common import QKVModel
from .decoder import DecoderLM
from .encoder import Encoder
from .encoder_decoder import EncoderDecoder, Seq2SeqWeights
from .vit import ViT

__all__ = ["FAMILY_CLASSES", "build", "load", "QKVModel", "DecoderLM", "Encoder", "EncoderDecoder", "Seq2SeqWeights",
           "ViT"]
