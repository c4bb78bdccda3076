"""Translation data: aligned sentence pairs -> length-bucketed, padded, teacher-forced batches.

Pairs come from two aligned files (line i of one translates line i of the other), one TSV file with two
columns, or one JSONL file with two fields. Each pair is tokenized once:
  input_ids          source ids + EOS                 (the EOS keeps an empty source attendable)
  decoder_input_ids  BOS + target ids                 (teacher forcing: the decoder sees the gold prefix)
  labels             target ids + EOS                 (the next token at every decoder position)
Batches group pairs of similar length so padding is small, and hold at most `max_tokens` padded tokens
(batch size x longest side). Their order is shuffled per epoch from (seed, epoch), so the sampler's state
is three integers and a resumed run sees the same batches as an uninterrupted one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from qkv.data._files import PathLike, check_file, read_lines
from qkv.data.tokenizer import Tokenizer

IGNORE_INDEX = -100  # labels at padding: cross-entropy's default ignore_index


def read_pairs(src: PathLike, tgt: PathLike | None = None, *,
               fields: tuple[str, str] = ("src", "tgt")) -> list[tuple[str, str]]:
    """Read (source, target) string pairs.

    src, tgt: two aligned text files; or src alone: a `.tsv` (two tab-separated columns) or a `.jsonl`
    (one object per line with the two `fields`). Blank lines in a TSV/JSONL are skipped.
    """
    if tgt is not None:
        a, b = read_lines(src, "src"), read_lines(tgt, "tgt")
        if len(a) != len(b):
            raise ValueError(f"src={str(src)!r} has {len(a)} lines but tgt={str(tgt)!r} has {len(b)}; "
                             f"aligned files need the same number of lines")
        return list(zip(a, b))
    suffix = Path(src).suffix.lower()
    if suffix not in (".tsv", ".jsonl"):
        raise ValueError(f"src={str(src)!r}: with no tgt file, expected a .tsv or .jsonl file")
    pairs = []
    for n, line in enumerate(read_lines(src, "src"), start=1):
        if not line.strip():
            continue
        if suffix == ".tsv":
            cols = line.split("\t")
            if len(cols) != 2:
                raise ValueError(f"src={str(src)!r} line {n}: {len(cols)} tab-separated columns, expected 2")
            pairs.append((cols[0], cols[1]))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"src={str(src)!r} line {n}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict) or any(not isinstance(obj.get(f), str) for f in fields):
            raise ValueError(f"src={str(src)!r} line {n}: expected an object with string fields {list(fields)}")
        pairs.append((obj[fields[0]], obj[fields[1]]))
    if not pairs:
        raise ValueError(f"src={str(src)!r}: no pairs found")
    return pairs


@dataclass
class TranslationBatch:
    """One padded batch. B pairs, S = longest source, T = longest target + 1.

    input_ids (B, S), attention_mask (B, S) bool (True = real token, may be attended),
    decoder_input_ids (B, T), decoder_attention_mask (B, T) bool, labels (B, T) with IGNORE_INDEX at padding.
    """
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    decoder_input_ids: torch.Tensor
    decoder_attention_mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "TranslationBatch":
        return TranslationBatch(*(getattr(self, f.name).to(device, non_blocking=non_blocking)
                                  for f in fields(self)))

    @property
    def num_tokens(self) -> int:
        """Target tokens that count in the loss."""
        return int((self.labels != IGNORE_INDEX).sum())


class ParallelDataset(torch.utils.data.Dataset):
    """Tokenized pairs. Item i is (input_ids, decoder_input_ids, labels), 1-D int64 tensors.

    Conventions for the target side:
      - qkv's (``decoder_start_id=None``): decoder input BOS + target, labels target + EOS.
      - transformers' (``decoder_start_id`` given, as a Hugging Face Marian / T5 is trained): the source is
        ``src_tokenizer.encode_source``, labels are the target as ``tgt_tokenizer.encode_target`` encodes it (its
        target-side model, then EOS), and the decoder input is the labels shifted right one place with
        ``decoder_start_id`` first (transformers' shift_tokens_right).
      - mBART's (``start_from_last_label``): the same encodings (its targets carry the target language code), and
        the decoder input is the labels rotated right, the last label first (transformers' MBart
        shift_tokens_right: mBART-50 [lang] x </s> -> </s> [lang] x; mBART-25 x </s> [lang] -> [lang] x </s>).

    max_len truncates each side's ids (before the added BOS/EOS) so no example outgrows a batch; in transformers'
    conventions the template's tokens stay and each side holds at most max_len + 1 ids.
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], src_tokenizer: Tokenizer,
                 tgt_tokenizer: Tokenizer | None = None, *, max_len: int | None = None,
                 decoder_start_id: int | None = None, start_from_last_label: bool = False):
        tgt_tokenizer = tgt_tokenizer or src_tokenizer
        hf = decoder_start_id is not None or start_from_last_label
        needed = ("pad", "eos") if hf else ("pad", "bos", "eos")
        for name, tok in (("src_tokenizer", src_tokenizer), ("tgt_tokenizer", tgt_tokenizer)):
            missing = [r for r in needed if getattr(tok, f"{r}_id") is None]
            if missing:
                raise ValueError(f"{name}: has no {missing} token(s); translation needs "
                                 f"{', '.join(needed[:-1])} and {needed[-1]}")
        for name, tok, method in (("src_tokenizer", src_tokenizer, "encode_source"),
                                  ("tgt_tokenizer", tgt_tokenizer, "encode_target")):
            if hf and not callable(getattr(tok, method, None)):
                raise TypeError(f"{name}: decoder_start_id={decoder_start_id}, start_from_last_label="
                                f"{start_from_last_label}: transformers' target convention needs a tokenizer with "
                                f"{method} (a Hugging Face SentencePiece folder), not {type(tok).__name__}")
        if len(pairs) == 0:
            raise ValueError("pairs: empty; expected at least one (source, target) pair")
        self.pad_id = src_tokenizer.pad_id
        if tgt_tokenizer.pad_id != self.pad_id:
            raise ValueError(f"tgt_tokenizer.pad_id={tgt_tokenizer.pad_id} differs from src_tokenizer.pad_id="
                             f"{self.pad_id}; one pad id is needed to pad both sides")
        if hf:
            total = None if max_len is None else max_len + 1  # the template's tokens stay, as transformers truncates
            self.src, self.tgt_in, self.tgt_out = [], [], []
            for text_src, text in pairs:
                labels = tgt_tokenizer.encode_target(text, max_len=total)
                first = labels[-1] if start_from_last_label else decoder_start_id
                self.src.append(np.asarray(src_tokenizer.encode_source(text_src, max_len=total), np.int64))
                self.tgt_in.append(np.asarray([first] + labels[:-1], np.int64))
                self.tgt_out.append(np.asarray(labels, np.int64))
            self.lengths = np.asarray([max(len(s), len(t)) for s, t in zip(self.src, self.tgt_in)])
            return
        src_ids = src_tokenizer.encode_batch([s for s, _ in pairs])
        tgt_ids = tgt_tokenizer.encode_batch([t for _, t in pairs])
        s_eos, t_bos, t_eos = src_tokenizer.eos_id, tgt_tokenizer.bos_id, tgt_tokenizer.eos_id
        self.src, self.tgt_in, self.tgt_out = [], [], []
        for s, t in zip(src_ids, tgt_ids):
            s, t = s[:max_len], t[:max_len]
            self.src.append(np.asarray(s + [s_eos], np.int64))
            self.tgt_in.append(np.asarray([t_bos] + t, np.int64))
            self.tgt_out.append(np.asarray(t + [t_eos], np.int64))
        # Padded cost of an example: its longer side, which decides the batch's width.
        self.lengths = np.asarray([max(len(s), len(t)) for s, t in zip(self.src, self.tgt_in)])

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(self.src[i]), torch.from_numpy(self.tgt_in[i]), torch.from_numpy(self.tgt_out[i]))

    def collate(self, indices: Sequence[int]) -> TranslationBatch:
        """Pad the examples at `indices` into one TranslationBatch (CPU tensors)."""
        return collate_pairs([self[i] for i in indices], self.pad_id)


