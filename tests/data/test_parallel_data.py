"""Translation data: readers, teacher forcing, padding masks, token budgets, resume, clear errors."""
import json
from pathlib import Path

import pytest
import torch

from qkv.data import (IGNORE_INDEX, CharTokenizer, ParallelBatches, ParallelDataset, TokenBucketSampler,
                      load_parallel, read_pairs)

MULTI30K = Path("/work/shared/data/multi30k")
PAIRS = [("one", "uno"), ("two", "dos"), ("twenty-one", "veintiuno"), ("a", "b"), ("three hundred", "trescientos"),
         ("sixteen", "dieciséis"), ("", "cero")] * 5


@pytest.fixture
def tok():
    return CharTokenizer.train(iter([s + t for s, t in PAIRS]))


def test_read_aligned_tsv_and_jsonl_agree(tmp_path):
    pairs = PAIRS[:7]
    (tmp_path / "a.en").write_text("\n".join(s for s, _ in pairs) + "\n", encoding="utf-8")
    (tmp_path / "a.es").write_text("\n".join(t for _, t in pairs) + "\n", encoding="utf-8")
    (tmp_path / "a.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
    jsonl = "".join(json.dumps({"en": s, "es": t}) + "\n" for s, t in pairs)
    (tmp_path / "a.jsonl").write_text(jsonl, encoding="utf-8")
    assert read_pairs(tmp_path / "a.en", tmp_path / "a.es") == pairs
    assert read_pairs(tmp_path / "a.tsv") == pairs
    assert read_pairs(tmp_path / "a.jsonl", fields=("en", "es")) == pairs


def test_teacher_forcing_shifts_target_and_ignores_padding(tok):
    ds = ParallelDataset(PAIRS, tok)
    batch = ds.collate([0, 2, 6])  # "one", "twenty-one", ""
    B, T = batch.labels.shape
    assert batch.input_ids.shape == (3, len("twenty-one") + 1) and T == len("veintiuno") + 1
    assert torch.equal(batch.decoder_input_ids[:, 0], torch.full((3,), tok.bos_id))
    lens = batch.decoder_attention_mask.sum(1)
    for b in range(B):
        n = int(lens[b])
        # decoder input = BOS + target, labels = target + EOS: labels[t] is the token after input[t]
        assert torch.equal(batch.decoder_input_ids[b, 1:n], batch.labels[b, :n - 1])
        assert batch.labels[b, n - 1] == tok.eos_id
        assert (batch.labels[b, n:] == IGNORE_INDEX).all() and (batch.decoder_input_ids[b, n:] == tok.pad_id).all()
    assert tok.decode(batch.labels[1, :int(lens[1])].tolist()) == "veintiuno"
    assert batch.attention_mask.tolist()[2] == [True] + [False] * 10  # empty source keeps its EOS
    assert batch.input_ids[2, 0] == tok.eos_id and batch.attention_mask.dtype == torch.bool


def test_batches_respect_max_tokens_and_cover_every_example_once(tok):
    ds = ParallelDataset(PAIRS, tok)
    batches = list(TokenBucketSampler(ds.lengths, max_tokens=40, seed=3))
    assert sorted(i for b in batches for i in b) == list(range(len(ds)))
    for b in batches:
        assert len(b) * max(ds.lengths[i] for i in b) <= 40
    for batch in ParallelBatches(ds, 40, seed=3):
        assert batch.input_ids.numel() <= 40 and batch.labels.numel() <= 40


def test_shuffle_is_seeded_and_differs_between_epochs(tok):
    ds = ParallelDataset(PAIRS, tok)
    s = TokenBucketSampler(ds.lengths, 40, seed=1)
    e0, e1 = list(s), list(s)
    assert e0 == list(TokenBucketSampler(ds.lengths, 40, seed=1)) and e0 != e1


def test_resume_mid_epoch_continues_with_the_next_batch(tok):
    ds = ParallelDataset(PAIRS, tok)
    a = ParallelBatches(ds, 40, seed=5)
    it = iter(a)
    for _ in range(3):
        next(it)
    state = a.state_dict()
    rest = [b.input_ids for b in it] + [b.input_ids for b in a]  # the epoch's tail, then the next epoch
    b = ParallelBatches(ds, 40)
    b.load_state_dict(json.loads(json.dumps(state)))  # the state survives a JSON checkpoint
    again = [x.input_ids for x in b] + [x.input_ids for x in b]
    assert len(rest) == len(again) and all(torch.equal(x, y) for x, y in zip(rest, again))


def test_errors_name_files_counts_and_lines(tmp_path, tok):
    (tmp_path / "a.en").write_text("one\ntwo\nthree\n")
    (tmp_path / "a.es").write_text("uno\ndos\n")
    with pytest.raises(ValueError, match=r"src='.*a.en' has 3 lines but tgt='.*a.es' has 2"):
        read_pairs(tmp_path / "a.en", tmp_path / "a.es")
    with pytest.raises(FileNotFoundError, match=r"tgt='.*missing.es'"):
        read_pairs(tmp_path / "a.en", tmp_path / "missing.es")
    (tmp_path / "b.jsonl").write_text('{"src": "a", "tgt": "b"}\n{"src": "a", \n')
    with pytest.raises(ValueError, match=r"b.jsonl' line 2: not valid JSON"):
        read_pairs(tmp_path / "b.jsonl")
    (tmp_path / "c.jsonl").write_text('{"src": "a", "tgt": "b"}\n\n{"src": "a"}\n')
    with pytest.raises(ValueError, match=r"c.jsonl' line 3: expected an object with string fields"):
        read_pairs(tmp_path / "c.jsonl")
    (tmp_path / "d.tsv").write_text("a\tb\nc\n")
    with pytest.raises(ValueError, match=r"d.tsv' line 2: 1 tab-separated columns"):
        read_pairs(tmp_path / "d.tsv")
    (tmp_path / "e.en").write_bytes(b"ok\n\xe9t\xe9\n")
    with pytest.raises(ValueError, match=r"src='.*e.en': bytes e9 at byte offset 3 \(line 2\)"):
        read_pairs(tmp_path / "e.en", tmp_path / "a.es")
    with pytest.raises(ValueError, match=r"max_tokens=5: example .* has 11 tokens"):
        ParallelBatches(ParallelDataset(PAIRS, tok), max_tokens=5)
    with pytest.raises(ValueError, match="translation needs pad, bos and eos"):
        ParallelDataset(PAIRS, CharTokenizer.train(iter(["abc"]), specials=()))


def test_max_len_truncates_before_specials(tok):
    ds = ParallelDataset(PAIRS, tok, max_len=3)
    assert max(len(s) for s in ds.src) == 4 and max(len(t) for t in ds.tgt_out) == 4


@pytest.mark.skipif(not (MULTI30K / "val.en").exists(), reason="multi30k not present")
def test_multi30k_val_loads():
    tok = CharTokenizer.train([MULTI30K / "train.en", MULTI30K / "train.de"])
    ds = load_parallel(MULTI30K / "val.en", MULTI30K / "val.de", tok)
    assert len(ds) == 1014
    assert sum(len(b) for b in TokenBucketSampler(ds.lengths, 4096)) == 1014
