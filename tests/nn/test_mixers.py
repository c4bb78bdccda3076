"""Linear-time mixers: cached decoding equals the full pass, the state never grows, and the layers are the papers'."""
import pytest
import torch

from qkv.nn.cache import LayerCache, RecurrentCache
from qkv.nn import (HGRN2, DeltaNet, GatedLinearAttention, LinearAttention, Mamba2, MemoryAttention, MultiHeadAttention,
                    MultiScaleRetention, RWKV5TimeMix, RWKV6ChannelMix, RWKV6TimeMix, RWKV7ChannelMix, RWKV7TimeMix,
                    RWKVBlock, RWKVChannelMix, RWKVTimeMix, retention_decays)
from qkv.ops.rope import rope_frequencies, rope_tables

D_MODEL, H = 16, 2
MIXERS = ("linear", "retention", "memory", "rwkv_time", "gla", "hgrn2", "deltanet", "gated_deltanet", "rwkv5_time",
          "rwkv6_time", "rwkv7_time", "mamba2")
KINDS = MIXERS + ("rwkv_block", "rwkv5_block", "rwkv6_block", "rwkv7_block")


def _make(kind):
    """Small layers whose chunk / segment sizes (4, 5) divide none of the lengths below."""
    torch.manual_seed(0)
    layer = {"linear": lambda: LinearAttention(D_MODEL, H, chunk_size=4),
             "retention": lambda: MultiScaleRetention(D_MODEL, H, chunk_size=4),
             "memory": lambda: MemoryAttention(D_MODEL, H, segment=5),
             "rwkv_time": lambda: RWKVTimeMix(D_MODEL, chunk_size=4, n_heads=H),
             "gla": lambda: GatedLinearAttention(D_MODEL, H, gate_rank=4, chunk_size=4),
             "hgrn2": lambda: HGRN2(D_MODEL, H, lower=0.25, chunk_size=4),
             "deltanet": lambda: DeltaNet(D_MODEL, H, chunk_size=4),
             "gated_deltanet": lambda: DeltaNet(D_MODEL, H, gated=True, chunk_size=4),
             "rwkv5_time": lambda: RWKV5TimeMix(D_MODEL, H, 8, chunk_size=4),
             "rwkv6_time": lambda: RWKV6TimeMix(D_MODEL, H, 8, mix_rank=4, decay_rank=4, chunk_size=4),
             "rwkv7_time": lambda: RWKV7TimeMix(D_MODEL, H, ranks=_RANKS, chunk_size=4),
             "mamba2": lambda: Mamba2(D_MODEL, H, state_size=4, chunk_size=4),
             "rwkv_block": lambda: RWKVBlock(D_MODEL, 32, first=True, chunk_size=4, n_heads=H),
             "rwkv5_block": lambda: RWKVBlock(D_MODEL, first=True, mixer=RWKV5TimeMix(D_MODEL, H, 8, chunk_size=4),
                                              ffn=RWKVChannelMix(D_MODEL, 32)),
             "rwkv6_block": lambda: RWKVBlock(D_MODEL, first=True, mixer=RWKV6TimeMix(D_MODEL, H, 8, mix_rank=4,
                                                                                     decay_rank=4, chunk_size=4),
                                              ffn=RWKV6ChannelMix(D_MODEL, 32)),
             "rwkv7_block": lambda: RWKVBlock(D_MODEL, first=True, mixer=RWKV7TimeMix(D_MODEL, H, ranks=_RANKS,
                                                                                     chunk_size=4),
                                              ffn=RWKV7ChannelMix(D_MODEL, 32))}[kind]()
    return layer.double()


_RANKS = {"decay": 4, "a": 4, "v": 4, "gate": 4}


def _new_cache(layer):
    state = (layer.mixer if isinstance(layer, RWKVBlock) else layer).new_cache()
    return LayerCache(mixer=state) if isinstance(layer, RWKVBlock) else state


def _state(cache) -> RecurrentCache:
    return cache.mixer if isinstance(cache, LayerCache) else cache


def _x(B=2, T=13):
    return torch.randn(B, T, D_MODEL, dtype=torch.float64)


