"""Weight maps for decoder-only checkpoints: GPT-2, and Llama with its GQA relatives (Mistral, Qwen2)."""
from __future__ import annotations

from ..config import ModelConfig
from .hf import Converter, Pair, Weights, hf_get, map_from_hf, map_to_hf, register, rope_theta

_ACT_FROM_HF = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu",
                "silu": "silu", "swish": "silu"}
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
        activation=_ACT_FROM_HF[hf.get("activation_function", "gelu_new")], bias=True,
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
    return dict(vocab_size=cfg.vocab_size, n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads,
                n_inner=cfg.d_ff, n_positions=cfg.max_positions, layer_norm_epsilon=cfg.norm_eps,
                activation_function=_ACT_TO_HF[cfg.activation], tie_word_embeddings=cfg.tie_embeddings,
                bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id, resid_pdrop=0.0, embd_pdrop=0.0,
                attn_pdrop=0.0)


_gpt2_from_hf, _gpt2_to_hf = _lm_maps(_gpt2_pairs, "transformer.")

register(Converter("gpt2", "GPT2LMHeadModel", _gpt2_config, _gpt2_from_hf, _gpt2_config_to_hf, _gpt2_to_hf))


# -- Llama, Mistral, Qwen2 -----------------------------------------------------------------------------------------

def _llama_config(hf: dict) -> ModelConfig:
    model_type = hf["model_type"]
    act = hf.get("hidden_act", "silu")
    gated = {"silu": "swiglu", "gelu": "geglu", "gelu_pytorch_tanh": "geglu_tanh", "relu": "reglu"}
    if act not in gated:
        raise ValueError(f"{model_type}: hidden_act {act!r} is not supported; supported: {sorted(gated)}")
    qkv_bias = True if model_type == "qwen2" else bool(hf.get("attention_bias", False))
    window = None
    if hf.get("sliding_window") and (model_type == "mistral" or hf.get("use_sliding_window")):
        # Hugging Face's window counts the token itself; qkv's counts the tokens before it.
        window = int(hf["sliding_window"]) - 1
    return ModelConfig(
        family="decoder", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"], n_kv_heads=hf_get(hf, "num_key_value_heads", default=hf["num_attention_heads"]),
        head_dim=hf.get("head_dim"), d_ff=hf["intermediate_size"], max_positions=hf.get("max_position_embeddings", 2048),
        position="rope", rope_base=rope_theta(hf), norm="rms", norm_eps=hf.get("rms_norm_eps", 1e-6), prenorm=True,
        activation=gated[act], bias=qkv_bias, out_bias=False if model_type == "qwen2" else qkv_bias,
        ffn_bias=bool(hf.get("mlp_bias", False)), window=window,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"), pad_token_id=hf.get("pad_token_id"), extra={"hf_model_type": model_type})


def _llama_pairs(cfg: ModelConfig) -> list[Pair]:
    H, G, D, F = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
    pairs = [Pair("embed.tokens.weight", "embed_tokens.weight"), Pair("norm.weight", "norm.weight")]
    for i in range(cfg.n_layers):
        o, t = f"blocks.{i}.", f"layers.{i}."
        pairs += [Pair(o + "norm_mixer.weight", t + "input_layernorm.weight"),
                  Pair(o + "mixer.qkv.weight", tuple(t + f"self_attn.{p}_proj.weight" for p in "qkv"),
                       sizes=(H * D, G * D, G * D)),
                  Pair(o + "mixer.out.weight", t + "self_attn.o_proj.weight"),
                  Pair(o + "norm_ffn.weight", t + "post_attention_layernorm.weight"),
                  Pair(o + "ffn.w_in.weight", (t + "mlp.gate_proj.weight", t + "mlp.up_proj.weight"), sizes=(F, F)),
                  Pair(o + "ffn.w_out.weight", t + "mlp.down_proj.weight")]
        if cfg.bias:
            pairs.append(Pair(o + "mixer.qkv.bias", tuple(t + f"self_attn.{p}_proj.bias" for p in "qkv"),
                              sizes=(H * D, G * D, G * D)))
        if cfg.out_bias:
            pairs.append(Pair(o + "mixer.out.bias", t + "self_attn.o_proj.bias"))
        if cfg.ffn_bias:
            pairs += [Pair(o + "ffn.w_in.bias", (t + "mlp.gate_proj.bias", t + "mlp.up_proj.bias"), sizes=(F, F)),
                      Pair(o + "ffn.w_out.bias", t + "mlp.down_proj.bias")]
    return pairs


def _llama_config_to_hf(cfg: ModelConfig) -> dict:
    if cfg.activation != "swiglu" or cfg.position != "rope" or cfg.norm != "rms":
        raise ValueError("only Llama-shaped models (rope, rms, swiglu) export as llama")
    return dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
                num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
                intermediate_size=cfg.d_ff, max_position_embeddings=cfg.max_positions, rms_norm_eps=cfg.norm_eps,
                rope_theta=cfg.rope_base, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base},
                hidden_act="silu", attention_bias=cfg.bias, mlp_bias=cfg.ffn_bias,
                tie_word_embeddings=cfg.tie_embeddings, bos_token_id=cfg.bos_token_id,
                eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id)


_llama_from_hf, _llama_to_hf = _lm_maps(_llama_pairs, "model.")

register(Converter("llama", "LlamaForCausalLM", _llama_config, _llama_from_hf, _llama_config_to_hf, _llama_to_hf))
register(Converter("mistral", "MistralForCausalLM", _llama_config, _llama_from_hf))
register(Converter("qwen2", "Qwen2ForCausalLM", _llama_config, _llama_from_hf))
