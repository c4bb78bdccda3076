"""Attention rollout and attention flow (Abnar and Zuidema 2020, "Quantifying Attention Flow in Transformers").

Raw attention says how much token i reads token j *in one layer*; after a few layers every position mixes every
token, so the raw weights of a deep layer say little about the input. Both methods follow information through the
stack, over the graph whose nodes are the tokens at each layer and whose edges are the attention weights, with the
residual connection added as an identity (sec. 3: A_res = 0.5 A + 0.5 I, rows renormalised):

- rollout multiplies the layers' matrices: R_l = A_res,l @ R_(l-1), so R_L[i, j] sums the weights of all paths
  from input token j to token i (sec. 3, "attention rollout");
- flow treats the weights as capacities and takes the maximum flow from input token j to token i (sec. 3,
  "attention flow"), so a path is only as strong as its weakest edge, and paths compete for shared edges.

Inputs are the model's per-layer self-attention weights, each (B, H, T, T), as ``return_weights=True`` gives them
(``self_attention`` runs a model for them). Letters: B batch, H heads, L layers, T tokens.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..models import family_of
from .maxflow import max_flow

FUSIONS = ("mean", "max", "min")


def self_attention(model, inputs: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
    """The self-attention weights of every layer of a model's encoder on ``inputs``: a list over layers of
    (B, H, T, T). inputs: token ids (B, T) for a text model (an encoder-decoder's source: its encoder is read), or
    pixels (B, C, H, W) for an image model (T = 1 + patches). attention_mask: (B, T), 1 = token, for text models.
    Runs under ``torch.no_grad``; a layer without a (T, T) map (a linear-time mixer) raises ValueError.

    Example:

        >>> import torch, qkv
        >>> from qkv.interpret import self_attention
        >>> model = qkv.build(qkv.preset("vit-tiny")).eval()
        >>> pixels = torch.randn(1, 3, model.config.image_size, model.config.image_size)   # (B, C, H, W)
        >>> weights = self_attention(model, pixels)              # a list over layers of (B, H, T, T), T = 1 + patches
        >>> len(weights), weights[0].shape[-1] == 1 + (model.config.image_size // model.config.patch_size) ** 2
        (2, True)
    """
    record = family_of(model)
    with torch.no_grad():
        if not record.text:
            if attention_mask is not None:
                raise ValueError("attention_mask: an image model has no padding; pass None")
            _, blocks = model.hidden_states(inputs, return_weights=True)
        elif record.has_source:
            _, blocks = model.encode(inputs, attention_mask, return_weights=True)
        else:
            _, blocks = model(inputs, attention_mask=attention_mask, return_weights=True)
    weights = [b.self_attn for b in blocks]
    missing = [i for i, w in enumerate(weights) if w is None]
    if missing:
        raise ValueError(f"layers {missing} return no attention map (linear-time mixers): rollout and flow need "
                         f"a (T, T) map from every layer")
    return weights


def residual_matrices(weights: Sequence[torch.Tensor], *, residual: bool = True,
                      head_fusion: str = "mean") -> torch.Tensor:
    """Each layer's heads fused into one (T, T) matrix, plus the residual as 0.5 A + 0.5 I, rows renormalised.

    weights: a list over L layers of (B, H, T, T). head_fusion: "mean" (the paper's), "max" or "min" over heads.
    Returns (B, L, T, T) in float64.

    Example:

        >>> import torch
        >>> from qkv.interpret import residual_matrices
        >>> weights = [torch.softmax(torch.randn(2, 4, 3, 3), -1) for _ in range(2)]   # L x (B, H, T, T)
        >>> mats = residual_matrices(weights)                # 0.5 mean-of-heads + 0.5 I per layer
        >>> expected = 0.5 * weights[0][0].double().mean(0) + 0.5 * torch.eye(3, dtype=torch.float64)
        >>> mats.shape, torch.allclose(mats[0, 0], expected)   # (B, L, T, T); rows of A + I already sum to 2
        (torch.Size([2, 2, 3, 3]), True)
    """
    if head_fusion not in FUSIONS:
        raise ValueError(f"head_fusion={head_fusion!r}: expected one of {FUSIONS}")
    if not weights:
        raise ValueError("weights=[]: expected one (B, H, T, T) tensor per layer")
    mats = []
    for i, w in enumerate(weights):
        w = torch.as_tensor(w).detach().to("cpu", torch.float64)
        if w.dim() != 4 or w.shape[-1] != w.shape[-2] or w.shape != torch.as_tensor(weights[0]).shape:
            raise ValueError(f"weights[{i}] has shape {tuple(w.shape)}: expected self-attention (B, H, T, T) "
                             f"like weights[0] {tuple(torch.as_tensor(weights[0]).shape)}")
        a = w.mean(1) if head_fusion == "mean" else w.amax(1) if head_fusion == "max" else w.amin(1)  # (B, T, T)
        if residual:
            a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype)
        mats.append(a / a.sum(-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny))
    return torch.stack(mats, dim=1)


def rollout(weights: Sequence[torch.Tensor], *, residual: bool = True, head_fusion: str = "mean") -> torch.Tensor:
    """Attention rollout after every layer.

    weights: a list over L layers of (B, H, T, T). Returns (B, L, T, T) float64: ``out[b, l, i, j]`` is how much
    input token j reaches token i after layer l (the product A_res,l ... A_res,0); ``out[:, -1]`` is the whole
    stack's. Each row sums to 1.

    Example:

        >>> import torch, qkv
        >>> from qkv.interpret import rollout, self_attention
        >>> model = qkv.build(qkv.preset("bert-tiny")).eval()
        >>> roll = rollout(self_attention(model, torch.tensor([[2, 7, 5, 9, 3]])))   # (B, L, T, T) float64
        >>> roll.shape, torch.allclose(roll.sum(-1), torch.ones(1, 2, 5, dtype=torch.float64))   # rows sum to 1
        (torch.Size([1, 2, 5, 5]), True)
    """
    mats = residual_matrices(weights, residual=residual, head_fusion=head_fusion)  # (B, L, T, T)
    out, acc = [], torch.eye(mats.shape[-1], dtype=mats.dtype).expand_as(mats[:, 0])
    for l in range(mats.shape[1]):
        acc = mats[:, l] @ acc
        out.append(acc)
    return torch.stack(out, dim=1)


def flow_graph(mats: torch.Tensor) -> np.ndarray:
    """The layered graph of one example: (L, T, T) residual matrices -> ((L + 1) T, (L + 1) T) capacities, where
    node l * T + t is token t after layer l - 1 (l = 0: the input) and the edge (l - 1, j) -> (l, i) carries
    mats[l - 1, i, j].

    Example:

        >>> import numpy as np, torch
        >>> from qkv.interpret import flow_graph, residual_matrices
        >>> weights = [torch.softmax(torch.randn(1, 2, 3, 3), -1) for _ in range(2)]   # L = 2, T = 3
        >>> mats = residual_matrices(weights)[0]              # (L, T, T)
        >>> cap = flow_graph(mats)                            # ((L + 1) T, (L + 1) T) capacities, numpy
        >>> cap.shape, np.allclose(cap[0:3, 3:6], mats[0].T.numpy())   # edge (0, j) -> (1, i) carries mats[0, i, j]
        ((9, 9), True)
    """
    L, T, _ = mats.shape
    cap = np.zeros(((L + 1) * T, (L + 1) * T))
    for l in range(L):
        cap[l * T:(l + 1) * T, (l + 1) * T:(l + 2) * T] = mats[l].numpy().T  # rows: from (l, j); columns: to (l + 1, i)
    return cap


def attention_flow(weights: Sequence[torch.Tensor], *, residual: bool = True, head_fusion: str = "mean",
                   normalize: bool = False) -> torch.Tensor:
    """Attention flow through the whole stack.

    weights: a list over L layers of (B, H, T, T). Returns (B, T, T) float64: ``out[b, i, j]`` is the maximum flow
    from input token j to token i after the last layer, over the layered graph with the residual matrices as
    capacities (``flow_graph``). normalize: divide each row by its sum (rows then sum to 1, as rollout's do).
    Cost: T^2 max-flows per example on (L + 1) T nodes: meant for short inputs (tens of tokens).

    Example:

        >>> import torch
        >>> from qkv.interpret import attention_flow
        >>> weights = [torch.softmax(torch.randn(1, 2, 4, 4), -1) for _ in range(2)]   # L x (B, H, T, T)
        >>> flow = attention_flow(weights, normalize=True)     # (B, T, T) float64, max-flow from input j to token i
        >>> flow.shape, torch.allclose(flow.sum(-1), torch.ones(1, 4, dtype=torch.float64))
        (torch.Size([1, 4, 4]), True)
    """
    mats = residual_matrices(weights, residual=residual, head_fusion=head_fusion)  # (B, L, T, T)
    B, L, T, _ = mats.shape
    out = torch.zeros(B, T, T, dtype=torch.float64)
    for b in range(B):
        cap = flow_graph(mats[b])
        for i in range(T):
            for j in range(T):
                out[b, i, j] = max_flow(cap, j, L * T + i)
    if normalize:
        out = out / out.sum(-1, keepdim=True).clamp_min(torch.finfo(out.dtype).tiny)
    return out
