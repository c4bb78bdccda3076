"""Positions: sinusoidal formula, learned table bounds, ALiBi slopes (the paper's rule), T5 buckets (re-derived
here, and against Hugging Face when installed), RotaryEmbedding tables."""
import math

import pytest
import torch

from qkv.nn import ALiBi, LearnedPositions, RotaryEmbedding, SinusoidalPositions, T5RelativeBias, alibi_slopes
from qkv.ops import rope_frequencies, rope_tables

f64 = torch.float64


def naive_sinusoidal(positions, d, interleaved):
    rows = []
    for pos in positions:
        sins = [math.sin(pos / 10000 ** (2 * i / d)) for i in range(d // 2)]
        coss = [math.cos(pos / 10000 ** (2 * i / d)) for i in range(d // 2)]
        if interleaved:  # PE(pos, 2i) = sin, PE(pos, 2i + 1) = cos
            rows.append([v for pair in zip(sins, coss) for v in pair])
        else:
            rows.append(sins + coss)
    return torch.tensor(rows, dtype=f64)


@pytest.mark.parametrize("interleaved", [True, False])
def test_sinusoidal_matches_the_formula(interleaved):
    positions = list(range(13)) + [50]
    out = SinusoidalPositions(10, interleaved=interleaved)(torch.tensor(positions))
    assert out.dtype == torch.float32 and out.shape == (14, 10)
    # float32 tables (documented): compared at float32 precision with the float64 formula
    torch.testing.assert_close(out, naive_sinusoidal(positions, 10, interleaved).float())


def test_sinusoidal_odd_width_is_rejected():
    with pytest.raises(ValueError, match=r"sinusoidal positions need an even d_model, got 7"):
        SinusoidalPositions(7)


def test_learned_positions_raise_past_max_positions():
    pe = LearnedPositions(8, 4)
    assert pe(torch.arange(8)).shape == (8, 4)
    with pytest.raises(ValueError, match=r"position 8 is beyond the model's 8 learned positions \(max_positions\)"):
        pe(torch.arange(9))


def test_learned_positions_offset_shifts_the_table():
    pe = LearnedPositions(8, 4, offset=2)
    torch.testing.assert_close(pe(torch.tensor([0, 3])), pe.weight[[2, 5]])


def paper_slopes(n):
    """Press et al. 2022, sec. 3 and their reference code: a geometric sequence starting at 2^(-8/n) with that
    ratio for n a power of two; otherwise the closest lower power's slopes plus every other slope of 2n."""
    def geometric(m):
        return [2 ** (-8 * (i + 1) / m) for i in range(m)]

    if math.log2(n).is_integer():
        return geometric(n)
    c = 2 ** int(math.log2(n))
    return geometric(c) + geometric(2 * c)[0::2][: n - c]


def test_alibi_slopes_for_8_heads_are_half_to_1_over_256():
    torch.testing.assert_close(alibi_slopes(8).double(), torch.tensor([2.0 ** -i for i in range(1, 9)], dtype=f64))


def test_alibi_slopes_for_6_heads_follow_the_non_power_of_two_rule():
    expected = [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]
    assert paper_slopes(6) == expected
    torch.testing.assert_close(alibi_slopes(6).double(), torch.tensor(expected, dtype=f64))
    for n in (1, 3, 12, 16, 20):
        torch.testing.assert_close(alibi_slopes(n).double(), torch.tensor(paper_slopes(n), dtype=f64))


def test_alibi_bias_is_minus_slope_times_distance():
    H = 4
    bias = ALiBi(H)(torch.arange(2, 9), torch.arange(9))  # 7 queries at the end of 9 keys
    assert bias.shape == (1, H, 7, 9)
    s = paper_slopes(H)
    ref = torch.tensor([[[-s[h] * abs(i + 2 - j) for j in range(9)] for i in range(7)] for h in range(H)])
    torch.testing.assert_close(bias[0], ref.float())


def naive_t5_bucket(relative, bidirectional, num_buckets, max_distance):
    """Raffel et al. 2020 (sec. 2.1) / Mesh TensorFlow: half the buckets for each direction when bidirectional;
    distances below num_buckets / 2 get a bucket each, larger ones log-spaced up to max_distance, then clipped."""
    ret = 0
    n = -relative  # the distance looking back
    if bidirectional:
        num_buckets //= 2
        if n < 0:  # key after the query
            ret += num_buckets
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact))
    return ret + min(large, num_buckets - 1)


T5_CONFIGS = [(32, 128), (16, 64), (8, 20)]


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", T5_CONFIGS)
def test_t5_buckets_match_a_rederivation_from_the_paper(bidirectional, num_buckets, max_distance):
    rel = torch.arange(-300, 301)
    m = T5RelativeBias(2, num_buckets=num_buckets, max_distance=max_distance, bidirectional=bidirectional)
    ref = [naive_t5_bucket(r, bidirectional, num_buckets, max_distance) for r in rel.tolist()]
    assert m.bucket(rel).tolist() == ref


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", T5_CONFIGS)
def test_t5_buckets_match_hugging_face(bidirectional, num_buckets, max_distance):
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5")
    rel = torch.arange(-300, 301)[None, :] - torch.arange(0, 5)[:, None]
    m = T5RelativeBias(2, num_buckets=num_buckets, max_distance=max_distance, bidirectional=bidirectional)
    hf = t5.T5Attention._relative_position_bucket(rel, bidirectional=bidirectional, num_buckets=num_buckets,
                                                  max_distance=max_distance)
    assert torch.equal(m.bucket(rel), hf)


def test_t5_bias_looks_up_the_bucket_of_key_minus_query():
    m = T5RelativeBias(3, num_buckets=8, max_distance=20)
    q_pos, k_pos = torch.arange(4, 11), torch.arange(11)
    bias = m(q_pos, k_pos)
    assert bias.shape == (1, 3, 7, 11)
    for i, qp in enumerate(q_pos.tolist()):
        for j, kp in enumerate(k_pos.tolist()):
            torch.testing.assert_close(bias[0, :, i, j], m.bias.weight[naive_t5_bucket(kp - qp, True, 8, 20)])


def test_rotary_embedding_tables_match_ops():
    rot = RotaryEmbedding(16, rotary_dim=8, base=500.0)
    pos = torch.arange(7)
    cos, sin = rot(pos)
    ref_cos, ref_sin = rope_tables(pos, rope_frequencies(8, 500.0))
    assert cos.shape == (7, 8)
    torch.testing.assert_close(cos, ref_cos)
    torch.testing.assert_close(sin, ref_sin)
