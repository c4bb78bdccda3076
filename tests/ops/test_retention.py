"""retention: every form equals the RetNet formula (Sun et al. 2023, eq. 5-7), and each other."""
import pytest
import torch

from qkv.ops.retention import RetentionState, retention

MODES = ("parallel", "recurrent", "chunk")


def _qkv(B=2, H=3, T=7, D=4, Dv=3, dtype=torch.float64, requires_grad=False):
    q, k = torch.randn(B, H, T, D, dtype=dtype), torch.randn(B, H, T, D, dtype=dtype)
    v = torch.randn(B, H, T, Dv, dtype=dtype)
    return [x.requires_grad_(requires_grad) for x in (q, k, v)]


def _decay(H=3, dtype=torch.float64):
    # RetNet's per-head gammas 1 - 2^(-5-h), plus a fast one so short sequences still see the decay.
    g = 1 - 2.0 ** (-5 - torch.arange(H, dtype=dtype))
    g[-1] = 0.6
    return g


def naive(q, k, v, decay, scale=None):
    """out_t = scale * sum_{s<=t} gamma_h^(t-s) (q_t . k_s) v_s, term by term."""
    B, H, T, D = q.shape
    scale = D**-0.5 if scale is None else scale
    out = torch.zeros(B, H, T, v.shape[-1], dtype=torch.float64)
    for h in range(H):
        for t in range(T):
            for s in range(t + 1):
                score = (q[:, h, t] * k[:, h, s]).sum(-1, keepdim=True)  # (B, 1)
                out[:, h, t] += scale * decay[h] ** (t - s) * score * v[:, h, s]
    return out


def test_parallel_equals_naive_loop():
    q, k, v = _qkv(T=9)
    out = retention(q, k, v, _decay(), mode="parallel")
    torch.testing.assert_close(out, naive(q, k, v, _decay()), rtol=0, atol=1e-12)


def test_scale_argument_multiplies_scores():
    q, k, v = _qkv(T=5)
    torch.testing.assert_close(
        retention(q, k, v, _decay(), scale=0.3, mode="chunk", chunk_size=2), naive(q, k, v, _decay(), scale=0.3),
        rtol=0, atol=1e-12,
    )


@pytest.mark.parametrize("T", [1, 7, 63, 65, 130])
@pytest.mark.parametrize("chunk_size", [16, 64])
def test_chunk_and_recurrent_equal_parallel(T, chunk_size):
    q, k, v = _qkv(B=1, T=T)
    ref, ref_state = retention(q, k, v, _decay(), mode="parallel", return_state=True)
    for mode in ("recurrent", "chunk"):
        out, state = retention(q, k, v, _decay(), mode=mode, chunk_size=chunk_size, return_state=True)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-9)
        torch.testing.assert_close(state.S, ref_state.S, rtol=0, atol=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_pieces_with_carried_state_equal_whole(mode):
    q, k, v = _qkv(T=50)
    whole, whole_state = retention(q, k, v, _decay(), mode=mode, chunk_size=16, return_state=True)
    state, outs = None, []
    for a, b in [(0, 23), (23, 24), (24, 50)]:  # uneven pieces, one of a single token (a decode step)
        out, state = retention(
            q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], _decay(), mode=mode, chunk_size=16, initial_state=state,
            return_state=True,
        )
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 2), whole, rtol=0, atol=1e-10)
    torch.testing.assert_close(state.S, whole_state.S, rtol=0, atol=1e-10)


def test_chunk_prefill_then_recurrent_decode_equals_one_pass():
    q, k, v = _qkv(T=12)
    whole = retention(q, k, v, _decay(), mode="parallel")
    _, state = retention(q[:, :, :8], k[:, :, :8], v[:, :, :8], _decay(), chunk_size=3, return_state=True)
    steps = []
    for t in range(8, 12):
        sl = slice(t, t + 1)
        out, state = retention(q[:, :, sl], k[:, :, sl], v[:, :, sl], _decay(), mode="recurrent", initial_state=state.S,
                               return_state=True)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, 2), whole[:, :, 8:], rtol=0, atol=1e-12)


