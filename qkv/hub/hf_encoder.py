"""Weight maps for encoder checkpoints: BERT (BertModel, BertForMaskedLM, BertForPreTraining,
BertForSequenceClassification, sentence-transformers folders) and ViT (ViTModel, ViTForImageClassification).

Which heads a folder holds is read from its config's ``architectures``, the field ``transformers`` itself uses
to pick a class; the bare body always loads, and head weights of other architectures are left aside.
"""
from __future__ import annotations

from ..config import ModelConfig
from .hf_maps import Converter, Pair, Weights, map_from_hf, map_to_hf

_ACT_FROM_HF = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
                "silu": "silu", "swish": "silu"}
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


def _activation(hf: dict) -> str:
    act = hf.get("hidden_act", "gelu")
    if act not in _ACT_FROM_HF:
        raise ValueError(f"{hf.get('model_type')}: hidden_act {act!r} is not supported; supported: {sorted(_ACT_FROM_HF)}")
    return _ACT_FROM_HF[act]


def _num_labels(hf: dict) -> int:
    return len(hf["id2label"]) if hf.get("id2label") else int(hf.get("num_labels", 2))


def _labels_to_hf(n: int, names=None) -> dict:
    """transformers' id2label / label2id: the class names a qkv run kept (``extra["labels"]``), else LABEL_i."""
    names = list(names) if names and len(names) == n else [f"LABEL_{i}" for i in range(n)]
    return {"id2label": {str(i): name for i, name in enumerate(names)}, "label2id": {n: i for i, n in enumerate(names)}}


def _labels_from_hf(hf: dict, n: int) -> dict:
    """``{"labels": [...]}`` for config.extra when the folder names its classes (id2label), so ``qkv eval`` reads a
    .tsv of those names; transformers' default names (LABEL_i) are left out."""
    id2label = hf.get("id2label") or {}
    names = [id2label.get(str(i), id2label.get(i)) for i in range(n)]
    if n and all(isinstance(x, str) for x in names) and names != [f"LABEL_{i}" for i in range(n)]:
        return {"labels": names}
    return {}


def _attention_pairs(o: str, t: str, d: int, *, bias: bool = True) -> list[Pair]:
    """Separate query / key / value projections -> qkv's fused ``mixer.qkv``, [W_Q; W_K; W_V]."""
    pairs = [Pair(o + "mixer.qkv.weight", tuple(t + f"{p}.weight" for p in ("query", "key", "value")), sizes=(d, d, d))]
    if bias:
        pairs.append(Pair(o + "mixer.qkv.bias", tuple(t + f"{p}.bias" for p in ("query", "key", "value")),
                          sizes=(d, d, d)))
    return pairs


def _linear(ours: str, theirs: str) -> list[Pair]:
    return [Pair(ours + ".weight", theirs + ".weight"), Pair(ours + ".bias", theirs + ".bias")]


def _check_exportable(cfg: ModelConfig, kind: str, **expected) -> None:
    wrong = {k: getattr(cfg, k) for k, v in expected.items() if getattr(cfg, k) != v}
    if wrong:
        raise ValueError(f"this model does not have {kind}'s shape, so it cannot be exported as {kind}: "
                         f"{wrong} (expected {expected})")


# -- BERT ----------------------------------------------------------------------------------------------------------

_BERT_MLM = ("BertForMaskedLM", "BertForPreTraining")
_BERT_CLASSIFIER = ("BertForSequenceClassification",)


def _bert_config(hf: dict) -> ModelConfig:
    kind = hf.get("position_embedding_type", "absolute")
    if kind != "absolute":
        raise ValueError(f"bert: position_embedding_type {kind!r} is not supported (only 'absolute')")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise ValueError("bert: decoder BERTs (is_decoder / add_cross_attention) are not supported; "
                         "qkv's encoder is bidirectional")
    architectures = hf.get("architectures") or []
    num_labels = _num_labels(hf) if any(a in _BERT_CLASSIFIER for a in architectures) else 0
    return ModelConfig(
        family="encoder", vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
        max_positions=hf.get("max_position_embeddings", 512), position="learned", norm="layer",
        norm_eps=hf.get("layer_norm_eps", 1e-12), prenorm=False, embed_norm=True, activation=_activation(hf),
        bias=True, type_vocab_size=hf.get("type_vocab_size", 2), tie_embeddings=hf.get("tie_word_embeddings", True),
        dropout=hf.get("hidden_dropout_prob", 0.0), attn_dropout=hf.get("attention_probs_dropout_prob", 0.0),
        mlm_head=any(a in _BERT_MLM for a in architectures),
        num_labels=num_labels, pad_token_id=hf.get("pad_token_id"),
        extra={"hf_model_type": "bert", **_labels_from_hf(hf, num_labels)})


