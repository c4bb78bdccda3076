"""Language-model data: text files -> one token file on disk -> random (x, y) windows.

The corpus is tokenized once into a flat binary file of ids (uint16 when the vocabulary has fewer than
65,536 ids, else uint32) and read back through a numpy memmap, so a corpus larger than memory trains as
easily as tinyshakespeare. The file's name carries a hash of the input bytes and of the tokenizer, so a
second run with the same inputs reuses it, and a changed file or tokenizer never reads a stale one.

Batches are windows of block_size + 1 tokens at uniformly random starts: x = window[:-1], y = window[1:],
so every position of the corpus can be a target. The sampler draws batch `step` from a generator seeded by
(seed, step), so its whole state is two integers and resuming a run replays exactly the batches it would
have seen.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from qkv.data._files import PathLike, as_paths, read_text
from qkv.data.tokenizer import Tokenizer
from qkv.files import write_atomic

_LINES_PER_CHUNK = 1024  # lines encoded together: big enough for the Rust batch encoder, small for memory


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds every id: uint16 below 65,536 ids, else uint32."""
    return np.dtype(np.uint16 if vocab_size < 2**16 else np.uint32)


def _digest(paths: Sequence[Path], tokenizer: Tokenizer) -> str:
    h = hashlib.sha256(tokenizer.fingerprint().encode())
    for p in paths:
        h.update(str(p.stat().st_size).encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def tokenize_files(files: PathLike | Sequence[PathLike], tokenizer: Tokenizer, cache_dir: PathLike, *,
                   arg: str = "files") -> np.ndarray:
    """Tokenize `files` (concatenated in order, an EOS between files when the tokenizer has one) into
    `cache_dir/tokens-<hash>.bin` unless it is already there; return it as a read-only memmap of shape (N,).
    """
    paths = as_paths(files, arg)
    dtype = token_dtype(tokenizer.vocab_size)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / f"tokens-{_digest(paths, tokenizer)}.bin"
    if not out.exists():
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        try:
            n = _write_tokens(tmp, paths, tokenizer, dtype, arg)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk leaves no half-written cache behind
            raise
        # Written under a temporary name and renamed: a run killed mid-way never leaves a short cache file.
        os.replace(tmp, out)
        meta = {"files": [str(p) for p in paths], "tokens": n, "dtype": dtype.name,
                "tokenizer": repr(tokenizer)}
        write_atomic(out.with_suffix(".json"), json.dumps(meta, indent=1))
    if out.stat().st_size == 0:
        return np.zeros(0, dtype)  # np.memmap refuses empty files
    return np.memmap(out, dtype=dtype, mode="r")


def _write_tokens(tmp: Path, paths: Sequence[Path], tokenizer: Tokenizer, dtype, arg: str) -> int:
    """Write the ids of ``paths`` into ``tmp``; returns how many."""
    n = 0
    with open(tmp, "wb") as f:
        for k, p in enumerate(paths):
            if k and tokenizer.eos_id is not None:
                f.write(np.asarray([tokenizer.eos_id], dtype).tobytes())
                n += 1
            lines = read_text(p, arg).splitlines(keepends=True)
            chunks = ["".join(lines[i:i + _LINES_PER_CHUNK]) for i in range(0, len(lines), _LINES_PER_CHUNK)]
            for ids in tokenizer.encode_batch(chunks):
                f.write(np.asarray(ids, dtype).tobytes())
                n += len(ids)
    return n


@dataclass
class LMSplits:
    """Token streams for training and evaluation, each a 1-D array (memmap or view) of ids."""
    train: np.ndarray
    val: np.ndarray


def load_lm_data(files: PathLike | Sequence[PathLike], tokenizer: Tokenizer, cache_dir: PathLike, *,
                 block_size: int, val_files: PathLike | Sequence[PathLike] | None = None,
                 val_fraction: float = 0.1) -> LMSplits:
    """Tokenize (or reuse) the corpus and split it.

    Without `val_files` the last `val_fraction` of the tokens is held out: a contiguous tail, so no
    training window overlaps a validation one. Both splits must hold at least block_size + 1 tokens.
    """
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size={block_size!r}: expected a positive int")
    train = tokenize_files(files, tokenizer, cache_dir, arg="files")
    if val_files is not None:
        val = tokenize_files(val_files, tokenizer, cache_dir, arg="val_files")
    else:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction={val_fraction!r}: expected a number in (0, 1)")
        cut = len(train) - int(round(len(train) * val_fraction))
        train, val = train[:cut], train[cut:]
    for name, split, src in (("train", train, files), ("val", val, val_files or files)):
        if len(split) < block_size + 1:
            raise ValueError(
                f"block_size={block_size}: the {name} split of {src!s} has {len(split)} tokens, but one "
                f"(x, y) window needs block_size + 1 = {block_size + 1}; use a smaller block_size or more text")
    return LMSplits(train, val)


class WindowSampler:
    """Endless random batches of (x, y) windows from a token stream, reproducible and resumable.

    tokens: 1-D array of ids (N,). Each `next()` returns x, y of shape (B, T) = (batch_size, block_size),
    int64, on `device` (CPU when None), with y[:, t] = the token after x[:, t].
    For evaluation, make a fresh sampler with a fixed seed and take a fixed number of batches.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, *, seed: int = 0,
                 device: torch.device | str | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected a positive int")
        if len(tokens) < block_size + 1:
            raise ValueError(f"block_size={block_size}: tokens has {len(tokens)} ids, but one (x, y) window "
                             f"needs block_size + 1 = {block_size + 1}")
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.seed, self.step, self.device = int(seed), 0, device
        self._offsets = np.arange(block_size + 1)

    def __iter__(self) -> "WindowSampler":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        # A generator per step, seeded from (seed, step) through SeedSequence so that nearby seeds and
        # steps give unrelated streams; the state to save is then just these two numbers.
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.step]).generate_state(1)[0]))
        self.step += 1
        n_starts = len(self.tokens) - self.block_size  # starts 0 .. N-T-1: the last target is token N-1
        starts = torch.randint(n_starts, (self.batch_size,), generator=g).numpy()
        window = torch.from_numpy(self.tokens[starts[:, None] + self._offsets].astype(np.int64))  # (B, T+1)
        x, y = window[:, :-1], window[:, 1:]
        if self.device is not None:
            x, y = x.to(self.device), y.to(self.device)
        return x, y

    def state_dict(self) -> dict:
        """JSON-safe: {"seed": int, "step": int}."""
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.step = int(state["seed"]), int(state["step"])
