"""Attention that can be checked: a tiny Luong model (global attention, general score) trained for a few seconds on
the swap task (each adjacent pair of letters swapped) attends, for most output letters, to the source letter it
copies; the argmax alignment is scored against the task's known one. Untrained, it lands there about one time in
ten. (bench/rnn_attention.py reports the same accuracy for every variant on sources of up to 64 letters.)"""
import pytest
import torch

import qkv
from qkv.data.alignment_task import alignment, alignment_accuracy, apply_rule, make_pairs

LETTERS = "abcdefgh"


def _batch(pairs):
    """Right-padded (source + EOS, its mask, BOS + target, target + EOS with -100 at padding)."""
    ids = lambda s: [3 + LETTERS.index(c) for c in s]  # noqa: E731  (0 pad, 1 BOS, 2 EOS)
    S, T = max(len(s) for s, _ in pairs) + 1, max(len(t) for _, t in pairs) + 1
    src, mask = torch.zeros(len(pairs), S, dtype=torch.long), torch.zeros(len(pairs), S, dtype=torch.long)
    tgt_in, labels = torch.zeros(len(pairs), T, dtype=torch.long), torch.full((len(pairs), T), -100)
    for i, (s, t) in enumerate(pairs):
        src[i, : len(s) + 1], mask[i, : len(s) + 1] = torch.tensor(ids(s) + [2]), 1
        tgt_in[i, : len(t) + 1], labels[i, : len(t) + 1] = torch.tensor([1] + ids(t)), torch.tensor(ids(t) + [2])
    return src, mask, tgt_in, labels


def _accuracy(model, pairs):
    src, mask, tgt_in, _ = _batch(pairs)
    with torch.no_grad():
        _, weights = model(src, tgt_in, mask, return_weights=True)
    (cross,) = weights.cross  # (B, 1, T, S)
    return alignment_accuracy([cross[i, 0] for i in range(len(pairs))], [len(s) for s, _ in pairs], "swap")


def test_the_rules_know_their_alignment():
    assert apply_rule("abcde", "swap") == "badce" and alignment(5, "swap") == [1, 0, 3, 2, 4]
    assert apply_rule("abc", "reverse") == "cba" and apply_rule("abc", "copy") == "abc"
    weights = torch.eye(4)[[1, 0, 3, 2]]  # each row's argmax on the swapped position
    assert alignment_accuracy([weights], [4], "swap") == 1.0 and alignment_accuracy([weights], [4], "copy") == 0.0


def test_harmonic_lengths_give_every_length_the_same_share_of_letters():
    uniform = make_pairs(20000, min_len=1, max_len=16, seed=3)
    harmonic = make_pairs(20000, min_len=1, max_len=16, lengths="harmonic", seed=3)
    letters = lambda pairs, k: sum(len(s) for s, _ in pairs if len(s) == k) / sum(len(s) for s, _ in pairs)  # noqa: E731
    for k in (1, 4, 16):  # each length 1/16 of the letters, to sampling noise
        assert abs(letters(harmonic, k) - 1 / 16) < 0.01, (k, letters(harmonic, k))
    assert letters(uniform, 1) < 0.01 and letters(uniform, 16) > 0.1  # uniform pairs: long sources hold the letters
    assert all(apply_rule(s, "swap") == t and 1 <= len(s) <= 16 for s, t in harmonic)
    assert make_pairs(50, max_len=9, seed=4) == make_pairs(50, max_len=9, lengths="uniform", seed=4)
    with pytest.raises(ValueError, match=r"lengths must be one of \('uniform', 'harmonic'\), got 'zipf'"):
        make_pairs(5, lengths="zipf")


def test_a_tiny_model_learns_to_attend_where_the_rule_aligns():
    torch.manual_seed(0)
    model = qkv.build(qkv.preset("luong-tiny", vocab_size=3 + len(LETTERS), d_model=32, rnn_embed_dim=16, n_layers=1,
                                 rnn_bidirectional="encoder"))  # seeds 0, 1, 2 reach 0.99, 0.74, 1.0
    train = make_pairs(6400, rule="swap", min_len=2, max_len=8, letters=LETTERS, seed=1)
    test = make_pairs(100, rule="swap", min_len=2, max_len=8, letters=LETTERS, seed=2)
    before = _accuracy(model.eval(), test)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(200):
        src, mask, tgt_in, labels = _batch(train[32 * step: 32 * step + 32])
        loss = torch.nn.functional.cross_entropy(model(src, tgt_in, mask).flatten(0, 1), labels.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = _accuracy(model.eval(), test)
    assert before < 0.4 and after > 0.8, (before, after)
