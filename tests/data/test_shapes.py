"""Generated scenes to caption (qkv/data/shapes.py): seeded, captions reading the objects left to right in Spanish,
boxes inside the canvas and apart, drawn in their colour; a folder written and read back; images of the wrong size or
channel count refused in one line."""
import numpy as np
import pytest

from qkv.data.shapes import (COLOURS, NAMES, caption_of, make_scenes, object_words, read_captions, read_image,
                             scenes_as_set, write_scenes)


def test_scenes_are_seeded_and_read_left_to_right():
    a, b = make_scenes(50, seed=3), make_scenes(50, seed=3)
    assert [s.caption for s in a] == [s.caption for s in b] and all(np.array_equal(x.pixels, y.pixels)
                                                                    for x, y in zip(a, b))
    assert [s.caption for s in make_scenes(50, seed=4)] != [s.caption for s in a]
    for scene in a:
        boxes = [o.box for o in scene.objects]
        assert 1 <= len(boxes) <= 3 and [b[0] for b in boxes] == sorted(b[0] for b in boxes)
        assert scene.caption == caption_of(scene.objects)
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 48
            o = scene.objects[i]
            assert o.name in NAMES and o.colour in COLOURS
            patch = scene.pixels[y0:y1, x0:x1].reshape(-1, 3)
            assert (patch == COLOURS[o.colour]).all(-1).sum() >= 12  # the object is drawn, in its colour
            for other in boxes[i + 1:]:  # apart: no shared pixel
                assert x1 <= other[0] or other[2] <= x0 or y1 <= other[1] or other[3] <= y0
        assert (scene.pixels.reshape(-1, 3).any(-1)).sum() == sum(
            (scene.pixels[o.box[1]:o.box[3], o.box[0]:o.box[2]].reshape(-1, 3).any(-1)).sum() for o in scene.objects)


def test_captions_and_the_words_naming_each_object():
    scene = [s for s in make_scenes(40, seed=0) if len(s.objects) == 3][0]
    words = scene.caption.replace(",", " ").split()
    assert scene.caption.startswith("un ") and ", un " in scene.caption and " y un " in scene.caption
    named = object_words(scene.caption)
    for k, o in enumerate(scene.objects):
        assert [w for w, n in zip(words, named) if n == k] == [o.name, o.colour]
    assert object_words("un ocho azul") == [None, 0, 0]


def test_a_folder_round_trips(tmp_path):
    scenes = make_scenes(7, seed=1, size=32)
    write_scenes(tmp_path / "d", scenes)
    data = read_captions(tmp_path / "d", 32, 3)
    want = scenes_as_set(scenes)
    assert np.array_equal(data.pixels, want.pixels) and data.captions == want.captions and data.boxes == want.boxes
    with pytest.raises(FileExistsError, match="captions.tsv: exists"):
        write_scenes(tmp_path / "d", scenes)


def test_wrong_images_and_captions_are_one_line(tmp_path):
    from PIL import Image
    write_scenes(tmp_path / "d", make_scenes(2, seed=1, size=32))
    with pytest.raises(ValueError, match=r"000000.png: the image is 32 x 32 pixels; expected 48 x 48 \(image_size\)"):
        read_captions(tmp_path / "d", 48, 3)
    with pytest.raises(ValueError, match=r"has 3 channel\(s\) \(mode RGB\); expected 1 \(num_channels\)"):
        read_captions(tmp_path / "d", 32, 1)
    Image.fromarray(np.zeros((32, 32, 4), dtype=np.uint8)).save(tmp_path / "rgba.png")
    with pytest.raises(ValueError, match=r"has 4 channel\(s\) \(mode RGBA\); expected 3"):
        read_image(tmp_path / "rgba.png", 32, 3)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "captions.tsv").write_text("../d/images/000000.png\tun tres azul\n")
    with pytest.raises(ValueError, match="outside the folder"):
        read_captions(tmp_path / "bad", 32, 3)
    (tmp_path / "bad" / "captions.tsv").write_text("only a path\n")
    with pytest.raises(ValueError, match=r"captions.tsv:1: expected 'image path<TAB>caption'"):
        read_captions(tmp_path / "bad", 32, 3)
