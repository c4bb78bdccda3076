"""BERT masking: 15% selected, 80/10/10, specials and padding never touched, seeded and resumable."""
import pytest
import torch

from qkv.data import IGNORE_INDEX, CharTokenizer, MLMCollator

ALPHABET = "abcdefghijklmnopqrstuvwxyz"


@pytest.fixture
def tok():
    return CharTokenizer.train(iter([ALPHABET]))


def _sequences(tok, n=400, length=50):
    g = torch.Generator().manual_seed(0)
    return [tok.encode("".join(ALPHABET[i] for i in torch.randint(26, (int(l),), generator=g)), add_special=True)
            for l in torch.randint(length // 2, length, (n,), generator=g)]


def test_rates_are_15_percent_then_80_10_10(tok):
    seqs = _sequences(tok)
    batch = MLMCollator(tok, seed=0)(seqs)
    ids = torch.full_like(batch.input_ids, tok.pad_id)
    for row, s in zip(ids, seqs):
        row[:len(s)] = torch.tensor(s)
    selected = batch.labels != IGNORE_INDEX
    eligible = batch.attention_mask & (ids > max(tok.special_ids))
    rate = selected.sum() / eligible.sum()
    assert abs(rate - 0.15) < 0.01
    masked = (batch.input_ids == tok.mask_id) & selected
    kept = (batch.input_ids == ids) & selected
    changed = selected & ~masked & ~kept
    n = selected.sum()
    assert abs(masked.sum() / n - 0.8) < 0.03
    # a random replacement can draw the original token (1 in 26), which then counts as kept
    assert abs(kept.sum() / n - (0.1 + 0.1 / 26)) < 0.02 and abs(changed.sum() / n - 0.1 * 25 / 26) < 0.02
    assert torch.equal(batch.labels[selected], ids[selected])


def test_specials_and_padding_are_never_masked(tok):
    seqs = _sequences(tok, n=100)
    batch = MLMCollator(tok, mlm_probability=0.9, seed=1)(seqs)
    special = torch.isin(batch.input_ids, torch.tensor([tok.bos_id, tok.eos_id, tok.pad_id]))
    assert (batch.labels[~batch.attention_mask] == IGNORE_INDEX).all()
    assert (batch.input_ids[~batch.attention_mask] == tok.pad_id).all()
    assert (batch.labels[special] == IGNORE_INDEX).all()
    assert (batch.input_ids[:, 0] == tok.bos_id).all()
    random_drawn = batch.input_ids[(batch.labels != IGNORE_INDEX) & (batch.input_ids != tok.mask_id)]
    assert not torch.isin(random_drawn, torch.tensor(tok.special_ids)).any()


def test_seeded_and_resumable(tok):
    seqs = _sequences(tok, n=8)
    a = MLMCollator(tok, seed=3)
    a(seqs)
    state = a.state_dict()
    second = a(seqs)
    b = MLMCollator(tok, seed=99)
    b.load_state_dict(state)
    again = b(seqs)
    assert torch.equal(second.input_ids, again.input_ids) and torch.equal(second.labels, again.labels)
    assert not torch.equal(MLMCollator(tok, seed=3)(seqs).input_ids, second.input_ids)


def test_needs_mask_and_pad(tok):
    with pytest.raises(ValueError, match="needs mask and pad"):
        MLMCollator(CharTokenizer.train(iter(["ab"]), specials=("pad",)))
    with pytest.raises(ValueError, match="mlm_probability=1.5"):
        MLMCollator(tok, mlm_probability=1.5)
