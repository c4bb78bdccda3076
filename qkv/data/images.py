"""Images for ViT: a folder of image files (one subfolder per class) or an array file, as (C, H, W) floats.

Files are read with Pillow and numpy (no torchvision): converted to RGB, resized to image_size x image_size,
scaled to [0, 1], then normalised per channel with (x - mean) / std. The default mean = std = 0.5 (every channel)
maps pixels to [-1, 1], as the original ViT does. Items are (pixel_values (C, H, W) float32, label int), so
`torch.utils.data.DataLoader(dataset, batch_size)` yields (B, C, H, W) and (B,).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from qkv.data._files import PathLike, check_file
from qkv.files import check_npz

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _normalise(x: torch.Tensor, mean: float | Sequence[float], std: float | Sequence[float]) -> torch.Tensor:
    """x: (C, H, W) float in [0, 1] -> (x - mean) / std, with one value for all channels or one per channel."""
    c = x.shape[0]
    out = []
    for name, v in (("mean", mean), ("std", std)):
        t = torch.as_tensor(v, dtype=x.dtype).reshape(-1)
        if t.numel() not in (1, c):
            raise ValueError(f"{name}={v!r}: expected one value or {c} (one per channel)")
        out.append(t.reshape(-1, 1, 1))
    return (x - out[0]) / out[1]


class ImageFolder(torch.utils.data.Dataset):
    """root/<class name>/<image file>; classes are the sorted subfolder names, labels their indices."""

    def __init__(self, root: PathLike, image_size: int, *, mean: float | Sequence[float] = 0.5,
                 std: float | Sequence[float] = 0.5):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"root={str(root)!r}: no such folder; expected one subfolder per class")
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        self.samples = [(f, label) for label, c in enumerate(self.classes) for f in sorted((root / c).iterdir())
                        if f.suffix.lower() in IMAGE_SUFFIXES]
        if not self.samples:
            raise ValueError(f"root={str(root)!r}: found no images (suffixes {IMAGE_SUFFIXES}) in class subfolders")
        self.image_size, self.mean, self.std = image_size, mean, std

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        try:
            from PIL import Image
        except ImportError:  # Pillow is an optional extra: say how to get it
            raise ImportError("ImageFolder reads images with Pillow: pip install 'qkv[extras]'") from None
        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB").resize((self.image_size, self.image_size), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.float32) / 255.0  # (H, W, C)
        except OSError as e:
            raise ValueError(f"{str(path)!r}: cannot read as an image ({e})") from None
        return _normalise(torch.from_numpy(arr).permute(2, 0, 1), self.mean, self.std), label


class ArrayImages(torch.utils.data.Dataset):
    """Images held in an array file: a `.npz` with arrays `images` and `labels`, or a `.npy` of images plus
    `labels` (a `.npy` path or a sequence).

    images: (N, H, W, C), (N, C, H, W) or (N, H, W); uint8 in [0, 255] or float in [0, 1]. Channels-last is
    assumed when the last axis has 1, 3 or 4 entries, else channels-first when axis 1 has; `layout`
    ("NHWC" / "NCHW") overrides the guess. Images are resized (bilinear, antialiased) when not image_size.
    """

    def __init__(self, path: PathLike, image_size: int, *, labels: PathLike | Sequence[int] | None = None,
                 layout: str | None = None, mean: float | Sequence[float] = 0.5,
                 std: float | Sequence[float] = 0.5):
        p = check_file(path, "path")
        if p.suffix == ".npz":
            check_npz(p)  # declared array sizes against the file and memory, before numpy allocates them
            with np.load(p, allow_pickle=False) as z:
                missing = [k for k in ("images", "labels") if k not in z.files]
                if missing:
                    raise ValueError(f"path={str(p)!r}: missing arrays {missing}; it has {z.files}")
                images, lab = z["images"], z["labels"]
        elif p.suffix == ".npy":
            if labels is None:
                raise ValueError(f"path={str(p)!r}: a .npy holds only images; pass labels= (a .npy path or a list)")
            images = np.load(p, allow_pickle=False)
            lab = np.load(check_file(labels, "labels"), allow_pickle=False) if isinstance(labels, (str, Path)) \
                else np.asarray(labels)
        else:
            raise ValueError(f"path={str(p)!r}: expected a .npz (images, labels) or a .npy file")
        if images.ndim == 3:
            images, layout = images[..., None], "NHWC"
        if images.ndim != 4:
            raise ValueError(f"images: shape {images.shape}, expected (N, H, W, C), (N, C, H, W) or (N, H, W)")
        if layout is None:
            layout = "NHWC" if images.shape[-1] in (1, 3, 4) else "NCHW" if images.shape[1] in (1, 3, 4) else None
        if layout not in ("NHWC", "NCHW"):
            raise ValueError(f"layout={layout!r}: cannot tell channels from shape {images.shape}; "
                             f"pass 'NHWC' or 'NCHW'")
        lab = np.asarray(lab).reshape(-1)
        if len(lab) != len(images):
            raise ValueError(f"labels: {len(lab)} labels for {len(images)} images; expected one per image")
        x = torch.from_numpy(np.ascontiguousarray(images))
        self.images = x.permute(0, 3, 1, 2) if layout == "NHWC" else x  # (N, C, H, W), dtype as stored
        self.labels = torch.from_numpy(lab.astype(np.int64))
        self.image_size, self.mean, self.std = image_size, mean, std

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()  # (C, H, W) in [0, 1]
        if x.shape[0] == 4:
            x = x[:3]  # drop alpha, as ImageFolder's RGB conversion does
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x[None], size=(self.image_size, self.image_size), mode="bilinear",
                              antialias=True, align_corners=False)[0]
        return _normalise(x, self.mean, self.std), int(self.labels[i])
