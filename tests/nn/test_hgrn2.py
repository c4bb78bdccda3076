"""HGRN2 equals its paper's recurrence (Qin et al. 2024, Sec. 3), written token by token in float64 from the layer's
own weights; the forget gate's lower bound holds; gradients flow; bad bounds are one line."""
import pytest
import torch
import torch.nn.functional as F

from qkv.nn import HGRN2

D_MODEL, H = 12, 3


def _paper(layer: HGRN2, x: torch.Tensor) -> torch.Tensor:
    """f = lower + (1 - lower) sigmoid(x W_f), q = silu(x W_q), i = x W_i; S_t = diag(f_t) S_{t-1} + (1 - f_t)^T i_t,
    o_t = q_t S_t; out = W_o RMSNorm(o) per head. Everything (B, T, ...) and a loop over t."""
    B, T, _ = x.shape
    D = layer.head_dim
    f = layer.lower + (1 - layer.lower) * torch.sigmoid(x @ layer.forget.weight.T)  # (B, T, H D)
    q, i = F.silu(x @ layer.q.weight.T), x @ layer.input.weight.T
    f, q, i = (t.reshape(B, T, H, D) for t in (f, q, i))
    S = torch.zeros(B, H, D, D, dtype=x.dtype)
    out = torch.zeros(B, T, H, D, dtype=x.dtype)
    for t in range(T):
        S = f[:, t, :, :, None] * S + torch.einsum("bhd,bhe->bhde", 1 - f[:, t], i[:, t])
        out[:, t] = torch.einsum("bhd,bhde->bhe", q[:, t], S)
    rms = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + layer.norm.eps) * layer.norm.weight
    return rms.reshape(B, T, H * D) @ layer.out.weight.T


@pytest.mark.parametrize("lower", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("T", [1, 9, 40])  # chunk 8: one token, one chunk and a bit, five chunks
def test_hgrn2_equals_the_papers_recurrence(lower, T):
    torch.manual_seed(0)
    layer = HGRN2(D_MODEL, H, lower=lower, chunk_size=8).double()
    x = torch.randn(2, T, D_MODEL, dtype=torch.float64)
    torch.testing.assert_close(layer(x), _paper(layer, x), rtol=1e-10, atol=1e-10)


def test_hgrn2_token_by_token_equals_the_parallel_pass_and_the_state_is_fixed():
    torch.manual_seed(1)
    layer = HGRN2(D_MODEL, H, lower=0.3, chunk_size=4).double()
    x = torch.randn(2, 11, D_MODEL, dtype=torch.float64)
    cache = layer.new_cache()
    steps = torch.cat([layer(x[:, t:t + 1], cache=cache) for t in range(11)], 1)
    torch.testing.assert_close(steps, layer(x), rtol=1e-10, atol=1e-10)
    assert cache["S"].shape == (2, H, D_MODEL // H, D_MODEL // H)


def test_hgrn2_gradients():
    torch.manual_seed(2)
    layer = HGRN2(6, 2, lower=0.2, chunk_size=2).double()
    x = torch.randn(1, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: layer(x), (x,))


def test_hgrn2_weights_give_the_output_before_the_norm():
    torch.manual_seed(3)
    layer = HGRN2(D_MODEL, H, lower=0.0).double()
    x = torch.randn(1, 6, D_MODEL, dtype=torch.float64)
    _, w = layer(x, return_weights=True)
    assert w.shape == (1, H, 6, 6) and w.triu(1).eq(0).all()  # causal: nothing from the future


@pytest.mark.parametrize("lower", [-0.1, 1.0, float("nan")])
def test_hgrn2_refuses_a_bound_outside_0_1(lower):
    with pytest.raises(ValueError, match=r"lower must be in \[0, 1\).*got"):
        HGRN2(D_MODEL, H, lower=lower)
