"""Weight maps for decoder-only checkpoints: GPT-2, and Llama with its relatives: Mistral, Qwen2, Qwen3 (q/k norm),
Gemma 2 and Gemma 3 (alternating sliding-window and full layers, sandwich norms, (1 + w) RMSNorm, soft-capping)."""
from __future__ import annotations

from ..config import ModelConfig
from dataclasses import dataclass

from .hf_maps import (ACT_FROM_HF, Converter, Pair, Weights, hf_get, map_from_hf, map_to_hf, rope_parameters,
                      rope_parameters_to_hf)

_ACT_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}


def _lm_maps(pairs_for, prefix: str):
    """from_hf / to_hf for a causal LM whose body sits under ``prefix`` and whose head is ``lm_head``."""
    def from_hf(state, cfg):
        out = map_from_hf(pairs_for(cfg), Weights(state, prefixes=(prefix,)))
        if not cfg.tie_embeddings:
            out["head.weight"] = Weights(state)("lm_head.weight")
        return out

    def to_hf(state, cfg):
        out = {prefix + k: v for k, v in map_to_hf(pairs_for(cfg), state).items()}
        if not cfg.tie_embeddings:  # a tied head is the embedding matrix: transformers re-ties it on load
            out["lm_head.weight"] = state["head.weight"]
        return out
    return from_hf, to_hf


# -- GPT-2 ---------------------------------------------------------------------------------------------------------

def _gpt2_config(hf: dict) -> ModelConfig:
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise ValueError("GPT-2 variants with scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn "
                         "are not supported")
    d = hf["n_embd"]
    return ModelConfig(
        family="decoder", vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["n_layer"], n_heads=hf["n_head"],
        d_ff=hf.get("n_inner") or 4 * d, max_positions=hf["n_positions"], position="learned", norm="layer",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5), prenorm=True,
        activation=ACT_FROM_HF[hf.get("activation_function", "gelu_new")], bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True), bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"), extra={"hf_model_type": "gpt2"})


def _gpt2_pairs(cfg: ModelConfig) -> list[Pair]:
    pairs = [Pair("embed.tokens.weight", "wte.weight"), Pair("embed.positions.weight", "wpe.weight"),
             Pair("norm.weight", "ln_f.weight"), Pair("norm.bias", "ln_f.bias")]
    for i in range(cfg.n_layers):
        o, t = f"blocks.{i}.", f"h.{i}."
        pairs += [Pair(o + "norm_mixer.weight", t + "ln_1.weight"), Pair(o + "norm_mixer.bias", t + "ln_1.bias"),
                  Pair(o + "mixer.qkv.weight", t + "attn.c_attn.weight", transpose=True),
                  Pair(o + "mixer.qkv.bias", t + "attn.c_attn.bias"),
                  Pair(o + "mixer.out.weight", t + "attn.c_proj.weight", transpose=True),
                  Pair(o + "mixer.out.bias", t + "attn.c_proj.bias"),
                  Pair(o + "norm_ffn.weight", t + "ln_2.weight"), Pair(o + "norm_ffn.bias", t + "ln_2.bias"),
                  Pair(o + "ffn.w_in.weight", t + "mlp.c_fc.weight", transpose=True),
                  Pair(o + "ffn.w_in.bias", t + "mlp.c_fc.bias"),
                  Pair(o + "ffn.w_out.weight", t + "mlp.c_proj.weight", transpose=True),
                  Pair(o + "ffn.w_out.bias", t + "mlp.c_proj.bias")]
    return pairs


def _gpt2_config_to_hf(cfg: ModelConfig) -> dict:
    if cfg.activation not in _ACT_TO_HF or cfg.norm != "layer":
        raise ValueError(f"only GPT-2-shaped models (decoder, LayerNorm, activation in {sorted(_ACT_TO_HF)}) export "
                         f"as gpt2, got norm={cfg.norm!r}, activation={cfg.activation!r}")
    return dict(vocab_size=cfg.vocab_size, n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads,
                n_inner=cfg.d_ff, n_positions=cfg.max_positions, layer_norm_epsilon=cfg.norm_eps,
                activation_function=_ACT_TO_HF[cfg.activation], tie_word_embeddings=cfg.tie_embeddings,
                bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, resid_pdrop=0.0, embd_pdrop=0.0,
                attn_pdrop=0.0)


_gpt2_from_hf, _gpt2_to_hf = _lm_maps(_gpt2_pairs, "transformer.")

_GPT2 = Converter("gpt2", "GPT2LMHeadModel", "decoder", _gpt2_config, _gpt2_from_hf, _gpt2_config_to_hf, _gpt2_to_hf)


