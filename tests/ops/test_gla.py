"""gla (and wkv5 / wkv6): every form equals the gated recurrence (Yang et al. 2024, eq. 4; RWKV-5/6's read-then-write
with a bonus), at lengths no block size divides, with gradients; the implicit weights give the output."""
import pytest
import torch

from qkv.ops.checks import trusted_values
from qkv.ops.gla import GLAState, gla, segment_sums, wkv5, wkv6

MODES = ("parallel", "recurrent", "chunk")


def _inputs(B=2, H=3, T=7, D=4, Dv=3, dtype=torch.float64, gate=2.0, requires_grad=False):
    q, k = torch.randn(B, H, T, D, dtype=dtype), torch.randn(B, H, T, D, dtype=dtype)
    v = torch.randn(B, H, T, Dv, dtype=dtype)
    g = -gate * torch.rand(B, H, T, D, dtype=dtype)  # log gates <= 0
    u = torch.randn(H, D, dtype=dtype)
    return [x.requires_grad_(requires_grad) for x in (q, k, v, g, u)]


def naive(q, k, v, g, u=None, scale=None):
    """Token by token, straight from the formulas: GLA writes then reads; with a bonus u (RWKV-5/6) it reads the
    state before the write plus q_t . (u * k_t) v_t, then decays and writes."""
    B, H, T, D = q.shape
    scale = D**-0.5 if scale is None else scale
    g = g.expand(B, H, T, D)
    S = torch.zeros(B, H, D, v.shape[-1], dtype=torch.float64)
    out = torch.zeros(B, H, T, v.shape[-1], dtype=torch.float64)
    for t in range(T):
        kv = torch.einsum("bhd,bhe->bhde", k[:, :, t], v[:, :, t])
        if u is None:
            S = torch.exp(g[:, :, t])[..., None] * S + kv
            out[:, :, t] = torch.einsum("bhd,bhde->bhe", q[:, :, t], S)
        else:
            out[:, :, t] = torch.einsum("bhd,bhde->bhe", q[:, :, t], S + u[..., None] * kv)
            S = torch.exp(g[:, :, t])[..., None] * S + kv
    return scale * out, S


@pytest.mark.parametrize("T", [1, 7, 63, 100])
@pytest.mark.parametrize("bonus", [False, True])
def test_every_mode_equals_the_recurrence(T, bonus):
    q, k, v, g, u = _inputs(T=T)
    u = u if bonus else None
    ref, S_ref = naive(q, k, v, g, u)
    for mode in MODES:
        out, state = gla(q, k, v, g, bonus=u, mode=mode, chunk_size=16, return_state=True)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-9)
        torch.testing.assert_close(state.S, S_ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_pieces_with_carried_state_equal_whole(mode):
    q, k, v, g, u = _inputs(T=23)
    whole = gla(q, k, v, g, bonus=u, mode="parallel")
    state, outs = None, []
    for lo, hi in ((0, 9), (9, 10), (10, 23)):
        out, state = gla(q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi], g[:, :, lo:hi], bonus=u, mode=mode,
                         chunk_size=4, initial_state=state, return_state=True)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 2), whole, rtol=0, atol=1e-10)


def test_broadcast_gates_equal_expanded_ones():
    q, k, v, g, _ = _inputs(T=9)
    scalar = g[..., :1]  # (B, H, T, 1): one gate per head and token (SSD, Gated DeltaNet)
    fixed = g[:1, :, :1]  # (1, H, 1, D): one decay per channel (RWKV-5)
    for small in (scalar, fixed):
        torch.testing.assert_close(gla(q, k, v, small, chunk_size=4), gla(q, k, v, small.expand_as(g).clone()),
                                   rtol=0, atol=1e-12)


def test_gradients_equal_between_modes():
    grads = {}
    for mode in MODES:
        torch.manual_seed(1)
        q, k, v, g, u = _inputs(T=21, requires_grad=True)
        out = gla(q, k, v, g, bonus=u, mode=mode, chunk_size=8)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads[mode] = (out.detach(), q.grad, k.grad, v.grad, g.grad, u.grad)
    for mode in ("recurrent", "chunk"):
        for got, want in zip(grads[mode], grads["parallel"]):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bonus", [False, True])
def test_gradcheck(mode, bonus):
    q, k, v, g, u = _inputs(B=1, H=2, T=5, D=3, Dv=2, requires_grad=True)
    S0 = torch.randn(1, 2, 3, 2, dtype=torch.float64, requires_grad=True)

    def f(q, k, v, g, u, S0):
        return gla(q, k, v, g, bonus=u if bonus else None, mode=mode, chunk_size=2, initial_state=GLAState(S0))

    assert torch.autograd.gradcheck(f, (q, k, v, g, u, S0), fast_mode=True)  # random directions: seconds, not minutes


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bonus", [False, True])
def test_implicit_weights_times_values_equal_the_output(mode, bonus):
    q, k, v, g, u = _inputs(T=11)
    out, weights = gla(q, k, v, g, bonus=u if bonus else None, mode=mode, chunk_size=4, return_weights=True)
    torch.testing.assert_close(weights @ v, out, rtol=0, atol=1e-9)
    assert torch.equal(weights.triu(1), torch.zeros_like(weights))
    t, s = 7, 2  # one entry by hand: q_t . k_s decayed over (s, t]
    decay = g[:, :, s + 1:t + 1 - int(bonus)].sum(2).exp()  # (B, H, D)
    torch.testing.assert_close(weights[:, :, t, s], 0.5 * (q[:, :, t] * k[:, :, s] * decay).sum(-1), rtol=0,
                               atol=1e-12)


