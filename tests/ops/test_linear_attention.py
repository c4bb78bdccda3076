"""linear_attention: every form equals the formula (Katharopoulos et al. 2020, eq. 4-5), and each other."""
import pytest
import torch
import torch.nn.functional as F

from qkv.ops.linear_attention import LinearAttentionState, linear_attention

MODES = ("parallel", "recurrent", "chunk")


def _qkv(B=2, H=2, T=7, D=4, Dv=3, dtype=torch.float64, requires_grad=False):
    q, k = torch.randn(B, H, T, D, dtype=dtype), torch.randn(B, H, T, D, dtype=dtype)
    v = torch.randn(B, H, T, Dv, dtype=dtype)
    return [x.requires_grad_(requires_grad) for x in (q, k, v)]


def naive(q, k, v, causal=True, normalize=True, phi=lambda x: F.elu(x) + 1, eps=1e-6):
    """out_t = sum_s phi(q_t).phi(k_s) v_s / (sum_s phi(q_t).phi(k_s) + eps), s <= t (causal) or all s."""
    B, H, T, _ = q.shape
    out = torch.zeros(B, H, T, v.shape[-1], dtype=torch.float64)
    for t in range(T):
        num, den = 0.0, 0.0
        for s in range(t + 1 if causal else T):
            sim = (phi(q[:, :, t]) * phi(k[:, :, s])).sum(-1, keepdim=True)  # (B, H, 1)
            num, den = num + sim * v[:, :, s], den + sim
        out[:, :, t] = num / (den + eps) if normalize else num
    return out


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
def test_parallel_equals_naive_loop(causal, normalize):
    q, k, v = _qkv(T=9)
    out = linear_attention(q, k, v, causal=causal, normalize=normalize, mode="parallel")
    torch.testing.assert_close(out, naive(q, k, v, causal, normalize), rtol=0, atol=1e-12)


@pytest.mark.parametrize("T", [1, 7, 63, 65, 130])
@pytest.mark.parametrize("chunk_size", [16, 64])
@pytest.mark.parametrize("causal", [True, False])
def test_chunk_and_recurrent_equal_parallel(T, chunk_size, causal):
    q, k, v = _qkv(B=1, T=T)
    ref, ref_state = linear_attention(q, k, v, causal=causal, mode="parallel", return_state=True)
    for mode in ("recurrent", "chunk"):
        out, state = linear_attention(q, k, v, causal=causal, mode=mode, chunk_size=chunk_size, return_state=True)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-9)
        torch.testing.assert_close(state.S, ref_state.S, rtol=0, atol=1e-9)
        torch.testing.assert_close(state.z, ref_state.z, rtol=0, atol=1e-9)


@pytest.mark.parametrize("feature_map", ["relu", "identity", None, torch.sigmoid])
def test_feature_maps_agree_across_modes(feature_map):
    q, k, v = _qkv(T=20)
    # relu / identity can give zero or negative denominators: compare the bare numerators.
    normalize = feature_map is torch.sigmoid
    phi = {"relu": F.relu, "identity": lambda x: x, None: lambda x: x}.get(feature_map, feature_map)
    ref = naive(q, k, v, normalize=normalize, phi=phi)
    for mode in MODES:
        out = linear_attention(q, k, v, mode=mode, chunk_size=8, feature_map=feature_map, normalize=normalize)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_pieces_with_carried_state_equal_whole(mode):
    q, k, v = _qkv(T=50)
    whole, whole_state = linear_attention(q, k, v, mode=mode, chunk_size=16, return_state=True)
    state, outs = None, []
    for a, b in [(0, 23), (23, 24), (24, 50)]:  # uneven pieces, one of a single token (a decode step)
        out, state = linear_attention(
            q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], mode=mode, chunk_size=16, initial_state=state, return_state=True
        )
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 2), whole, rtol=0, atol=1e-10)
    torch.testing.assert_close(state.S, whole_state.S, rtol=0, atol=1e-10)


def test_parallel_prefill_then_recurrent_decode_equals_one_pass():
    q, k, v = _qkv(T=12)
    whole = linear_attention(q, k, v, mode="parallel")
    _, state = linear_attention(q[:, :, :8], k[:, :, :8], v[:, :, :8], mode="chunk", chunk_size=4, return_state=True)
    steps = []
    for t in range(8, 12):
        sl = slice(t, t + 1)
        out, state = linear_attention(
            q[:, :, sl], k[:, :, sl], v[:, :, sl], mode="recurrent", initial_state=(state.S, state.z), return_state=True
        )
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, 2), whole[:, :, 8:], rtol=0, atol=1e-12)


