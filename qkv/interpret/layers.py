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
    block); module: the mixer (MultiHeadAttention, or a linear-time mixer) or the cross-attention.

    Example:

        >>> import qkv
        >>> from qkv.interpret import attention_layers
        >>> layer = attention_layers(qkv.build(qkv.preset("transformer-tiny")))[-1]   # an AttentionLayer
        >>> layer.kind, layer.layer, type(layer.module).__name__
        ('cross', 1, 'MultiHeadAttention')
    """
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
    "cross").

    Example:

        >>> import qkv
        >>> from qkv.interpret import attention_layers
        >>> [a.name for a in attention_layers(qkv.build(qkv.preset("transformer-tiny")))]   # the order they run
        ['self 0', 'self 1', 'masked 0', 'masked 1', 'cross 0', 'cross 1']
    """
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
    the kinds and counts the model has.

    Example:

        >>> import qkv
        >>> from qkv.interpret import find_layer
        >>> model = qkv.build(qkv.preset("gpt2-tiny"))
        >>> find_layer(model, "masked", -1).name                # negative counts from the last
        'masked 1'
        >>> find_layer(model, "cross", 0)
        Traceback (most recent call last):
        ValueError: ...
    """
    layers = [a for a in attention_layers(model) if a.kind == kind]
    if not layers:
        have = sorted({a.kind for a in attention_layers(model)})
        raise ValueError(f"kind={kind!r}: this model has attention of kinds {have}")
    if not isinstance(layer, int) or not -len(layers) <= layer < len(layers):
        raise ValueError(f"layer={layer!r}: the model has {len(layers)} {kind!r} layers (0..{len(layers) - 1})")
    return layers[layer]