# -- Llama, Mistral, Qwen2, Qwen3 ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class LlamaLike:
    """What one Llama-like ``model_type`` fixes that its config.json does not say (transformers' modeling code
    for each). qkv_bias: q/k/v projections always have biases (Qwen2), None: ``attention_bias`` says. out_bias:
    the output projection's bias, None: as q/k/v's. qk_norm: an RMSNorm on each head's queries and keys (Qwen3,
    Gemma 3). all_sliding: ``sliding_window`` covers every layer (Mistral). windows: what an export can say about
    sliding windows: "none" (Llama has none), "all" (one window for every layer), "layers" (per-layer types).
    local_rope_base: the local layers' RoPE base when config.json omits it (Gemma 3)."""
    qkv_bias: bool | None = None
    out_bias: bool | None = None
    qk_norm: bool = False
    all_sliding: bool = False
    windows: str = "layers"
    local_rope_base: float | None = None


LLAMA_LIKE = {"llama": LlamaLike(windows="none"), "mistral": LlamaLike(all_sliding=True, windows="all"),
              "qwen2": LlamaLike(qkv_bias=True, out_bias=False), "qwen3": LlamaLike(qk_norm=True),
              "gemma2": LlamaLike(), "gemma3_text": LlamaLike(qk_norm=True, local_rope_base=10000.0)}

_GATED = {"silu": "swiglu", "gelu": "geglu", "gelu_pytorch_tanh": "geglu_tanh", "gelu_new": "geglu_tanh",
          "relu": "reglu"}


def _gated_activation(hf: dict) -> str:
    act = hf_get(hf, "hidden_activation", "hidden_act", default="silu")
    if act not in _GATED:
        raise ValueError(f"{hf['model_type']}: hidden_act {act!r} is not supported; supported: {sorted(_GATED)}")
    return _GATED[act]


def _shortest_period(letters: str) -> str:
    """The shortest prefix that, repeated, spells ``letters`` ("WAWAWA" -> "WA"): layer_pattern's compact form."""
    n = len(letters)
    return next(letters[:p] for p in range(1, n + 1) if all(letters[i] == letters[i % p] for i in range(n)))


def _windows(hf: dict, *, all_sliding: bool = False) -> dict:
    """``window`` / ``layer_pattern`` from ``layer_types`` ("sliding_attention" / "full_attention" per layer) and
    ``sliding_window``, or from older configs: every layer (``all_sliding``, Mistral) or the layers from
    ``max_window_layers`` on (Qwen2 with ``use_sliding_window``). transformers' window counts the token itself;
    qkv's counts the tokens before it."""
    n, size = hf["num_hidden_layers"], hf.get("sliding_window")
    types = hf.get("layer_types")
    if types is None:
        if size and all_sliding:
            types = ["sliding_attention"] * n
        elif size and hf.get("use_sliding_window"):
            types = ["sliding_attention" if i >= hf.get("max_window_layers", 28) else "full_attention" for i in range(n)]
        else:
            types = ["full_attention"] * n
    if len(types) != n or set(types) - {"sliding_attention", "full_attention"}:
        raise ValueError(f"{hf['model_type']}: layer_types must list 'sliding_attention' / 'full_attention' for each "
                         f"of the {n} layers, got {types}")
    if not size or "sliding_attention" not in types:
        return {}
    letters = "".join("W" if t == "sliding_attention" else "A" for t in types)
    window = int(size) - 1
    return {"window": window} if set(letters) == {"W"} else {"window": window, "layer_pattern": _shortest_period(letters)}


