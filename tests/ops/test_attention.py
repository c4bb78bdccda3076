"""qkv.ops.attention against a naive float64 formula written here: scores, masks, hard attention, GQA, the SDPA
fast path, empty rows, causality, gradcheck and error messages."""
import math

import pytest
import torch

from qkv.ops import attention, scores

f64 = torch.float64


def rand(*shape, dtype=f64, grad=False):
    return torch.randn(*shape, dtype=dtype, requires_grad=grad)


# ----------------------------------------------------------------------------------------------------------------
# The naive reference: explicit loops over positions, softmax by hand (exp / sum) over the allowed keys only.

def naive_allowed(T, S, *, causal=False, window=None, global_tokens=(), mask=None):
    """(T, S) python list of bools from the definitions: query i sits at key position i + S - T."""
    out = []
    for i in range(T):
        p = i + S - T
        row = []
        for j in range(S):
            ok = True
            if causal and j > p:
                ok = False
            if window is not None:
                if causal:
                    ok = p - window <= j <= p
                else:
                    ok = abs(p - j) <= window
            if j in global_tokens or p in global_tokens:
                ok = True
            row.append(ok)
        out.append(row)
    return torch.tensor(out, dtype=torch.bool)


def naive_scores(q, k, score, params=None, scale=None):
    D = q.shape[-1]
    if score == "dot":
        return torch.einsum("bhtd,bhsd->bhts", q, k)
    if score == "scaled_dot":
        return torch.einsum("bhtd,bhsd->bhts", q, k) * (1 / math.sqrt(D) if scale is None else scale)
    if score == "cosine":
        qn = q / q.pow(2).sum(-1, keepdim=True).sqrt()
        kn = k / k.pow(2).sum(-1, keepdim=True).sqrt()
        return torch.einsum("bhtd,bhsd->bhts", qn, kn) * (math.sqrt(D) if scale is None else scale)
    if score == "bilinear":
        W = params["W"]
        if W.dim() == 2:
            return torch.einsum("bhtd,de,bhse->bhts", q, W, k)
        return torch.einsum("bhtd,hde,bhse->bhts", q, W, k)
    if score == "additive":
        B, H, T, S = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
        out = torch.zeros(B, H, T, S, dtype=q.dtype)
        for b in range(B):
            for h in range(H):
                for t in range(T):
                    for s in range(S):
                        hidden = params["W_q"] @ q[b, h, t] + params["W_k"] @ k[b, h, s]
                        if params.get("b") is not None:
                            hidden = hidden + params["b"]
                        out[b, h, t, s] = params["v"] @ torch.tanh(hidden)
        return out
    raise AssertionError(score)


def naive_softmax(logits, allowed):
    """exp / sum over allowed keys; a row with no allowed key gets zeros."""
    allowed = allowed.expand_as(logits)
    m = logits.masked_fill(~allowed, -math.inf).amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(logits - m) * allowed
    total = e.sum(-1, keepdim=True)
    return torch.where(total > 0, e / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(e))


def naive_attention(q, k, v, *, score="scaled_dot", params=None, scale=None, allowed=None, bias=None):
    logits = naive_scores(q, k, score, params, scale)
    if bias is not None:
        logits = logits + bias
    if allowed is None:
        allowed = torch.ones(logits.shape, dtype=torch.bool)
    w = naive_softmax(logits, allowed)
    return torch.einsum("bhts,bhsd->bhtd", w, v), w


def additive_params(D, Dk, A, *, with_b=True, grad=False):
    p = {"W_q": rand(A, D, grad=grad), "W_k": rand(A, Dk, grad=grad), "v": rand(A, grad=grad)}
    if with_b:
        p["b"] = rand(A, grad=grad)
    return p


# ----------------------------------------------------------------------------------------------------------------
# Score functions

