"""Image captioning (the caption family): teacher forcing on (image, BOS + caption) -> logits vs caption + EOS; the
loss adds Show, Attend and Tell's doubly stochastic penalty and, for picks trained by REINFORCE, its terms with each
caption's log-likelihood per word as the reward (Xu et al. 2015, eq. 12 and 14, use the total; per word, captions of
one and of three objects share one baseline).

Data: ``--data generated`` (or ``generated:N``, N training scenes, default 4000) makes qkv.data.shapes' scenes in
memory, with a held-out set of 400 other scenes for validation; ``--data FOLDER`` reads a folder of images and its
captions.tsv (qkv/data/shapes.py), holding out its last val_fraction unless --val-data is given. At each
evaluation: greedy captions of the held-out images, their exact match, and where the decoder looked when it named an
object (``caption_metrics``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import shapes
from ..data.shapes import CAPTIONS_FILE, CaptionSet, object_words
from ..decoding import generate
from ..models.image_encoder import image_bytes
from ..models.show_attend_tell import doubly_stochastic_penalty
from .batches import take
from .loss import IGNORE_INDEX, TaskLoss, token_sums
from .task import Footprint, Task

log = logging.getLogger("qkv.train")
GENERATED = "generated"
GENERATED_TRAIN, GENERATED_VAL = 4000, 400
VAL_SEED_OFFSET = 1_000_003  # the held-out scenes come from another seed than the training ones


@dataclass
class CaptionBatch:
    """pixels (B, C, H, W) uint8; decoder_input_ids (B, T) BOS + caption (padded); labels (B, T) caption + EOS,
    IGNORE_INDEX at padding."""
    pixels: torch.Tensor
    decoder_input_ids: torch.Tensor
    labels: torch.Tensor


def collate(pixels: np.ndarray, captions: list[list[int]], *, pad: int, bos: int, eos: int) -> CaptionBatch:
    T = max(len(c) for c in captions) + 1
    inputs = torch.full((len(captions), T), pad, dtype=torch.long)
    labels = torch.full((len(captions), T), IGNORE_INDEX, dtype=torch.long)
    for i, c in enumerate(captions):
        inputs[i, :len(c) + 1] = torch.tensor([bos] + c)
        labels[i, :len(c) + 1] = torch.tensor(c + [eos])
    return CaptionBatch(torch.from_numpy(np.ascontiguousarray(pixels)), inputs, labels)


class CaptionBatches:
    """Random batches of (image, caption), batch ``step`` drawn from a generator seeded by (seed, step): resumable."""

    def __init__(self, pixels: np.ndarray, captions: list[list[int]], batch_size: int, *, seed: int, specials):
        self.pixels, self.captions, self.batch_size, self.seed, self.step = pixels, captions, batch_size, seed, 0
        self.specials = specials

    def __next__(self) -> CaptionBatch:
        rng = np.random.default_rng([self.seed, self.step])
        self.step += 1
        idx = rng.integers(len(self.captions), size=self.batch_size)
        return collate(self.pixels[idx], [self.captions[i] for i in idx], **self.specials)

    def state_dict(self):
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state):
        self.seed, self.step = int(state["seed"]), int(state["step"])


def in_order(pixels, captions, batch_size, specials):
    """The held-out set once, in order."""
    for i in range(0, len(captions), batch_size):
        yield collate(pixels[i:i + batch_size], captions[i:i + batch_size], **specials)


class CaptionLoss(TaskLoss):
    """Token sums of the caption, plus lambda * the doubly stochastic penalty of every image (LSTM decoder), plus
    the REINFORCE terms of every layer that picked by sampling, rewarded with each row's log-likelihood."""

    def sums(self, batch: CaptionBatch):
        mask = batch.labels != IGNORE_INDEX  # (B, T)
        logits, weights = self.model(batch.pixels, batch.decoder_input_ids, return_weights=True,
                                     decoder_attention_mask=mask.long())
        s = token_sums(logits, batch.labels, self.eps, accuracy=not self.training)
        cfg = self.model.config
        if cfg.caption_decoder == "lstm" and cfg.attn_doubly_stochastic:
            s.loss = s.loss + cfg.attn_doubly_stochastic * doubly_stochastic_penalty(weights.alpha.float(), mask).sum()
        if self.training and self.rewards:
            # reward: log p(y | a, picks) per word of the caption (captions of 1 to 3 objects share one baseline)
            s.loss = s.loss + self.reinforce_terms(logits, batch.labels, per_token=True)
        return s


def _generated_count(spec: str) -> int | None:
    """'generated' -> the default count, 'generated:N' -> N, anything else -> None (a path)."""
    if spec == GENERATED:
        return GENERATED_TRAIN
    if isinstance(spec, str) and spec.startswith(GENERATED + ":"):
        n = spec.split(":", 1)[1]
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"data={spec!r}: expected 'generated' or 'generated:N' with N >= 1 scenes")
        return int(n)
    return None


