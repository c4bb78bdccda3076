"""Local attention as a pure op (Luong et al. 2015, sec. 3.2): the window [p_t - D, p_t + D] over positions counted
among each row's tokens, the Gaussian of eq. (10), out == weights @ v, and what happens at the edges."""
import pytest
import torch

from qkv.ops.attention import attention
from qkv.ops.local_attention import gaussian_window, local_attention, local_window, source_positions

F64 = torch.float64


def test_positions_count_tokens_wherever_the_padding_lies():
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 0, 1]])
    positions, lengths = source_positions(mask, 4, dtype=F64)
    assert positions[0, :3].tolist() == [1, 2, 3] and lengths[:, 0].tolist() == [3, 2]
    assert positions[1, [1, 3]].tolist() == [1, 2]  # the tokens are the row's first and second
    positions, lengths = source_positions(None, 5, dtype=F64)
    assert positions.tolist() == [[1, 2, 3, 4, 5]] and lengths.tolist() == [[5]]


def test_window_is_inclusive_and_gaussian_has_sigma_half_the_width():
    centers = torch.tensor([[2.5, 4.0]], dtype=F64)  # (B=1, T=2)
    positions = torch.arange(1, 8, dtype=F64)[None]  # (1, S=7)
    window = local_window(centers, positions, 2)
    assert window[0, 0].nonzero().flatten().add(1).tolist() == [1, 2, 3, 4]  # |s - 2.5| <= 2
    assert window[0, 1].nonzero().flatten().add(1).tolist() == [2, 3, 4, 5, 6]  # both edges included
    g = gaussian_window(centers, positions, 2)
    expected = torch.exp(-(positions - 4.0) ** 2 / (2 * 1.0 ** 2))  # sigma = D / 2 = 1
    torch.testing.assert_close(g[0, 1], expected[0], rtol=0, atol=1e-15)


def test_local_attention_is_global_attention_masked_to_the_window():
    torch.manual_seed(0)
    B, T, S, D = 2, 4, 9, 8
    q, k, v = torch.randn(B, 1, T, D, dtype=F64), torch.randn(B, 1, S, D, dtype=F64), torch.randn(B, 1, S, 5, dtype=F64)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, 6:] = 0
    positions, lengths = source_positions(mask, S, dtype=F64)
    centers = torch.rand(B, T, dtype=F64) * lengths
    pad = mask.bool()[:, None, None, :]
    out, w = local_attention(q, k, v, centers, positions, half_width=2, gaussian=False, mask=pad)
    allowed = pad & local_window(centers, positions, 2)[:, None]
    ref_out, ref_w = attention(q, k, v, score="dot", mask=allowed, return_weights=True)
    torch.testing.assert_close(w, ref_w, rtol=0, atol=1e-12)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    out, w = local_attention(q, k, v, centers, positions, half_width=2, gaussian=True, mask=pad)
    torch.testing.assert_close(w, ref_w * gaussian_window(centers, positions, 2)[:, None], rtol=0, atol=1e-12)
    torch.testing.assert_close(out, w @ v, rtol=0, atol=1e-12)
    assert bool((w.sum(-1) < 1).all())  # eq. (10) scales the softmax down: the weights no longer sum to 1


def test_a_window_past_the_end_gives_zero_weights_not_nan():
    q, k = torch.randn(1, 1, 2, 3, dtype=F64), torch.randn(1, 1, 3, 3, dtype=F64)
    positions, _ = source_positions(None, 3, dtype=F64)
    centers = torch.tensor([[2.0, 9.0]], dtype=F64)  # local-m at t = 9 over a 3-token source
    out, w = local_attention(q, k, k, centers, positions, half_width=1, gaussian=False)
    assert w[0, 0, 1].tolist() == [0.0, 0.0, 0.0] and out[0, 0, 1].tolist() == [0.0, 0.0, 0.0]
    assert torch.isfinite(w).all() and abs(float(w[0, 0, 0].sum()) - 1.0) < 1e-12


def test_gradcheck_reaches_the_centers_through_the_gaussian():
    torch.manual_seed(1)
    q, k = torch.randn(1, 1, 3, 4, dtype=F64, requires_grad=True), torch.randn(1, 1, 7, 4, dtype=F64)
    positions, _ = source_positions(None, 7, dtype=F64)
    centers = torch.tensor([[1.3, 3.6, 5.2]], dtype=F64, requires_grad=True)
    f = lambda q, centers: local_attention(q, k, k, centers, positions, half_width=2, gaussian=True)  # noqa: E731
    assert torch.autograd.gradcheck(f, (q, centers))


@pytest.mark.parametrize("half_width, gaussian", [(-1, False), (0, True), (1.5, False), (True, False)])
def test_a_bad_half_width_is_refused_by_name(half_width, gaussian):
    q = torch.randn(1, 1, 1, 2)
    positions, _ = source_positions(None, 2)
    with pytest.raises(ValueError, match="half_width must be an int"):
        local_attention(q, q, q, torch.ones(1, 1), positions, half_width=half_width, gaussian=gaussian)
