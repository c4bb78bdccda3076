"""Where an image-to-text model looked: each output word beside its attention over the image, upsampled and overlaid
(the figure of Xu et al. 2015, fig. 2-3: soft attention as a smooth light over the image, a hard pick as one bright
region).

    maps = upsample(weights, grid, size)            # (T, N) weights over the cells -> (T, size, size)
    plot_caption(image, words, maps, "caption.png") # one row: the image, then one panel per word
    plot_rows([(label, image, words, maps), ...], "soft_vs_hard.png")   # several models on the same images
    draw_rows(fig, rows)                            # the same into a matplotlib Figure you hold
    caption_figure(model, tokenizer, "scene.png", "caption.png")        # what `qkv plot attention` writes
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import shapes
from .tasks.caption import describe


def upsample(weights: torch.Tensor, grid: tuple[int, int], size: int) -> np.ndarray:
    """weights (T, N) over a row-major (R, C) grid of cells -> (T, size, size) maps, bilinear (the paper upsamples
    its 14 x 14 maps the same way before overlaying them), each scaled to a maximum of 1."""
    R, C = grid
    w = weights.detach().float().reshape(-1, 1, R, C)
    maps = F.interpolate(w, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    peak = maps.flatten(1).max(-1).values.clamp(min=1e-12)
    return (maps / peak[:, None, None]).numpy()


def _image(image) -> np.ndarray:
    """(C, H, W) or (H, W, C), uint8 or float in [0, 1] -> (H, W, 3) float in [0, 1]."""
    x = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if x.ndim == 3 and x.shape[0] in (1, 3, 4) and x.shape[-1] not in (1, 3, 4):
        x = x.transpose(1, 2, 0)
    x = x.astype(np.float32) / (255.0 if x.dtype == np.uint8 else 1.0)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, -1)
    return x[..., :3]


def _overlay(image: np.ndarray, attention: np.ndarray) -> np.ndarray:
    """The image dimmed where the attention is low and lit towards white where it is high (the paper's look)."""
    a = attention[..., None]
    return np.clip(image * (0.35 + 0.65 * a) + 0.55 * a * (1 - image), 0, 1)


def draw_rows(fig, rows, *, title: str | None = None):
    """Draw into a matplotlib Figure one row per (label, image, words, maps): the image, then each word over its
    map (maps (L, S, S) in [0, 1], as ``upsample`` makes them). Returns the figure."""
    if not rows:
        raise ValueError("rows: nothing to plot")
    columns = 1 + max(len(words) for _, _, words, _ in rows)
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for r, (label, image, words, maps) in enumerate(rows):
        if len(words) != len(maps):
            raise ValueError(f"row {label!r}: {len(words)} words but {len(maps)} attention maps")
        picture = _image(image)
        axes[r, 0].imshow(picture, interpolation="nearest")
        axes[r, 0].set_title(label, fontsize=8)
        for j, (word, m) in enumerate(zip(words, maps)):
            axes[r, j + 1].imshow(_overlay(picture, m), interpolation="nearest")
            axes[r, j + 1].set_title(word, fontsize=9)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
            if not ax.images:
                ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_rows(rows, path, *, title: str | None = None, cell: float = 1.3):
    """One row per (label, image, words, maps): the image, then each word over its map, as a PNG written to
    ``path`` (a file name, or a binary file object). Returns the path."""
    from matplotlib.figure import Figure
    if not rows:
        raise ValueError("rows: nothing to plot")
    columns = 1 + max(len(words) for _, _, words, _ in rows)
    fig = Figure(figsize=(cell * columns, cell * 1.25 * len(rows)))
    draw_rows(fig, rows, title=title)
    fig.tight_layout()
    if isinstance(path, (str, Path)):  # else a binary file object (the explorer's inline PNG)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, format="png")
    return path


def plot_caption(image, words: list[str], maps, path, *, title: str | None = None):
    """The paper's figure for one caption: the image, then each word over its upsampled attention."""
    return plot_rows([("image", image, words, maps)], path, title=title)


@torch.no_grad()
def caption_words(model, tokenizer, pixels: torch.Tensor, *, num_beams: int = 1):
    """Caption one image (C, H, W) uint8 with ``qkv.generate`` and say where each token looked: (tokens as words,
    weights (L, N) the weights each token used, the caption's text), the EOS token included as "<eos>"."""
    tokens, _, weights = describe(model, pixels[None], num_beams=num_beams)
    ids, eos = tokens[0].tolist(), model.config.eos_token_id
    n = ids.index(eos) + 1 if eos in ids else len(ids)
    # a control character (an untrained model's byte token) is drawn as "·": fonts have no glyph for it
    words = ["".join(c if c.isprintable() else "·" for c in tokenizer.decode([i]).strip()) or "·" if i != eos
             else "<eos>" for i in ids[:n]]
    return words, weights.weights[0, :n], tokenizer.decode([i for i in ids[:n] if i != eos])


def scene_pixels(config, seed: int) -> torch.Tensor:
    """The generated scene number ``seed`` (qkv.data.shapes) at the model's image size: (3, S, S) uint8."""
    if config.num_channels != 3:
        raise ValueError(f"a generated scene is RGB; the model has num_channels={config.num_channels}")
    return torch.from_numpy(shapes.scenes_as_set(shapes.make_scenes(1, seed=seed, size=config.image_size)).pixels[0])


def load_pixels(config, image=None, *, seed: int = 0) -> torch.Tensor:
    """An image for the model: ``image`` a PNG path (refused in one line unless it is the model's size and channel
    count), or None for the generated scene ``seed``. Returns (C, S, S) uint8."""
    if image is None:
        return scene_pixels(config, seed)
    return torch.from_numpy(shapes.read_image(Path(image), config.image_size, config.num_channels))


def caption_png(model, tokenizer, pixels: torch.Tensor, *, num_beams: int = 1) -> tuple[bytes, list[str], torch.Tensor]:
    """The paper's figure for one image (C, H, W) as PNG bytes, with the words and their weights (L, N) it shows
    (``caption_words``)."""
    import io
    words, weights, caption = caption_words(model, tokenizer, pixels, num_beams=num_beams)
    buffer = io.BytesIO()
    plot_caption(pixels, words, upsample(weights, model.grid, model.config.image_size), buffer,
                 title=f"{model.config.attn_select} attention: {caption}")
    return buffer.getvalue(), words, weights


def caption_figure(model, tokenizer, image, out, *, seed: int = 0, num_beams: int = 1):
    """``qkv plot attention`` for an image-to-text model: caption ``image`` (a PNG path; None: a generated scene of
    qkv.data.shapes, seeded) and write the paper's figure to ``out``. Returns (path, caption)."""
    cfg = model.config
    pixels = load_pixels(cfg, image, seed=seed)
    words, weights, caption = caption_words(model, tokenizer, pixels, num_beams=num_beams)
    maps = upsample(weights, model.grid, cfg.image_size)
    path = plot_caption(pixels, words, maps, out, title=f"{cfg.attn_select} attention: {caption}")
    return path, caption
