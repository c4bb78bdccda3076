"""MultiHeadAttention: parity with torch.nn.MultiheadAttention, cached decoding equal to a full pass (with RoPE,
GQA, preallocated caches, reorder), cross-attention caching, errors, dropout."""
import pytest
import torch

from qkv import MultiHeadAttention
from qkv.nn.cache import CrossKVCache, KVCache
from qkv.nn import RotaryEmbedding
from qkv.ops import attention

f64 = torch.float64


def peer_pair(d=16, H=4):
    ours = MultiHeadAttention(d, H).eval()
    peer = torch.nn.MultiheadAttention(d, H, batch_first=True).eval()
    with torch.no_grad():
        for p in peer.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        ours.qkv.weight.copy_(peer.in_proj_weight)  # [W_Q; W_K; W_V] in both
        ours.qkv.bias.copy_(peer.in_proj_bias)
        ours.out.weight.copy_(peer.out_proj.weight)
        ours.out.bias.copy_(peer.out_proj.bias)
    return ours, peer


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
@pytest.mark.parametrize("padded", [False, True], ids=["dense", "key_padding"])
def test_equals_torch_multiheadattention(cross, padded):
    ours, peer = peer_pair()
    B, T, S = 3, 7, 9 if cross else 7
    x = torch.randn(B, T, 16)
    ctx = torch.randn(B, S, 16) if cross else x
    pad = torch.zeros(B, S, dtype=torch.bool)  # peer: True = padding
    if padded:
        pad[1, 5:] = True
        pad[2, 1:] = True
    kpm = pad if padded else None
    ours_mask = ~pad[:, None, None, :] if padded else None  # ours: True = may attend
    with torch.no_grad():
        ref, ref_w = peer(x, ctx, ctx, key_padding_mask=kpm, need_weights=True)
        ref_heads = peer(x, ctx, ctx, key_padding_mask=kpm, need_weights=True, average_attn_weights=False)[1]
        ref_fast = peer(x, ctx, ctx, key_padding_mask=kpm, need_weights=False)[0]
        got = ours(x, None if not cross else ctx, mask=ours_mask)
        got_w, w = ours(x, None if not cross else ctx, mask=ours_mask, return_weights=True)
    for a in (got, got_w):
        torch.testing.assert_close(a, ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(a, ref_fast, rtol=0, atol=1e-5)
    assert w.shape == (B, 4, T, S)
    torch.testing.assert_close(w, ref_heads, rtol=0, atol=1e-5)
    torch.testing.assert_close(w.mean(1), ref_w, rtol=0, atol=1e-5)


def test_causal_equals_torch_multiheadattention_with_causal_mask():
    ours, peer = peer_pair()
    x = torch.randn(2, 13, 16)
    with torch.no_grad():
        ref = peer(x, x, x, attn_mask=torch.ones(13, 13, dtype=torch.bool).triu(1), need_weights=False)[0]
        torch.testing.assert_close(ours(x, causal=True), ref, rtol=0, atol=1e-5)


def test_gqa_module_equals_projections_and_repeated_heads():
    H, G, D = 4, 2, 3
    m = MultiHeadAttention(12, H, n_kv_heads=G).double()
    x = torch.randn(2, 7, 12, dtype=f64)
    W, b = m.qkv.weight, m.qkv.bias
    q = (x @ W[: H * D].T + b[: H * D]).view(2, 7, H, D).transpose(1, 2)
    k = (x @ W[H * D: (H + G) * D].T + b[H * D: (H + G) * D]).view(2, 7, G, D).transpose(1, 2)
    v = (x @ W[(H + G) * D:].T + b[(H + G) * D:]).view(2, 7, G, D).transpose(1, 2)
    rep = [h // (H // G) for h in range(H)]
    o = attention(q, k[:, rep], v[:, rep], causal=True, return_weights=True)[0]
    ref = m.out(o.transpose(1, 2).reshape(2, 7, H * D))
    torch.testing.assert_close(m(x, causal=True), ref, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Cached decoding equals one full pass

def decode(m, x, chunks, cache, rope=None, return_weights=False):
    outs, start = [], 0
    for n in chunks:
        pos = torch.arange(start, start + n)  # the rope tables of the new tokens' own positions
        out = m(x[:, start: start + n], causal=True, cache=cache, rope=None if rope is None else rope(pos),
                return_weights=return_weights)
        outs.append(out[0] if return_weights else out)
        start += n
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("use_rope", [False, True], ids=["no_rope", "rope"])
@pytest.mark.parametrize("chunks", [[1] * 9, [3, 1, 5]], ids=["one_at_a_time", "3+1+5"])
def test_kv_cache_decoding_equals_full_causal_pass(chunks, use_rope, n_kv_heads):
    m = MultiHeadAttention(16, 4, n_kv_heads=n_kv_heads).double().eval()
    rope = RotaryEmbedding(4) if use_rope else None
    x = torch.randn(2, 9, 16, dtype=f64)
    full = m(x, causal=True, rope=None if rope is None else rope(torch.arange(9)))
    torch.testing.assert_close(decode(m, x, chunks, KVCache(), rope), full, rtol=1e-12, atol=1e-12)
    # with the weights returned (the explicit path), too
    torch.testing.assert_close(decode(m, x, chunks, KVCache(), rope, return_weights=True), full,
                               rtol=1e-12, atol=1e-12)


def test_preallocated_cache_equals_growing_cache_and_raises_past_max_len():
    m = MultiHeadAttention(16, 4, n_kv_heads=2).double().eval()
    x = torch.randn(2, 9, 16, dtype=f64)
    fixed, growing = KVCache(max_len=9), KVCache()
    a = decode(m, x, [3, 1, 5], fixed)
    assert fixed.k.shape[2] == 9 and fixed.length == 9
    torch.testing.assert_close(a, decode(m, x, [3, 1, 5], growing), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"KV cache is full: 10 positions needed, max_len is 9"):
        m(x[:, :1], causal=True, cache=fixed)


def test_growing_cache_keeps_its_contents_when_it_grows():
    cache = KVCache()
    ks = [torch.randn(1, 2, n, 3) for n in (10, 10, 20)]
    for k in ks:
        all_k, all_v = cache.update(k, k + 1)
    torch.testing.assert_close(all_k, torch.cat(ks, 2), rtol=0, atol=0)
    torch.testing.assert_close(all_v, torch.cat(ks, 2) + 1, rtol=0, atol=0)
    assert cache.length == 40


def test_reorder_picks_batch_rows():
    m = MultiHeadAttention(16, 4).double().eval()
    x = torch.randn(3, 9, 16, dtype=f64)
    cache = KVCache()
    m(x[:, :5], causal=True, cache=cache)
    keep = torch.tensor([2, 0, 0])
    old_k = cache.k.clone()
    cache.reorder(keep)
    torch.testing.assert_close(cache.k, old_k[keep], rtol=0, atol=0)
    rest = m(x[keep, 5:], causal=True, cache=cache)
    torch.testing.assert_close(rest, m(x[keep], causal=True)[:, 5:], rtol=1e-12, atol=1e-12)


def test_cross_kv_cache_computes_context_keys_once():
    m = MultiHeadAttention(16, 4, n_kv_heads=2).double().eval()
    x, ctx = torch.randn(2, 3, 16, dtype=f64), torch.randn(2, 9, 16, dtype=f64)
    cache = CrossKVCache()
    first = m(x[:, :1], ctx, cache=cache)
    assert cache.length == 9
    k_cached = cache.k
    # a different context on the next step: the cached keys and values are still the ones used
    second = m(x[:, 1:], torch.randn(2, 4, 16, dtype=f64), cache=cache)
    assert cache.k is k_cached
    full = m(x, ctx)
    torch.testing.assert_close(torch.cat([first, second], 1), full, rtol=1e-12, atol=1e-12)
    cache.reorder(torch.tensor([1]))
    zeros = torch.zeros(1, 9, 16, dtype=f64)  # ignored: the cache holds row 1's keys now
    torch.testing.assert_close(m(x[1:], zeros, cache=cache), full[1:], rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# Errors, scores, dropout

def test_bad_constructor_arguments_are_rejected():
    with pytest.raises(ValueError, match=r"n_heads \(3\) must divide d_model \(16\) unless head_dim is given"):
        MultiHeadAttention(16, 3)
    with pytest.raises(ValueError, match=r"n_kv_heads \(3\) must divide n_heads \(4\)"):
        MultiHeadAttention(16, 4, n_kv_heads=3)
    with pytest.raises(ValueError, match=r"score must be one of \(.*\), got 'softmax'"):
        MultiHeadAttention(16, 4, score="softmax")
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        MultiHeadAttention(16, 4, dropout=1.0)
    with pytest.raises(ValueError, match=r"x must be \(B, T, d_model\), got shape \(7, 16\)"):
        MultiHeadAttention(16, 4)(torch.randn(7, 16))


@pytest.mark.parametrize("score", ["additive", "bilinear", "dot", "cosine"])
def test_every_score_runs_with_gradients_to_its_parameters(score):
    m = MultiHeadAttention(12, 3, score=score, head_dim=5).double()
    x = torch.randn(2, 7, 12, dtype=f64)
    out = m(x, causal=True)
    assert out.shape == (2, 7, 12)
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("return_weights", [False, True])
def test_dropout_is_off_in_eval_and_on_in_train(return_weights):
    m = MultiHeadAttention(16, 4, dropout=0.5)
    x = torch.randn(2, 7, 16)

    def run():
        res = m(x, causal=True, return_weights=return_weights)
        return res[0] if return_weights else res

    m.eval()
    a, b = run(), run()
    assert torch.equal(a, b)
    m.train()
    c = run()
    assert not torch.allclose(a, c)
