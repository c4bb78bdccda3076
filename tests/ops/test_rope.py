"""RoPE: a rotation (norms kept), relative (q_m . k_n depends on m - n only), partial rotary, and equal to the
complex-number form with the rotate-half pairing (i, i + d/2)."""
import pytest
import torch

from qkv.ops import apply_rope, rope_frequencies, rope_tables

f64 = torch.float64


def tables64(positions, dim, base=10000.0):
    """float64 tables from the same code, so float64 inputs are compared at float64 precision."""
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=f64) / dim)
    return rope_tables(positions, inv_freq)


def naive_rope(x, positions, rotary_dim, base=10000.0):
    """Complex numbers: pair (x_i, x_{i + r/2}) is z_i = x_i + i x_{i+r/2}, multiplied by exp(i m theta_i)."""
    r = rotary_dim
    half = r // 2
    theta = torch.tensor([base ** (-2 * i / r) for i in range(half)], dtype=f64)
    out = x.clone()
    for t, m in enumerate(positions.tolist()):
        z = torch.complex(x[..., t, :half], x[..., t, half:r]) * torch.exp(1j * m * theta)
        out[..., t, :half], out[..., t, half:r] = z.real, z.imag
    return out


def test_frequencies_follow_base_power_minus_2i_over_d():
    got = rope_frequencies(16, 500.0)
    assert got.dtype == torch.float32
    ref = torch.tensor([500.0 ** (-2 * i / 16) for i in range(8)], dtype=f64)
    torch.testing.assert_close(got.double(), ref, rtol=1.3e-6, atol=0)  # float32 precision


@pytest.mark.parametrize("T", [1, 7, 13])
def test_rope_equals_naive_complex_rotation(T):
    x = torch.randn(2, 3, T, 8, dtype=f64)
    pos = torch.arange(5, 5 + T)
    got = apply_rope(x, *tables64(pos, 8))
    assert got.dtype == f64
    # float64 end to end: the default float64 tolerance (1e-7) would hide a silent float32 round trip
    torch.testing.assert_close(got, naive_rope(x, pos, 8), rtol=1e-12, atol=1e-12)


def test_rope_in_float32_matches_naive_to_float32_precision():
    x = torch.randn(2, 3, 13, 8, dtype=f64)
    pos = torch.arange(13)
    got = apply_rope(x.float(), *rope_tables(pos, rope_frequencies(8)))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, naive_rope(x, pos, 8).float())


def test_rotation_preserves_norms():
    x = torch.randn(2, 3, 13, 16, dtype=f64)
    y = apply_rope(x, *tables64(torch.arange(100, 113), 16))
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))


def test_dot_product_depends_only_on_relative_position():
    q, k = torch.randn(16, dtype=f64), torch.randn(16, dtype=f64)

    def dot(m, n):
        cos, sin = tables64(torch.tensor([m, n]), 16)
        qr = apply_rope(q.expand(1, 1, 2, 16), cos, sin)[0, 0, 0]
        kr = apply_rope(k.expand(1, 1, 2, 16), cos, sin)[0, 0, 1]
        return qr @ kr

    for m, n in [(3, 1), (0, 5), (7, 7)]:
        for shift in (1, 10, 123):
            torch.testing.assert_close(dot(m + shift, n + shift), dot(m, n))
    assert not torch.allclose(dot(3, 1), dot(3, 2))


def test_partial_rotary_leaves_the_tail_untouched():
    x = torch.randn(2, 3, 7, 12, dtype=f64)
    pos = torch.arange(7)
    y = apply_rope(x, *tables64(pos, 8))
    assert torch.equal(y[..., 8:], x[..., 8:])
    torch.testing.assert_close(y[..., :8], naive_rope(x, pos, 8)[..., :8])


def test_per_sequence_positions_broadcast_over_heads():
    x = torch.randn(2, 3, 5, 8, dtype=f64)
    pos = torch.tensor([[0, 1, 2, 3, 4], [3, 4, 5, 6, 7]])  # (B, T): the second row left-padded by 3
    y = apply_rope(x, *tables64(pos, 8))
    for b in range(2):
        torch.testing.assert_close(y[b], naive_rope(x[b], pos[b], 8))


def test_bf16_input_returns_bf16():
    x = torch.randn(1, 2, 7, 8, dtype=torch.bfloat16)
    y = apply_rope(x, *rope_tables(torch.arange(7), rope_frequencies(8)))
    assert y.dtype == torch.bfloat16


@pytest.mark.parametrize("dim,base", [(7, 10000.0), (0, 10000.0), (8, 0.0)])
def test_bad_frequencies_are_rejected(dim, base):
    with pytest.raises(ValueError, match=r"(rotary_dim must be a positive even number|rope base must be > 0), got"):
        rope_frequencies(dim, base)