def _llama_config(hf: dict) -> ModelConfig:
    model_type = hf["model_type"]
    facts = LLAMA_LIKE[model_type]
    qkv_bias = facts.qkv_bias if facts.qkv_bias is not None else bool(hf.get("attention_bias", False))
    theta, scaling = rope_parameters(hf)
    return ModelConfig(
        family="decoder", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"], n_kv_heads=hf_get(hf, "num_key_value_heads", default=hf["num_attention_heads"]),
        head_dim=hf.get("head_dim"), d_ff=hf["intermediate_size"], max_positions=hf.get("max_position_embeddings", 2048),
        position="rope", rope_base=theta, rope_scaling=scaling, norm="rms", norm_eps=hf.get("rms_norm_eps", 1e-6),
        prenorm=True, activation=_gated_activation(hf), bias=qkv_bias,
        out_bias=qkv_bias if facts.out_bias is None else facts.out_bias, ffn_bias=bool(hf.get("mlp_bias", False)),
        qk_norm=facts.qk_norm, **_windows(hf, all_sliding=facts.all_sliding),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"), pad_token_id=hf.get("pad_token_id"), extra={"hf_model_type": model_type})


def _llama_pairs(cfg: ModelConfig, *, norms=("input_layernorm", "post_attention_layernorm")) -> list[Pair]:
    """Llama's names. ``norms``: the checkpoint's names for the pre-mixer and pre-FFN norms, then (sandwich norms)
    for the post-mixer and post-FFN ones."""
    H, G, D, F = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
    pairs = [Pair("embed.tokens.weight", "embed_tokens.weight"), Pair("norm.weight", "norm.weight")]
    ours = ("norm_mixer", "norm_ffn", "post_norm_mixer", "post_norm_ffn")
    for i in range(cfg.n_layers):
        o, t = f"blocks.{i}.", f"layers.{i}."
        pairs += [Pair(o + f"{a}.weight", t + f"{b}.weight") for a, b in zip(ours, norms)]
        pairs += [Pair(o + "mixer.qkv.weight", tuple(t + f"self_attn.{p}_proj.weight" for p in "qkv"),
                       sizes=(H * D, G * D, G * D)),
                  Pair(o + "mixer.out.weight", t + "self_attn.o_proj.weight"),
                  Pair(o + "ffn.w_in.weight", (t + "mlp.gate_proj.weight", t + "mlp.up_proj.weight"), sizes=(F, F)),
                  Pair(o + "ffn.w_out.weight", t + "mlp.down_proj.weight")]
        if cfg.qk_norm:
            pairs += [Pair(o + "mixer.q_norm.weight", t + "self_attn.q_norm.weight"),
                      Pair(o + "mixer.k_norm.weight", t + "self_attn.k_norm.weight")]
        if cfg.bias:
            pairs.append(Pair(o + "mixer.qkv.bias", tuple(t + f"self_attn.{p}_proj.bias" for p in "qkv"),
                              sizes=(H * D, G * D, G * D)))
        if cfg.out_bias:
            pairs.append(Pair(o + "mixer.out.bias", t + "self_attn.o_proj.bias"))
        if cfg.ffn_bias:
            pairs += [Pair(o + "ffn.w_in.bias", (t + "mlp.gate_proj.bias", t + "mlp.up_proj.bias"), sizes=(F, F)),
                      Pair(o + "ffn.w_out.bias", t + "mlp.down_proj.bias")]
    return pairs


def _layer_types(cfg: ModelConfig) -> dict:
    """transformers' ``sliding_window`` / ``layer_types`` for a qkv config's windows (Mistral: the window alone)."""
    if cfg.window is None:
        return {}
    if LLAMA_LIKE[cfg.extra.get("hf_model_type", "llama")].windows == "all":
        return {"sliding_window": cfg.window + 1}
    types = ["sliding_attention" if cfg.layer_mixer(i)[1] is not None else "full_attention" for i in range(cfg.n_layers)]
    return {"sliding_window": cfg.window + 1, "use_sliding_window": True, "max_window_layers": 0, "layer_types": types}


# The fields a Llama-like export needs as they are (transformers' Llama has no other choice for them).
_LLAMA_SHAPE = dict(activation="swiglu", position="rope", norm="rms", norm_offset=0.0, sandwich_norm=False,
                    attn_softcap=None, logit_softcap=None, scale_embeddings=False, mixer="attention")


def _llama_config_to_hf(cfg: ModelConfig) -> dict:
    model_type = cfg.extra.get("hf_model_type", "llama")
    facts = LLAMA_LIKE[model_type]
    shape = {**_LLAMA_SHAPE, "qk_norm": facts.qk_norm}
    if any(getattr(cfg, name) != value for name, value in shape.items()) or \
            (cfg.layer_pattern and set(cfg.layer_pattern) - {"A", "W"}) or cfg.rotary_dim not in (None, cfg.head_dim):
        raise ValueError(f"only Llama-shaped models (rope, rms, swiglu, softmax attention) export as {model_type}")
    if cfg.window is not None and facts.windows == "none":
        raise ValueError(f"{model_type} has no sliding-window layers: set extra['hf_model_type'] to 'mistral' or "
                         f"'qwen3'")
    if cfg.layer_pattern is not None and facts.windows == "all":
        raise ValueError(f"{model_type}'s window covers every layer: a layer_pattern exports as qwen3")
    out = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
               num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
               intermediate_size=cfg.d_ff, max_position_embeddings=cfg.max_positions, rms_norm_eps=cfg.norm_eps,
               rope_theta=cfg.rope_base, rope_parameters=rope_parameters_to_hf(cfg),
               hidden_act="silu", attention_bias=cfg.bias, mlp_bias=cfg.ffn_bias,
               tie_word_embeddings=cfg.tie_embeddings, bos_token_id=cfg.bos_token_id,
               eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id, **_layer_types(cfg))
    if cfg.rope_scaling and cfg.rope_scaling["rope_type"] == "dynamic":  # its context is max_position_embeddings
        out["max_position_embeddings"] = cfg.rope_scaling["original_max_position_embeddings"]
    return out