def _bert_body_pairs(cfg: ModelConfig) -> list[Pair]:
    d = cfg.d_model
    pairs = [Pair("embed.tokens.weight", "embeddings.word_embeddings.weight"),
             Pair("embed.positions.weight", "embeddings.position_embeddings.weight"),
             Pair("embed.types.weight", "embeddings.token_type_embeddings.weight"),
             *_linear("embed.norm", "embeddings.LayerNorm")]
    for i in range(cfg.n_layers):
        o, t = f"blocks.{i}.", f"encoder.layer.{i}."
        pairs += [*_attention_pairs(o, t + "attention.self.", d),
                  *_linear(o + "mixer.out", t + "attention.output.dense"),
                  *_linear(o + "norm_mixer", t + "attention.output.LayerNorm"),  # post-LN: after the residual
                  *_linear(o + "ffn.w_in", t + "intermediate.dense"),
                  *_linear(o + "ffn.w_out", t + "output.dense"),
                  *_linear(o + "norm_ffn", t + "output.LayerNorm")]
    return pairs + _bert_pooler_pairs(cfg)


def _bert_pooler_pairs(cfg: ModelConfig) -> list[Pair]:
    """The pooler (inside ``bert.``), part of qkv's classification head."""
    return _linear("cls.pooler", "pooler.dense") if cfg.num_labels else []


def _bert_head_pairs(cfg: ModelConfig) -> list[Pair]:
    """Head weights, which Hugging Face keeps outside the ``bert.`` prefix."""
    pairs = []
    if cfg.mlm_head:
        pairs += [*_linear("mlm.dense", "cls.predictions.transform.dense"),
                  *_linear("mlm.norm", "cls.predictions.transform.LayerNorm"),
                  Pair("mlm.bias", "cls.predictions.bias")]
        if not cfg.tie_embeddings:
            pairs.append(Pair("mlm.decoder.weight", "cls.predictions.decoder.weight"))
    if cfg.num_labels:
        pairs += _linear("cls.classifier", "classifier")
    return pairs


def _old_norm_names(state):
    """The original TensorFlow-converted checkpoints name LayerNorm parameters gamma and beta."""
    return {k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias"): v
            for k, v in state.items()}


def _held(pairs: list[Pair], weights: Weights) -> list[Pair]:
    return [p for p in pairs if all(n in weights for n in ((p.theirs,) if isinstance(p.theirs, str) else p.theirs))]


def _bert_from_hf(state, cfg):
    """The classification head's weights (pooler, classifier) are mapped when the folder holds them: a head asked of
    a base model (``from_hf(path, num_labels=N)``) starts fresh where the folder has none. The MLM head, which a
    config never adds, must be there."""
    state = _old_norm_names(state)
    body = Weights(state, prefixes=("bert.",))
    pooler = _bert_pooler_pairs(cfg)
    out = map_from_hf([p for p in _bert_body_pairs(cfg) if p not in pooler] + _held(pooler, body), body)
    classifier = _linear("cls.classifier", "classifier") if cfg.num_labels else []
    head = Weights(state)
    out.update(map_from_hf([p for p in _bert_head_pairs(cfg) if p not in classifier] + _held(classifier, head), head))
    if cfg.mlm_head and cfg.tie_embeddings:
        out["mlm.decoder.weight"] = out["embed.tokens.weight"]  # the decoder is the embedding matrix
    return out


def _bert_to_hf(state, cfg):
    out = {"bert." + k: v for k, v in map_to_hf(_bert_body_pairs(cfg), state).items()}
    out.update(map_to_hf(_bert_head_pairs(cfg), state))  # a tied decoder is re-tied by transformers on load
    if not cfg.num_labels and not cfg.mlm_head:
        out = {k.removeprefix("bert."): v for k, v in out.items()}  # a bare BertModel has no prefix
    return out


def _bert_config_to_hf(cfg: ModelConfig) -> dict:
    _check_exportable(cfg, "bert", family="encoder", position="learned", norm="layer", prenorm=False,
                      embed_norm=True, bias=True, out_bias=True, ffn_bias=True, norm_bias=True, score="scaled_dot",
                      attn_scale=None, n_kv_heads=cfg.n_heads, head_dim=cfg.d_model // cfg.n_heads,
                      scale_embeddings=False, position_offset=0)
    if cfg.activation not in _ACT_TO_HF or cfg.type_vocab_size < 1:
        raise ValueError(f"bert export needs an activation in {sorted(_ACT_TO_HF)} and type_vocab_size >= 1, got "
                         f"activation={cfg.activation!r}, type_vocab_size={cfg.type_vocab_size}")
    # The fine-tuned task head wins; a pre-training model exports as a masked LM; otherwise the bare body.
    arch = "BertForSequenceClassification" if cfg.num_labels else "BertForMaskedLM" if cfg.mlm_head else "BertModel"
    return dict(architectures=[arch], vocab_size=cfg.vocab_size, hidden_size=cfg.d_model,
                num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, intermediate_size=cfg.d_ff,
                max_position_embeddings=cfg.max_positions, type_vocab_size=cfg.type_vocab_size,
                layer_norm_eps=cfg.norm_eps, hidden_act=_ACT_TO_HF[cfg.activation],
                hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.attn_dropout,
                position_embedding_type="absolute", tie_word_embeddings=cfg.tie_embeddings,
                pad_token_id=cfg.pad_token_id,
                **(_labels_to_hf(cfg.num_labels, cfg.extra.get("labels")) if cfg.num_labels else {}))


