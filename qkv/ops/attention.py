"""Attention as a pure function: scores, masks, softmax over keys, weighted sum of values.

Glossary: B batch, H query heads, G key/value heads (G divides H), T queries, S keys, D head size, Dv value size,
A hidden size of the additive score.

Two paths compute the same thing:
- the explicit path (the reference): every score function, every mask, hard attention, and the weights;
- the fast path: scaled-dot scores with no weights requested go through PyTorch's fused
  ``scaled_dot_product_attention`` (FlashAttention / memory-efficient kernels on GPU).
Tests hold them equal.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .hard_attention import Choice, Selection, select
from .masks import causal_mask, global_mask, window_mask

SCORES = ("additive", "bilinear", "dot", "scaled_dot", "cosine")
"""The score functions ``attention`` and ``scores`` know, by name.

Example:

    >>> import torch
    >>> from qkv.ops import SCORES, attention
    >>> SCORES
    ('additive', 'bilinear', 'dot', 'scaled_dot', 'cosine')
    >>> q = k = v = torch.randn(1, 2, 3, 4)
    >>> [tuple(attention(q, k, v, score=s).shape) for s in ("dot", "scaled_dot", "cosine")]
    [(1, 2, 3, 4), (1, 2, 3, 4), (1, 2, 3, 4)]
