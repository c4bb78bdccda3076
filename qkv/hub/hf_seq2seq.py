"""Weight maps for encoder-decoder checkpoints: T5 (v1.0 ReLU and v1.1 gated), Marian (MarianMTModel) and MBART.

Hugging Face keeps Q, K and V as separate matrices; qkv fuses them into one projection laid out [W_Q; W_K; W_V]
(cross-attention applies the W_Q rows to the decoder and the W_K, W_V rows to the encoder output), so each
attention is one concatenating Pair. Source, target and output embeddings are one table in qkv.
"""
from __future__ import annotations

from ..config import ModelConfig
from ..models.positions import position_kind
from .hf_maps import ACT_FROM_HF, Converter, Pair, Weights, hf_get, map_from_hf, map_to_hf

_GATED_FROM_HF = {"relu": "reglu", "gelu": "geglu", "gelu_new": "geglu_tanh", "gelu_pytorch_tanh": "geglu_tanh",
                  "silu": "swiglu", "swish": "swiglu"}
# The way back: T5's "gated-gelu" means the tanh form; MBART and Marian name SiLU "swish"
_T5_FFN_TO_HF = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "silu", "reglu": "gated-relu",
                 "geglu_tanh": "gated-gelu", "swiglu": "gated-silu"}
_ACT_TO_HF = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "swish"}


def _activation(model_type: str, act: str, *, gated: bool = False) -> str:
    table = _GATED_FROM_HF if gated else ACT_FROM_HF
    if act not in table:
        raise ValueError(f"{model_type}: activation {'gated-' if gated else ''}{act!r} is not supported; "
                         f"supported: {sorted(table)}")
    return table[act]


def _attention_pair(ours: str, theirs: str, names: tuple[str, str, str, str], cfg: ModelConfig, *,
                    bias: bool) -> list[Pair]:
    """One attention layer: theirs + q/k/v names fused into ours + 'qkv', the output projection into 'out'."""
    q, k, v, o = names
    H, D = cfg.n_heads, cfg.head_dim
    pairs = [Pair(ours + "qkv.weight", tuple(f"{theirs}{n}.weight" for n in (q, k, v)), sizes=(H * D,) * 3),
             Pair(ours + "out.weight", f"{theirs}{o}.weight")]
    if bias:
        pairs += [Pair(ours + "qkv.bias", tuple(f"{theirs}{n}.bias" for n in (q, k, v)), sizes=(H * D,) * 3),
                  Pair(ours + "out.bias", f"{theirs}{o}.bias")]
    return pairs


def _norm_pair(ours: str, theirs: str, *, bias: bool) -> list[Pair]:
    return [Pair(ours + ".weight", theirs + ".weight")] + ([Pair(ours + ".bias", theirs + ".bias")] if bias else [])


def _tied_tokens(cfg: ModelConfig, table) -> dict:
    """The one token table under every qkv name that shares it (and the head when tied)."""
    out = {"encoder.embed.tokens.weight": table, "decoder.embed.tokens.weight": table}
    if cfg.tie_embeddings:
        out["head.weight"] = table
    return out


# -- T5 ------------------------------------------------------------------------------------------------------------

def _t5_config(hf: dict) -> ModelConfig:
    proj = hf.get("feed_forward_proj", "relu")
    gated = proj.startswith("gated-")
    act = proj.split("-", 1)[1] if gated else proj
    # transformers always ties T5's head now and records whether to scale in scale_decoder_outputs; older
    # configs say tie_word_embeddings=False for the v1.1 checkpoints, whose head is untied and unscaled.
    tied = hf.get("tie_word_embeddings", True) is not False
    scale = hf.get("scale_decoder_outputs", tied)
    dropout = float(hf.get("dropout_rate", 0.1))
    return ModelConfig(
        family="encoder_decoder", vocab_size=hf["vocab_size"], d_model=hf["d_model"], n_layers=hf["num_layers"],
        n_decoder_layers=hf_get(hf, "num_decoder_layers", default=hf["num_layers"]), n_heads=hf["num_heads"],
        head_dim=hf["d_kv"], d_ff=hf["d_ff"], max_positions=hf.get("n_positions", 512), position="relative",
        relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128), norm="rms",
        norm_eps=hf.get("layer_norm_epsilon", 1e-6), prenorm=True,
        # "gated-gelu" has always meant the tanh approximation (gelu_new) in T5 v1.1
        activation=_activation("t5", "gelu_new" if proj == "gated-gelu" else act, gated=gated), bias=False,
        score="dot", attn_scale=1.0, tie_embeddings=tied, scale_head=bool(scale), dropout=dropout,
        ffn_dropout=dropout, pad_token_id=hf.get("pad_token_id", 0), eos_token_id=hf.get("eos_token_id", 1),
        decoder_start_token_id=hf_get(hf, "decoder_start_token_id", "pad_token_id", default=0),
        extra={"hf_model_type": "t5"})


