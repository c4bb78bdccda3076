"""Scenes to caption, made offline in seconds: a few shapes and digits in colour, placed at random on a dark canvas,
and a caption in Spanish reading them left to right ("un círculo rojo, un siete azul y un cuadrado verde"), with the
true box of every object kept to check where a model looks.

    scenes = make_scenes(1000, seed=0, size=48)        # a list of Scene (pixels, caption, objects in reading order)
    write_scenes("data/shapes", scenes)                # images/000000.png ..., captions.tsv, boxes.jsonl
    data = read_captions("data/shapes", image_size=48, channels=3)   # the same folder back (or a user's own)

A folder of a user's own images takes the same form: PNG (or any Pillow-readable) files and a captions.tsv of
``relative/path<TAB>caption`` lines; boxes.jsonl is optional (only the alignment check reads it). Images are read
with Pillow and NumPy, never resized: one of the wrong size or channel count is refused in one line.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import inside, loads
from ._files import PathLike

COLOURS = {"rojo": (225, 45, 45), "verde": (45, 185, 70), "azul": (70, 110, 245), "amarillo": (235, 205, 40)}
SHAPES = ("círculo", "cuadrado", "triángulo")
# 3 x 5 bitmaps of the digits (rows top to bottom), stretched over the object's box; digits whose 3 x 5 forms
# differ in many pixels (2, 3 and 5 differ in two), so a small CNN can tell them apart at 12 pixels
DIGITS = {"cuatro": ("101", "101", "111", "001", "001"), "siete": ("111", "001", "010", "010", "010"),
          "ocho": ("111", "101", "111", "101", "111")}
NAMES = SHAPES + tuple(DIGITS)
CAPTIONS_FILE, BOXES_FILE = "captions.tsv", "boxes.jsonl"


@dataclass
class SceneObject:
    """One object: its name (a shape or a digit in Spanish), colour word, and box (x0, y0, x1, y1) in pixels,
    half-open (x0 <= x < x1)."""
    name: str
    colour: str
    box: tuple[int, int, int, int]


@dataclass
class Scene:
    """pixels (H, W, 3) uint8; caption; objects in reading order (left to right by box centre)."""
    pixels: np.ndarray
    caption: str
    objects: list[SceneObject]


def caption_of(objects: list[SceneObject]) -> str:
    """"un círculo rojo", "un círculo rojo y un ocho azul", "un círculo rojo, un ocho azul y un cuadrado verde"."""
    phrases = [f"un {o.name} {o.colour}" for o in objects]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " y " + phrases[-1]


def object_words(caption: str) -> list[int | None]:
    """For each word of a caption of this grammar (split on spaces, commas dropped): the reading-order index of the
    object it names (its shape or digit, and its colour), or None ("un", "y")."""
    out, k = [], -1
    for word in caption.replace(",", " ").split():
        if word == "un":
            k += 1
            out.append(None)
        else:
            out.append(None if word == "y" or k < 0 else k)
    return out


def _draw(canvas: np.ndarray, name: str, colour, box) -> None:
    x0, y0, x1, y1 = box
    h, w = y1 - y0, x1 - x0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    if name == "círculo":
        inside = (xx - w / 2) ** 2 + (yy - h / 2) ** 2 <= (min(w, h) / 2) ** 2
    elif name == "cuadrado":
        inside = (xx >= 1) & (xx <= w - 1) & (yy >= 1) & (yy <= h - 1)
    elif name == "triángulo":  # apex at the top, base at the bottom
        inside = np.abs(xx - w / 2) <= yy / h * (w / 2)
    else:
        bitmap = np.array([[c == "1" for c in row] for row in DIGITS[name]])
        inside = bitmap[(yy * 5 / h).astype(int), (xx * 3 / w).astype(int)]
    canvas[y0:y1, x0:x1][inside] = colour


def make_scene(rng: np.random.Generator, size: int = 48, *, max_objects: int = 3, object_size: int | None = None,
               names: tuple[str, ...] = NAMES, colours: tuple[str, ...] = tuple(COLOURS)) -> Scene:
    """One scene: 1 to ``max_objects`` objects of side ``object_size`` (default size // 4, at least 6) at random,
    non-overlapping places whose centres differ by 3+ pixels left to right (so the reading order is clear), each a
    random one of ``names`` in one of ``colours``."""
    unknown = sorted(set(names) - set(NAMES)) + sorted(set(colours) - set(COLOURS))
    if unknown or not names or not colours:
        raise ValueError(f"names and colours must be non-empty subsets of {NAMES} and {tuple(COLOURS)}; got "
                         f"{unknown or 'an empty one'}")
    s = object_size or max(size // 4, 6)
    if s > size:
        raise ValueError(f"object_size={s} does not fit a {size} x {size} canvas")
    n = int(rng.integers(1, max_objects + 1))
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(200 * n):
        if len(boxes) == n:
            break
        x0, y0 = (int(v) for v in rng.integers(0, size - s + 1, size=2))
        box = (x0, y0, x0 + s, y0 + s)
        if all(box[0] >= b[2] + 1 or b[0] >= box[2] + 1 or box[1] >= b[3] + 1 or b[1] >= box[3] + 1 for b in boxes) \
                and all(abs(box[0] - b[0]) >= 3 for b in boxes):
            boxes.append(box)
    boxes.sort(key=lambda b: b[0])
    objects = [SceneObject(names[int(rng.integers(len(names)))], colours[int(rng.integers(len(colours)))], b)
               for b in boxes]
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    for o in objects:
        _draw(canvas, o.name, COLOURS[o.colour], o.box)
    return Scene(canvas, caption_of(objects), objects)


def make_scenes(n: int, *, seed: int = 0, size: int = 48, max_objects: int = 3, **kinds) -> list[Scene]:
    """``n`` scenes from one seeded generator (the same seed gives the same scenes); ``kinds``: make_scene's names,
    colours, object_size."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an int >= 1 (scenes to make), got {n!r}")
    rng = np.random.default_rng(seed)
    return [make_scene(rng, size, max_objects=max_objects, **kinds) for _ in range(n)]


