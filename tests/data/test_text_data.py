"""LM data: cached token file, held-out tail, windows shifted by one, exact resume, clear errors."""
from pathlib import Path

import numpy as np
import pytest
import torch

from qkv.data import CharTokenizer, WindowSampler, load_lm_data, token_dtype, tokenize_files, train_bpe

SHAKESPEARE = Path("/work/shared/data/tinyshakespeare/input.txt")


@pytest.fixture
def corpus(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("".join(f"line {i}: the quick brown fox\n" for i in range(50)), encoding="utf-8")
    return f


def test_token_file_matches_encode_and_is_cached(corpus, tmp_path):
    tok = CharTokenizer.train(corpus, specials=())
    tokens = tokenize_files(corpus, tok, tmp_path / "cache")
    assert tokens.dtype == np.uint16 and isinstance(tokens, np.memmap)
    assert tokens.tolist() == tok.encode(corpus.read_text(encoding="utf-8"))
    bins = list((tmp_path / "cache").glob("*.bin"))
    mtime = bins[0].stat().st_mtime_ns
    tokenize_files(corpus, tok, tmp_path / "cache")
    assert list((tmp_path / "cache").glob("*.bin")) == bins and bins[0].stat().st_mtime_ns == mtime


def test_cache_key_changes_with_text_and_tokenizer(corpus, tmp_path):
    tok = CharTokenizer.train(corpus, specials=())
    tokenize_files(corpus, tok, tmp_path / "c")
    tokenize_files(corpus, CharTokenizer.train(corpus), tmp_path / "c")  # same text, other tokenizer
    corpus.write_text("line 1: the quick brown fox\n", encoding="utf-8")
    again = tokenize_files(corpus, tok, tmp_path / "c")
    assert len(list((tmp_path / "c").glob("*.bin"))) == 3 and len(again) == 28


def test_dtype_widens_past_65535_ids():
    assert token_dtype(65535) == np.uint16 and token_dtype(65536) == np.uint32


def test_files_are_joined_with_eos_when_the_tokenizer_has_one(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("ab"), b.write_text("ba")
    tok = CharTokenizer.train([a, b])
    assert tokenize_files([a, b], tok, tmp_path).tolist() == tok.encode("ab") + [tok.eos_id] + tok.encode("ba")


def test_hf_tokenizer_token_file_matches_encode(corpus, tmp_path):
    tok = train_bpe(corpus, vocab_size=300)
    assert tokenize_files(corpus, tok, tmp_path).tolist() == tok.encode(corpus.read_text(encoding="utf-8"))


def test_val_split_is_the_last_tenth(corpus, tmp_path):
    tok = CharTokenizer.train(corpus, specials=())
    full = tokenize_files(corpus, tok, tmp_path)
    splits = load_lm_data(corpus, tok, tmp_path, block_size=8)
    assert len(splits.val) == round(0.1 * len(full)) and len(splits.train) + len(splits.val) == len(full)
    assert np.array_equal(np.concatenate([splits.train, splits.val]), full)


def test_val_files_are_used_when_given(corpus, tmp_path):
    val = tmp_path / "val.txt"
    val.write_text("the fox again and again\n")
    tok = CharTokenizer.train([corpus, val], specials=())
    splits = load_lm_data(corpus, tok, tmp_path, block_size=8, val_files=val)
    assert splits.val.tolist() == tok.encode("the fox again and again\n")


def test_windows_are_shifted_by_one_and_cover_the_last_token():
    tokens = np.arange(13, dtype=np.uint16)
    sampler = WindowSampler(tokens, block_size=4, batch_size=64, seed=1)
    x, y = next(sampler)
    assert x.shape == y.shape == (64, 4) and x.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y, x + 1)
    seen = torch.cat([next(sampler)[1] for _ in range(20)])
    assert seen.max() == 12 and seen.min() == 1  # first start 0, last target N-1


def test_resume_replays_the_same_batches():
    tokens = np.arange(1000, dtype=np.uint16)
    a = WindowSampler(tokens, 16, 4, seed=7)
    for _ in range(3):
        next(a)
    state = a.state_dict()
    expected = [next(a) for _ in range(3)]
    b = WindowSampler(tokens, 16, 4, seed=0)
    b.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(expected, (next(b) for _ in range(3))):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(next(WindowSampler(tokens, 16, 4, seed=8))[0], next(WindowSampler(tokens, 16, 4, seed=7))[0])


def test_corpus_shorter_than_a_block_says_both_lengths(tmp_path):
    f = tmp_path / "tiny.txt"
    f.write_text("hello world\n")  # 12 chars: train 11, val 1
    tok = CharTokenizer.train(f, specials=())
    with pytest.raises(ValueError, match=r"block_size=32.*train split.*has 11 tokens.*33"):
        load_lm_data(f, tok, tmp_path, block_size=32)
    with pytest.raises(ValueError, match=r"val split.*has 1 tokens.*block_size \+ 1 = 5"):
        load_lm_data(f, tok, tmp_path, block_size=4)


def test_missing_empty_and_undecodable_files(tmp_path):
    tok = CharTokenizer.train(iter(["abc"]))
    with pytest.raises(FileNotFoundError, match=r"files=.*nope.txt"):
        load_lm_data(tmp_path / "nope.txt", tok, tmp_path, block_size=4)
    (tmp_path / "train.txt").write_text("abcabcabc")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match=r"val_files=.*empty.txt.*the file is empty"):
        load_lm_data(tmp_path / "train.txt", tok, tmp_path, block_size=4, val_files=tmp_path / "empty.txt")
    (tmp_path / "bad.txt").write_bytes(b"abc\nab\xff\xfec")
    with pytest.raises(ValueError, match=r"bad.txt.*bytes ff at byte offset 6 \(line 2\)"):
        tokenize_files(tmp_path / "bad.txt", tok, tmp_path)


@pytest.mark.skipif(not SHAKESPEARE.exists(), reason="tinyshakespeare not present")
def test_tinyshakespeare_char_lm(tmp_path):
    tok = CharTokenizer.train(SHAKESPEARE, specials=())
    splits = load_lm_data(SHAKESPEARE, tok, tmp_path, block_size=256)
    assert tok.vocab_size == 65 and len(splits.train) + len(splits.val) == 1115394
    x, y = next(WindowSampler(splits.train, 256, 8))
    assert x.shape == (8, 256) and int(x.max()) < 65
