"""Mask builders against their definitions, written as loops over positions."""
import pytest
import torch

from qkv.ops import causal_mask, global_mask, padding_mask, window_mask


def loop_mask(T, S, rule):
    return torch.tensor([[rule(i + S - T, j) for j in range(S)] for i in range(T)], dtype=torch.bool)


@pytest.mark.parametrize("T,S", [(1, 1), (7, 7), (1, 9), (7, 9), (9, 7)])
def test_causal_mask_aligns_queries_to_the_end_of_the_keys(T, S):
    assert torch.equal(causal_mask(T, S), loop_mask(T, S, lambda p, j: j <= p))


def test_causal_mask_defaults_to_square():
    assert torch.equal(causal_mask(5), torch.ones(5, 5, dtype=torch.bool).tril())


@pytest.mark.parametrize("T,S", [(7, 7), (1, 9), (7, 13)])
@pytest.mark.parametrize("window", [0, 2])
def test_window_mask_sees_w_before_or_w_each_side(T, S, window):
    before = loop_mask(T, S, lambda p, j: p - window <= j <= p)
    each_side = loop_mask(T, S, lambda p, j: abs(p - j) <= window)
    assert torch.equal(window_mask(T, S, window=window, causal=True), before)
    assert torch.equal(window_mask(T, S, window=window, causal=False), each_side)


def test_global_mask_rows_and_columns():
    g = global_mask(4, 6, [1, 4])
    assert torch.equal(g, loop_mask(4, 6, lambda p, j: p in (1, 4) or j in (1, 4)))
    as_bool = torch.tensor([False, True, False, False, True, False])
    assert torch.equal(global_mask(4, 6, as_bool), g)


def test_padding_mask_shape_and_values():
    m = padding_mask(torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert m.shape == (2, 1, 1, 3) and m.dtype == torch.bool
    assert m[:, 0, 0].tolist() == [[True, True, False], [True, False, False]]


def test_bad_mask_arguments_are_rejected():
    with pytest.raises(ValueError, match=r"window must be an int >= 0.*got -1"):
        window_mask(3, 3, window=-1)
    with pytest.raises(ValueError, match=r"global_tokens must be positions in \[0, 6\), got \[1, 6\]"):
        global_mask(4, 6, [1, 6])
    with pytest.raises(ValueError, match=r"global_tokens as a bool tensor must have shape \(6,\), got \(5,\)"):
        global_mask(4, 6, torch.zeros(5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"attention_mask must be \(B, S\).*got shape \(3,\)"):
        padding_mask(torch.ones(3))
