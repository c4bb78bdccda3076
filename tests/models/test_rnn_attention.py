"""Every attention variant of the recurrent family equals its paper's equations, written out below in float64,
one word and one source position at a time, from the model's own weights: the encoder's states, the scores, the
weights, the context, the attentional state h~_t (Luong) or the maxout output (Bahdanau), local-p's window and
Gaussian, input feeding, and the logits. Then gradcheck of the attention and of one decoder step.

References: Bahdanau, Cho & Bengio 2015, appendix A (A.1.1 the bidirectional encoder, A.1.2 the alignment model,
A.2.2 the decoder: s_0, the recurrence fed [E y_{i-1}; c_i], the maxout deep output); Luong, Pham & Manning 2015,
section 3 (eq. 5 attentional state, eq. 6 output, eq. 7 global align, eq. 8 scores dot / general / concat,
eq. 9 local-p's position, eq. 10 its Gaussian, sec. 3.2 local-m's p_t = t, sec. 3.3 input feeding). The cells are
torch's GRU / LSTM as its documentation writes them (the GRU's reset gate after the hidden product).
"""
import pytest
import torch

import qkv
from qkv.nn.rnn_attention import RecurrentAttention

F64 = torch.float64  # every tensor here: references to 1e-9
V, N, E = 23, 6, 5  # vocabulary, state size, embedding size: small, and unequal so no shape hides another


def _sigmoid(x):
    return 1 / (1 + torch.exp(-x))


# -- the cells, as torch documents them ------------------------------------------------------------------------------

def gru_cell(x, h, W_ih, W_hh, b_ih, b_hh):
    r_i, z_i, n_i = (W_ih @ x + b_ih).chunk(3)
    r_h, z_h, n_h = (W_hh @ h + b_hh).chunk(3)
    r, z = _sigmoid(r_i + r_h), _sigmoid(z_i + z_h)
    n = torch.tanh(n_i + r * n_h)
    return (1 - z) * n + z * h, None


def lstm_cell(x, h, c, W_ih, W_hh, b_ih, b_hh):
    i, f, g, o = (W_ih @ x + b_ih + W_hh @ h + b_hh).chunk(4)
    c = _sigmoid(f) * c + _sigmoid(i) * torch.tanh(g)
    return _sigmoid(o) * torch.tanh(c), c


def cell(kind, x, h, c, weights):
    return gru_cell(x, h, *weights) if kind == "gru" else lstm_cell(x, h, c, *weights)


# -- the encoder (Bahdanau A.1.1: annotations h_j = [forward h_j; backward h_j]) -------------------------------------

