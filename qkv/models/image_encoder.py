"""The image side of an image-to-text model: pixels -> a grid of annotation vectors a_1 .. a_N (N = R x C cells).

Xu et al. 2015, sec. 3.1.1: a convolutional network's lower feature map keeps where things are, so each annotation
vector describes one region and attention over them is attention over the image. Two encoders:

- "cnn": log2(patch_size) 3x3 convolutions of stride 2 (each halves the image, ReLU after each), then n_layers
  stride-1 ones (3x3, the last 1x1): a cell's receptive field stays about one object wide, so a vector says what
  is at its place;
- "patches": ViT's linear patch embedding (Dosovitskiy et al. 2021, eq. 1) followed by n_layers Transformer encoder
  blocks (soft self-attention: a cell may then also describe its neighbours).

Both add a learned position per cell, so the decoder can tell left from right (reading order is the task).

Input forms (``pixels_from``): float pixels (B, C, H, W) in [0, 1]; uint8 pixels (B, C, H, W); or the image's bytes
as integer ids (B, C * H * W), the form ``qkv.generate`` hands a family's decode adapter as its source.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..ops.checks import checks_values
from .common import final_norm, make_block, run_blocks
from .vit import PatchEmbedding


def pixels_from(x: torch.Tensor, channels: int, size: int, dtype: torch.dtype) -> torch.Tensor:
    """Any input form (module docstring) -> float pixels (B, C, H, W) in [0, 1] of ``dtype``; ValueError / TypeError
    naming the shape or values that do not fit ``channels`` x ``size`` x ``size`` images."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"pixel_values must be a torch.Tensor, got {type(x).__name__}")
    expected = (f"float pixels (B, {channels}, {size}, {size}) in [0, 1], uint8 pixels of that shape, or the "
                f"image's bytes as ids (B, {channels * size * size}) (num_channels={channels}, image_size={size})")
    if x.dim() == 2 and not x.is_floating_point():
        if x.shape[1] != channels * size * size:
            raise ValueError(f"pixel_values: expected {expected}; got ids of shape {tuple(x.shape)}")
        if checks_values() and x.numel() and not bool(((x >= 0) & (x <= 255)).all()):
            raise ValueError(f"pixel_values: image bytes must lie in [0, 255], got values in [{int(x.min())}, "
                             f"{int(x.max())}]")
        x = x.reshape(-1, channels, size, size)
    if x.dim() != 4 or tuple(x.shape[1:]) != (channels, size, size):
        raise ValueError(f"pixel_values: expected {expected}; got shape {tuple(x.shape)}")
    if x.is_floating_point():
        return x.to(dtype)
    return x.to(dtype) / 255.0


def image_bytes(pixels: torch.Tensor) -> torch.Tensor:
    """Float pixels (B, C, H, W) in [0, 1] (or uint8) -> the byte ids (B, C * H * W) ``qkv.generate`` takes as an
    image-to-text model's source (rounded to the nearest byte: exact for images read from 8-bit files)."""
    if pixels.is_floating_point():
        pixels = (pixels.clamp(0, 1) * 255).round()
    return pixels.long().flatten(1)


class ConvFeatures(nn.Module):
    """(B, C, H, W) -> (B, d_model, H / P, W / P): ``stages`` = log2(P) stride-2 3x3 convolutions (widths doubling up
    to d_model), then ``n_layers`` stride-1 convolutions, 3x3 but the last, which is 1x1; ReLU after each but the
    last. What a cell sees stays small: 2P - 1 pixels across, plus 2P per extra 3x3 layer (P = 4, n_layers = 2: 15
    pixels, about one object), so a cell's vector describes its own place, which attention over the cells needs to
    mean "look here"."""

    def __init__(self, num_channels: int, d_model: int, patch_size: int, n_layers: int):
        super().__init__()
        stages = patch_size.bit_length() - 1
        widths = [max(d_model >> (stages - 1 - i), 8) for i in range(stages)] + [d_model] * n_layers
        layers, c_in = [], num_channels
        for i, c_out in enumerate(widths):
            last = i == len(widths) - 1
            layers.append(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1) if i < stages else
                          nn.Conv2d(c_in, c_out, 1) if last else nn.Conv2d(c_in, c_out, 3, padding=1))
            layers.append(nn.ReLU())
            c_in = c_out
        self.layers = nn.Sequential(*layers[:-1])
        for conv in self.layers:
            if isinstance(conv, nn.Conv2d):  # He et al. 2015: the features keep their scale through the ReLUs
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                nn.init.zeros_(conv.bias)

    def forward(self, x):
        return self.layers(x)


class ImageEncoder(nn.Module):
    """Pixels (any form of ``pixels_from``) -> annotation vectors (B, N, d_model), N = (image_size / patch_size)^2
    cells in row-major order, each with its learned position added."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.channels, self.size = cfg.num_channels, cfg.image_size
        self.grid = (cfg.image_size // cfg.patch_size,) * 2
        n_cells = self.grid[0] * self.grid[1]
        if cfg.image_encoder == "cnn":
            self.features = ConvFeatures(cfg.num_channels, cfg.d_model, cfg.patch_size, cfg.n_layers)
            self.blocks = nn.ModuleList()
        else:
            self.features = PatchEmbedding(cfg.num_channels, cfg.d_model, cfg.patch_size)
            soft = cfg.replace(attn_select="soft")  # the encoder's self-attention stays soft: the decoder picks
            self.blocks = nn.ModuleList(make_block(soft, layer=i, mixer="attention") for i in range(cfg.n_layers))
        self.positions = nn.Parameter(torch.zeros(1, n_cells, cfg.d_model))
        self.norm = final_norm(cfg) if cfg.image_encoder == "patches" else nn.Identity()
        # positions on the scale of the features, so that from the first step a cell says where it is
        nn.init.trunc_normal_(self.positions, std=0.02 if cfg.image_encoder == "patches" else 0.5)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixels_from(pixel_values, self.channels, self.size, self.positions.dtype)
        x = (x - 0.5) / 0.5  # [0, 1] -> [-1, 1], as ViT's inputs
        x = self.features(x)
        if x.dim() == 4:
            x = x.flatten(2).transpose(1, 2)  # (B, d, R, C) -> (B, N, d), row-major
        x = x + self.positions  # (B, N, d)
        if len(self.blocks):
            x, _ = run_blocks(self.blocks, x)
        return self.norm(x)
