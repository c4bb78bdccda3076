"""Image classification (ViT): pixels (B, C, H, W) -> logits (B, classes) vs labels (B,), from an image folder
(one sub-folder per class) or a .npz of arrays."""
from __future__ import annotations

from pathlib import Path

from .. import data as qd
from .batches import ImageBatches, take
from .loss import TaskLoss
from .task import Footprint, Task


class ImageLoss(TaskLoss):
    def logits(self, batch):
        pixels, labels = batch  # (B, C, H, W), (B,)
        return self.model(pixels), labels


class ImageClassification(Task):
    name = "image"
    loss = ImageLoss
    tokenizer = None  # no text
    tokenizer_kinds = ()
    special_ids = ()
    data_folders = True
    fixed_shapes = True  # (B, C, H, W) at the model's image size

    def load(self, model_config, cfg, tokenizer):

        def dataset(path):
            p = Path(path)
            return qd.ImageFolder(p, model_config.image_size) if p.is_dir() else \
                qd.ArrayImages(p, model_config.image_size)
        train = ImageBatches(dataset(cfg.data), cfg.batch_size, seed=cfg.seed)
        if not cfg.val_data:
            return train, None
        vds = dataset(cfg.val_data)
        return train, lambda: take(ImageBatches(vds, cfg.batch_size, seed=cfg.seed + 1), cfg.eval_steps)

    def footprint(self, model_config, cfg):
        pixels = 4 * cfg.batch_size * model_config.num_channels * model_config.image_size ** 2  # float32
        return Footprint(cfg.batch_size, f"batch_size={cfg.batch_size}", model_config.num_labels, "num_labels",
                         16 * cfg.batch_size + pixels)
