"""The neuron view: one query of one head, from vectors to output, every number the model computed.

For a chosen sublayer (``kind``, ``layer``), head and query position, it shows what the notes' "how self-attention
works" describes: the query vector q, each key vector k_s, the score under the layer's score function term by term,
the softmax over the keys the query may see, and the weighted sum of the values. The numbers are recomputed in
float64 from the sublayer's own inputs (caught by a hook while the model runs) and its own parameters, so they
equal the model's forward; tests hold them to the weights and head output ``return_weights=True`` gives.

Score functions, for one query q (D) and key k (D) (``qkv.ops.attention``):
  dot         q . k = sum_i q_i k_i                                   (Luong et al. 2015)
  scaled_dot  (sum_i q_i k_i) * scale, scale = 1 / sqrt(D)           (Vaswani et al. 2017, sec. 3.2.1)
  cosine      (sum_i q^_i k^_i) * scale, q^ = q / |q|, scale = sqrt(D)
  bilinear    q^T W k = sum_i q_i (W k)_i                             (Luong et al. 2015, "general")
  additive    v^T tanh(W_q q + W_k k) = sum_a v_a tanh(...)_a         (Bahdanau et al. 2015)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..nn import MultiHeadAttention
from ..ops import apply_rope, causal_mask, window_mask
from .layers import attention_layers, find_layer


@dataclass
class Term:
    """One step of the score: its name, the formula it computes, and its value (shape per ``NeuronView``).

    Example:

        >>> import torch
        >>> from qkv.nn import MultiHeadAttention
        >>> from qkv.interpret import neuron_view_of
        >>> view = neuron_view_of(MultiHeadAttention(8, 2, score="additive"), torch.randn(1, 4, 8), head=1, query=0)
        >>> for t in view.terms:                            # additive, term by term: (A,), then per key (S, A), (S,)
        ...     print(f"{t.name:14} {tuple(t.value.shape)}  {t.formula}")
        W_q q          (4,)  the query projected (A,)
        W_k k          (4, 4)  each key projected
        W_q q + W_k k  (4, 4)  their sum
        tanh           (4, 4)  tanh of the sum
        v_a tanh_a     (4, 4)  weighted by v
        sum            (4,)  v^T tanh(W_q q + W_k k)
    """
    name: str
    formula: str
    value: torch.Tensor


@dataclass
class NeuronView:
    """One query of one head. Shapes: S keys, D head size, Dv value size, A additive hidden size.

    q: (D,) the query as the score sees it (after query norm and RoPE). keys: (S, D), values: (S, Dv).
    terms: the score's steps in order; per key, each a (S, D) or (S, A) table of products or an (S,) column
    (``Term``); for additive, W_q q is (A,). raw: (S,) the score before scale-free additions. scale: the logit
    scale where the score has one (else None). softcap: the cap applied, or None. bias: (S,) position bias added
    (T5, ALiBi) or None. allowed: (S,) bool, keys the query may see. logits: (S,) after all of these (masked keys
    -inf). weights: (S,) the softmax. weighted: (S, Dv) weights[s] * values[s]. output: (Dv,) their sum, the head's
    output before W_O. All float64.

    Example:

        >>> import torch, qkv
        >>> from qkv.interpret import neuron_view, self_attention
        >>> model, ids = qkv.build(qkv.preset("bert-tiny")).eval(), torch.tensor([[2, 7, 5, 9]])
        >>> view = neuron_view(model, ids, layer=1, head=0, query=2)     # a NeuronView, float64
        >>> view.q.shape, view.keys.shape, [t.name for t in view.terms]  # (D,), (S, D), the score's steps
        (torch.Size([16]), torch.Size([4, 16]), ['q_i k_i', 'sum'])
        >>> torch.allclose(view.weights.float(), self_attention(model, ids)[1][0, 0, 2], atol=1e-6)   # = the forward
        True
    """
    score: str
    kind: str
    layer: int
    head: int
    query: int
    q: torch.Tensor
    keys: torch.Tensor
    values: torch.Tensor
    terms: list[Term]
    raw: torch.Tensor
    scale: float | None
    softcap: float | None
    bias: torch.Tensor | None
    allowed: torch.Tensor
    logits: torch.Tensor
    weights: torch.Tensor
    weighted: torch.Tensor
    output: torch.Tensor
    query_token: str | None = None
    key_tokens: list[str] | None = field(default=None)

    def to_html(self, *, decimals: int = 3) -> str:
        """The view as one self-contained HTML fragment (inline CSS, no script): see ``qkv.interpret.neuron_html``."""
        from .neuron_html import neuron_html  # the HTML is built only when asked for
        return neuron_html(self, decimals=decimals)

    def _repr_html_(self) -> str:
        return self.to_html()


def _score_terms(module: MultiHeadAttention, head: int, q: torch.Tensor, k: torch.Tensor):
    """The score of query q (D,) against keys k (S, D): (terms, raw (S,), scale or None), in the module's
    score function, written term by term."""
    score, D = module.score, q.shape[-1]
    if score in ("dot", "scaled_dot"):
        prod = q * k  # (S, D)
        terms = [Term("q_i k_i", "products of matching features", prod), Term("sum", "q . k", prod.sum(-1))]
        scale = None if score == "dot" else (D ** -0.5 if module.scale is None else float(module.scale))
        raw = prod.sum(-1) * (1.0 if scale is None else scale)
    elif score == "cosine":
        qh, kh = q / q.norm().clamp_min(1e-12), k / k.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        prod = qh * kh
        terms = [Term("q^_i k^_i", "products of the unit-length vectors' features", prod),
                 Term("cos", "q . k / (|q| |k|)", prod.sum(-1))]
        scale = math.sqrt(D) if module.scale is None else float(module.scale)
        raw = prod.sum(-1) * scale
    elif score == "bilinear":
        W = module.W.detach().double()
        W = W[head] if W.dim() == 3 else W  # (D, D): one per head, or shared
        Wk = k @ W.T  # (S, D): (W k)_i for each key
        prod = q * Wk
        terms = [Term("(W k)_i", "the key mapped by W", Wk), Term("q_i (W k)_i", "products", prod),
                 Term("sum", "q^T W k", prod.sum(-1))]
        scale, raw = None, prod.sum(-1)
    else:  # additive
        W_q, W_k, v = (getattr(module, n).detach().double() for n in ("W_q", "W_k", "v"))
        qa, ka = q @ W_q.T, k @ W_k.T  # (A,), (S, A)
        hidden = qa + ka
        th = torch.tanh(hidden)
        prod = th * v
        terms = [Term("W_q q", "the query projected (A,)", qa), Term("W_k k", "each key projected", ka),
                 Term("W_q q + W_k k", "their sum", hidden), Term("tanh", "tanh of the sum", th),
                 Term("v_a tanh_a", "weighted by v", prod), Term("sum", "v^T tanh(W_q q + W_k k)", prod.sum(-1))]
        scale, raw = None, prod.sum(-1)
    return terms, raw, scale


@torch.no_grad()
def neuron_view_of(module: MultiHeadAttention, x: torch.Tensor, context: torch.Tensor | None = None, *, head: int,
                   query: int, index: int = 0, mask=None, causal: bool = False, window: int | None = None,
                   rope=None, bias=None, kind: str = "self", layer: int = 0) -> NeuronView:
    """The neuron view of a MultiHeadAttention called as ``module(x, context, mask=, causal=, window=, rope=,
    bias=)`` (no cache): x (B, T, d_model), context (B, S, d_model) or None. head: a query head; query: a position
    in 0..T-1; index: the example in the batch.

    Example:

        >>> import torch
        >>> from qkv.nn import MultiHeadAttention
        >>> from qkv.interpret import neuron_view_of
        >>> mha, x = MultiHeadAttention(8, 2, score="bilinear"), torch.randn(1, 5, 8)   # x: (B, T, d_model)
        >>> view = neuron_view_of(mha, x, head=1, query=3, causal=True)
        >>> _, w = mha(x, causal=True, return_weights=True)                             # (B, H, T, S)
        >>> view.score, torch.allclose(view.weights, w[0, 1, 3].double(), atol=1e-6)
        ('bilinear', True)
    """
    if not isinstance(module, MultiHeadAttention):
        raise ValueError(f"module is a {type(module).__name__}: the neuron view needs softmax attention "
                         f"(MultiHeadAttention); linear-time mixers have no per-key score to show")
    H, G, D = module.n_heads, module.n_kv_heads, module.head_dim
    B, T = x.shape[:2]
    for name, value, top in (("head", head, H), ("query", query, T), ("index", index, B)):
        if not isinstance(value, int) or not 0 <= value < top:
            raise ValueError(f"{name}={value!r}: expected an int in 0..{top - 1}")
    g = head // (H // G)  # the key/value head this query head reads (grouped-query attention)
    W, b = module.qkv.weight.detach(), module.qkv.bias
    b = None if b is None else b.detach()
    src = x if context is None else context
    proj = torch.nn.functional.linear(x, W[: H * D], None if b is None else b[: H * D])
    kv = torch.nn.functional.linear(src, W[H * D:], None if b is None else b[H * D:])
    q = proj.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
    k, v = (t.view(B, src.shape[1], G, D).transpose(1, 2) for t in kv.split([G * D, G * D], dim=-1))  # (B, G, S, D)
    if module.q_norm is not None:
        q = module.q_norm(q)
        k = module.k_norm(k)
    if rope is not None and context is None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    qv, keys, values = (t.double() for t in (q[index, head, query], k[index, g], v[index, g]))
    S = keys.shape[0]
    terms, raw, scale = _score_terms(module, head, qv, keys)
    logits = raw
    if module.softcap is not None:
        logits = torch.tanh(logits / module.softcap) * module.softcap
    allowed = torch.ones(S, dtype=torch.bool)
    extra = torch.zeros(S, dtype=torch.float64)
    if mask is not None:
        m = mask.expand(B, H, T, S)[index, head, query]
        if m.dtype == torch.bool:
            allowed &= m.cpu()
        else:
            allowed &= (m != float("-inf")).cpu()
            extra = extra + m.double().cpu().masked_fill(m.cpu() == float("-inf"), 0.0)
    if window is not None:
        allowed &= window_mask(T, S, window=window, causal=causal)[query]
    elif causal:
        allowed &= causal_mask(T, S)[query]
    pos_bias = None if bias is None else bias.expand(B, H, T, S)[index, head, query].double().cpu()
    logits = logits + extra + (0.0 if pos_bias is None else pos_bias)
    logits = logits.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(logits, -1) if allowed.any() else torch.zeros(S, dtype=torch.float64)
    weighted = weights[:, None] * values
    return NeuronView(module.score, kind, layer, head, query, qv, keys, values, terms, raw, scale,
                      module.softcap, pos_bias, allowed, logits, weights, weighted, weighted.sum(0))


def neuron_view(model, *inputs, head: int, query: int, layer: int = 0, kind: str | None = None, index: int = 0,
                tokens: list[str] | None = None, key_tokens: list[str] | None = None, **kwargs) -> NeuronView:
    """Run ``model(*inputs, **kwargs)`` once and return the neuron view of one query of one head.

    kind: "self", "masked" or "cross" (default: the model's first kind, see ``qkv.interpret.attention_layers``);
    layer: the index within that kind. tokens: labels of the query side (the query token is tokens[query]);
    key_tokens: of the key side (default: tokens, except for cross-attention).

    Example:

        >>> import torch, qkv
        >>> from qkv.interpret import neuron_view
        >>> model, ids = qkv.build(qkv.preset("gpt2-tiny")).eval(), torch.tensor([[1, 2, 3, 4]])
        >>> view = neuron_view(model, ids, head=1, query=2, tokens=["a", "b", "c", "d"])   # kind "masked", layer 0
        >>> view.kind, view.query_token, view.allowed.tolist()      # a causal query sees keys 0..2
        ('masked', 'c', [True, True, True, False])
        >>> round(view.weights.sum().item(), 6), torch.allclose(view.output, view.weights @ view.values)
        (1.0, True)
    """
    kind = kind if kind is not None else attention_layers(model)[0].kind
    target = find_layer(model, kind, layer)
    seen = {}

    def catch(_, args, kw):
        if "x" not in seen:
            seen.update(x=args[0], context=args[1] if len(args) > 1 else kw.get("context"), kw=kw)
    handle = target.module.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        with torch.no_grad():
            model(*inputs, **kwargs)
    finally:
        handle.remove()
    kw = seen["kw"]
    if kw.get("cache") is not None:
        raise ValueError("the neuron view reads a full forward: run the model without a cache")
    view = neuron_view_of(target.module, seen["x"], seen["context"], head=head, query=query, index=index,
                          mask=kw.get("mask"), causal=kw.get("causal", False), window=kw.get("window"),
                          rope=kw.get("rope"), bias=kw.get("bias"), kind=kind, layer=target.layer)
    S = view.keys.shape[0]
    if key_tokens is None and tokens is not None and kind != "cross":
        key_tokens = tokens
    if tokens is not None:
        view.query_token = str(tokens[query])
    if key_tokens is not None:
        if len(key_tokens) != S:
            raise ValueError(f"key_tokens has {len(key_tokens)} labels: expected one per key, S = {S}")
        view.key_tokens = [str(t) for t in key_tokens]
    return view