@pytest.mark.parametrize("T,S", [(1, 1), (7, 9), (13, 1)])
@pytest.mark.parametrize("score", ["dot", "scaled_dot", "cosine"])
def test_parameter_free_scores_equal_naive_formula(score, T, S):
    q, k, v = rand(2, 3, T, 5), rand(2, 3, S, 5), rand(2, 3, S, 4)
    out, w = attention(q, k, v, score=score, return_weights=True)
    ref_out, ref_w = naive_attention(q, k, v, score=score)
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(out, ref_out)


@pytest.mark.parametrize("score", ["scaled_dot", "cosine"])
def test_custom_scale_multiplies_the_logits(score):
    q, k, v = rand(1, 2, 7, 4), rand(1, 2, 9, 4), rand(1, 2, 9, 4)
    out, w = attention(q, k, v, score=score, scale=0.3, return_weights=True)
    ref_out, ref_w = naive_attention(q, k, v, score=score, scale=0.3)
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(out, ref_out)


@pytest.mark.parametrize("per_head", [False, True])
def test_bilinear_score_equals_q_W_k(per_head):
    H, D, Dk = 3, 5, 4  # W may map between different query and key sizes
    q, k, v = rand(2, H, 7, D), rand(2, H, 9, Dk), rand(2, H, 9, 6)
    W = rand(H, D, Dk) if per_head else rand(D, Dk)
    out, w = attention(q, k, v, score="bilinear", params={"W": W}, return_weights=True)
    ref_out, ref_w = naive_attention(q, k, v, score="bilinear", params={"W": W})
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(out, ref_out)


@pytest.mark.parametrize("with_b", [False, True])
def test_additive_score_equals_v_tanh_Wq_q_plus_Wk_k(with_b):
    q, k, v = rand(2, 2, 7, 5), rand(2, 2, 9, 3), rand(2, 2, 9, 4)
    params = additive_params(5, 3, 6, with_b=with_b)
    out, w = attention(q, k, v, score="additive", params=params, return_weights=True)
    ref_out, ref_w = naive_attention(q, k, v, score="additive", params=params)
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(out, ref_out)


def test_scores_returns_raw_logits():
    q, k = rand(1, 2, 7, 4), rand(1, 2, 9, 4)
    torch.testing.assert_close(scores(q, k, score="dot"), naive_scores(q, k, "dot"))


# ----------------------------------------------------------------------------------------------------------------
# Masks

def check_masked(q, k, v, allowed, bias=None, **kw):
    out, w = attention(q, k, v, return_weights=True, **kw)
    ref_out, ref_w = naive_attention(q, k, v, allowed=allowed, bias=bias)
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(out, ref_out)
    fast = attention(q, k, v, **kw)  # the SDPA path on the same arguments
    torch.testing.assert_close(fast, ref_out)


def test_bool_mask_true_means_may_attend():
    q, k, v = rand(2, 3, 7, 4), rand(2, 3, 9, 4), rand(2, 3, 9, 4)
    mask = torch.rand(2, 1, 7, 9) > 0.4
    check_masked(q, k, v, mask, mask=mask)


def test_float_additive_mask_shifts_logits_and_minus_inf_forbids():
    q, k, v = rand(2, 3, 7, 4), rand(2, 3, 9, 4), rand(2, 3, 9, 4)
    fmask = rand(1, 3, 7, 9)
    forbid = torch.rand(1, 3, 7, 9) > 0.7
    fmask = fmask.masked_fill(forbid, -math.inf)
    check_masked(q, k, v, ~forbid, bias=fmask.masked_fill(forbid, 0.0), mask=fmask)


@pytest.mark.parametrize("T,S", [(1, 1), (7, 7), (13, 13), (1, 9), (7, 9)])
def test_causal_mask_is_bottom_right_aligned(T, S):
    q, k, v = rand(2, 2, T, 4), rand(2, 2, S, 4), rand(2, 2, S, 4)
    check_masked(q, k, v, naive_allowed(T, S, causal=True), causal=True)


