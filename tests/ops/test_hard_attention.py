"""Hard and local attention (qkv/ops/hard_attention.py): each fast form equals its reference, the Gumbel estimator is
one-hot forward and the softmax backward, the REINFORCE gradient is unbiased (its sample mean lands on the exact
expectation within a tolerance set by the sample count), windows stay inside their grid, and bad inputs are one
line."""
import math

import pytest
import torch

from qkv.ops import attention
from qkv.ops.hard_attention import (Selection, entropy, gumbel_noise, gumbel_straight_through,
                                    gumbel_straight_through_reference, moving_average, reinforce_gradient_reference,
                                    reinforce_surrogate, sample, sample_reference, select, window_mask,
                                    window_mask_reference)

f64 = torch.float64


def test_gumbel_max_and_inverse_cdf_draw_the_same_distribution():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([0.3, -1.0, 1.2, 0.0, -0.4], dtype=f64)
    p = torch.softmax(logits, -1)
    N = 40000
    fast = sample(logits.expand(N, -1), generator=g)
    ref = sample_reference(p.expand(N, -1), torch.rand(N, dtype=f64, generator=g))
    # each frequency is a mean of N Bernoulli(p_i): 5 standard deviations either way
    tol = 5 * torch.sqrt(p * (1 - p) / N)
    for draws in (fast, ref):
        freq = torch.bincount(draws, minlength=5).to(f64) / N
        assert ((freq - p).abs() < tol).all(), (freq, p)


def test_sample_never_draws_an_excluded_key():
    logits = torch.tensor([[0.0, float("-inf"), 2.0, float("-inf")]]).expand(1000, -1)
    assert set(sample(logits, generator=torch.Generator().manual_seed(1)).tolist()) <= {0, 2}


def test_gumbel_straight_through_is_one_hot_forward_and_the_softmax_backward():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, dtype=f64, requires_grad=True)
    noise = gumbel_noise((3, 7), dtype=f64)
    upstream = torch.randn(3, 7, dtype=f64)
    for tau in (1.0, 0.5):
        y = gumbel_straight_through(logits, noise, tau)
        assert set(y.detach().unique().tolist()) == {0.0, 1.0} and (y.detach().sum(-1) == 1).all()
        assert torch.equal(y.detach().argmax(-1), (logits + noise).argmax(-1))
        (grad,) = torch.autograd.grad((y * upstream).sum(), logits)
        (soft,) = torch.autograd.grad((torch.softmax((logits + noise) / tau, -1) * upstream).sum(), logits)
        torch.testing.assert_close(grad, soft, rtol=0, atol=1e-12)
        # the reference writes the softmax Jacobian out by hand: same forward, same gradient
        y_ref = gumbel_straight_through_reference(logits, noise, tau)
        (grad_ref,) = torch.autograd.grad((y_ref * upstream).sum(), logits)
        assert torch.equal(y_ref.detach(), y.detach())
        torch.testing.assert_close(grad_ref, grad, rtol=0, atol=1e-12)