"""
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


# ----------------------------------------------------------------------------------------------------------------
# Score functions: (B, H, T, D) x (B, H, S, D) -> (B, H, T, S)

def _score_dot(q, k, params, scale):
    return q @ k.transpose(-2, -1)


def _score_scaled_dot(q, k, params, scale):
    # Vaswani et al. 2017, sec. 3.2.1: divide by sqrt(D) so the logits' variance does not grow with D.
    return (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5 if scale is None else scale)


def _score_cosine(q, k, params, scale):
    # Scaled cosine (query-key normalisation, Henry et al. 2020): bounded logits times a temperature. The default
    # sqrt(D) gives random unit-variance q, k the same logit spread as the scaled dot product.
    s = math.sqrt(q.shape[-1]) if scale is None else scale
    return (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * s


def _score_bilinear(q, k, params, scale):
    # Luong et al. 2015 "general": q^T W k, with W (D, Dk) shared by heads or (H, D, Dk) one per head.
    W = _param(params, "W", "bilinear")
    if W.dim() == 2:
        return (q @ W) @ k.transpose(-2, -1)
    return torch.einsum("bhtd,hde,bhse->bhts", q, W, k)


def _score_additive(q, k, params, scale):
    # Bahdanau et al. 2015: an MLP, v^T tanh(W_q q + W_k k + b). Memory is O(B H T S A): a reference, not a kernel.
    # W_k k does not depend on the query: a decoder asking at every step may pass it once as params["k_proj"]
    # (Bahdanau et al. 2015, appendix A.1.2: "U_a h_j can be pre-computed").
    W_q, v = (_param(params, name, "additive") for name in ("W_q", "v"))
    qa = q @ W_q.transpose(-2, -1)  # (B, H, T, A)
    ka = params["k_proj"] if params.get("k_proj") is not None else \
        k @ _param(params, "W_k", "additive").transpose(-2, -1)  # (B, H, S, A)
    hidden = qa.unsqueeze(-2) + ka.unsqueeze(-3)  # (B, H, T, S, A)
    if params.get("b") is not None:
        hidden = hidden + params["b"]
    return torch.tanh(hidden) @ v  # (B, H, T, S)


_SCORE_FNS = {"additive": _score_additive, "bilinear": _score_bilinear, "dot": _score_dot,
              "scaled_dot": _score_scaled_dot, "cosine": _score_cosine}


def _param(params, name, score):
    if params is None or params.get(name) is None:
        needed = {"additive": "W_q (A, D), W_k (A, Dk) (or k_proj (B, H, S, A) = k W_k^T), v (A,) and optionally "
                              "b (A,)",
                  "bilinear": "W (D, Dk) or (H, D, Dk)"}[score]
        raise ValueError(f"score={score!r} needs params with {needed}; params lacks {name!r}")
    return params[name]


def scores(q, k, *, score="scaled_dot", params=None, scale=None) -> torch.Tensor:
    """Raw attention logits (B, H, T, S) for one of ``SCORES``, before any mask.

    Example:

        >>> import torch
        >>> from qkv.ops import scores
        >>> q, k = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4)
        >>> logits = scores(q, k, score="scaled_dot")   # (B, H, T, S), before any mask
        >>> logits.shape, torch.allclose(logits, q @ k.transpose(-1, -2) / 2)   # scale D^-0.5 = 1/2
        (torch.Size([1, 2, 3, 5]), True)
    """
    if score not in _SCORE_FNS:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    return _SCORE_FNS[score](q, k, params, scale)


# ----------------------------------------------------------------------------------------------------------------
# Masks: everything becomes one boolean "may attend" tensor broadcastable to (B, H, T, S), plus a float bias.

def _combine_masks(T, S, device, mask, causal, window, global_tokens):
    """Returns (allowed or None, float_bias or None). None means "no restriction" / "no bias"."""
    allowed, bias = None, None
    if mask is not None:
        if mask.dtype == torch.bool:
            allowed = mask
        elif mask.is_floating_point():
            # An additive float mask: -inf marks a forbidden key, anything else shifts the logit.
            bias = mask
            allowed = mask != float("-inf")
        else:
            raise TypeError(f"mask must be a bool tensor (True = may attend) or a float additive mask, "
                            f"got dtype {mask.dtype}")
    structural = None
    if window is not None:
        structural = window_mask(T, S, window=window, causal=causal, device=device)
    elif causal:
        structural = causal_mask(T, S, device=device)
    if global_tokens is not None and structural is not None:
        # Global tokens widen a local / causal pattern; with no such pattern every query already sees every key.
        structural = structural | global_mask(T, S, global_tokens, device=device)
    if structural is not None:
        allowed = structural if allowed is None else allowed & structural
    return allowed, bias


def _check(q, k, v, score, mask, bias, window, hard):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, heads, length, head size), got shape {tuple(t.shape)}")
    if score not in _SCORE_FNS:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    # Unpack each shape once: every ``t.shape`` builds a new torch.Size (~0.5 us), and this runs on every
    # call of the fast path, the decode step included.
    (B, H, T, D), (Bk, G, S, Dk), (Bv, Gv, Sv, _) = q.shape, k.shape, v.shape
    if (Bk, G, S) != (Bv, Gv, Sv):
        raise ValueError(f"k and v must agree on (B, heads, S): k is {tuple(k.shape)}, v is {tuple(v.shape)}")
    if B != Bk:
        raise ValueError(f"q and k must have the same batch size, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if H % G:
        raise ValueError(f"query heads ({H}) must be a multiple of key/value heads ({G})")
    if D != Dk and score in ("dot", "scaled_dot", "cosine"):
        raise ValueError(f"score={score!r} needs equal query and key head sizes, got q D={D} and k D={Dk}")
    for name, m in (("mask", mask), ("bias", bias)):
        if m is None:
            continue
        if not isinstance(m, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(m).__name__}")
        try:
            if torch.broadcast_shapes(m.shape, (B, H, T, S)) != (B, H, T, S):
                raise RuntimeError
        except RuntimeError:
            raise ValueError(f"{name} of shape {tuple(m.shape)} does not broadcast to (B, H, T, S) = "
                             f"{(B, H, T, S)}") from None
    if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 0):
        raise ValueError(f"window must be an int >= 0 (how many neighbours a query sees), got {window!r}")
    if hard is not None and not isinstance(hard, Selection) and hard != "argmax" and \
            not (isinstance(hard, int) and not isinstance(hard, bool) and hard >= 1):
        raise ValueError(f"hard must be None, 'argmax' or an int k >= 1 (keep the top-k scores) or a "
                         f"qkv.ops.hard_attention.Selection (hard / local attention), got {hard!r}")


def _check_number(name, value):
    """scale and softcap: None or a finite real number (NaN or inf would give zeros on the fused path and NaN on
    the explicit one: refused on both, before either runs)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be None or a finite number, got {value!r}")


