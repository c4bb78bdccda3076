"""Several PNG figures as one file, one above another, so that a command writes exactly the file it was asked for:
``qkv plot attention --out attn.png`` on a translation model draws three figures (the encoder's self-attention, the
decoder's masked self-attention, its cross-attention) and writes them as attn.png."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def stack_pngs(paths: Sequence[Path], out: Path) -> Path:
    """Write the PNGs ``paths`` into ``out``, top to bottom in that order, left-aligned on white. Returns ``out``."""
    import matplotlib.image as mpimg
    images = []
    for p in paths:
        im = mpimg.imread(p)  # (H, W, C) floats in [0, 1], C = 3 or 4
        if im.shape[2] == 3:
            im = np.concatenate([im, np.ones(im.shape[:2] + (1,), dtype=im.dtype)], axis=2)
        images.append(im)
    width = max(im.shape[1] for im in images)
    rows = [np.pad(im, ((0, 0), (0, width - im.shape[1]), (0, 0)), constant_values=1.0) for im in images]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    mpimg.imsave(out, np.concatenate(rows, axis=0))
    return out
