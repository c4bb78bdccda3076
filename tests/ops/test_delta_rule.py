"""The delta rule: generalized_delta_rule (RWKV-7's transition), delta_rule (DeltaNet, Gated DeltaNet) and wkv7 equal
their recurrences in every form, at lengths no block size divides, with gradients; the weights give the output."""
import pytest
import torch
import torch.nn.functional as F

from qkv.ops.delta_rule import DeltaRuleState, delta_rule, generalized_delta_rule, wkv7

MODES = ("parallel", "recurrent", "chunk")


def _inputs(B=2, H=3, T=7, D=4, Dv=3, dtype=torch.float64, requires_grad=False):
    """RWKV-7-like inputs: a = -kk, b = kk * a with kk unit-norm per head and a in (0, 1); decays in (0.5, 1]."""
    q, k = torch.randn(B, H, T, D, dtype=dtype), torch.randn(B, H, T, D, dtype=dtype)
    v = torch.randn(B, H, T, Dv, dtype=dtype)
    kk = F.normalize(torch.randn(B, H, T, D, dtype=dtype), dim=-1)
    rate = torch.rand(B, H, T, D, dtype=dtype)
    g = -0.6 * torch.rand(B, H, T, D, dtype=dtype)
    return [x.requires_grad_(requires_grad) for x in (q, k, v, -kk, kk * rate, g)]


def naive(q, k, v, a, b, g, scale=1.0):
    """S_t = (diag(exp g_t) + b_t a_t^T) S_{t-1} + k_t v_t^T, out_t = scale * S_t^T q_t, with explicit matrices."""
    B, H, T, D = q.shape
    S = torch.zeros(B, H, D, v.shape[-1], dtype=torch.float64)
    out = torch.zeros(B, H, T, v.shape[-1], dtype=torch.float64)
    for t in range(T):
        transition = torch.diag_embed(g[:, :, t].exp()) + b[:, :, t, :, None] * a[:, :, t, None, :]  # (B, H, D, D)
        S = transition @ S + k[:, :, t, :, None] * v[:, :, t, None, :]
        out[:, :, t] = scale * torch.einsum("bhd,bhde->bhe", q[:, :, t], S)
    return out, S


def naive_gated_deltanet(q, k, v, beta, alpha):
    """Gated DeltaNet's rule as written (Yang et al. 2025, eq. 10): S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} +
    beta_t k_t v_t^T (keys as columns), out_t = D^-0.5 S_t^T q_t; alpha = 1 is DeltaNet."""
    B, H, T, D = q.shape
    S = torch.zeros(B, H, D, v.shape[-1], dtype=torch.float64)
    out = torch.zeros(B, H, T, v.shape[-1], dtype=torch.float64)
    eye = torch.eye(D, dtype=torch.float64)
    for t in range(T):
        kt, bt, at = k[:, :, t], beta[:, :, t, None, None], alpha[:, :, t, None, None]
        S = at * (eye - bt * kt[..., :, None] * kt[..., None, :]) @ S + bt * kt[..., :, None] * v[:, :, t, None, :]
        out[:, :, t] = D**-0.5 * torch.einsum("bhd,bhde->bhe", q[:, :, t], S)
    return out, S


@pytest.mark.parametrize("T", [1, 7, 63, 100])
def test_every_mode_equals_the_recurrence(T):
    q, k, v, a, b, g = _inputs(T=T)
    ref, S_ref = naive(q, k, v, a, b, g)
    for mode in MODES:
        out, state = generalized_delta_rule(q, k, v, a, b, g, scale=1.0, mode=mode, chunk_size=16, return_state=True)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-9)
        torch.testing.assert_close(state.S, S_ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("T", [1, 7, 63, 100])
@pytest.mark.parametrize("gated", [False, True])
def test_deltanet_and_gated_deltanet_equal_their_rule(T, gated):
    q, k, v, *_ = _inputs(T=T)
    k = F.normalize(k, dim=-1)
    beta = torch.rand(q.shape[:3], dtype=torch.float64)
    log_alpha = -torch.rand(q.shape[:3], dtype=torch.float64)
    ref, S_ref = naive_gated_deltanet(q, k, v, beta, log_alpha.exp() if gated else torch.ones_like(beta))
    for mode in MODES:
        out, state = delta_rule(q, k, v, beta, g=log_alpha if gated else None, mode=mode, chunk_size=16,
                                return_state=True)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-9)
        torch.testing.assert_close(state.S, S_ref, rtol=0, atol=1e-9)