def test_key_padding_mask_hides_padded_keys():
    q, k, v = rand(3, 2, 7, 4), rand(3, 2, 9, 4), rand(3, 2, 9, 4)
    lengths = [9, 4, 1]
    keep = torch.tensor([[j < n for j in range(9)] for n in lengths])[:, None, None, :]  # (B, 1, 1, S)
    check_masked(q, k, v, keep, mask=keep)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window", [0, 1, 3])
@pytest.mark.parametrize("T,S", [(7, 7), (13, 13), (7, 9), (1, 9)])
def test_window_sees_itself_and_w_before_or_w_each_side(window, causal, T, S):
    q, k, v = rand(1, 2, T, 4), rand(1, 2, S, 4), rand(1, 2, S, 4)
    check_masked(q, k, v, naive_allowed(T, S, causal=causal, window=window), causal=causal, window=window)


def test_window_definition_on_a_small_example():
    from qkv.ops import window_mask
    # causal, window 2: query 4 sees keys 2, 3, 4; non-causal: keys 2..6
    assert window_mask(7, 7, window=2, causal=True)[4].nonzero().flatten().tolist() == [2, 3, 4]
    assert window_mask(7, 7, window=2, causal=False)[4].nonzero().flatten().tolist() == [2, 3, 4, 5, 6]


@pytest.mark.parametrize("window", [None, 1])
@pytest.mark.parametrize("causal", [False, True])
def test_global_tokens_attend_to_all_and_are_attended_by_all(window, causal):
    T = S = 13
    g = (0, 6)
    q, k, v = rand(2, 2, T, 4), rand(2, 2, S, 4), rand(2, 2, S, 4)
    allowed = naive_allowed(T, S, causal=causal, window=window, global_tokens=g)
    check_masked(q, k, v, allowed, causal=causal, window=window, global_tokens=list(g))
    as_bool = torch.zeros(S, dtype=torch.bool)
    as_bool[list(g)] = True
    check_masked(q, k, v, allowed, causal=causal, window=window, global_tokens=as_bool)


def test_bias_is_added_to_the_logits():
    q, k, v = rand(2, 3, 7, 4), rand(2, 3, 9, 4), rand(2, 3, 9, 4)
    bias = rand(1, 3, 7, 9)
    out, w = attention(q, k, v, bias=bias, return_weights=True)
    ref_out, ref_w = naive_attention(q, k, v, bias=bias)
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(out, ref_out)


# ----------------------------------------------------------------------------------------------------------------
# Hard attention

def naive_topk_weights(logits, k):
    """Keep the k largest logits of each row (python sort), softmax over those only."""
    allowed = torch.zeros(logits.shape, dtype=torch.bool)
    flat, keep = logits.reshape(-1, logits.shape[-1]), allowed.view(-1, logits.shape[-1])
    for r in range(flat.shape[0]):
        for j in sorted(range(flat.shape[1]), key=lambda j: -flat[r, j].item())[:k]:
            keep[r, j] = True
    return naive_softmax(logits, allowed)


@pytest.mark.parametrize("top", [1, 3, 20])
def test_hard_topk_renormalises_over_the_kept_keys(top):
    q, k, v = rand(2, 2, 7, 4), rand(2, 2, 9, 4), rand(2, 2, 9, 4)
    out, w = attention(q, k, v, hard=top, return_weights=True)
    ref_w = naive_topk_weights(naive_scores(q, k, "scaled_dot"), top)
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(out, torch.einsum("bhts,bhsd->bhtd", ref_w, v))
    assert ((w > 0).sum(-1) == min(top, 9)).all()
    # the fast path is never taken with hard attention: the same call without weights gives the same output
    torch.testing.assert_close(attention(q, k, v, hard=top), out)