def collate_pairs(examples: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], pad_id: int) -> TranslationBatch:
    """Right-pad (input_ids, decoder_input_ids, labels) triples; labels pad with IGNORE_INDEX."""
    def pad(seqs, value):
        out = torch.full((len(seqs), max(len(s) for s in seqs)), value, dtype=torch.long)
        for row, s in zip(out, seqs):
            row[:len(s)] = s
        return out
    src, tgt_in, tgt_out = zip(*examples)
    input_ids, decoder_input_ids = pad(src, pad_id), pad(tgt_in, pad_id)
    # Masks come from lengths, not from `ids != pad_id`, so a pad id inside a sentence cannot hide a token.
    lens_s, lens_t = torch.tensor([len(s) for s in src]), torch.tensor([len(t) for t in tgt_in])
    attention_mask = torch.arange(input_ids.shape[1]) < lens_s[:, None]
    decoder_attention_mask = torch.arange(decoder_input_ids.shape[1]) < lens_t[:, None]
    return TranslationBatch(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask,
                            pad(tgt_out, IGNORE_INDEX))


class TokenBucketSampler:
    """Batches of dataset indices holding at most `max_tokens` padded tokens; iterate for one epoch.

    Examples are sorted by length (ties broken at random, per epoch) and cut into batches greedily, then
    the batch order is shuffled; both from a generator seeded by (seed, epoch). `state_dict` records
    (seed, epoch, position in the epoch) so `load_state_dict` resumes at the very next batch.
    """

    def __init__(self, lengths: Sequence[int], max_tokens: int, *, seed: int = 0, shuffle: bool = True):
        self.lengths = np.asarray(lengths)
        too_long = np.flatnonzero(self.lengths > max_tokens)
        if len(too_long):
            i = int(too_long[0])
            raise ValueError(f"max_tokens={max_tokens}: example {i} alone has {int(self.lengths[i])} tokens "
                             f"({len(too_long)} examples exceed it); raise max_tokens or set max_len")
        self.max_tokens, self.shuffle = max_tokens, shuffle
        self.seed, self.epoch, self.position = int(seed), 0, 0

    def _batches(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0]))
        if self.shuffle:
            tie = torch.randperm(len(self.lengths), generator=g).numpy()
            order = tie[np.argsort(self.lengths[tie], kind="stable")]
        else:
            order = np.argsort(self.lengths, kind="stable")
        batches, cur, longest = [], [], 0
        for i in order.tolist():
            width = max(longest, int(self.lengths[i]))
            if cur and width * (len(cur) + 1) > self.max_tokens:
                batches.append(cur)
                cur, width = [], int(self.lengths[i])
            cur.append(i)
            longest = width
        if cur:
            batches.append(cur)
        if self.shuffle:
            batches = [batches[j] for j in torch.randperm(len(batches), generator=g).tolist()]
        return batches

    def __len__(self) -> int:
        return len(self._batches(self.epoch))

    def __iter__(self) -> Iterator[list[int]]:
        """Yield the rest of the current epoch's batches, then move to the next epoch."""
        batches = self._batches(self.epoch)
        while self.position < len(batches):
            self.position += 1
            yield batches[self.position - 1]
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        """JSON-safe: {"seed", "epoch", "position"} (position = batches already taken this epoch)."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])


class ParallelBatches:
    """Iterate padded TranslationBatches for one epoch per `iter()`; resumable through `state_dict`."""

    def __init__(self, dataset: ParallelDataset, max_tokens: int, *, seed: int = 0, shuffle: bool = True,
                 device: torch.device | str | None = None):
        self.dataset, self.device = dataset, device
        self.sampler = TokenBucketSampler(dataset.lengths, max_tokens, seed=seed, shuffle=shuffle)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[TranslationBatch]:
        for indices in self.sampler:
            batch = self.dataset.collate(indices)
            yield batch if self.device is None else batch.to(self.device)

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def load_parallel(src: PathLike, tgt: PathLike | None, src_tokenizer: Tokenizer,
                  tgt_tokenizer: Tokenizer | None = None, *, fields: tuple[str, str] = ("src", "tgt"),
                  max_len: int | None = None, decoder_start_id: int | None = None,
                  start_from_last_label: bool = False) -> ParallelDataset:
    """read_pairs + ParallelDataset in one call."""
    check_file(src, "src")
    return ParallelDataset(read_pairs(src, tgt, fields=fields), src_tokenizer, tgt_tokenizer, max_len=max_len,
                           decoder_start_id=decoder_start_id, start_from_last_label=start_from_last_label)
