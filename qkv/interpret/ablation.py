"""Head importance by ablation (Michel et al. 2019, "Are Sixteen Heads Really Better than One?", sec. 2-3).

A head is switched off by zeroing its output before W_O: the concatenation of heads loses that head's D features,
so the layer's output is W_O applied to the others (plus W_O's bias). The importance of a head is how much the
loss on given inputs rises when it alone is switched off.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import torch
import torch.nn as nn

from .layers import AttentionLayer, attention_layers


@contextlib.contextmanager
def ablate_heads(heads: Mapping[nn.Module, Iterable[int]]):
    """Within the block, the listed heads of each MultiHeadAttention output zeros before W_O.

    heads: {MultiHeadAttention module: head indices}. The modules are changed by forward pre-hooks on their
    ``out`` projection, removed on exit (also on an error).

    Example:

        >>> import torch
        >>> from qkv.nn import MultiHeadAttention
        >>> from qkv.interpret import ablate_heads
        >>> mha, x = MultiHeadAttention(8, 2, bias=False), torch.randn(1, 3, 8)
        >>> with ablate_heads({mha: [0, 1]}):                   # every head off: nothing reaches W_O
        ...     off = mha(x)
        >>> torch.count_nonzero(off).item(), torch.count_nonzero(mha(x)).item() > 0   # hooks removed on exit
        (0, True)
    """
    handles = []
    try:
        for module, idx in heads.items():
            idx = sorted(set(int(h) for h in idx))
            H, D = module.n_heads, module.head_dim
            bad = [h for h in idx if not 0 <= h < H]
            if bad:
                raise ValueError(f"heads {bad}: the module has {H} heads (0..{H - 1})")
            keep = torch.ones(H * D)
            for h in idx:
                keep[h * D:(h + 1) * D] = 0.0

            def zero(_, args, keep=keep):
                x = args[0]  # (B, T, H * D): the heads concatenated, before W_O
                return (x * keep.to(x.device, x.dtype),) + tuple(args[1:])
            handles.append(module.out.register_forward_pre_hook(zero))
        yield
    finally:
        for h in handles:
            h.remove()


@dataclass
class HeadImportance:
    """layers: the ablated attention sublayers (``AttentionLayer``), M of them. base: the loss with every head on.
    scores: (M, H) float64, the loss with that one head off minus ``base`` (positive: the head helps).

    Example:

        >>> import torch, qkv
        >>> from qkv.interpret import head_importance
        >>> model, ids = qkv.build(qkv.preset("gpt2-tiny")).eval(), torch.tensor([[1, 2, 3, 4, 5]])
        >>> loss = lambda m: torch.nn.functional.cross_entropy(m(ids[:, :-1])[0], ids[0, 1:])
        >>> imp = head_importance(model, loss)                  # a HeadImportance
        >>> imp.names, imp.scores.shape, imp.scores.dtype       # M sublayers x H heads
        (['masked 0', 'masked 1'], torch.Size([2, 4]), torch.float64)
    """
    layers: list[AttentionLayer]
    base: float
    scores: torch.Tensor

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.layers]


def head_importance(model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor], *,
                    kinds: Iterable[str] = ("self", "masked", "cross")) -> HeadImportance:
    """Ablate each head of each softmax-attention sublayer of ``kinds`` in turn and measure the loss.

    loss_fn(model) -> a scalar tensor: the loss on the caller's inputs (it runs the model). Runs under
    ``torch.no_grad``; M sublayers of H heads cost 1 + M * H calls of loss_fn. Linear-time mixers have no heads
    to cut before an output projection of this form and are skipped. Returns ``HeadImportance``.

    Example:

        >>> import math, torch, qkv
        >>> from qkv.interpret import ablate_heads, find_layer, head_importance
        >>> model, ids = qkv.build(qkv.preset("gpt2-tiny")).eval(), torch.tensor([[1, 2, 3, 4, 5]])
        >>> loss = lambda m: torch.nn.functional.cross_entropy(m(ids[:, :-1])[0], ids[0, 1:])
        >>> imp = head_importance(model, loss)                  # 1 + M * H calls of loss
        >>> with torch.no_grad(), ablate_heads({find_layer(model, "masked", 1).module: [3]}):
        ...     off = loss(model).item()                        # head 3 of layer 1 off, by hand
        >>> imp.scores.shape, math.isclose(imp.scores[1, 3].item(), off - imp.base, abs_tol=1e-5)
        (torch.Size([2, 4]), True)
    """
    kinds = set(kinds)
    layers = [a for a in attention_layers(model) if a.softmax and a.kind in kinds]
    if not layers:
        raise ValueError(f"kinds={sorted(kinds)}: the model has no softmax attention of these kinds")
    with torch.no_grad():
        base = float(loss_fn(model))
        H = max(a.module.n_heads for a in layers)
        scores = torch.full((len(layers), H), float("nan"), dtype=torch.float64)
        for m, a in enumerate(layers):
            for h in range(a.module.n_heads):
                with ablate_heads({a.module: [h]}):
                    scores[m, h] = float(loss_fn(model)) - base
    return HeadImportance(layers, base, scores)