def test_hard_argmax_is_one_hot_forward_and_soft_gradient_backward():
    q, k, v = rand(2, 2, 7, 4, grad=True), rand(2, 2, 9, 4, grad=True), rand(2, 2, 9, 3, grad=True)
    g = rand(2, 2, 7, 3)
    out, w = attention(q, k, v, hard="argmax", return_weights=True)
    logits = naive_scores(q.detach(), k.detach(), "scaled_dot")
    one_hot = torch.nn.functional.one_hot(logits.argmax(-1), 9).to(f64)
    torch.testing.assert_close(w.detach(), one_hot)
    torch.testing.assert_close(out.detach(), one_hot @ v.detach())
    dq, dk, dv = torch.autograd.grad((out * g).sum(), (q, k, v))
    soft = attention(q, k, v, return_weights=True)[0]
    sq, sk = torch.autograd.grad((soft * g).sum(), (q, k))
    torch.testing.assert_close(dq, sq)  # straight-through: the gradient flows through the softmax
    torch.testing.assert_close(dk, sk)
    torch.testing.assert_close(dv, one_hot.transpose(-2, -1) @ g)  # v saw the one-hot weights


# ----------------------------------------------------------------------------------------------------------------
# Grouped-query attention

@pytest.mark.parametrize("G", [1, 2])
@pytest.mark.parametrize("return_weights", [False, True])
def test_gqa_equals_repeating_kv_heads(G, return_weights):
    H = 4
    q, k, v = rand(2, H, 7, 4), rand(2, G, 9, 4), rand(2, G, 9, 4)
    mask = torch.rand(2, 1, 7, 9) > 0.3
    got = attention(q, k, v, mask=mask, return_weights=return_weights)
    rep = H // G
    k_rep = torch.stack([k[:, h // rep] for h in range(H)], dim=1)
    v_rep = torch.stack([v[:, h // rep] for h in range(H)], dim=1)
    ref_out, ref_w = naive_attention(q, k_rep, v_rep, allowed=mask)
    if return_weights:
        torch.testing.assert_close(got[1], ref_w)
        got = got[0]
    torch.testing.assert_close(got, ref_out)


# ----------------------------------------------------------------------------------------------------------------
# The fast path (SDPA) equals the explicit path

FAST_CASES = {
    "no_mask": dict(T=7, S=9, kw={}),
    "causal_T_eq_S": dict(T=13, S=13, kw=dict(causal=True)),
    "causal_T_lt_S": dict(T=7, S=9, kw=dict(causal=True)),
    "causal_T_1": dict(T=1, S=9, kw=dict(causal=True)),
    "bool_padding": dict(T=7, S=9, kw=dict(mask=torch.tensor([[True] * 9, [True] * 5 + [False] * 4])[:, None, None])),
    "float_mask": dict(T=7, S=9, kw=dict(mask=torch.randn(1, 1, 7, 9, dtype=f64))),
    "window": dict(T=13, S=13, kw=dict(causal=True, window=2)),
    "bias": dict(T=7, S=9, kw=dict(bias=torch.randn(1, 4, 7, 9, dtype=f64))),
    "bias_and_mask": dict(T=7, S=9, kw=dict(bias=torch.randn(1, 4, 7, 9, dtype=f64), causal=True)),
    "gqa": dict(T=7, S=9, G=2, kw=dict(causal=True)),
    "mqa_no_mask": dict(T=7, S=9, G=1, kw={}),
    "custom_scale": dict(T=7, S=9, kw=dict(scale=0.7)),
}


@pytest.mark.parametrize("dtype", [f64, torch.float32])
@pytest.mark.parametrize("case", list(FAST_CASES))
def test_fast_path_equals_explicit_path(case, dtype):
    c = FAST_CASES[case]
    H, G = 4, c.get("G", 4)
    q, k, v = rand(2, H, c["T"], 8, dtype=dtype), rand(2, G, c["S"], 8, dtype=dtype), rand(2, G, c["S"], 8, dtype=dtype)
    kw = {n: (t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t) for n, t in c["kw"].items()}
    fast = attention(q, k, v, **kw)
    explicit, _ = attention(q, k, v, return_weights=True, **kw)
    torch.testing.assert_close(fast, explicit)


@pytest.mark.parametrize("kind", ["bool", "float", "causal_T_gt_S"])
def test_rows_with_no_allowed_key_give_zeros_and_finite_gradients_on_both_paths(kind):
    T, S = 7, 9
    if kind == "causal_T_gt_S":  # 9 queries at the end of 7 keys: the first two queries see nothing
        T, S = 9, 7
        kw = dict(causal=True)
        empty_rows = [0, 1]
    else:
        mask = torch.rand(2, 1, T, S) > 0.3
        mask[:, :, 2] = False  # query 2 may attend to nothing
        mask[1, :, 5] = False
        if kind == "float":
            mask = torch.zeros(mask.shape, dtype=f64).masked_fill(~mask, -math.inf)
        kw = dict(mask=mask)
        empty_rows = [2]
    for return_weights in (False, True):
        q, k, v = rand(2, 3, T, 4, grad=True), rand(2, 3, S, 4, grad=True), rand(2, 3, S, 4, grad=True)
        res = attention(q, k, v, return_weights=return_weights, **kw)
        out = res[0] if return_weights else res
        assert not out.isnan().any()
        assert (out[:, :, empty_rows] == 0).all()
        if return_weights:
            assert (res[1][:, :, empty_rows] == 0).all()
        grads = torch.autograd.grad(out.pow(2).sum() + out.sum(), (q, k, v))
        assert all(torch.isfinite(g_).all() for g_ in grads)
        assert (grads[0][:, :, empty_rows] == 0).all()


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("kw", [dict(causal=True), dict(causal=True, window=2)], ids=["causal", "window"])
def test_changing_a_future_token_changes_no_earlier_output(kw, fast):
    T, t = 13, 6
    q, k, v = rand(1, 2, T, 4), rand(1, 2, T, 4), rand(1, 2, T, 4)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    q2[:, :, t:] += 1.0
    k2[:, :, t:] += 1.0
    v2[:, :, t:] += 1.0

    def run(q_, k_, v_):
        return attention(q_, k_, v_, **kw) if fast else attention(q_, k_, v_, return_weights=True, **kw)[0]

    a, b = run(q, k, v), run(q2, k2, v2)
    assert torch.equal(a[:, :, :t], b[:, :, :t])
    assert not torch.allclose(a[:, :, t:], b[:, :, t:])


# ----------------------------------------------------------------------------------------------------------------
# gradcheck in float64

@pytest.mark.parametrize("score", ["additive", "bilinear", "bilinear_per_head", "dot", "scaled_dot", "cosine"])
def test_gradcheck_each_score(score):
    q, k, v = rand(1, 2, 3, 4, grad=True), rand(1, 2, 5, 4, grad=True), rand(1, 2, 5, 3, grad=True)
    if score == "additive":
        params = additive_params(4, 4, 3, grad=True)
    elif score == "bilinear":
        params = {"W": rand(4, 4, grad=True)}
    elif score == "bilinear_per_head":
        params, score = {"W": rand(2, 4, 4, grad=True)}, "bilinear"
    else:
        params = {}
    names = list(params)

    def fn(q, k, v, *ps):
        return attention(q, k, v, score=score, params=dict(zip(names, ps)) or None, return_weights=True)

    assert torch.autograd.gradcheck(fn, (q, k, v, *params.values()))


@pytest.mark.parametrize("return_weights", [False, True])
def test_gradcheck_masked_with_bias(return_weights):
    q, k, v = rand(2, 2, 3, 4, grad=True), rand(2, 2, 5, 4, grad=True), rand(2, 2, 5, 3, grad=True)
    bias = rand(1, 2, 3, 5, grad=True)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])[:, None, None]

    def fn(q, k, v, bias):
        res = attention(q, k, v, mask=mask, causal=True, bias=bias, return_weights=return_weights)
        return res

    assert torch.autograd.gradcheck(fn, (q, k, v, bias))


# ----------------------------------------------------------------------------------------------------------------
# Bad input: errors name the argument, the value and what was expected

def qkv_(T=7, S=9, H=4, G=4, D=8, Dk=8):
    return rand(2, H, T, D), rand(2, G, S, Dk), rand(2, G, S, D)


def test_mismatched_head_sizes_are_rejected():
    q, k, v = qkv_(Dk=6)
    with pytest.raises(ValueError, match=r"score='scaled_dot' needs equal query and key head sizes.*D=8.*D=6"):
        attention(q, k, v)
    q, k, v = qkv_()
    with pytest.raises(ValueError, match=r"k and v must agree.*\(2, 4, 9, 8\).*\(2, 4, 5, 8\)"):
        attention(q, k, v[:, :, :5])


def test_mask_that_cannot_broadcast_is_rejected():
    q, k, v = qkv_()
    with pytest.raises(ValueError, match=r"mask of shape \(7, 8\) does not broadcast to "
                                         r"\(B, H, T, S\) = \(2, 4, 7, 9\)"):
        attention(q, k, v, mask=torch.ones(7, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"bias of shape \(3, 1, 1, 9\) does not broadcast"):
        attention(q, k, v, bias=torch.zeros(3, 1, 1, 9, dtype=f64))
    with pytest.raises(TypeError, match=r"mask must be a bool tensor.*got dtype torch.int64"):
        attention(q, k, v, mask=torch.ones(7, 9, dtype=torch.long))


def test_non_4d_input_is_rejected():
    q, k, v = qkv_()
    with pytest.raises(ValueError, match=r"q must be 4-D \(B, heads, length, head size\), got shape \(4, 7, 8\)"):
        attention(q[0], k, v)
    with pytest.raises(TypeError, match=r"v must be a torch.Tensor, got list"):
        attention(q, k, [1, 2])


def test_heads_not_divisible_are_rejected():
    q, k, v = qkv_(H=6, G=4)
    with pytest.raises(ValueError, match=r"query heads \(6\) must be a multiple of key/value heads \(4\)"):
        attention(q, k, v)


@pytest.mark.parametrize("window", [-1, 1.5, "2", True])
def test_bad_window_is_rejected(window):
    q, k, v = qkv_()
    with pytest.raises(ValueError, match=rf"window must be an int >= 0.*got {window!r}"):
        attention(q, k, v, window=window)


def test_unknown_score_is_rejected():
    q, k, v = qkv_()
    with pytest.raises(ValueError, match=r"score must be one of \(.*'scaled_dot'.*\), got 'softmax'"):
        attention(q, k, v, score="softmax")
    with pytest.raises(ValueError, match=r"score must be one of .*got 'softmax'"):
        scores(q, k, score="softmax")


@pytest.mark.parametrize("hard", [0, -2, "max", True])
def test_bad_hard_is_rejected(hard):
    q, k, v = qkv_()
    with pytest.raises(ValueError, match=rf"hard must be None, 'argmax' or an int k >= 1.*got {hard!r}"):
        attention(q, k, v, hard=hard)


def test_missing_params_for_learned_scores_are_rejected():
    q, k, v = qkv_()
    with pytest.raises(ValueError, match=r"score='additive' needs params with W_q .*params lacks 'W_q'"):
        attention(q, k, v, score="additive")
    with pytest.raises(ValueError, match=r"score='additive' needs params .*params lacks 'v'"):
        attention(q, k, v, score="additive", params={"W_q": rand(3, 8), "W_k": rand(3, 8)})
    with pytest.raises(ValueError, match=r"score='bilinear' needs params with W \(D, Dk\) or \(H, D, Dk\); "
                                         r"params lacks 'W'"):
        attention(q, k, v, score="bilinear", params={})
