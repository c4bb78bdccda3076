"""Model families; the only code that reads ModelConfig. ``registry.py`` holds one record per family."""
from .build import build, load
from .caption import CaptionDecoding, CaptionModel, CaptionWeights
from .common import QKVModel
from .decoder import DecoderLM
from .encoder import Encoder
from .encoder_decoder import EncoderDecoder, Seq2SeqWeights
from .positions import decodable_positions
from .registry import FAMILIES, Family, context_window, decoding_of, family_of
from .rnn import RecurrentSeq2Seq
from .vit import ViT

__all__ = ["FAMILIES", "Family", "family_of", "decoding_of", "context_window", "decodable_positions", "build", "load",
           "QKVModel",
           "DecoderLM", "Encoder", "EncoderDecoder", "Seq2SeqWeights", "ViT",
           "RecurrentSeq2Seq", "CaptionModel", "CaptionDecoding", "CaptionWeights"]
