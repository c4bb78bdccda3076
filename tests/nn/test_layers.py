"""Norms, feed-forward networks and the residual block against naive float64 formulas written here."""
import math

import pytest
import torch

from qkv.nn import Block, FeedForward, LayerNorm, MultiHeadAttention, RMSNorm

f64 = torch.float64


def naive_rms(x, g, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * g


def naive_layer_norm(x, g, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)  # biased variance, as in the paper
    out = (x - mu) / torch.sqrt(var + eps) * g
    return out if b is None else out + b


def randomise(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
    return module


@pytest.mark.parametrize("eps", [1e-6, 1e-2])
def test_rmsnorm_equals_x_over_rms_times_gain(eps):
    norm = randomise(RMSNorm(13, eps=eps)).double()
    x = torch.randn(2, 7, 13, dtype=f64)
    torch.testing.assert_close(norm(x), naive_rms(x, norm.weight, eps), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_equals_centred_scaled_formula(bias):
    norm = randomise(LayerNorm(13, eps=1e-5, bias=bias)).double()
    x = torch.randn(2, 7, 13, dtype=f64)
    ref = naive_layer_norm(x, norm.weight, norm.bias, 1e-5)
    torch.testing.assert_close(norm(x), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [RMSNorm, LayerNorm])
def test_bf16_input_returns_bf16_close_to_float64(cls):
    norm = randomise(cls(64))  # float32 parameters, as under mixed precision
    x = torch.randn(3, 5, 64)
    y = norm(x.bfloat16())
    assert y.dtype == torch.bfloat16
    if cls is RMSNorm:
        ref = naive_rms(x.bfloat16().double(), norm.weight.double(), norm.eps)
    else:
        ref = naive_layer_norm(x.bfloat16().double(), norm.weight.double(), norm.bias.double(), norm.eps)
    # bf16 has 8 bits of mantissa: relative error 2^-8 per rounding, two roundings (normalised x, product)
    torch.testing.assert_close(y.double(), ref, rtol=2 * 2 ** -8, atol=1e-2)


def gelu_erf(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def silu(x):
    return x / (1 + torch.exp(-x))


PLAIN = {"relu": lambda x: torch.where(x > 0, x, torch.zeros_like(x)), "gelu": gelu_erf, "gelu_tanh": gelu_tanh}
GATED = {"swiglu": silu, "geglu": gelu_erf}


@pytest.mark.parametrize("activation", list(PLAIN) + list(GATED))
@pytest.mark.parametrize("bias", [True, False])
def test_feedforward_equals_naive_formula(activation, bias):
    d, d_ff = 6, 10
    ffn = randomise(FeedForward(d, d_ff, activation=activation, bias=bias)).double()
    x = torch.randn(2, 7, d, dtype=f64)
    W1, W2 = ffn.w_in.weight, ffn.w_out.weight
    b1 = ffn.w_in.bias if bias else torch.zeros(W1.shape[0], dtype=f64)
    b2 = ffn.w_out.bias if bias else torch.zeros(d, dtype=f64)
    h = torch.einsum("btd,fd->btf", x, W1) + b1
    if activation in GATED:
        gate, up = h[..., :d_ff], h[..., d_ff:]  # w_in = [W_gate; W_up]
        hidden = GATED[activation](gate) * up
    else:
        hidden = PLAIN[activation](h)
    ref = torch.einsum("btf,df->btd", hidden, W2) + b2
    torch.testing.assert_close(ffn(x), ref, rtol=1e-12, atol=1e-12)


def test_unknown_activation_and_norm_are_rejected():
    with pytest.raises(ValueError, match=r"activation must be one of \(.*'swiglu'.*\), got 'tanh'"):
        FeedForward(4, 8, activation="tanh")
    with pytest.raises(ValueError, match=r"norm must be one of \('layer', 'rms'\), got 'batch'"):
        Block(4, torch.nn.Identity(), torch.nn.Identity(), norm="batch")


def make_block(prenorm, norm="layer", cross=False):
    d = 8
    mixer = MultiHeadAttention(d, 2)
    ffn = FeedForward(d, 12, activation="gelu")
    cross_attn = MultiHeadAttention(d, 2) if cross else None
    return randomise(Block(d, mixer, ffn, cross=cross_attn, norm=norm, prenorm=prenorm)).double()


@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("prenorm", [True, False])
def test_block_equals_naive_composition(prenorm, norm):
    blk = make_block(prenorm, norm, cross=True)
    x, ctx = torch.randn(2, 7, 8, dtype=f64), torch.randn(2, 9, 8, dtype=f64)

    def n(layer, h):
        if norm == "rms":
            return naive_rms(h, layer.weight, layer.eps)
        return naive_layer_norm(h, layer.weight, layer.bias, layer.eps)

    attn = lambda h: blk.mixer(h, causal=True)  # noqa: E731
    cross = lambda h: blk.cross(h, ctx)  # noqa: E731
    if prenorm:  # x + f(norm(x))
        h = x + attn(n(blk.norm_mixer, x))
        h = h + cross(n(blk.norm_cross, h))
        ref = h + blk.ffn(n(blk.norm_ffn, h))
    else:  # norm(x + f(x))
        h = n(blk.norm_mixer, x + attn(x))
        h = n(blk.norm_cross, h + cross(h))
        ref = n(blk.norm_ffn, h + blk.ffn(h))
    torch.testing.assert_close(blk(x, context=ctx, causal=True), ref, rtol=1e-12, atol=1e-12)
    out, weights = blk(x, context=ctx, causal=True, return_weights=True)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert weights.self_attn.shape == (2, 2, 7, 7) and weights.cross_attn.shape == (2, 2, 7, 9)
    assert (weights.self_attn.triu(1) == 0).all()


def test_block_with_cross_attention_needs_context():
    blk = make_block(True, cross=True)
    with pytest.raises(ValueError, match=r"this block has cross-attention: pass context"):
        blk(torch.randn(1, 3, 8, dtype=f64))


@pytest.mark.parametrize("prenorm", [True, False])
def test_gradcheck_tiny_block(prenorm):
    blk = make_block(prenorm, "rms")
    x = torch.randn(1, 3, 8, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: blk(x, causal=True), (x,))
    params = tuple(blk.parameters())

    def through_params(*ps):  # the parameters' gradients too, via a functional call
        names = [name for name, _ in blk.named_parameters()]
        return torch.func.functional_call(blk, dict(zip(names, ps)), (x.detach(),), {"causal": True})

    # fast_mode: checks random projections of the Jacobian, one pass per input instead of one per parameter entry
    assert torch.autograd.gradcheck(through_params, tuple(p.detach().requires_grad_() for p in params),
                                    fast_mode=True)