def test_gradients_equal_between_modes():
    grads = {}
    for mode in MODES:
        torch.manual_seed(1)
        q, k, v = _qkv(T=21, requires_grad=True)
        out = retention(q, k, v, _decay(), mode=mode, chunk_size=8)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads[mode] = (out.detach(), q.grad, k.grad, v.grad)
    for mode in ("recurrent", "chunk"):
        for got, want in zip(grads[mode], grads["parallel"]):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(mode):
    q, k, v = _qkv(B=1, H=2, T=5, D=3, Dv=2, requires_grad=True)
    S0 = torch.randn(1, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    decay = torch.tensor([0.9, 0.5], dtype=torch.float64, requires_grad=True)  # gradients reach the gammas too

    def f(q, k, v, S0, decay):
        return retention(q, k, v, decay, mode=mode, chunk_size=2, initial_state=RetentionState(S0))

    assert torch.autograd.gradcheck(f, (q, k, v, S0, decay))


def test_long_sequence_float32_is_finite_and_matches_float64():
    # T = 3000 with gamma = 1 - 2^-5: gamma^-T = e^95 would overflow float32; no form may compute it.
    q, k, v = _qkv(B=1, H=2, T=3000, D=8, Dv=8)
    decay = torch.tensor([1 - 2.0**-5, 1 - 2.0**-9], dtype=torch.float64)
    ref = retention(q, k, v, decay, mode="chunk")
    for mode in ("chunk", "parallel"):
        out = retention(q.float(), k.float(), v.float(), decay.float(), mode=mode)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)


def test_bfloat16_runs_and_is_close_to_float32():
    q, k, v = (x.bfloat16() for x in _qkv(T=70, D=16, Dv=16, dtype=torch.float32))
    decay = _decay(dtype=torch.float32)
    # The reference sees the same bf16-rounded inputs: what is left is the op's own error plus output rounding.
    ref = retention(q.float(), k.float(), v.float(), decay, mode="parallel")
    out, state = retention(q, k, v, decay, chunk_size=16, return_state=True)
    assert out.dtype == torch.bfloat16 and state.S.dtype == torch.float32
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mode="fast"), "mode='fast'"),
        (dict(chunk_size=0), "chunk_size=0"),
        (dict(decay=torch.tensor([0.9, 1.0, 0.5])), r"decay=\[0.9, 1, 0.5\] is invalid.*inside \(0, 1\)"),
        (dict(decay=torch.tensor([0.9, 0.0, 0.5])), r"inside \(0, 1\)"),
        (dict(decay=torch.tensor([0.9, 0.5])), r"decay must have shape \(H,\) = \(3,\).*got shape \(2,\)"),
        (dict(initial_state=torch.zeros(2, 3, 4, 4)), r"initial_state.*\(2, 3, 4, 3\)"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, match):
    q, k, v = _qkv(dtype=torch.float32)
    kwargs = {"decay": _decay(dtype=torch.float32), **kwargs}
    with pytest.raises(ValueError, match=match):
        retention(q, k, v, **kwargs)


def test_bad_shapes_raise():
    q, k, v = _qkv(dtype=torch.float32)
    with pytest.raises(ValueError, match="q and k must have the same shape"):
        retention(q, k[..., :2], v, _decay())
    with pytest.raises(ValueError, match=r"v must have shape \(B, H, T, Dv\)"):
        retention(q, k, v[:, :, :3], _decay())
    with pytest.raises(TypeError, match="k must be a torch.Tensor"):
        retention(q, k.tolist(), v, _decay())


@pytest.mark.parametrize("mode", MODES)
def test_weights_are_scaled_scores_times_the_decay_mask_and_give_the_output(mode):
    q, k, v = _qkv(T=10)
    out, weights = retention(q, k, v, _decay(), mode=mode, chunk_size=4, return_weights=True)
    torch.testing.assert_close(weights @ v, out, rtol=0, atol=1e-9)
    t, s, h = 8, 3, 2
    want = 4**-0.5 * (q[:, h, t] * k[:, h, s]).sum(-1) * _decay()[h] ** (t - s)
    torch.testing.assert_close(weights[:, h, t, s], want, rtol=0, atol=1e-12)
    assert torch.equal(weights.triu(1), torch.zeros_like(weights))


def test_decay_value_check_is_skipped_for_trusted_values():
    from qkv.ops.checks import trusted_values
    q, k, v = _qkv(dtype=torch.float32)
    bad = torch.tensor([0.9, 1.5, 0.5])
    with pytest.raises(ValueError, match="inside"):
        retention(q, k, v, bad)
    with trusted_values():  # no host read of the gammas: the caller vouches for them
        retention(q, k, v, bad)
