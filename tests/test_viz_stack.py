"""stack_pngs: figures one above another in one file, each pixel where it was, narrower ones padded with white."""
import numpy as np
import pytest

mpimg = pytest.importorskip("matplotlib.image")

from qkv.viz_stack import stack_pngs  # noqa: E402


def test_pngs_stack_top_to_bottom_left_aligned_on_white(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.random((7, 5, 4)).astype(np.float32)
    a[..., 3] = 1.0
    b = rng.random((3, 9, 3)).astype(np.float32)  # no alpha channel: opaque
    mpimg.imsave(tmp_path / "a.png", a)
    mpimg.imsave(tmp_path / "b.png", b)
    out = stack_pngs([tmp_path / "a.png", tmp_path / "b.png"], tmp_path / "sub" / "ab.png")
    got = mpimg.imread(out)
    assert got.shape == (10, 9, 4)
    np.testing.assert_allclose(got[:7, :5], mpimg.imread(tmp_path / "a.png"), atol=1 / 255)
    np.testing.assert_allclose(got[7:, :, :3], mpimg.imread(tmp_path / "b.png")[..., :3], atol=1 / 255)
    assert np.all(got[:7, 5:] == 1.0) and np.all(got[7:, :, 3] == 1.0)
