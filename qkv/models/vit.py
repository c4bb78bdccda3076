"""Vision Transformer (Dosovitskiy et al. 2021): an image is a sequence of patches.

Data flow (sec. 3.1, eq. 1-4): pixels (B, C, H, W) -> non-overlapping P x P patches, each linearly projected
(a Conv2d with kernel = stride = P) -> prepend a learned class token -> add learned positions -> pre-LN
encoder blocks (attention + GELU MLP) -> final LayerNorm -> linear head on the class token -> logits.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..nn.layers import Linear
from .common import QKVModel, count_flops, final_norm, init_weights, make_block, run_blocks


class PatchEmbedding(nn.Module):
    """(B, C, H, W) -> (B, N, d) with N = (H / P) * (W / P): the linear projection of flattened patches (eq. 1),
    computed as one strided convolution."""

    def __init__(self, num_channels: int, d_model: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(num_channels, d_model, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_values).flatten(2).transpose(1, 2)  # (B, d, H/P, W/P) -> (B, N, d)


class ViT(QKVModel):
    """An image classifier.

    forward(pixel_values (B, C, H, W)) -> logits (B, num_labels); with ``num_labels = 0`` there is no head and
    forward returns the class token's final feature (B, d_model). ``hidden_states(pixel_values)`` gives the
    last hidden state (B, 1 + N, d_model), after the final norm.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.family != "vit":
            raise ValueError(f"ViT needs family='vit', got {config.family!r}")
        if config.position != "learned":
            raise ValueError(f"ViT uses learned positions, got position={config.position!r}")
        self.config = config
        n_patches = (config.image_size // config.patch_size) ** 2
        self.patches = PatchEmbedding(config.num_channels, config.d_model, config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.d_model))
        self.positions = nn.Parameter(torch.zeros(1, 1 + n_patches, config.d_model))  # E_pos, eq. 1
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(make_block(config, layer=i) for i in range(config.n_layers))
        self.norm = final_norm(config)
        self.head = Linear(config.d_model, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.apply(init_weights)
        nn.init.trunc_normal_(self.positions, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def flops_per_token(self, seq_len: int | None = None) -> int:
        return count_flops(self, seq_len, tied_head=False)  # a class head, no output layer over a vocabulary

    def hidden_states(self, pixel_values: torch.Tensor, *, return_weights: bool = False):
        """(B, C, H, W) -> (B, 1 + N, d_model), the class token first; (hidden, list of BlockWeights) with
        ``return_weights``."""
        cfg = self.config
        if pixel_values.dim() != 4 or pixel_values.shape[1:] != (cfg.num_channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"pixel_values must be (B, {cfg.num_channels}, {cfg.image_size}, {cfg.image_size}) "
                             f"(num_channels, image_size), got shape {tuple(pixel_values.shape)}")
        x = self.patches(pixel_values.to(self.cls_token.dtype))  # (B, N, d)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.positions  # (B, 1 + N, d)
        x = self.dropout(x)
        x, weights = run_blocks(self.blocks, x, return_weights=return_weights)
        x = self.norm(x)
        return (x, weights) if return_weights else x

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, num_labels) logits (or (B, d_model) features when num_labels is 0)."""
        return self.head(self.hidden_states(pixel_values)[:, 0])  # eq. 4: y = head(LN(z_L^0))