def test_wkv7_is_rwkv_lm_update_with_the_state_as_value_by_key():
    """RWKV-LM keeps the state as (value, key): state = state * w + state @ (-kk)(kk * a)^T + v k^T, out = state r."""
    r, k, v, a, b, g = _inputs(T=9, Dv=4)
    B, H, T, D = r.shape
    state = torch.zeros(B, H, D, D, dtype=torch.float64)
    outs = []
    for t in range(T):
        ab = a[:, :, t, :, None] * b[:, :, t, None, :]
        state = state * g[:, :, t, None, :].exp() + state @ ab + v[:, :, t, :, None] * k[:, :, t, None, :]
        outs.append((state @ r[:, :, t, :, None])[..., 0])
    out, final = wkv7(r, k, v, g, a, b, return_state=True)
    torch.testing.assert_close(out, torch.stack(outs, 2), rtol=0, atol=1e-10)
    torch.testing.assert_close(final.S, state.transpose(-1, -2), rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_pieces_with_carried_state_equal_whole(mode):
    q, k, v, a, b, g = _inputs(T=23)
    whole = generalized_delta_rule(q, k, v, a, b, g, mode="parallel")
    state, outs = None, []
    for lo, hi in ((0, 9), (9, 10), (10, 23)):
        piece = [x[:, :, lo:hi] for x in (q, k, v, a, b, g)]
        out, state = generalized_delta_rule(*piece, mode=mode, chunk_size=4, initial_state=state, return_state=True)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, 2), whole, rtol=0, atol=1e-10)


def test_gradients_equal_between_modes():
    grads = {}
    for mode in MODES:
        torch.manual_seed(1)
        inputs = _inputs(T=21, requires_grad=True)
        out = generalized_delta_rule(*inputs, mode=mode, chunk_size=8)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads[mode] = [out.detach()] + [x.grad for x in inputs]
    for mode in ("recurrent", "chunk"):
        for got, want in zip(grads[mode], grads["parallel"]):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(mode):
    inputs = _inputs(B=1, H=1, T=5, D=3, Dv=2, requires_grad=True)
    S0 = torch.randn(1, 1, 3, 2, dtype=torch.float64, requires_grad=True)

    def f(q, k, v, a, b, g, S0):
        return generalized_delta_rule(q, k, v, a, b, g, mode=mode, chunk_size=2, initial_state=DeltaRuleState(S0))

    assert torch.autograd.gradcheck(f, (*inputs, S0), fast_mode=True)  # random directions: seconds, not minutes


def test_gradcheck_through_the_deltanet_wrapper():
    q, k, v, *_ = _inputs(B=1, H=1, T=5, D=3, Dv=2)
    beta = torch.rand(1, 1, 5, dtype=torch.float64)
    g = -torch.rand(1, 1, 5, dtype=torch.float64)
    args = [x.requires_grad_() for x in (q, F.normalize(k, dim=-1), v, beta, g)]
    assert torch.autograd.gradcheck(lambda q, k, v, beta, g: delta_rule(q, k, v, beta, g=g, chunk_size=2), args,
                                       fast_mode=True)


@pytest.mark.parametrize("mode", MODES)
def test_implicit_weights_times_values_equal_the_output(mode):
    q, k, v, a, b, g = _inputs(T=11)
    out, weights = generalized_delta_rule(q, k, v, a, b, g, mode=mode, chunk_size=4, return_weights=True)
    torch.testing.assert_close(weights @ v, out, rtol=0, atol=1e-9)
    assert torch.equal(weights.triu(1), torch.zeros_like(weights))
    # a value's weight does not depend on any value: the map is the same whatever v holds
    _, again = generalized_delta_rule(q, k, torch.randn_like(v), a, b, g, mode=mode, return_weights=True)
    torch.testing.assert_close(again, weights, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(mode="fast"), "mode='fast'"),
        (dict(a=torch.zeros(2, 3, 7, 5)), r"a must have the shape of q and k"),
        (dict(g=torch.full((2, 3, 7, 1), 0.1)), r"log gates <= 0"),
        (dict(initial_state=torch.zeros(2, 3, 4, 4)), r"initial_state.*\(2, 3, 4, 3\)"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(change, match):
    q, k, v, a, b, g = _inputs(dtype=torch.float32)
    kwargs = {"a": a, "b": b, "g": g, **change}
    with pytest.raises(ValueError, match=match):
        generalized_delta_rule(q, k, v, **kwargs)
    with pytest.raises(ValueError, match=r"beta must have shape \(B, H, T\)"):
        delta_rule(q, k, v, torch.ones(2, 3, 7, 1))