def test_segment_sums_are_span_sums_and_exact_for_huge_gates():
    g = torch.tensor([[-1e4], [-1.0], [-2.0], [-1e4]], dtype=torch.float32)  # (C, 1)
    L = segment_sums(g)[..., 0]
    assert L[2, 0] == -3.0 and L[2, 2] == 0.0 and L[0, 1] == float("-inf")  # no -1e4 cancelled against -1e4
    assert segment_sums(g, exclusive=True)[2, 0, 0] == -1.0


def test_strong_decays_in_float32_are_finite_and_match_float64():
    # decays of e^-60 per step: cumulative products fall below float32's range within a block; no form may divide
    q, k, v, g, u = _inputs(B=1, H=2, T=200, D=8, Dv=8, gate=60.0)
    ref = gla(q, k, v, g, bonus=u, mode="recurrent")
    for mode in ("chunk", "parallel"):
        out = gla(*(x.float() for x in (q, k, v, g)), bonus=u.float(), mode=mode, chunk_size=64)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)


def test_wkv5_and_wkv6_are_rwkv_lm_read_then_write_with_scale_one():
    q, k, v, g, u = _inputs(T=12)
    w5 = -torch.rand(3, 4, dtype=torch.float64)  # (H, D): RWKV-5's fixed log decay per head and channel
    torch.testing.assert_close(wkv5(q, k, v, w5, u), naive(q, k, v, w5.view(1, 3, 1, 4), u, scale=1.0)[0],
                               rtol=0, atol=1e-10)
    torch.testing.assert_close(wkv6(q, k, v, g, u, mode="recurrent"), naive(q, k, v, g, u, scale=1.0)[0],
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(mode="fast"), "mode='fast'"),
        (dict(chunk_size=0), "chunk_size=0"),
        (dict(g=torch.zeros(2, 3, 7)), r"g \(log gates\) must be a 4-d tensor"),
        (dict(g=torch.zeros(2, 3, 5, 4)), "does not broadcast"),
        (dict(g=torch.full((2, 3, 7, 4), 0.5)), r"log gates <= 0.*max\(g\) = 0.5"),
        (dict(bonus=torch.zeros(3, 5)), r"bonus must be a tensor of shape \(H, D\) = \(3, 4\)"),
        (dict(initial_state=torch.zeros(2, 3, 4, 4)), r"initial_state.*\(2, 3, 4, 3\)"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(change, match):
    q, k, v, g, _ = _inputs(dtype=torch.float32)
    kwargs = {"g": g, **change}
    with pytest.raises(ValueError, match=match):
        gla(q, k, v, **kwargs)


def test_gate_value_check_is_skipped_for_trusted_values():
    q, k, v, g, _ = _inputs()
    with trusted_values():  # the caller vouches for its gates: no host read
        gla(q, k, v, -g)
    _, state = gla(q, k, v, g, return_state=True)
    with pytest.raises(ValueError, match="return_weights=True needs initial_state=None"):
        gla(q, k, v, g, initial_state=state, return_weights=True)


@pytest.mark.parametrize("mode", MODES)
def test_ssd_is_the_selective_scan_of_mamba2(mode):
    """h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T, y_t = C_t h_t + D x_t, token by token."""
    from qkv.ops.gla import ssd
    Bsz, H, T, N, P = 2, 3, 11, 4, 5
    x = torch.randn(Bsz, H, T, P, dtype=torch.float64)
    dt = torch.rand(Bsz, H, T, dtype=torch.float64) + 0.1
    A, D = -torch.rand(H, dtype=torch.float64) - 0.5, torch.randn(H, dtype=torch.float64)
    Bm, Cm = torch.randn(2, Bsz, H, T, N, dtype=torch.float64)
    h = torch.zeros(Bsz, H, N, P, dtype=torch.float64)
    ref = torch.zeros_like(x)
    for t in range(T):
        h = torch.exp(dt[:, :, t] * A)[..., None, None] * h + (dt[:, :, t, None] * Bm[:, :, t])[..., None] \
            * x[:, :, t, None, :]
        ref[:, :, t] = torch.einsum("bhn,bhnp->bhp", Cm[:, :, t], h) + D[:, None] * x[:, :, t]
    out, weights = ssd(x, dt, A, Bm, Cm, D=D, mode=mode, chunk_size=4, return_weights=True)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(weights @ x, out, rtol=0, atol=1e-10)