@pytest.mark.parametrize("kind", KINDS)
def test_cached_steps_equal_full_pass(kind):
    layer, x = _make(kind), _x()
    full = layer(x)
    cache = _new_cache(layer)
    steps = torch.cat([layer(x[:, t:t + 1], cache=cache) for t in range(x.shape[1])], 1)
    torch.testing.assert_close(steps, full, rtol=0, atol=1e-12)
    assert _state(cache).length == x.shape[1]


@pytest.mark.parametrize("kind", KINDS)
def test_prompt_then_steps_equal_full_pass(kind):
    layer, x = _make(kind), _x()
    full = layer(x)
    cache = _new_cache(layer)
    pieces = [layer(x[:, :7], cache=cache), layer(x[:, 7:9], cache=cache)]  # prompt, then a 2-token piece
    pieces += [layer(x[:, t:t + 1], cache=cache) for t in range(9, 13)]
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_cache_size_is_constant_in_length(kind):
    layer = _make(kind)
    sizes = []
    for T in (5, 50):
        cache = _new_cache(layer)
        layer(_x(T=T), cache=cache)
        layer(_x(T=1), cache=cache)
        sizes.append(_state(cache).numel())
    assert sizes[0] == sizes[1] > 0


@pytest.mark.parametrize("kind", KINDS)
def test_reorder_keeps_the_chosen_rows(kind):
    layer, x = _make(kind), _x(B=3, T=9)
    index = torch.tensor([2, 0, 0])
    cache = _new_cache(layer)
    layer(x[:, :6], cache=cache)
    cache.reorder(index)
    out = torch.cat([layer(x[index, t:t + 1], cache=cache) for t in range(6, 9)], 1)
    torch.testing.assert_close(out, layer(x[index])[:, 6:], rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_parameter_and_pass_gradcheck(kind):
    layer, x = _make(kind), _x(B=1, T=7).requires_grad_()
    layer(x).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    # fast_mode: the Jacobian along random directions (full Jacobians cost minutes on 2 shared cores).
    assert torch.autograd.gradcheck(lambda t: layer(t), (x.detach()[:, :6].requires_grad_(),), fast_mode=True)


@pytest.mark.parametrize("kind", MIXERS)
def test_arguments_a_recurrent_layer_cannot_honour_raise(kind):
    layer, x = _make(kind), _x(T=3)
    with pytest.raises(NotImplementedError, match="padding mask"):
        layer(x, mask=torch.ones(2, 1, 1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="context"):
        layer(x, x)
    with pytest.raises(ValueError, match="window"):
        layer(x, window=4)
    with pytest.raises(ValueError, match="bias"):
        layer(x, bias=torch.zeros(1, H, 3, 3, dtype=torch.float64))



@pytest.mark.parametrize("kind", KINDS)
def test_every_layer_returns_its_implicit_attention_map(kind):
    layer, x = _make(kind), _x(T=9)
    out, weights = layer(x, return_weights=True)
    if isinstance(layer, RWKVBlock):
        weights = weights.self_attn
    torch.testing.assert_close(out, layer(x), rtol=0, atol=1e-12)  # asking for weights changes nothing
    assert weights.shape == (2, H, 9, 9) and torch.isfinite(weights).all()
    assert torch.equal(weights.triu(1), torch.zeros_like(weights))  # causal: no weight on a later token
    cache = _new_cache(layer)
    layer(x[:, :3], cache=cache)
    with pytest.raises(ValueError, match="return_weights=True needs no cache or an empty one"):
        layer(x[:, 3:], cache=cache, return_weights=True)


def test_memory_weights_times_values_give_the_mixed_local_and_memory_output():
    layer, x = _make("memory"), _x(T=12)
    q, k, v = (t.view(2, 12, H, -1).transpose(1, 2) for t in layer.qkv(x).chunk(3, dim=-1))
    torch.testing.assert_close(layer.weights(q, k) @ v, layer._parallel(q, k, v), rtol=0, atol=1e-12)


def test_rwkv4_maps_are_channel_maps_averaged_over_groups_of_channels():
    from qkv.ops.wkv import wkv4
    layer, x = _make("rwkv_time"), _x(T=6)
    _, weights = layer(x, return_weights=True)
    prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1)
    k = layer.key(x * layer.time_mix_k + prev * (1 - layer.time_mix_k))
    v = layer.value(x * layer.time_mix_v + prev * (1 - layer.time_mix_v))
    _, per_channel = wkv4(layer.time_decay.exp(), layer.time_first, k, v, return_weights=True)  # (B, C, T, T)
    torch.testing.assert_close(weights[:, 1], per_channel[:, D_MODEL // 2:].mean(1), rtol=0, atol=1e-12)


def test_mixers_fit_the_block_contract_of_multihead_attention():
    """The same keyword call Block makes works for every mixer and gives (B, T, d_model)."""
    x = _x(T=5)
    layers = [_make(k) for k in MIXERS]
    for layer in layers + [MultiHeadAttention(D_MODEL, H).double()]:
        cache = layer.new_cache(None)
        out = layer(x, mask=None, causal=True, cache=cache, rope=None, bias=None, window=None, return_weights=False)
        assert out.shape == x.shape and cache.length == 5


def test_linear_attention_noncausal_reads_the_whole_sequence_but_not_with_a_cache():
    layer, x = _make("linear"), _x(T=6)
    out = layer(x, causal=False)
    y = x.clone()
    y[:, -1] += 1.0
    assert not torch.allclose(layer(y, causal=False)[:, 0], out[:, 0])  # the first token saw the last
    with pytest.raises(ValueError, match="causal"):
        layer(x, causal=False, cache=layer.new_cache())


def test_retention_decays_follow_the_multiscale_rule():
    torch.testing.assert_close(retention_decays(4), torch.tensor([1 - 2**-5, 1 - 2**-6, 1 - 2**-7, 1 - 2**-8],
                                                                 dtype=torch.float64))


def test_retention_groupnorm_makes_each_head_scale_free():
    """GroupNorm per head (RetNet Sec. 2.2): scaling one head's values leaves the output unchanged."""
    layer, x = _make("retention"), _x(T=6)
    layer.norm.eps = 1e-12  # the eps is all that separates the heads' scales; make it negligible
    out = layer(x)
    H_, D, Dv = layer.n_heads, layer.head_dim, layer.value_dim
    with torch.no_grad():
        layer.qkv.weight[2 * H_ * D: 2 * H_ * D + Dv] *= 7.0  # head 0's value rows
    torch.testing.assert_close(layer(x), out, rtol=1e-6, atol=1e-8)


def test_retention_with_rope_depends_on_relative_positions_only():
    layer, x = _make("retention"), _x(T=8)
    inv = rope_frequencies(layer.head_dim)
    at0 = layer(x, rope=rope_tables(torch.arange(8), inv))
    at100 = layer(x, rope=rope_tables(torch.arange(100, 108), inv))
    torch.testing.assert_close(at0, at100, rtol=0, atol=1e-5)  # float32 rope tables
    assert not torch.allclose(at0, layer(x))


def test_memory_first_segment_is_local_softmax_and_later_tokens_remember():
    layer = _make("memory")  # segment 5
    x = _x(T=12)
    out = layer(x)
    # In the first segment the memory is empty: half (sigmoid(0)) of plain causal softmax attention.
    local = MultiHeadAttention(D_MODEL, H, bias=False).double()
    local.qkv.weight.data.copy_(layer.qkv.weight)
    local.out.weight.data.copy_(layer.out.weight * 0.5)
    torch.testing.assert_close(out[:, :5], local(x[:, :5], causal=True), rtol=0, atol=1e-12)
    # Token 11 (third segment) attends locally to tokens 10-11 only, yet token 0 changes it: the memory.
    y = x.clone()
    y[:, 0] += 1.0
    assert not torch.allclose(layer(y)[:, 11], out[:, 11])


def test_rwkv_token_shift_state_is_the_previous_normed_token():
    block, x = _make("rwkv_block"), _x(T=4)
    cache = _new_cache(block)
    block(x, cache=cache)
    state = cache.mixer
    assert set(state.state) == {"att_shift", "a", "b", "p", "ffn_shift"}
    h = block.ln0(x)
    torch.testing.assert_close(state["att_shift"], block.ln1(h)[:, -1])
