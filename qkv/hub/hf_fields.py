"""Every config.json field a Hugging Face translation (hf_decoder.py, hf_encoder.py, hf_seq2seq.py, hf_maps.py)
reads, with the type and range it must have, checked before any translation runs: a handed ``model_type: ["gpt2"]``
or ``vocab_size: 1e400`` is one line naming the file, the field, the value and what was expected, never a raw
TypeError or a tensor of infinite size. ``null`` means "not set" (as in transformers) for the fields marked so.

The table lists fields, not architectures: a field means the same in every config that has it. A test runs every
converter on transformers' own configs and checks that each field it reads is listed here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Kind:
    """What a field holds: ``ok(value)`` and the words for it in messages; ``null``: null means "not set"."""
    expected: str
    ok: Callable[[object], bool]
    null: bool = False

    def nullable(self) -> "Kind":
        return Kind(self.expected + ", or null", self.ok, True)


POSITIVE = Kind("a positive int", lambda v: _is_int(v) and v >= 1)
COUNT = Kind("an int >= 0", lambda v: _is_int(v) and v >= 0)
TOKEN = Kind("a token id (an int >= 0)", lambda v: _is_int(v) and v >= 0).nullable()
TOKENS = Kind("a token id (an int >= 0) or a list of them",
              lambda v: _is_int(v) and v >= 0 or isinstance(v, list) and all(_is_int(x) and x >= 0 for x in v)
              ).nullable()
POSITIVE_NUMBER = Kind("a finite number > 0", lambda v: _is_number(v) and v > 0)
NUMBER = Kind("a finite number", _is_number)
RATE = Kind("a number in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1)
BOOL = Kind("true or false", lambda v: isinstance(v, bool)).nullable()  # null: not set (as transformers reads it)
TEXT = Kind("a string", lambda v: isinstance(v, str))
TEXTS = Kind("a list of strings", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v))
NUMBERS = Kind("a list of finite numbers", lambda v: isinstance(v, list) and all(_is_number(x) for x in v))
SIDE = Kind("a positive int or a list of them (height, width)",
            lambda v: _is_int(v) and v >= 1 or isinstance(v, list) and bool(v) and all(_is_int(x) and x >= 1 for x in v))
LABELS = Kind("an object of class id -> name (strings)",
              lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values())).nullable()
ROPE = Kind("an object of RoPE parameters", lambda v: isinstance(v, dict)).nullable()

FIELDS: dict[str, Kind] = {
    # what the model is
    "model_type": TEXT, "architectures": TEXTS.nullable(),
    # sizes (GPT-2, BERT / Llama, T5, BART names)
    "vocab_size": POSITIVE, "decoder_vocab_size": POSITIVE.nullable(), "type_vocab_size": COUNT,
    "n_embd": POSITIVE, "hidden_size": POSITIVE, "d_model": POSITIVE,
    "n_layer": POSITIVE, "num_hidden_layers": POSITIVE, "num_layers": POSITIVE,
    "num_decoder_layers": POSITIVE.nullable(), "encoder_layers": POSITIVE, "decoder_layers": POSITIVE,
    "n_head": POSITIVE, "num_attention_heads": POSITIVE, "num_heads": POSITIVE,
    "encoder_attention_heads": POSITIVE, "decoder_attention_heads": POSITIVE,
    "num_key_value_heads": POSITIVE.nullable(), "head_dim": POSITIVE.nullable(), "d_kv": POSITIVE,
    "n_inner": POSITIVE.nullable(), "intermediate_size": POSITIVE, "d_ff": POSITIVE,
    "encoder_ffn_dim": POSITIVE, "decoder_ffn_dim": POSITIVE,
    "n_positions": POSITIVE, "max_position_embeddings": POSITIVE,
    "relative_attention_num_buckets": POSITIVE, "relative_attention_max_distance": POSITIVE,
    "image_size": SIDE, "patch_size": SIDE, "num_channels": POSITIVE, "num_labels": COUNT, "id2label": LABELS,
    # norms, activations, attention
    "layer_norm_epsilon": POSITIVE_NUMBER, "layer_norm_eps": POSITIVE_NUMBER, "rms_norm_eps": POSITIVE_NUMBER,
    "activation_function": TEXT, "hidden_act": TEXT, "hidden_activation": TEXT.nullable(),
    "feed_forward_proj": TEXT, "position_embedding_type": TEXT,
    "attention_bias": BOOL, "mlp_bias": BOOL, "qkv_bias": BOOL, "query_pre_attn_scalar": POSITIVE_NUMBER,
    "attn_logit_softcapping": POSITIVE_NUMBER.nullable(), "final_logit_softcapping": POSITIVE_NUMBER.nullable(),
    "scale_attn_by_inverse_layer_idx": BOOL, "reorder_and_upcast_attn": BOOL, "use_bidirectional_attention": BOOL,
    "is_decoder": BOOL, "add_cross_attention": BOOL,
    # positions
    "rope_theta": POSITIVE_NUMBER, "rope_local_base_freq": POSITIVE_NUMBER.nullable(), "rope_scaling": ROPE,
    "rope_parameters": ROPE, "original_max_position_embeddings": POSITIVE.nullable(),
    "sliding_window": COUNT.nullable(), "use_sliding_window": BOOL, "max_window_layers": COUNT,
    "layer_types": TEXTS.nullable(),
    # embeddings and the head
    "tie_word_embeddings": BOOL, "scale_embedding": BOOL, "scale_decoder_outputs": BOOL,
    "share_encoder_decoder_embeddings": BOOL,
    # training-time rates (kept in qkv's config)
    "hidden_dropout_prob": RATE, "attention_probs_dropout_prob": RATE, "dropout_rate": RATE, "dropout": RATE,
    "attention_dropout": RATE, "activation_dropout": RATE,
    # special tokens
    "bos_token_id": TOKEN, "eos_token_id": TOKENS, "pad_token_id": TOKEN, "decoder_start_token_id": TOKEN,
}

# Inside ``rope_parameters`` / ``rope_scaling`` (and Gemma 3's per-layer-type dicts of them).
ROPE_FIELDS: dict[str, Kind] = {
    "rope_type": TEXT, "type": TEXT, "rope_theta": POSITIVE_NUMBER, "factor": POSITIVE_NUMBER,
    "original_max_position_embeddings": POSITIVE, "low_freq_factor": POSITIVE_NUMBER,
    "high_freq_factor": POSITIVE_NUMBER, "attention_factor": POSITIVE_NUMBER, "beta_fast": NUMBER,
    "beta_slow": NUMBER, "mscale": NUMBER, "mscale_all_dim": NUMBER, "truncate": BOOL,
    "long_factor": NUMBERS, "short_factor": NUMBERS,
}
_LAYER_TYPES = ("full_attention", "sliding_attention")


def _check(table: dict[str, Kind], values: dict, where: str, source) -> None:
    for name, value in values.items():
        kind = table.get(name)
        if kind is None or (value is None and kind.null) or (value is not None and kind.ok(value)):
            continue
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise ValueError(f"{source}: {where}{name} must be {kind.expected}, got {shown}")


def check_hf_fields(hf: dict, *, source) -> None:
    """Raise ValueError, one line naming ``source`` (the config.json), the field, its value and what was expected,
    for the first field of ``hf`` that the translations read and that has the wrong type or range."""
    _check(FIELDS, hf, "", source)
    for outer in ("rope_parameters", "rope_scaling"):
        params = hf.get(outer)
        if not isinstance(params, dict):
            continue
        nested = {k: v for k, v in params.items() if k in _LAYER_TYPES}
        for layer_type, inner in nested.items():
            if not isinstance(inner, dict):
                raise ValueError(f"{source}: {outer}.{layer_type} must be an object of RoPE parameters, got "
                                 f"{inner!r}")
            _check(ROPE_FIELDS, inner, f"{outer}.{layer_type}.", source)
        _check(ROPE_FIELDS, {k: v for k, v in params.items() if k not in nested}, f"{outer}.", source)
