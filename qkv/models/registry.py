"""The one registry of families: for each ``ModelConfig.family``, the record everything above ``qkv/models`` looks
up instead of testing the family's name.

    record = family_of(config)          # or family_of(model)
    record.model(config)                # the model class (``qkv.build``)
    record.tasks                        # its training tasks, by the names qkv/tasks/ defines them
    record.decoding                     # its decode adapter (qkv/models/decoding.py), None if it does not generate
    record.continues, record.has_source # a prompt continued (a language model) / a source conditioned on
    record.flops(model, seq_len)        # forward FLOPs per token
    context_window(model)               # W: the tokens a decode past the learned positions conditions on

The records are listed here, explicitly (nothing registers itself on import); the family's own behaviour lives in
its module (decoder.py, encoder.py, encoder_decoder.py, vit.py, rnn.py, caption.py). The names are ``qkv.config.FAMILIES``, and this
table covers exactly them (checked at import).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..config import FAMILIES as FAMILY_NAMES
from ..config import ModelConfig
from .caption import CaptionDecoding, CaptionModel
from .common import QKVModel
from .decoder import CausalDecoding, DecoderLM
from .decoding import Decoding
from .encoder import Encoder
from .encoder_decoder import EncoderDecoder, Seq2SeqDecoding
from .positions import decodable_positions
from .rnn import RecurrentDecoding, RecurrentSeq2Seq
from .vit import ViT


@dataclass(frozen=True)
class Family:
    """One family. model: the class built for it. tasks: its training tasks (qkv/tasks/: loss, batches, data,
    metrics), the first the default. decoding: its decode adapter, or None (it reads its input at once and
    generates nothing). text: it reads token ids (False: pixels). causal: its self-attention is masked (a token
    sees no later one). stacks: the config fields counting its blocks, one per stack. flops: (model, seq_len) ->
    forward FLOPs per token. block_paths: where each stack's blocks sit in the model (an ``nn.ModuleList``, one
    block per layer: "blocks", "decoder.blocks"), in the order of ``stacks``, or () for a family whose layers are not one
    module each (the recurrent family: sizing then builds it whole on the meta device); sizing copies blocks past the second
    repeat of the layer pattern from there (qkv/models/sizing.py)."""
    name: str
    model: type[QKVModel]
    tasks: tuple[str, ...]
    decoding: Decoding | None
    text: bool
    causal: bool
    stacks: tuple[str, ...]
    flops: Callable[[QKVModel, int | None], int]
    block_paths: tuple[str, ...] = ("blocks",)

    @property
    def continues(self) -> bool:
        """It generates by continuing a prompt (a language model: ``qkv generate``, loss on a text)."""
        return self.decoding is not None and not self.decoding.has_source

    @property
    def has_source(self) -> bool:
        """It generates an output conditioned on a source it does not return (translation: ``qkv translate``)."""
        return self.decoding is not None and self.decoding.has_source

    def layer_counts(self, config: ModelConfig) -> dict[str, int]:
        """{field: blocks} of each stack, e.g. {"n_layers": 6, "n_decoder_layers": 6}."""
        return {name: getattr(config, name) for name in self.stacks}


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("decoder", DecoderLM, ("lm",), CausalDecoding(), text=True, causal=True, stacks=("n_layers",),
           flops=DecoderLM.flops_per_token),
    Family("encoder", Encoder, ("mlm", "classify"), None, text=True, causal=False, stacks=("n_layers",),
           flops=Encoder.flops_per_token),
    Family("encoder_decoder", EncoderDecoder, ("seq2seq",), Seq2SeqDecoding(), text=True, causal=True,
           stacks=("n_layers", "n_decoder_layers"), flops=EncoderDecoder.flops_per_token,
           block_paths=("encoder.blocks", "decoder.blocks")),
    Family("vit", ViT, ("image",), None, text=False, causal=False, stacks=("n_layers",), flops=ViT.flops_per_token),
    Family("rnn", RecurrentSeq2Seq, ("seq2seq",), RecurrentDecoding(), text=True, causal=True,
           stacks=("n_layers", "n_decoder_layers"), flops=RecurrentSeq2Seq.flops_per_token,
           block_paths=()),  # a layer is a cell and its bridge, in two lists: sizing builds it whole (few layers)
    Family("caption", CaptionModel, ("caption",), CaptionDecoding(), text=False, causal=True,
           stacks=("n_layers", "n_decoder_layers"), flops=CaptionModel.flops_per_token,
           block_paths=()),  # an image encoder and a recurrent or block decoder: sized whole
)}
if any(f.block_paths and len(f.block_paths) != len(f.stacks) for f in FAMILIES.values()):  # one place per stack
    raise ImportError(f"qkv.models.registry: every family needs one block path per stack: "
                      f"{ {f.name: (f.stacks, f.block_paths) for f in FAMILIES.values()} }")
if set(FAMILIES) != set(FAMILY_NAMES):  # one list: the config's names, each with its record here
    raise ImportError(f"qkv.models.registry has families {sorted(FAMILIES)}, but qkv.config.FAMILIES names "
                      f"{sorted(FAMILY_NAMES)}")


def family_of(config_or_model) -> Family:
    """The record of a ModelConfig's family, or of a model's (anything with a ``config``)."""
    config = getattr(config_or_model, "config", config_or_model)
    name = getattr(config, "family", None)
    if name not in FAMILIES:
        raise ValueError(f"family {name!r} has no model class; available: {sorted(FAMILIES)}")
    return FAMILIES[name]


def decoding_of(model) -> Decoding:
    """The decode adapter of a model's family; ValueError when the family does not generate tokens."""
    record = family_of(model)
    if record.decoding is None:
        raise ValueError(f"a {record.name!r} model reads its input at once and generates no tokens; decoding needs "
                         f"a family with a decode adapter: "
                         f"{sorted(name for name, f in FAMILIES.items() if f.decoding is not None)}")
    return record.decoding


def context_window(config_or_model) -> int | None:
    """W, the tokens a decode conditions on once it runs past the model's learned positions (the context slides:
    the last W tokens, recomputed each step), or None when it does not slide: positions that extrapolate (RoPE,
    ALiBi, sinusoids, relative buckets) or none at all (recurrent mixers) have no end to slide past, and a family
    whose adapter does not slide (``Decoding.slides``: an output for a source) refuses at the end instead."""
    config = getattr(config_or_model, "config", config_or_model)
    bound = decodable_positions(config)
    record = family_of(config)
    if bound is None or record.decoding is None or not record.decoding.slides:
        return None
    return bound