def write_scenes(folder: PathLike, scenes: list[Scene]) -> Path:
    """images/NNNNNN.png, captions.tsv (``path<TAB>caption``) and boxes.jsonl (each object's name, colour and box in
    reading order) in ``folder``. Refuses a folder that already holds a captions.tsv (nothing is overwritten)."""
    from PIL import Image
    folder = Path(folder)
    if (folder / CAPTIONS_FILE).exists():
        raise FileExistsError(f"{folder / CAPTIONS_FILE}: exists; write the scenes into a new folder")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    captions, boxes = [], []
    for i, scene in enumerate(scenes):
        name = f"images/{i:06d}.png"
        Image.fromarray(scene.pixels).save(folder / name)
        captions.append(f"{name}\t{scene.caption}\n")
        boxes.append(json.dumps({"image": name, "objects": [
            {"name": o.name, "colour": o.colour, "box": list(o.box)} for o in scene.objects]}, ensure_ascii=False)
            + "\n")
    (folder / BOXES_FILE).write_text("".join(boxes), encoding="utf-8")
    (folder / CAPTIONS_FILE).write_text("".join(captions), encoding="utf-8")  # last: its presence means "complete"
    return folder


@dataclass
class CaptionSet:
    """Images with captions: pixels (N, C, H, W) uint8; captions; boxes: per image the objects' boxes in reading
    order, or None when the folder has no boxes.jsonl."""
    pixels: np.ndarray
    captions: list[str]
    boxes: list[list[tuple[int, int, int, int]]] | None

    def __len__(self) -> int:
        return len(self.captions)


def scenes_as_set(scenes: list[Scene]) -> CaptionSet:
    return CaptionSet(np.stack([s.pixels for s in scenes]).transpose(0, 3, 1, 2).copy(), [s.caption for s in scenes],
                      [[o.box for o in s.objects] for s in scenes])


_MODE_CHANNELS = {"1": 1, "L": 1, "I;16": 1, "LA": 2, "P": 3, "RGB": 3, "RGBA": 4, "CMYK": 4}


def read_image(path: Path, image_size: int, channels: int) -> np.ndarray:
    """One image file -> (C, H, W) uint8, refused in one line unless it is image_size x image_size with ``channels``
    channels (a palette image counts as RGB). The size is read from the header before any pixel is decoded."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            if im.size != (image_size, image_size):
                raise ValueError(f"{path}: the image is {im.size[0]} x {im.size[1]} pixels; expected {image_size} x "
                                 f"{image_size} (image_size)")
            have = _MODE_CHANNELS.get(im.mode)
            if have != channels:
                raise ValueError(f"{path}: the image has {have if have is not None else 'unknown'} channel(s) "
                                 f"(mode {im.mode}); expected {channels} (num_channels)")
            im = im.convert({1: "L", 3: "RGB", 4: "RGBA"}.get(channels, im.mode))
            arr = np.array(im, dtype=np.uint8)  # a copy: writable, as torch.from_numpy wants
    except OSError as e:
        raise ValueError(f"{path}: cannot read as an image ({e})") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def read_captions(folder: PathLike, image_size: int, channels: int = 3) -> CaptionSet:
    """A folder with captions.tsv (``relative/path<TAB>caption`` per line) and the images it names; boxes.jsonl
    when present. Paths must stay inside the folder."""
    folder = Path(folder)
    captions_file = folder / CAPTIONS_FILE
    if not captions_file.is_file():
        raise FileNotFoundError(f"{folder}: no {CAPTIONS_FILE} (lines of image path<TAB>caption)")
    paths, captions = [], []
    for n, line in enumerate(captions_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[1].strip():
            raise ValueError(f"{captions_file}:{n}: expected 'image path<TAB>caption', got {line[:80]!r}")
        paths.append(inside(folder, folder / parts[0], what=f"{CAPTIONS_FILE} line {n}"))
        captions.append(parts[1].strip())
    if not paths:
        raise ValueError(f"{captions_file}: no captions")
    pixels = np.stack([read_image(p, image_size, channels) for p in paths])
    boxes = None
    if (folder / BOXES_FILE).is_file():
        lines = (folder / BOXES_FILE).read_text(encoding="utf-8").splitlines()
        records = [loads(line, what=f"{BOXES_FILE} line {n}", expect=dict) for n, line in enumerate(lines, 1)
                   if line.strip()]
        by_image = {r["image"]: [tuple(int(v) for v in o["box"]) for o in r["objects"]] for r in records}
        names = [line.split("\t")[0] for line in captions_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        boxes = [by_image.get(name, []) for name in names]
    return CaptionSet(pixels, captions, boxes)
