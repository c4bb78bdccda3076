"""ViT images: folders of files and array files become normalised (C, H, W) tensors with labels."""
import numpy as np
import pytest
import torch

from qkv.data import ArrayImages, ImageFolder


def test_array_layouts_and_resize_agree(tmp_path):
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=nhwc, labels=np.arange(5))
    np.savez(tmp_path / "b.npz", images=nhwc.transpose(0, 3, 1, 2), labels=np.arange(5))
    a, b = ArrayImages(tmp_path / "a.npz", 8), ArrayImages(tmp_path / "b.npz", 8)
    x, y = a[2]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and y == 2
    assert torch.equal(x, b[2][0])
    assert torch.allclose(x, torch.from_numpy(nhwc[2]).permute(2, 0, 1).float() / 127.5 - 1)  # mean=std=0.5
    assert ArrayImages(tmp_path / "a.npz", 4)[0][0].shape == (3, 4, 4)
    batch = next(iter(torch.utils.data.DataLoader(a, batch_size=4)))
    assert batch[0].shape == (4, 3, 8, 8) and batch[1].tolist() == [0, 1, 2, 3]


def test_grayscale_npy_with_labels(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((3, 6, 6), dtype=np.float32))
    ds = ArrayImages(tmp_path / "x.npy", 6, labels=[1, 0, 1], mean=0.0, std=1.0)
    assert ds[0][0].shape == (1, 6, 6) and torch.all(ds[0][0] == 1) and ds[2][1] == 1


def test_array_errors(tmp_path):
    np.savez(tmp_path / "n.npz", images=np.zeros((2, 4, 4, 3)))
    with pytest.raises(ValueError, match=r"n.npz.*missing arrays \['labels'\]"):
        ArrayImages(tmp_path / "n.npz", 4)
    np.savez(tmp_path / "m.npz", images=np.zeros((2, 4, 4, 3)), labels=[0])
    with pytest.raises(ValueError, match="1 labels for 2 images"):
        ArrayImages(tmp_path / "m.npz", 4)
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        ArrayImages(tmp_path / "nope.npz", 4)


def test_image_folder_classes_are_subfolders(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        for k in range(2):
            Image.new("RGB", (10, 7), colour).save(tmp_path / cls / f"{k}.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    ds = ImageFolder(tmp_path, 4)
    assert ds.classes == ["cat", "dog"] and len(ds) == 4
    x, y = ds[3]
    assert x.shape == (3, 4, 4) and y == 1
    assert torch.allclose(x[2], torch.ones(4, 4)) and torch.allclose(x[0], -torch.ones(4, 4))
    with pytest.raises(FileNotFoundError, match="root="):
        ImageFolder(tmp_path / "missing", 4)
