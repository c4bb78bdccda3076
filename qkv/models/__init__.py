"""Model families; the only code that reads ModelConfig."""
from .build import FAMILY_CLASSES, build, load
from .common import QKVModel
from .decoder import DecoderLM
from .encoder_decoder import EncoderDecoder, Seq2SeqWeights

__all__ = ["FAMILY_CLASSES", "build", "load", "QKVModel", "DecoderLM", "EncoderDecoder", "Seq2SeqWeights"]