_llama_from_hf, _llama_to_hf = _lm_maps(_llama_pairs, "model.")


_LLAMAS = (
    Converter("llama", "LlamaForCausalLM", "decoder", _llama_config, _llama_from_hf, _llama_config_to_hf, _llama_to_hf),
    Converter("mistral", "MistralForCausalLM", "decoder", _llama_config, _llama_from_hf, _llama_config_to_hf,
              _llama_to_hf),
    Converter("qwen2", "Qwen2ForCausalLM", "decoder", _llama_config, _llama_from_hf),
    Converter("qwen3", "Qwen3ForCausalLM", "decoder", _llama_config, _llama_from_hf, _llama_config_to_hf, _llama_to_hf))


# -- Gemma 2, Gemma 3 (text) ---------------------------------------------------------------------------------------

_GEMMA_NORMS = ("input_layernorm", "pre_feedforward_layernorm", "post_attention_layernorm", "post_feedforward_layernorm")


def _gemma_config(hf: dict) -> ModelConfig:
    """Gemma 2 (Gemma Team 2024, sec. 2) and Gemma 3's text model: local (sliding-window) and global layers
    alternating, a norm before and after each sublayer, RMSNorm gains stored as w and applied as (1 + w), embeddings
    scaled by sqrt(d_model), queries scaled by query_pre_attn_scalar^-0.5, and soft-capped logits. Gemma 3 adds q/k
    norms and a RoPE base of its own for the local layers."""
    model_type = hf["model_type"]
    per_layer = hf.get("rope_parameters") or {}
    local = {}
    if "full_attention" in per_layer or "sliding_attention" in per_layer:  # transformers >= 5: one dict per layer type
        theta, scaling = rope_parameters(hf, per_layer.get("full_attention") or {})
        local_theta, local_scaling = rope_parameters(hf, per_layer.get("sliding_attention") or {})
        if local_scaling is not None:
            raise ValueError(f"{model_type}: RoPE scaling on the sliding-window layers is not supported")
        local = {"rope_local_base": local_theta}
    else:
        theta, scaling = rope_parameters(hf)
        if hf.get("rope_local_base_freq") is not None:
            local = {"rope_local_base": float(hf["rope_local_base_freq"])}
    facts = LLAMA_LIKE[model_type]
    if facts.local_rope_base is not None and "rope_local_base" not in local:
        local = {"rope_local_base": facts.local_rope_base}
    if hf.get("use_bidirectional_attention"):
        raise ValueError(f"{model_type}: bidirectional attention (use_bidirectional_attention) is not supported")
    bias = bool(hf.get("attention_bias", False))
    return ModelConfig(
        family="decoder", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"], n_kv_heads=hf_get(hf, "num_key_value_heads", default=hf["num_attention_heads"]),
        head_dim=hf.get("head_dim"), d_ff=hf["intermediate_size"], max_positions=hf.get("max_position_embeddings", 8192),
        position="rope", rope_base=theta, rope_scaling=scaling, **local, norm="rms",
        norm_eps=hf.get("rms_norm_eps", 1e-6), norm_offset=1.0, sandwich_norm=True, qk_norm=facts.qk_norm,
        prenorm=True, activation=_gated_activation(hf), bias=bias, out_bias=bias, ffn_bias=False,
        attn_scale=float(hf.get("query_pre_attn_scalar", 256)) ** -0.5, attn_softcap=hf.get("attn_logit_softcapping"),
        logit_softcap=hf.get("final_logit_softcapping"), scale_embeddings=True, **_windows(hf),
        tie_embeddings=hf.get("tie_word_embeddings", True) is not False, bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"), pad_token_id=hf.get("pad_token_id"), extra={"hf_model_type": model_type})


def _gemma_pairs(cfg: ModelConfig) -> list[Pair]:
    return _llama_pairs(cfg, norms=_GEMMA_NORMS)


_gemma_from_hf, _gemma_to_hf = _lm_maps(_gemma_pairs, "model.")

# The architectures this module maps, as qkv.hub.hf's table lists them.
CONVERTERS = (_GPT2, *_LLAMAS,
              Converter("gemma2", "Gemma2ForCausalLM", "decoder", _gemma_config, _gemma_from_hf),
              Converter("gemma3_text", "Gemma3ForCausalLM", "decoder", _gemma_config, _gemma_from_hf))
