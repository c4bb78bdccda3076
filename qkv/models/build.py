"""The one registry of families: family name -> model class. ``qkv.build(config)``, ``qkv.load(path)``."""
from __future__ import annotations

from pathlib import Path

from ..config import ModelConfig
from .common import WEIGHTS_FILE, QKVModel, load_config
from .decoder import DecoderLM
from .encoder import Encoder
from .encoder_decoder import EncoderDecoder
from .vit import ViT

FAMILY_CLASSES: dict[str, type[QKVModel]] = {"decoder": DecoderLM, "encoder": Encoder,
                                             "encoder_decoder": EncoderDecoder, "vit": ViT}


def build(config: ModelConfig) -> QKVModel:
    """A freshly initialised model for ``config``."""
    if not isinstance(config, ModelConfig):
        raise TypeError(f"build needs a qkv.ModelConfig, got {type(config).__name__}")
    if config.family not in FAMILY_CLASSES:
        raise ValueError(f"family {config.family!r} has no model class; available: {sorted(FAMILY_CLASSES)}")
    return FAMILY_CLASSES[config.family](config)


def load(path, *, device=None, dtype=None) -> QKVModel:
    """A model saved by ``model.save(path)``: config.json + model.safetensors."""
    from safetensors.torch import load_model
    path = Path(path)
    model = build(load_config(path))
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{path} is not a qkv model folder: {WEIGHTS_FILE} is missing")
    load_model(model, str(weights), device=str(device) if device else "cpu")
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()