@pytest.mark.parametrize("causal", [True, False])
def test_gradients_equal_between_modes(causal):
    grads = {}
    for mode in MODES:
        torch.manual_seed(1)
        q, k, v = _qkv(T=21, requires_grad=True)
        out = linear_attention(q, k, v, causal=causal, mode=mode, chunk_size=8)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads[mode] = (out.detach(), q.grad, k.grad, v.grad)
    for mode in ("recurrent", "chunk"):
        for got, want in zip(grads[mode], grads["parallel"]):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(mode):
    q, k, v = _qkv(B=1, H=1, T=5, D=3, Dv=2, requires_grad=True)
    S0 = torch.rand(1, 1, 3, 2, dtype=torch.float64, requires_grad=True)
    z0 = torch.rand(1, 1, 3, dtype=torch.float64, requires_grad=True)

    def f(q, k, v, S0, z0):
        return linear_attention(q, k, v, mode=mode, chunk_size=2, initial_state=LinearAttentionState(S0, z0))

    assert torch.autograd.gradcheck(f, (q, k, v, S0, z0))


def test_bfloat16_runs_and_is_close_to_float32():
    q, k, v = _qkv(T=70, D=16, Dv=16, dtype=torch.float32)
    ref = linear_attention(q, k, v, mode="parallel")
    q16, k16, v16 = q.bfloat16(), k.bfloat16(), v.bfloat16()
    out, state = linear_attention(q16, k16, v16, mode="chunk", chunk_size=16, return_state=True)
    assert out.dtype == torch.bfloat16 and state.S.dtype == torch.float32
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=3e-2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mode="fast"), "mode='fast'"),
        (dict(chunk_size=0), "chunk_size=0"),
        (dict(feature_map="softmax"), "feature_map='softmax'"),
        (
            dict(initial_state=(torch.zeros(2, 2, 4, 4), torch.zeros(2, 2, 4))),
            r"initial_state has S \(2, 2, 4, 4\).*expected S \(2, 2, 4, 3\)",
        ),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, match):
    q, k, v = _qkv(dtype=torch.float32)
    with pytest.raises(ValueError, match=match):
        linear_attention(q, k, v, **kwargs)


def test_bad_shapes_raise():
    q, k, v = _qkv(dtype=torch.float32)
    with pytest.raises(ValueError, match="q and k must have the same shape"):
        linear_attention(q, k[..., :2], v)
    with pytest.raises(ValueError, match=r"v must have shape \(B, H, T, Dv\)"):
        linear_attention(q, k, v[:, :, :3])
    with pytest.raises(ValueError, match=r"q must have shape \(B, H, T, D\)"):
        linear_attention(q[0], k, v)
    with pytest.raises(TypeError, match="causal must be a bool"):
        linear_attention(q, k, v, causal="yes")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("feature_map", ["elu1", "identity"])
def test_implicit_weights_times_values_equal_the_output(mode, causal, feature_map):
    q, k, v = _qkv(T=11)
    out, weights, state = linear_attention(q, k, v, causal=causal, mode=mode, chunk_size=4, feature_map=feature_map,
                                           return_weights=True, return_state=True)
    assert weights.shape == (2, 2, 11, 11) and isinstance(state, LinearAttentionState)
    torch.testing.assert_close(weights @ v, out, rtol=0, atol=1e-9)
    if causal:  # nothing above the diagonal: no token reads the future
        assert torch.equal(weights.triu(1), torch.zeros_like(weights))


def test_implicit_weights_are_the_feature_map_scores_over_their_normaliser():
    q, k, v = _qkv(T=6)
    _, weights = linear_attention(q, k, v, mode="parallel", return_weights=True)
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    t, s = 4, 2
    score = (fq[:, :, t] * fk[:, :, s]).sum(-1)
    normaliser = (fq[:, :, t:t + 1] * fk[:, :, :t + 1]).sum(-1).sum(-1) + 1e-6
    torch.testing.assert_close(weights[:, :, t, s], score / normaliser, rtol=0, atol=1e-12)


def test_weights_with_a_carried_state_are_refused():
    q, k, v = _qkv(T=3)
    _, state = linear_attention(q, k, v, return_state=True)
    with pytest.raises(ValueError, match="return_weights=True needs initial_state=None"):
        linear_attention(q, k, v, initial_state=state, return_weights=True)