def test_reinforce_surrogate_gradient_is_the_score_function_formula():
    torch.manual_seed(0)
    logits = torch.randn(6, 5, dtype=f64, requires_grad=True)
    index = torch.randint(0, 5, (6,))
    reward = torch.randn(6, dtype=f64)
    logp = torch.log_softmax(logits, -1).gather(-1, index[:, None]).squeeze(-1)
    loss = reinforce_surrogate(logp, reward, 0.3, entropy=entropy(logits), entropy_weight=0.2)
    (grad,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(grad, reinforce_gradient_reference(logits.detach(), index, reward, 0.3, 0.2),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("baseline", [0.0, 1.7])
def test_reinforce_gradient_is_unbiased(baseline):
    """E_s[(R(s) - b) grad log p(s)] = grad E_s[R(s)] for any constant b. N samples through the surrogate; the
    exact mean and the per-sample variance come from the 4 outcomes; tolerance 5 standard errors sigma / sqrt(N)."""
    theta = torch.tensor([0.5, -0.2, 0.1, -0.8], dtype=f64)
    R = torch.tensor([1.0, 3.0, -2.0, 0.5], dtype=f64)  # the reward of each pick
    p = torch.softmax(theta, -1)
    eye = torch.eye(4, dtype=f64)
    per_outcome = (R - baseline)[:, None] * (eye - p)  # (4 outcomes, 4 components): the estimate given s
    exact_mean = (p[:, None] * per_outcome).sum(0)
    torch.testing.assert_close(exact_mean, p * (R - (p * R).sum()))  # grad of sum_s p_s R_s
    sigma = ((p[:, None] * per_outcome ** 2).sum(0) - exact_mean ** 2).sqrt()

    N = 200_000
    logits = theta.expand(N, -1).clone().requires_grad_(True)
    index = sample(logits.detach(), generator=torch.Generator().manual_seed(3))
    logp = torch.log_softmax(logits, -1).gather(-1, index[:, None]).squeeze(-1)
    loss = reinforce_surrogate(logp, R[index], baseline)
    (grad,) = torch.autograd.grad(loss, logits)
    estimate = -grad.sum(0) / N  # the surrogate is minimised: its negative gradient estimates grad E[R]
    assert ((estimate - exact_mean).abs() < 5 * sigma / math.sqrt(N)).all(), (estimate, exact_mean)


def test_reinforce_without_a_baseline_is_refused():
    with pytest.raises(ValueError, match="baseline=None: REINFORCE needs a baseline"):
        reinforce_surrogate(torch.zeros(2), torch.zeros(2), None)


def test_moving_average_baseline():
    b = moving_average(torch.tensor(1.0), torch.tensor([2.0, 4.0]), 0.9)
    assert b.item() == pytest.approx(0.9 * 1.0 + 0.1 * 3.0)


def test_entropy_of_a_masked_row_has_a_finite_gradient():
    logits = torch.tensor([0.2, float("-inf"), -0.3], requires_grad=True)
    h = entropy(logits)
    h.backward()
    p = torch.softmax(torch.tensor([0.2, -0.3]), -1)
    assert h.item() == pytest.approx(-(p * p.log()).sum().item())
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("S, window, grid", [(7, 3, None), (7, 1, None), (5, 9, None), (12, 2, (3, 4)),
                                             (12, 3, (3, 4)), (36, 3, (6, 6)), (36, 6, (6, 6)), (30, 4, (5, 6))])
def test_window_mask_equals_the_reference(S, window, grid):
    center = torch.arange(S).reshape(-1, 1).expand(S, 2)  # every centre, edges included
    fast = window_mask(center, S, window, grid)
    assert torch.equal(fast, window_mask_reference(center, S, window, grid))
    if grid is not None:
        assert (fast.sum(-1) == window * window).all()  # moved inward: always a full square
    else:
        assert (fast.sum(-1) <= window).all() and fast[S // 2, 0].sum() == min(window, S)
    assert fast.gather(-1, center[..., None]).all()  # the centre is always inside its window


def test_a_window_larger_than_the_grid_is_one_line():
    with pytest.raises(ValueError, match=r"window=4 is larger than the 3 x 5 grid of keys; expected window <= 3"):
        Selection(kind="local", window=4, grid=(3, 5))
    with pytest.raises(ValueError, match=r"window=7 is larger than the 6 x 6 grid"):
        window_mask(torch.tensor([0]), 36, 7, (6, 6))
    with pytest.raises(ValueError, match=r"grid 3 x 3 has 9 cells but there are S=10 keys"):
        select(torch.zeros(1, 1, 1, 10), Selection(kind="local", window=2, grid=(3, 3)))


@pytest.mark.parametrize("how", ["reinforce", "gumbel", "argmax", "sample"])
@pytest.mark.parametrize("kind", ["hard", "local"])
def test_select_weights_are_a_pick_or_a_window(kind, how):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 12, dtype=f64, requires_grad=True)
    weights, choice = select(logits, Selection(kind=kind, how=how, window=2, grid=(3, 4)))
    w = weights.detach()
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 4, dtype=f64))
    if how == "argmax":
        assert torch.equal(choice.index, logits.argmax(-1))
    if kind == "hard":
        assert torch.equal(w, torch.nn.functional.one_hot(choice.index, 12).to(f64))
    else:
        inside = window_mask(choice.index, 12, 2, (3, 4))
        assert (w[~inside] == 0).all() and (w[inside] > 0).all()
        torch.testing.assert_close(w[inside].reshape(2, 3, 4, 4),
                                   torch.softmax(logits.detach()[inside].reshape(2, 3, 4, 4), -1))
    torch.testing.assert_close(choice.log_prob, torch.log_softmax(logits, -1).gather(-1, choice.index[..., None])
                               .squeeze(-1))
    # gradients: the straight-through estimators and local windows reach the logits; a REINFORCE hard pick does not
    reaches = weights.requires_grad and torch.autograd.grad((weights * torch.randn_like(w)).sum(), logits)[0] \
        .abs().sum() > 0
    assert reaches == (how == "gumbel" or kind == "local")


def test_attention_with_a_hard_pick_returns_the_picked_value_and_respects_masks():
    torch.manual_seed(0)
    B, H, G, T, S, D = 2, 4, 2, 5, 5, 3
    q, k, v = torch.randn(B, H, T, D, dtype=f64), torch.randn(B, G, S, D, dtype=f64), torch.randn(B, G, S, D, dtype=f64)
    for how in ("argmax", "sample", "reinforce", "gumbel"):
        out, w, choice = attention(q, k, v, causal=True, hard=Selection(how=how), return_weights=True,
                                   return_choice=True)
        assert (choice.index <= torch.arange(T)).all()  # never a future key
        v_heads = v.repeat_interleave(H // G, dim=1)
        picked = v_heads.gather(2, choice.index[..., None].expand(-1, -1, -1, D))
        torch.testing.assert_close(out.detach(), picked)
        torch.testing.assert_close(attention(q, k, v, causal=True, hard=Selection(how="argmax")),
                                   attention(q, k, v, causal=True, hard="argmax"))
    # a query with no key to attend: zero output, zero log-probability, no NaN
    mask = torch.ones(B, 1, T, S, dtype=torch.bool)
    mask[:, :, 1] = False
    out, choice = attention(q, k, v, mask=mask, hard=Selection(kind="local", how="reinforce", window=2),
                            return_choice=True)
    assert (out[:, :, 1] == 0).all() and (choice.log_prob[:, :, 1] == 0).all() and torch.isfinite(out).all()


def test_return_choice_without_a_selection_is_refused():
    q = torch.randn(1, 1, 2, 4)
    with pytest.raises(ValueError, match="return_choice=True needs hard=Selection"):
        attention(q, q, q, return_choice=True)


# weights False: the fused path (scale only: softcap always takes the explicit path); True: the explicit reference
@pytest.mark.parametrize("name, value, weights", [
    ("scale", float("nan"), False), ("scale", float("nan"), True), ("scale", float("inf"), False),
    ("scale", -float("inf"), True), ("scale", "1", False), ("softcap", float("nan"), True),
    ("softcap", float("inf"), True)])
def test_non_finite_scale_or_softcap_is_refused_on_both_paths(name, value, weights):
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match=rf"^{name} must be None or a finite number, got {value!r}$"):
        attention(q, q, q, **{name: value}, return_weights=weights)