_BERT = Converter("bert", "BertModel", "encoder", _bert_config, _bert_from_hf, _bert_config_to_hf, _bert_to_hf)


# -- ViT -----------------------------------------------------------------------------------------------------------

def _square(hf: dict, name: str) -> int:
    value = hf.get(name)
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"vit: only square {name} is supported, got {value}")
        value = value[0]
    return int(value)


def _vit_config(hf: dict) -> ModelConfig:
    image_size, patch_size = _square(hf, "image_size"), _square(hf, "patch_size")
    classifier = "ViTForImageClassification" in (hf.get("architectures") or [])
    return ModelConfig(
        family="vit", d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"],
        d_ff=hf["intermediate_size"], max_positions=(image_size // patch_size) ** 2 + 1, position="learned",
        norm="layer", norm_eps=hf.get("layer_norm_eps", 1e-12), prenorm=True, final_norm=True,
        activation=_activation(hf), bias=bool(hf.get("qkv_bias", True)), out_bias=True, ffn_bias=True,
        tie_embeddings=False, mlm_head=False, dropout=hf.get("hidden_dropout_prob", 0.0),
        attn_dropout=hf.get("attention_probs_dropout_prob", 0.0), image_size=image_size, patch_size=patch_size,
        num_channels=hf.get("num_channels", 3), num_labels=_num_labels(hf) if classifier else 0,
        extra={"hf_model_type": "vit"})


def _vit_body_pairs(cfg: ModelConfig) -> list[Pair]:
    pairs = [*_linear("patches.proj", "embeddings.patch_embeddings.projection"),
             Pair("cls_token", "embeddings.cls_token"), Pair("positions", "embeddings.position_embeddings"),
             *_linear("norm", "layernorm")]
    for i in range(cfg.n_layers):
        o, t = f"blocks.{i}.", f"encoder.layer.{i}."
        pairs += [*_linear(o + "norm_mixer", t + "layernorm_before"),  # pre-LN
                  *_attention_pairs(o, t + "attention.attention.", cfg.d_model, bias=cfg.bias),
                  *_linear(o + "mixer.out", t + "attention.output.dense"),
                  *_linear(o + "norm_ffn", t + "layernorm_after"),
                  *_linear(o + "ffn.w_in", t + "intermediate.dense"),
                  *_linear(o + "ffn.w_out", t + "output.dense")]
    return pairs


def _vit_from_hf(state, cfg):
    out = map_from_hf(_vit_body_pairs(cfg), Weights(state, prefixes=("vit.",)))
    if cfg.num_labels:  # a base ViTModel folder has no classifier: from_hf(path, num_labels=N) starts it fresh
        out.update(map_from_hf(_held(_linear("head", "classifier"), Weights(state)), Weights(state)))
    return out


def _vit_to_hf(state, cfg):
    out = map_to_hf(_vit_body_pairs(cfg), state)
    if cfg.num_labels:
        out = {"vit." + k: v for k, v in out.items()}
        out.update(map_to_hf(_linear("head", "classifier"), state))
    return out


def _vit_config_to_hf(cfg: ModelConfig) -> dict:
    _check_exportable(cfg, "vit", family="vit", norm="layer", prenorm=True, final_norm=True, out_bias=True,
                      ffn_bias=True, norm_bias=True, score="scaled_dot", attn_scale=None, n_kv_heads=cfg.n_heads,
                      head_dim=cfg.d_model // cfg.n_heads)
    if cfg.activation not in _ACT_TO_HF:
        raise ValueError(f"vit export needs an activation in {sorted(_ACT_TO_HF)}, got {cfg.activation!r}")
    arch = "ViTForImageClassification" if cfg.num_labels else "ViTModel"
    return dict(architectures=[arch], hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
                num_attention_heads=cfg.n_heads, intermediate_size=cfg.d_ff, hidden_act=_ACT_TO_HF[cfg.activation],
                layer_norm_eps=cfg.norm_eps, image_size=cfg.image_size, patch_size=cfg.patch_size,
                num_channels=cfg.num_channels, qkv_bias=cfg.bias, hidden_dropout_prob=cfg.dropout,
                attention_probs_dropout_prob=cfg.attn_dropout,
                **(_labels_to_hf(cfg.num_labels) if cfg.num_labels else {}))


# The architectures this module maps, as qkv.hub.hf's table lists them. A ViT reads no max_positions (its positions
# come from image_size / patch_size) and has no LM head: config.json carries none of those fields.
CONVERTERS = (_BERT, Converter("vit", "ViTForImageClassification", "vit", _vit_config, _vit_from_hf, _vit_config_to_hf,
                               _vit_to_hf, unused=frozenset({"max_positions", "mlm_head", "tie_embeddings"})))
