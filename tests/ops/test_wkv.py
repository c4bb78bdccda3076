"""wkv4: every form equals the RWKV-4 WKV formula (Peng et al. 2023, eq. 14), and each other."""
import pytest
import torch

from qkv.ops.wkv import WKVState, wkv4

MODES = ("parallel", "recurrent", "chunk")


def _inputs(B=2, T=7, C=5, dtype=torch.float64, requires_grad=False, key_scale=1.0):
    w = torch.rand(C, dtype=dtype) * 2 + 0.05  # decay rates > 0
    u = torch.randn(C, dtype=dtype)
    k = torch.randn(B, T, C, dtype=dtype) * key_scale
    v = torch.randn(B, T, C, dtype=dtype)
    return [x.requires_grad_(requires_grad) for x in (w, u, k, v)]


def naive(w, u, k, v):
    """wkv_t = (sum_{i<t} e^{-(t-1-i)w + k_i} v_i + e^{u+k_t} v_t) / (same without v), term by term in float64."""
    w, u, k, v = (x.double() for x in (w, u, k, v))
    out = torch.zeros_like(v)
    for t in range(k.shape[1]):
        num, den = torch.exp(u + k[:, t]) * v[:, t], torch.exp(u + k[:, t])
        for i in range(t):
            e = torch.exp(-(t - 1 - i) * w + k[:, i])
            num, den = num + e * v[:, i], den + e
        out[:, t] = num / den
    return out


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_equals_naive_loop(mode):
    w, u, k, v = _inputs(T=11)
    torch.testing.assert_close(wkv4(w, u, k, v, mode=mode, chunk_size=4), naive(w, u, k, v), rtol=0, atol=1e-12)


@pytest.mark.parametrize("T", [1, 7, 63, 65, 130])
@pytest.mark.parametrize("chunk_size", [16, 64])
def test_chunk_and_recurrent_equal_parallel(T, chunk_size):
    w, u, k, v = _inputs(B=1, T=T)
    ref, ref_state = wkv4(w, u, k, v, mode="parallel", return_state=True)
    for mode in ("recurrent", "chunk"):
        out, state = wkv4(w, u, k, v, mode=mode, chunk_size=chunk_size, return_state=True)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-9)
        # Same running-max convention in every form, so the states agree entry by entry.
        for name in ("a", "b", "p"):
            torch.testing.assert_close(getattr(state, name), getattr(ref_state, name), rtol=0, atol=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_pieces_with_carried_state_equal_whole(mode):
    w, u, k, v = _inputs(T=50)
    whole = wkv4(w, u, k, v, mode=mode, chunk_size=16)
    state, outs = None, []
    for a, b in [(0, 23), (23, 24), (24, 50)]:  # uneven pieces, one of a single token (a decode step)
        out, state = wkv4(w, u, k[:, a:b], v[:, a:b], mode=mode, chunk_size=16, state=state, return_state=True)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 1), whole, rtol=0, atol=1e-10)


def test_parallel_prefill_then_recurrent_decode_equals_one_pass():
    w, u, k, v = _inputs(T=12)
    whole = wkv4(w, u, k, v, mode="parallel")
    _, state = wkv4(w, u, k[:, :8], v[:, :8], mode="parallel", return_state=True)
    steps = []
    for t in range(8, 12):
        out, state = wkv4(w, u, k[:, t : t + 1], v[:, t : t + 1], mode="recurrent", state=state, return_state=True)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, 1), whole[:, 8:], rtol=0, atol=1e-12)


def test_gradients_equal_between_modes():
    grads = {}
    for mode in MODES:
        torch.manual_seed(1)
        w, u, k, v = _inputs(T=21, requires_grad=True)
        out = wkv4(w, u, k, v, mode=mode, chunk_size=8)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads[mode] = (out.detach(), w.grad, u.grad, k.grad, v.grad)
    for mode in ("recurrent", "chunk"):
        for got, want in zip(grads[mode], grads["parallel"]):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(mode):
    w, u, k, v = _inputs(B=1, T=5, C=3, requires_grad=True)
    _, start = wkv4(w.detach(), u.detach(), k.detach(), v.detach(), return_state=True)  # a real, non-empty state
    a0, b0 = start.a.requires_grad_(), start.b.requires_grad_()

    def f(w, u, k, v, a0, b0):
        return wkv4(w, u, k, v, mode=mode, chunk_size=2, state=WKVState(a0, b0, start.p))

    assert torch.autograd.gradcheck(f, (w, u, k, v, a0, b0))