def _expand_kv(k, v, H):
    """Grouped-query attention: each of the G key/value heads serves H / G query heads."""
    G = k.shape[1]
    if G == H:
        return k, v
    return k.repeat_interleave(H // G, dim=1), v.repeat_interleave(H // G, dim=1)


# ----------------------------------------------------------------------------------------------------------------

def attention(q, k, v, *, score="scaled_dot", mask=None, causal=False, window=None, global_tokens=None,
              bias=None, hard=None, scale=None, dropout_p=0.0, return_weights=False, params=None, softcap=None,
              return_choice=False):
    """Softmax attention: ``softmax(score(q, k) + bias, masked) @ v``.

    Args:
        q: (B, H, T, D) queries. k: (B, G, S, D) keys. v: (B, G, S, Dv) values; G divides H (GQA / MQA).
        score: "additive", "bilinear", "dot", "scaled_dot" (default) or "cosine".
        mask: bool, True = may attend, or a float additive mask (-inf = may not); broadcastable to (B, H, T, S).
        causal: a query sees no later key. With T < S the queries are the last T positions (cached decoding).
        window: local attention: a query sees itself and the ``window`` keys before it (and after it too when
            ``causal`` is False).
        global_tokens: key positions that attend to all and are attended by all (with ``window``: global + local).
        bias: float (broadcastable to (B, H, T, S)) added to the logits: ALiBi, T5 relative position bias.
        hard: None (soft attention), an int k (keep the top-k logits of each query, renormalise), "argmax"
            (one-hot on the best key; the gradient flows through the softmax: straight-through), or a
            ``qkv.ops.hard_attention.Selection``: hard attention (one key) or local attention (a window of keys
            around one, soft inside), picked by sampling (REINFORCE, Gumbel straight-through) or by the argmax.
        scale: the logit scale of "scaled_dot" (default D^-0.5) and "cosine" (default sqrt(D)).
        dropout_p: dropout on the attention weights (pass 0 at evaluation).
        return_weights: also return the weights (B, H, T, S).
        params: learned tensors for "additive" (W_q, W_k, v, b; or k_proj = k W_k^T in place of W_k, computed once
            for keys scored at every decoding step) and "bilinear" (W).
        softcap: logit soft-capping, ``c * tanh(logits / c)`` on the scores before bias and mask (Gemma 2): the
            logits stay in (-c, c). The fused kernel has no such step, so this takes the explicit path.

        return_choice: with a Selection, also return its ``Choice`` (the picks, their log-probabilities for
            REINFORCE, the entropies, alpha), last.

    Returns:
        out (B, H, T, Dv), or (out, weights) when ``return_weights``, then the Choice when ``return_choice``. A
        query with no key it may attend to gets zero output and zero weights rather than NaN.

    Example:

        >>> import torch
        >>> from qkv.ops import attention
        >>> q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 7, 8), torch.randn(2, 2, 7, 8)  # H=4, G=2: GQA
        >>> out, w = attention(q, k, v, return_weights=True)
        >>> out.shape, w.shape                          # (B, H, T, Dv), (B, H, T, S)
        (torch.Size([2, 4, 5, 8]), torch.Size([2, 4, 5, 7]))
        >>> torch.allclose(w.sum(-1), torch.ones(2, 4, 5)), torch.allclose(attention(q, k, v), out, atol=1e-5)
        (True, True)
    """
    _check(q, k, v, score, mask, bias, window, hard)
    _check_options(scale, softcap, hard, return_choice)
    if score == "scaled_dot" and not return_weights and hard is None and softcap is None:
        return _sdpa(q, k, v, mask, causal, window, global_tokens, bias, scale, dropout_p)

    k, v = _expand_kv(k, v, q.shape[1])
    logits, empty = _masked_logits(q, k, score=score, params=params, scale=scale, softcap=softcap, mask=mask,
                                   causal=causal, window=window, global_tokens=global_tokens, bias=bias, hard=hard)
    weights, choice = _weights(logits, empty, hard)
    weights = weights.to(v.dtype)
    if dropout_p > 0.0:
        weights_used = F.dropout(weights, p=dropout_p)
    else:
        weights_used = weights
    out = weights_used @ v  # (B, H, T, Dv)
    result = (out, weights) if return_weights else (out,)
    if return_choice:
        result = result + (choice,)
    return result if len(result) > 1 else out


def _check_options(scale, softcap, hard, return_choice) -> None:
    """scale and softcap finite (softcap > 0); return_choice only with a Selection to report."""
    _check_number("scale", scale)
    _check_number("softcap", softcap)
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be None or a number > 0, got {softcap!r}")
    if return_choice and not isinstance(hard, Selection):
        raise ValueError(f"return_choice=True needs hard=Selection(...) (a pick to report), got hard={hard!r}")


def _masked_logits(q, k, *, score, params, scale, softcap, mask, causal, window, global_tokens, bias, hard):
    """The explicit path's logits (B, H, T, S), in float32 at least, soft-capped, biased and masked (-inf where a
    query may not look; with an int ``hard``, below its k-th best too), and ``empty`` (B, H, T, 1): the rows left
    with no key, whose logits are set to 0 so the softmax stays finite (their weights are zeroed after it)."""
    T, S = q.shape[2], k.shape[2]
    logits = scores(q, k, score=score, params=params, scale=scale)  # (B, H, T, S)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    allowed, mask_bias = _combine_masks(T, S, q.device, mask, causal, window, global_tokens)
    for b in (mask_bias, bias):
        if b is not None:
            logits = logits + b
    # Softmax in float32 at least (bf16 / fp16 logits lose the small weights), cast back at the end.
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    if isinstance(hard, int):
        kth = logits.topk(min(hard, S), dim=-1).values[..., -1:]  # (B, H, T, 1): the k-th best logit
        logits = logits.masked_fill(logits < kth, float("-inf"))
    # Rows with no allowed key: softmax of all -inf is NaN. Give them finite logits, then zero their weights.
    empty = torch.isneginf(logits).all(dim=-1, keepdim=True)
    return logits.masked_fill(empty, 0.0), empty


def _weights(logits, empty, hard):
    """(weights (B, H, T, S), the Choice of a Selection or None) from masked logits: the softmax, a Selection's
    pick (hard / local attention), or the argmax one-hot; rows in ``empty`` get zero weights."""
    choice = None
    if isinstance(hard, Selection):
        weights, choice = select(logits, hard)
        weights = weights.masked_fill(empty, 0.0)
        none = empty.squeeze(-1)
        choice = Choice(choice.index.masked_fill(none, 0), choice.log_prob.masked_fill(none, 0.0),
                        choice.entropy.masked_fill(none, 0.0), choice.probs.masked_fill(empty, 0.0))
    else:
        weights = torch.softmax(logits, dim=-1).masked_fill(empty, 0.0)
    if hard == "argmax":
        one_hot = F.one_hot(weights.argmax(-1), logits.shape[-1]).to(weights.dtype).masked_fill(empty, 0.0)
        weights = one_hot + (weights - weights.detach())  # straight-through (Bengio et al. 2013); exactly one-hot
    return weights, choice


def _sdpa(q, k, v, mask, causal, window, global_tokens, bias, scale, dropout_p):
    """The fused path. Same semantics as the explicit one, including zero output for rows with no key."""
    T, S, H = q.shape[2], k.shape[2], q.shape[1]
    if causal and T == 1 and window is None:
        causal = False  # one query at the end of the keys sees them all: no mask to build (the decode step)
    gqa = k.shape[1] != H
    kwargs = {}
    if gqa and _SDPA_HAS_GQA:
        kwargs["enable_gqa"] = True
    elif gqa:
        k, v = _expand_kv(k, v, H)
    if scale is not None:
        kwargs["scale"] = scale
    # The common cases need no mask tensor at all: let the kernel do causality itself (its causal mask is
    # top-left aligned, which matches ours only when T == S).
    if mask is None and bias is None and window is None and global_tokens is None and (not causal or T == S):
        out = _fused(q, k, v, dropout_p=dropout_p, is_causal=causal, **kwargs)
        # The fused CPU kernel returns 0 for a query holding NaN where the explicit softmax (and every masked path)
        # gives NaN. Adding 0 * sum(q) brings the NaN back, so a bad input shows on every path (x + 0 is exact).
        return out + q.sum(-1, keepdim=True) * 0

    allowed, mask_bias = _combine_masks(T, S, q.device, mask, causal, window, global_tokens)
    empty = None if allowed is None else ~allowed.any(dim=-1, keepdim=True)  # (.., T, 1): queries with no key
    biases = [b for b in (mask_bias, bias) if b is not None]
    if biases:
        attn_mask = sum(biases[1:], biases[0]).to(q.dtype)
        if allowed is not None:
            attn_mask = attn_mask.masked_fill(~allowed, float("-inf"))
    else:
        attn_mask = allowed
    if empty is not None:
        # Give key-less queries every key with logit 0 (finite, no NaN in forward or backward), zero them after.
        attn_mask = attn_mask.masked_fill(empty, 0.0) if biases else attn_mask | empty
    out = _fused(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, **kwargs)
    return out if empty is None else out.masked_fill(empty, 0.0)


# Up to this many keys, PyTorch's fused CPU kernel runs forward + backward of bf16 attention 1.1x to 2.2x slower than
# of float32 attention (measured on an AVX-512 CPU without AMX, torch 2.13, T = 32 .. 128, D = 32 .. 128; fp16 2.9x
# to 5x); from 192 keys on, bf16 and float32 are within ~15% either way, and bf16 is faster at 512 and beyond.
CPU_FLOAT32_MAX_KEYS = 128


def _fused(q, k, v, **kwargs):
    """``F.scaled_dot_product_attention``, in float32 for short half-precision attention on CPU that needs a gradient
    (mixed-precision training): faster there, and the softmax in float32 as everywhere else; cast back after."""
    if (q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16) and k.shape[2] <= CPU_FLOAT32_MAX_KEYS
            and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
        mask = kwargs.get("attn_mask")
        if mask is not None and mask.is_floating_point():
            kwargs["attn_mask"] = mask.float()
        with torch.autocast("cpu", enabled=False):  # autocast would cast the float32 inputs straight back
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kwargs).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)