def load_caption_set(spec: str, image_size: int, channels: int, *, seed: int, held_out: bool = False):
    """A CaptionSet from 'generated[:N]' (scenes of qkv.data.shapes, seeded; ``held_out``: the validation scenes, from
    another seed) or from a folder."""
    n = _generated_count(spec)
    if n is None:
        return shapes.read_captions(spec, image_size, channels)
    if channels != 3:
        raise ValueError(f"data={spec!r}: the generated scenes are RGB; the model has num_channels={channels}")
    if held_out:
        n, seed = (GENERATED_VAL if spec == GENERATED else max(n // 10, 1)), seed + VAL_SEED_OFFSET
    return shapes.scenes_as_set(shapes.make_scenes(n, seed=seed, size=image_size))


def split_sets(cfg, image_size: int, channels: int):
    """(train CaptionSet, held-out CaptionSet or None) for a run's flags."""
    train = load_caption_set(cfg.data, image_size, channels, seed=cfg.seed)
    if cfg.val_data:
        return train, load_caption_set(cfg.val_data, image_size, channels, seed=cfg.seed, held_out=True)
    if _generated_count(cfg.data) is not None:
        return train, load_caption_set(cfg.data, image_size, channels, seed=cfg.seed, held_out=True)
    n_val = int(len(train) * cfg.val_fraction)
    if n_val == 0:
        return train, None
    cut = len(train) - n_val

    def part(sl):
        return CaptionSet(train.pixels[sl], train.captions[sl], None if train.boxes is None else train.boxes[sl])
    return part(slice(0, cut)), part(slice(cut, None))


class Captioning(Task):
    """Images and their captions (module docstring). A byte-level BPE trained on the captions: in a small closed
    vocabulary every word becomes one token, so each token's attention belongs to one word."""
    name = "caption"
    loss = CaptionLoss
    tokenizer = "bpe"
    sentences = True
    special_ids = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")
    data_folders = True

    def check_paths(self, cfg):
        if cfg.data is None:
            raise ValueError("data: no training data given; pass --data generated (made in memory) or a folder with "
                             "captions.tsv")
        for name in ("data", "val_data"):
            spec = getattr(cfg, name)
            if spec is None or _generated_count(spec) is not None:
                continue
            if not Path(spec).is_dir():
                raise FileNotFoundError(f"{name}={str(spec)!r} (--{name.replace('_', '-')}): no such folder; expected "
                                        f"a folder with captions.tsv and its images, or 'generated'")

    def tokenizer_texts(self, cfg, kind):
        # the captions only: image_size does not change the words, so any size gives the generated captions
        n = _generated_count(cfg.data)
        if n is not None:
            return iter([s.caption for s in shapes.make_scenes(n, seed=cfg.seed)])
        return iter(_captions_only(cfg.data))

    def load(self, model_config, cfg, tokenizer):
        train, val = split_sets(cfg, model_config.image_size, model_config.num_channels)
        specials = dict(pad=tokenizer.pad_id, bos=tokenizer.bos_id, eos=tokenizer.eos_id)
        encode = (lambda texts: [tokenizer.encode(t) for t in texts])
        log.info("captions: %d training images, %s held out", len(train), len(val) if val is not None else "none")
        stream = CaptionBatches(train.pixels, encode(train.captions), cfg.batch_size, seed=cfg.seed, specials=specials)
        if val is None:
            return stream, None
        val_ids = encode(val.captions)
        return stream, lambda: take(in_order(val.pixels, val_ids, cfg.batch_size, specials), cfg.eval_steps)

    def footprint(self, model_config, cfg):
        tokens = cfg.batch_size * 32  # captions are short: 32 tokens a row bounds the logits held
        pixels = cfg.batch_size * model_config.num_channels * model_config.image_size ** 2
        return Footprint(tokens, f"batch_size={cfg.batch_size}", model_config.vocab_size, "vocab_size",
                         pixels + 16 * tokens)

    def eval_callback(self, cfg, tokenizer, n: int = 200):
        """Greedy captions of the first ``n`` held-out images at every evaluation: exact match and alignment."""
        if tokenizer is None:
            return None
        held: dict = {}

        def callback(model, step):
            if "set" not in held:
                held["set"] = split_sets(cfg, model.config.image_size, model.config.num_channels)[1]
            if held["set"] is None:
                return {}
            was_training = model.training
            model.eval()
            metrics = caption_metrics(model, tokenizer, held["set"], limit=n)
            model.train(was_training)
            return {"val_exact": metrics["exact"], **({"val_align": metrics["align"]} if "align" in metrics else {})}
        return callback


def _captions_only(folder) -> list[str]:
    lines = (Path(folder) / CAPTIONS_FILE).read_text(encoding="utf-8").splitlines()
    return [line.split("\t", 1)[1].strip() for line in lines if "\t" in line]


# -- evaluation: exact match and where the decoder looked ------------------------------------------------------------

def token_words(tokenizer, ids: list[int]) -> list[int | None]:
    """For each token of ``ids``: the index of the word (space- or comma-separated) its text falls in, None for a
    token of spaces or punctuation only."""
    out, before = [], ""
    for j in range(len(ids)):
        text = tokenizer.decode(ids[:j + 1])
        piece = text[len(before):] if text.startswith(before) else text
        out.append(None if not piece.replace(",", " ").strip() else len(text.replace(",", " ").split()) - 1)
        before = text
    return out


def cell_inside(cell: int, grid: tuple[int, int], image_size: int, box) -> bool:
    """Whether the centre of ``cell`` (row-major over ``grid``) lies in ``box``: pixels x0 .. x1 - 1 and y0 .. y1 - 1
    cover the region [x0, x1] x [y0, y1] of the image plane (pixel i spans [i, i + 1)), and a centre on its edge
    touches the object."""
    rows, cols = grid
    r, c = divmod(int(cell), cols)
    cy, cx = (r + 0.5) * image_size / rows, (c + 0.5) * image_size / cols
    x0, y0, x1, y1 = box
    return x0 <= cx <= x1 and y0 <= cy <= y1


@torch.no_grad()
def describe(model, pixels: torch.Tensor, *, num_beams: int = 1, max_new_tokens: int = 24):
    """Greedy (or beam) captions of a batch of images through ``qkv.generate``, and the cell each generated token
    attended (the teacher-forced pass over the model's own tokens, which equals the decoding in evaluation mode).
    pixels (B, C, H, W) uint8 -> (tokens (B, L) after the start token, picks (B, L), weights CaptionWeights)."""
    device = next(model.parameters()).device
    pixels = pixels.to(device)
    seqs = generate(model, image_bytes(pixels), max_new_tokens=max_new_tokens, num_beams=num_beams)
    _, weights = model(pixels, seqs[:, :-1], return_weights=True)
    return seqs[:, 1:], weights.pick, weights


def caption_metrics(model, tokenizer, data, *, limit: int | None = None, batch_size: int = 100,
                    num_beams: int = 1) -> dict:
    """On (up to ``limit``) images of a CaptionSet: ``exact``, the share of captions decoded exactly; and, when the
    set has boxes, ``align``: over every generated token that names an object correctly (the k-th phrase's shape or
    digit word, as the reference's k-th object), the share whose attended cell (argmax for soft, the pick for hard,
    the window's centre for local) has its centre inside that object's box; ``align_words``: how many tokens that
    counted; ``align_colour``, ``colour_words``: the same for the colour word that follows (it describes the object
    rather than names it, and the decoder may already look on by then)."""
    n = len(data) if limit is None else min(limit, len(data))
    eos, grid, size = model.config.eos_token_id, model.grid, model.config.image_size
    exact = 0
    hits, counted = [0, 0], [0, 0]  # [names, colours]
    for lo in range(0, n, batch_size):
        hi = min(lo + batch_size, n)
        tokens, picks, _ = describe(model, torch.from_numpy(data.pixels[lo:hi]), num_beams=num_beams)
        for row, (ids, pick) in enumerate(zip(tokens.tolist(), picks.tolist())):
            ids = ids[:ids.index(eos)] if eos in ids else ids
            text, reference = tokenizer.decode(ids), data.captions[lo + row]
            exact += text == reference
            if data.boxes is None:
                continue
            words, ref_words = text.replace(",", " ").split(), reference.replace(",", " ").split()
            names, ref_names = object_words(text), object_words(reference)
            ref_by_object = {}
            for w, k in zip(ref_words, ref_names):
                if k is not None:
                    ref_by_object.setdefault(k, []).append(w)
            for j, w in enumerate(token_words(tokenizer, ids)):
                if w is None or w >= len(words) or names[w] is None:
                    continue
                k = names[w]
                place = sum(1 for x in range(w) if names[x] == k)  # 0: the noun, 1: the colour
                if k >= len(data.boxes[lo + row]) or ref_by_object.get(k, [])[place:place + 1] != [words[w]]:
                    continue
                counted[place] += 1
                hits[place] += cell_inside(pick[j], grid, size, data.boxes[lo + row][k])
    out = {"exact": exact / max(n, 1), "images": n}
    if data.boxes is not None:
        out.update(align=hits[0] / max(counted[0], 1), align_words=counted[0],
                   align_colour=hits[1] / max(counted[1], 1), colour_words=counted[1])
    return out