@pytest.mark.parametrize("mode", MODES)
def test_huge_keys_float32_finite_and_match_float64(mode):
    # Keys of 50..100: e^100 overflows float32 (max ~e^88.7); every form must work in log space.
    w, u, k, v = _inputs(B=2, T=40, C=8)
    k = 50 + 50 * torch.rand_like(k)
    ref = naive(w, u, k, v)  # float64 holds e^100 without trouble
    out, state = wkv4(w.float(), u.float(), k.float(), v.float(), mode=mode, chunk_size=16, return_state=True)
    assert torch.isfinite(out).all() and all(torch.isfinite(x).all() for x in (state.a, state.b, state.p))
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_bfloat16_runs_and_is_close_to_float32(mode):
    w, u, k, v = _inputs(T=40, C=16, dtype=torch.float32)
    k, v = k.bfloat16(), v.bfloat16()
    ref = wkv4(w, u, k.float(), v.float(), mode="parallel")  # same bf16-rounded inputs, float32 math
    out, state = wkv4(w, u, k, v, mode=mode, chunk_size=16, return_state=True)
    assert out.dtype == torch.bfloat16 and state.a.dtype == torch.float32
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mode="fast"), "mode='fast'"),
        (dict(chunk_size=0), "chunk_size=0"),
        (dict(w=-torch.ones(5)), r"w must be a positive decay rate.*min\(w\) = -1.0.*exp\(time_decay\)"),
        (dict(w=torch.ones(4)), r"w must have shape \(C,\) = \(5,\).*\(4,\)"),
        (dict(u=torch.ones(2, 5)), r"u must have shape \(C,\) = \(5,\)"),
        (dict(v=torch.ones(2, 6, 5)), r"k and v must both have shape \(B, T, C\)"),
        (dict(state=WKVState.zeros(3, 5)), r"state.a must have shape \(B, C\) = \(2, 5\), got \(3, 5\)"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, match):
    args = dict(zip("wukv", _inputs(dtype=torch.float32)))
    args.update(kwargs)
    w, u, k, v = args.pop("w"), args.pop("u"), args.pop("k"), args.pop("v")
    with pytest.raises(ValueError, match=match):
        wkv4(w, u, k, v, **args)


def test_wrong_types_raise_type_error():
    w, u, k, v = _inputs(dtype=torch.float32)
    with pytest.raises(TypeError, match="u must be a torch.Tensor, got float"):
        wkv4(w, 0.5, k, v)
    with pytest.raises(TypeError, match="state must be a WKVState, got tuple"):
        wkv4(w, u, k, v, state=(k[:, 0], k[:, 0], k[:, 0]))


@pytest.mark.parametrize("mode", MODES)
def test_per_channel_weights_are_a_softmax_that_gives_the_output(mode):
    w, u, k, v = _inputs(T=9, key_scale=3.0)
    out, weights = wkv4(w, u, k, v, mode=mode, chunk_size=4, return_weights=True)
    assert weights.shape == (2, 5, 9, 9)  # (B, C, T, T)
    torch.testing.assert_close(torch.einsum("bcts,bsc->btc", weights, v), out, rtol=0, atol=1e-9)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 5, 9, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.equal(weights.triu(1), torch.zeros_like(weights)) and (weights >= 0).all()
    with pytest.raises(ValueError, match="return_weights=True needs state=None"):
        wkv4(w, u, k, v, state=WKVState.zeros(2, 5, dtype=torch.float64), return_weights=True)


def test_decay_value_check_is_skipped_for_trusted_values():
    from qkv.ops.checks import trusted_values
    w, u, k, v = _inputs()
    with pytest.raises(ValueError, match="positive decay rate"):
        wkv4(-w, u, k, v)
    with trusted_values():
        wkv4(-w, u, k, v)