def encoder_reference(model, src):
    """Annotations (S, Dm) and each layer's final states [(h per direction, c per direction)]."""
    enc, kind = model.encoder, model.config.rnn_cell
    x = [enc.embed.weight[i] for i in src]
    finals = []
    for layer in enc.layers:
        outs, ends = [], []
        for suffix, order in (("", range(len(x))), ("_reverse", range(len(x) - 1, -1, -1))):
            if suffix and not layer.bidirectional:
                continue
            w = [getattr(layer, f"{n}_l0{suffix}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            h, c, out = torch.zeros(N, dtype=F64), torch.zeros(N, dtype=F64), [None] * len(x)
            for j in order:
                h, c = cell(kind, x[j], h, c, w)
                out[j] = h
            outs.append(out)
            ends.append((h, c))
        x = [torch.cat([o[j] for o in outs]) for j in range(len(x))]
        finals.append(ends)
    return torch.stack(x), finals


# -- scores (Luong eq. 8; Bahdanau A.1.2's alignment model is "concat") ----------------------------------------------

def score(attn, h, hs):
    if attn.score == "dot":
        return h @ hs
    if attn.score == "bilinear":  # "general": h^T W_a h_s
        return h @ attn.W @ hs
    return attn.v @ torch.tanh(attn.W_q @ h + attn.W_k @ hs + attn.b)  # v_a^T tanh(W_a [h; h_s]) (+ b)


def attend(attn, h, memory, t):
    """Weights a (S,) and context c = sum_s a_s h_s of the query h at target position t (from 1)."""
    S = memory.shape[0]
    window = range(S)  # global: every source position
    p = None
    if attn.kind in ("local_m", "local_p"):
        if attn.kind == "local_m":
            p = float(t)  # sec. 3.2: p_t = t
        else:  # eq. (9): p_t = S sigmoid(v_p^T tanh(W_p h_t))
            p = S * _sigmoid(attn.v_p @ torch.tanh(attn.W_p @ h))
        D = attn.half_width
        window = [s for s in range(S) if abs((s + 1) - p) <= D]  # positions s = 1..S in [p_t - D, p_t + D]
    a = torch.zeros(S, dtype=F64)
    if window:
        e = {s: score(attn, h, memory[s]) for s in window}
        top = max(e.values())
        z = sum(torch.exp(e[s] - top) for s in window)
        for s in window:  # eq. (7), within the window
            a[s] = torch.exp(e[s] - top) / z
    if attn.kind == "local_p":  # eq. (10): a_t(s) = align(h_t, h_s) exp(-(s - p_t)^2 / (2 sigma^2)), sigma = D / 2
        sigma = attn.half_width / 2
        for s in window:
            a[s] = a[s] * torch.exp(-((s + 1) - p) ** 2 / (2 * sigma ** 2))
    c = sum(a[s] * memory[s] for s in range(S))
    return a, c


# -- the decoder ----------------------------------------------------------------------------------------------------

def decoder_reference(model, src, tgt_in):
    """Per target step: logits (V,), weights (S,) or None, what the output layer reads (h~_t or the maxout t_i)."""
    cfg, dec = model.config, model.decoder
    kind, lstm, L = cfg.rnn_attention, cfg.rnn_cell == "lstm", cfg.n_decoder_layers
    memory, finals = encoder_reference(model, src)
    if cfg.rnn_bidirectional == "encoder":  # A.2.2: s_0 = tanh(W_s backward h_1), top encoder layer
        backward_h1, backward_c1 = finals[-1][1]
        h = [torch.tanh(W.weight @ backward_h1 + W.bias) for W in dec.bridge]
        c = [torch.tanh(W.weight @ backward_c1 + W.bias) for W in dec.cell_bridge] if lstm else [None] * L
    else:  # each decoder layer starts where its encoder layer ended (Sutskever et al. 2014)
        h = [finals[i][0][0] for i in range(L)]
        c = [finals[i][0][1] for i in range(L)]
    feed = torch.zeros(N, dtype=F64)  # h~_0
    cells = [[getattr(cl, n) for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")] for cl in dec.cells]
    steps = []
    for t, y_prev in enumerate(tgt_in, start=1):
        x = dec.embed.weight[y_prev]
        a = context = None
        if kind == "bahdanau":  # A.1.2: e_ij = a(s_{i-1}, h_j); c_i = sum_j alpha_ij h_j; fed into the recurrence
            a, context = attend(dec.attention, h[-1], memory, t)
            inp = torch.cat([x, context])
        elif cfg.rnn_input_feeding:  # sec. 3.3: [E y_{t-1}; h~_{t-1}]
            inp = torch.cat([x, feed])
        else:
            inp = x
        for i in range(L):
            h[i], c[i] = cell(cfg.rnn_cell, inp, h[i], c[i] if lstm else None, cells[i])
            inp = h[i]
        if kind == "none":
            out = h[-1]
        elif kind == "bahdanau":  # A.2.2: t~ = U_o s_i + V_o E y_{i-1} + C_o c_i; t = max over pairs
            W, b = dec.deep.weight, dec.deep.bias
            U_o, V_o, C_o = W[:, :N], W[:, N:N + E], W[:, N + E:]
            t_tilde = U_o @ h[-1] + V_o @ x + C_o @ context + b
            out = torch.stack([torch.maximum(t_tilde[2 * j], t_tilde[2 * j + 1]) for j in range(len(t_tilde) // 2)])
        else:  # eq. (5): h~_t = tanh(W_c [c_t; h_t])
            a, context = attend(dec.attention, h[-1], memory, t)
            out = torch.tanh(dec.combine.weight @ torch.cat([context, h[-1]]))
            feed = out
        steps.append((dec.head.weight @ out + dec.head.bias, a, out))  # eq. (6) / W_o t_i
    return steps


VARIANTS = {  # name -> (cell, attention, score, bidirectional, extra fields)
    "none-gru": ("gru", "none", "dot", "encoder", {}),
    "none-lstm-2": ("lstm", "none", "dot", "none", {"n_layers": 2, "n_decoder_layers": 2}),
    "bahdanau": ("gru", "bahdanau", "additive", "encoder", {"d_ff": 8}),
    "bahdanau-lstm-2": ("lstm", "bahdanau", "bilinear", "encoder", {"d_ff": 8, "n_decoder_layers": 2}),
    "global-dot": ("lstm", "global", "dot", "none", {}),
    "global-general-2": ("lstm", "global", "bilinear", "none", {"n_layers": 2, "n_decoder_layers": 2}),
    "global-concat-nofeed": ("gru", "global", "additive", "encoder", {"rnn_input_feeding": False}),
    "local-m": ("lstm", "local_m", "dot", "none", {"rnn_local_window": 1}),
    "local-m-general": ("gru", "local_m", "bilinear", "encoder", {"rnn_local_window": 2}),
    "local-p": ("lstm", "local_p", "bilinear", "none", {"rnn_local_window": 2}),
    "local-p-concat": ("gru", "local_p", "additive", "encoder", {"rnn_local_window": 3}),
}


def build(name, seed=0):
    cell_kind, attention, score_name, both, extra = VARIANTS[name]
    torch.manual_seed(seed)
    cfg = qkv.preset("luong-tiny", rnn_cell=cell_kind, rnn_attention=attention, score=score_name,
                     rnn_bidirectional=both, vocab_size=V, d_model=N, rnn_embed_dim=E,
                     **{"n_layers": 1, **extra})
    model = qkv.build(cfg).to(F64).eval()
    for p in model.parameters():  # larger than U(-0.1, 0.1), so the attention is far from uniform
        torch.nn.init.uniform_(p, -0.8, 0.8)
    return model


SRC = [[3, 7, 9, 4, 11, 5, 2], [8, 4, 2]]  # awkward lengths; in a batch the second is padded
TGT = [[1, 6, 12, 6, 3, 19], [1, 20, 10, 7, 15, 9]]  # one more target step than the first source has positions


@pytest.mark.parametrize("name", VARIANTS)
def test_model_equals_the_papers_equations(name):
    model = build(name)
    S = max(map(len, SRC))
    src = torch.tensor([s + [0] * (S - len(s)) for s in SRC])
    mask = torch.tensor([[1] * len(s) + [0] * (S - len(s)) for s in SRC])
    with torch.no_grad():
        logits, weights = model(src, torch.tensor(TGT), mask, return_weights=True)
    for row, (s, t) in enumerate(zip(SRC, TGT)):
        with torch.no_grad():
            ref = decoder_reference(model, s, t)
        torch.testing.assert_close(logits[row], torch.stack([r[0] for r in ref]), rtol=0, atol=1e-9)
        if VARIANTS[name][1] == "none":
            assert weights.cross == []
            continue
        (cross,) = weights.cross  # (B, 1, T, S): one map, over the padded source
        torch.testing.assert_close(cross[row, 0, :, :len(s)], torch.stack([r[1] for r in ref]), rtol=0, atol=1e-9)
        assert float(cross[row, 0, :, len(s):].abs().sum()) == 0.0  # padding gets nothing


@pytest.mark.parametrize("name", [n for n in VARIANTS if VARIANTS[n][1] != "none"])
def test_each_step_equals_the_equations(name):
    """Step by step through the decoder: the attentional state h~_t (or maxout t_i), weights and fed-back state."""
    model = build(name, seed=1)
    src, tgt = SRC[0], TGT[0]
    with torch.no_grad():
        ref = decoder_reference(model, src, tgt)
        cache = model.new_cache(1)
        model.start(cache, torch.tensor([src]))
        layer = cache.layers[0]
        state = dict(layer.mixer.state)
        x = model.decoder.embed(torch.tensor([tgt]))
        for t, (logits, a, out) in enumerate(ref):
            got, w, state = model.decoder.step(x[:, t], state, layer.cross.k, layer.cross.v)
            torch.testing.assert_close(got[0], out, rtol=0, atol=1e-9)
            torch.testing.assert_close(w[0], a, rtol=0, atol=1e-9)
            if "feed" in state:  # input feeding carries h~_t into the next step
                torch.testing.assert_close(state["feed"][0], out, rtol=0, atol=1e-9)


def test_local_p_window_and_gaussian_are_the_papers():
    """Luong eq. (9)-(10) by hand on one query: the window's edges, the Gaussian and weights summing below 1."""
    torch.manual_seed(3)
    attn = RecurrentAttention(4, 4, kind="local_p", score="dot", half_width=2).to(F64)
    memory, h = torch.randn(9, 4, dtype=F64), torch.randn(4, dtype=F64)
    with torch.no_grad():
        context, weights = attn(h[None, None], attn.keys(memory[None]), memory[None, None])
        p = 9 * _sigmoid(attn.v_p @ torch.tanh(attn.W_p @ h))
        a, c = attend(attn, h, memory, t=None)
    inside = [s for s in range(9) if abs(s + 1 - p) <= 2]
    assert [s for s in range(9) if weights[0, 0, s] > 0] == inside
    torch.testing.assert_close(weights[0, 0], a, rtol=0, atol=1e-12)
    torch.testing.assert_close(context[0, 0], c, rtol=0, atol=1e-12)
    assert float(weights.sum()) < 1.0  # the Gaussian multiplies after the softmax (eq. 10)


@pytest.mark.parametrize("kind, score_name", [("bahdanau", "additive"), ("global", "dot"), ("global", "bilinear"),
                                              ("local_m", "bilinear"), ("local_p", "additive"), ("local_p", "dot")])
def test_attention_gradcheck(kind, score_name):
    """Gradients of the context and weights with respect to the query, the memory and every weight (local-p's W_p
    and v_p reach the output through the Gaussian)."""
    torch.manual_seed(4)
    attn = RecurrentAttention(3, 3, kind=kind, score=score_name, half_width=2).to(F64)
    B, T, S = 2, 3, 6
    query = torch.randn(B, T, 3, dtype=F64, requires_grad=True)
    memory = torch.randn(B, S, 3, dtype=F64, requires_grad=True)
    mask = torch.tensor([[1] * S, [1] * 4 + [0] * 2])
    steps = torch.arange(1, T + 1).expand(B, T)

    def f(query, memory):
        return attn(query, attn.keys(memory), memory[:, None], mask=mask, steps=steps)
    assert torch.autograd.gradcheck(f, (query, memory))
    # the parameters as gradcheck's inputs: it perturbs them in place, the module reads them
    params = tuple(attn.parameters())  # none for the dot score
    assert not params or torch.autograd.gradcheck(lambda *params: f(query, memory), params, fast_mode=True)


@pytest.mark.parametrize("name", ["bahdanau", "global-general-2", "local-p", "local-m-general", "none-lstm-2"])
def test_decoder_step_gradcheck(name):
    """One step of the decoder, input feeding and the recurrence included, against finite differences."""
    model = build(name, seed=5)
    dec = model.decoder
    with torch.no_grad():
        cache = model.new_cache(1)
        model.start(cache, torch.tensor([SRC[0]]))
    layer = cache.layers[0]
    state = {k: v.clone() for k, v in layer.mixer.state.items()}
    x = torch.randn(1, E, dtype=F64, requires_grad=True)
    h = state["h"].clone().requires_grad_(True)
    values = layer.cross.v.clone().requires_grad_(True) if layer.cross.v is not None else \
        torch.zeros(1, dtype=F64, requires_grad=True)

    feed = torch.randn(1, N, dtype=F64, requires_grad=True)  # h~_{t-1}, read where input feeding is on

    def f(x, h, values, feed):
        s = {**state, "h": h, **({"feed": feed} if "feed" in state else {})}
        keys = dec.keys(values[:, 0]) if dec.attention is not None else None
        out, _, new = dec.step(x, s, keys, values if dec.attention is not None else None)
        return out, new["h"]
    assert torch.autograd.gradcheck(f, (x, h, values, feed))