def _t5_pairs(cfg: ModelConfig) -> list[Pair]:
    qkvo = ("q", "k", "v", "o")
    pairs = [Pair("encoder.norm.weight", "encoder.final_layer_norm.weight"),
             Pair("decoder.norm.weight", "decoder.final_layer_norm.weight")]
    for side, n in (("encoder", cfg.n_layers), ("decoder", cfg.n_decoder_layers)):
        # the bias table lives in block 0 and is shared by the whole stack (Raffel et al. 2020, sec. 2.1)
        pairs.append(Pair(f"{side}.relative.relative.bias.weight",
                          f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"))
        for i in range(n):
            o, t = f"{side}.blocks.{i}.", f"{side}.block.{i}.layer."
            pairs += _attention_pair(o + "mixer.", t + "0.SelfAttention.", qkvo, cfg, bias=False)
            pairs.append(Pair(o + "norm_mixer.weight", t + "0.layer_norm.weight"))
            ffn = t + ("2" if side == "decoder" else "1")
            if side == "decoder":
                pairs += _attention_pair(o + "cross.", t + "1.EncDecAttention.", qkvo, cfg, bias=False)
                pairs.append(Pair(o + "norm_cross.weight", t + "1.layer_norm.weight"))
            if cfg.activation in _GATED_FROM_HF.values():  # v1.1: [W_gate; W_up] = [wi_0; wi_1]
                pairs.append(Pair(o + "ffn.w_in.weight", (f"{ffn}.DenseReluDense.wi_0.weight",
                                                          f"{ffn}.DenseReluDense.wi_1.weight"), sizes=(cfg.d_ff,) * 2))
            else:
                pairs.append(Pair(o + "ffn.w_in.weight", f"{ffn}.DenseReluDense.wi.weight"))
            pairs += [Pair(o + "ffn.w_out.weight", f"{ffn}.DenseReluDense.wo.weight"),
                      Pair(o + "norm_ffn.weight", f"{ffn}.layer_norm.weight")]
    return pairs


def _t5_from_hf(state, cfg):
    w = Weights(state)
    out = map_from_hf(_t5_pairs(cfg), w)
    shared = w.get("shared.weight")
    if shared is None:
        shared = w("encoder.embed_tokens.weight")
    out.update(_tied_tokens(cfg, shared))
    if not cfg.tie_embeddings:  # the v1.1 checkpoints keep their own output matrix
        out["head.weight"] = w.get("lm_head.weight") if "lm_head.weight" in w else shared.clone()
    return out


def _require(cfg: ModelConfig, model_type: str, **fields) -> None:
    wrong = {k: getattr(cfg, k) for k, v in fields.items() if getattr(cfg, k) != v}
    if wrong:
        raise ValueError(f"this model does not have the {model_type} layout: it needs {fields}, has {wrong}")


def _t5_config_to_hf(cfg: ModelConfig) -> dict:
    _require(cfg, "t5", position="relative", norm="rms", prenorm=True, bias=False, out_bias=False,
             ffn_bias=False, score="dot", attn_scale=1.0, n_kv_heads=cfg.n_heads, scale_embeddings=False,
             embed_norm=False, head_bias=False, final_norm=True, tie_embeddings=True)
    if cfg.activation not in _T5_FFN_TO_HF:
        raise ValueError(f"t5: activation {cfg.activation!r} has no feed_forward_proj; "
                         f"exportable: {sorted(_T5_FFN_TO_HF)}")
    # transformers >= 5 always ties T5's head and reads the scale from tie_word_embeddings / scale_decoder_outputs
    return dict(vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.head_dim, d_ff=cfg.d_ff,
                num_layers=cfg.n_layers, num_decoder_layers=cfg.n_decoder_layers, num_heads=cfg.n_heads,
                n_positions=cfg.max_positions,
                relative_attention_num_buckets=cfg.relative_buckets,
                relative_attention_max_distance=cfg.relative_max_distance, layer_norm_epsilon=cfg.norm_eps,
                feed_forward_proj=_T5_FFN_TO_HF[cfg.activation], tie_word_embeddings=cfg.scale_head,
                scale_decoder_outputs=cfg.scale_head, dropout_rate=cfg.dropout, is_encoder_decoder=True,
                pad_token_id=cfg.pad_token_id, eos_token_id=cfg.eos_token_id,
                decoder_start_token_id=cfg.decoder_start_token_id)


def _t5_to_hf(state, cfg):
    out = map_to_hf(_t5_pairs(cfg), state)
    out["shared.weight"] = state["encoder.embed.tokens.weight"]
    return out


_T5 = Converter("t5", "T5ForConditionalGeneration", "encoder_decoder", _t5_config, _t5_from_hf, _t5_config_to_hf,
                _t5_to_hf)


# -- MBART and Marian: the BART layout ----------------------------------------------------------------------------

# What distinguishes the two, as qkv fields (Liu et al. 2020; Junczys-Dowmunt et al. 2018).
_BART_LIKE = {
    "mbart": dict(position="learned", position_offset=2, prenorm=True, embed_norm=True, final_norm=True),
    # Marian's positions are fixed sinusoids starting at 0, sines in the first half, cosines in the second
    "marian": dict(position="sinusoidal", sinusoidal_interleaved=False, prenorm=False, embed_norm=False,
                   final_norm=False),
}


def _bart_like_config(hf: dict) -> ModelConfig:
    model_type = hf["model_type"]
    for enc, dec in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if hf.get(enc) != hf.get(dec, hf.get(enc)):
            raise ValueError(f"{model_type}: {enc} ({hf.get(enc)}) and {dec} ({hf.get(dec)}) differ; qkv's "
                             f"encoder-decoder uses one value for both")
    if not hf.get("share_encoder_decoder_embeddings", True) or \
            hf_get(hf, "decoder_vocab_size", default=hf["vocab_size"]) != hf["vocab_size"]:
        raise ValueError(f"{model_type}: separate source and target vocabularies are not supported "
                         f"(share_encoder_decoder_embeddings must be true)")
    return ModelConfig(
        family="encoder_decoder", vocab_size=hf["vocab_size"], d_model=hf["d_model"],
        n_layers=hf["encoder_layers"], n_decoder_layers=hf["decoder_layers"], n_heads=hf["encoder_attention_heads"],
        d_ff=hf["encoder_ffn_dim"], max_positions=hf.get("max_position_embeddings", 1024), norm="layer",
        norm_eps=1e-5, activation=_activation(model_type, hf.get("activation_function", "gelu")), bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True) is not False,
        scale_embeddings=bool(hf.get("scale_embedding", False)), head_bias=True,
        dropout=float(hf.get("dropout", 0.1)), attn_dropout=float(hf.get("attention_dropout", 0.0)),
        ffn_dropout=float(hf.get("activation_dropout", 0.0)), pad_token_id=hf.get("pad_token_id"),
        bos_token_id=hf.get("bos_token_id"), eos_token_id=hf.get("eos_token_id"),
        decoder_start_token_id=hf.get("decoder_start_token_id"), extra={"hf_model_type": model_type},
        **_BART_LIKE[model_type])


def _bart_like_pairs(cfg: ModelConfig) -> list[Pair]:
    qkvo = ("q_proj", "k_proj", "v_proj", "out_proj")
    pairs = []
    for side, n in (("encoder", cfg.n_layers), ("decoder", cfg.n_decoder_layers)):
        if position_kind(cfg).table:  # learned positions: a weight (MBART); Marian's sinusoids are none
            pairs.append(Pair(f"{side}.embed.positions.weight", f"{side}.embed_positions.weight"))
        if cfg.embed_norm:
            pairs += _norm_pair(f"{side}.embed.norm", f"{side}.layernorm_embedding", bias=True)
        if cfg.final_norm:
            pairs += _norm_pair(f"{side}.norm", f"{side}.layer_norm", bias=True)
        for i in range(n):
            o, t = f"{side}.blocks.{i}.", f"{side}.layers.{i}."
            pairs += _attention_pair(o + "mixer.", t + "self_attn.", qkvo, cfg, bias=True)
            pairs += _norm_pair(o + "norm_mixer", t + "self_attn_layer_norm", bias=True)
            if side == "decoder":
                pairs += _attention_pair(o + "cross.", t + "encoder_attn.", qkvo, cfg, bias=True)
                pairs += _norm_pair(o + "norm_cross", t + "encoder_attn_layer_norm", bias=True)
            pairs += [Pair(o + "ffn.w_in.weight", t + "fc1.weight"), Pair(o + "ffn.w_in.bias", t + "fc1.bias"),
                      Pair(o + "ffn.w_out.weight", t + "fc2.weight"), Pair(o + "ffn.w_out.bias", t + "fc2.bias")]
            pairs += _norm_pair(o + "norm_ffn", t + "final_layer_norm", bias=True)
    return pairs


def _bart_like_from_hf(state, cfg):
    w = Weights(state, prefixes=("model.",))
    out = map_from_hf(_bart_like_pairs(cfg), w)
    shared = w.get("shared.weight")
    if shared is None:
        shared = w("encoder.embed_tokens.weight")
    out.update(_tied_tokens(cfg, shared))
    top = Weights(state)
    if not cfg.tie_embeddings:
        out["head.weight"] = top("lm_head.weight")
    bias = top.get("final_logits_bias")  # (1, V), a buffer; absent means zeros
    out["head.bias"] = shared.new_zeros(cfg.vocab_size) if bias is None else bias.reshape(-1)
    return out


def _bart_like_config_to_hf(cfg: ModelConfig) -> dict:
    model_type = cfg.extra.get("hf_model_type")
    _require(cfg, model_type, norm="layer", bias=True, out_bias=True, ffn_bias=True, score="scaled_dot",
             attn_scale=None, n_kv_heads=cfg.n_heads, head_dim=cfg.d_model // cfg.n_heads, head_bias=True,
             norm_eps=1e-5, **_BART_LIKE[model_type])
    if cfg.activation not in _ACT_TO_HF:
        raise ValueError(f"{model_type}: activation {cfg.activation!r} is not exportable; "
                         f"exportable: {sorted(_ACT_TO_HF)}")
    return dict(vocab_size=cfg.vocab_size, decoder_vocab_size=cfg.vocab_size, d_model=cfg.d_model,
                encoder_layers=cfg.n_layers, decoder_layers=cfg.n_decoder_layers,
                encoder_attention_heads=cfg.n_heads, decoder_attention_heads=cfg.n_heads,
                encoder_ffn_dim=cfg.d_ff, decoder_ffn_dim=cfg.d_ff, max_position_embeddings=cfg.max_positions,
                activation_function=_ACT_TO_HF[cfg.activation], scale_embedding=cfg.scale_embeddings,
                tie_word_embeddings=cfg.tie_embeddings, share_encoder_decoder_embeddings=True,
                dropout=cfg.dropout, attention_dropout=cfg.attn_dropout, activation_dropout=cfg.ffn_dropout,
                is_encoder_decoder=True, pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id,
                eos_token_id=cfg.eos_token_id, decoder_start_token_id=cfg.decoder_start_token_id)


def _bart_like_to_hf(state, cfg):
    out = {"model." + k: v for k, v in map_to_hf(_bart_like_pairs(cfg), state).items()}
    out["model.shared.weight"] = state["encoder.embed.tokens.weight"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = state["head.weight"]
    out["final_logits_bias"] = state["head.bias"].reshape(1, -1)
    return out


# The architectures this module maps, as qkv.hub.hf's table lists them.
CONVERTERS = (_T5, *(Converter(model_type, arch, "encoder_decoder", _bart_like_config, _bart_like_from_hf,
                               _bart_like_config_to_hf, _bart_like_to_hf)
                     for model_type, arch in (("mbart", "MBartForConditionalGeneration"), ("marian", "MarianMTModel"))))
