"""Where a model's attention sits: every mixer and cross-attention of its blocks, named by kind and layer.

Kinds are the explorer's (``qkv.viz.KINDS``): "self" (an encoder's, bidirectional), "masked" (a decoder's causal
self-attention) and "cross" (a decoder's attention over the encoder's output). The family record says which
blocks decode (``model.decoder_blocks()``) and whether their self-attention is causal; no family name is tested.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ..models import family_of
from ..nn import Block, MultiHeadAttention


@dataclass(frozen=True)
class AttentionLayer:
    """One attention sublayer. kind: "self", "masked" or "cross"; layer: its index within that kind (0 = first
    block); module: the mixer (MultiHeadAttention, or a linear-time mixer) or the cross-attention."""
    kind: str
    layer: int
    module: nn.Module

    @property
    def name(self) -> str:
        return f"{self.kind} {self.layer}"

    @property
    def softmax(self) -> bool:
        """Softmax attention with heads and W_O (MultiHeadAttention), as the neuron view and ablation need."""
        return isinstance(self.module, MultiHeadAttention)


def attention_layers(model: nn.Module) -> list[AttentionLayer]:
    """Every attention sublayer of a qkv model, in the order the model runs them: the encoder's self-attention,
    then per decoder block its self-attention and cross-attention (listed by kind: all "masked", then all
    "cross")."""
    record = family_of(model)
    try:
        decoding = {id(b) for b in model.decoder_blocks()}
    except NotImplementedError:  # an encoder or ViT: nothing decodes
        decoding = set()
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    out, counts = [], {"self": 0, "masked": 0, "cross": 0}

    def add(kind, module):
        out.append(AttentionLayer(kind, counts[kind], module))
        counts[kind] += 1
    for b in blocks:
        add("masked" if id(b) in decoding and record.causal else "self", b.mixer)
    for b in blocks:
        if b.cross is not None:
            add("cross", b.cross)
    return out


def find_layer(model: nn.Module, kind: str, layer: int) -> AttentionLayer:
    """The attention sublayer of ``kind`` at index ``layer`` (negative counts from the last); ValueError naming
    the kinds and counts the model has."""
    layers = [a for a in attention_layers(model) if a.kind == kind]
    if not layers:
        have = sorted({a.kind for a in attention_layers(model)})
        raise ValueError(f"kind={kind!r}: this model has attention of kinds {have}")
    if not isinstance(layer, int) or not -len(layers) <= layer < len(layers):
        raise ValueError(f"layer={layer!r}: the model has {len(layers)} {kind!r} layers (0..{len(layers) - 1})")
    return layers[layer]
