"""The value checks of the config dataclasses (``qkv.config``): every field's type and range from one table
(``MODEL_RULES``), and the rules of the recurrent, hard-attention and image-to-text fields. Each failure is a
ValueError naming the field, the value and what was expected. Plain data and functions: nothing else of qkv."""
from __future__ import annotations

import dataclasses
import math

RNN_CELLS = ("gru", "lstm")  # the recurrent family's cells (qkv/nn/rnn_encoder.py, rnn_decoder.py)
RNN_ATTENTIONS = ("none", "bahdanau", "global", "local_m", "local_p")  # and its attention (qkv/nn/rnn_decoder.py)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # True is an int to Python, never a size here


def is_real(value) -> bool:
    """A finite real number: inf and NaN pass ``> 0`` checks, and blow up a run many steps later."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# (what a message calls it, the test)
POSITIVE = ("a positive int", lambda v: is_int(v) and v >= 1)
COUNT = ("an int >= 0", lambda v: is_int(v) and v >= 0)
POSITIVE_NUMBER = ("a finite number > 0", lambda v: is_real(v) and v > 0)
NON_NEGATIVE = ("a finite number >= 0", lambda v: is_real(v) and v >= 0)
NUMBER = ("a finite number", is_real)
RATE = ("in [0, 1)", lambda v: is_real(v) and 0 <= v < 1)
TOKEN = ("a token id", lambda v: True)  # ints or lists of them: ModelConfig._check_token_ids, against vocab_size
BY_ANNOTATION = {"int": ("an int", is_int), "float": NUMBER, "bool": ("True or False", lambda v: isinstance(v, bool)),
                  "str": ("a string", lambda v: isinstance(v, str)), "dict": ("a dict", lambda v: isinstance(v, dict))}

MODEL_RULES = {
    **dict.fromkeys(("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
                     "n_decoder_layers", "max_positions", "rotary_dim", "image_size", "patch_size", "num_channels"),
                    POSITIVE),
    **dict.fromkeys(("relative_buckets", "relative_max_distance", "position_offset", "type_vocab_size", "num_labels",
                     "window"), COUNT),
    **dict.fromkeys(("rope_base", "rope_local_base", "attn_scale", "attn_softcap", "logit_softcap"), POSITIVE_NUMBER),
    "norm_eps": NON_NEGATIVE, "norm_offset": NUMBER,
    **dict.fromkeys(("dropout", "attn_dropout", "ffn_dropout"), RATE),
    **dict.fromkeys(("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"), TOKEN),
}


def check_values(config, rules: dict) -> None:
    """Each field of a config dataclass against its rule (else its annotation's type); None only where the
    annotation allows it. ValueError: "<field> must be <what>, got <value>"."""
    for f in dataclasses.fields(config):
        kinds = [k.strip() for k in str(f.type).split("|")]
        value = getattr(config, f.name)
        if value is None and "None" in kinds:
            continue
        expected, ok = rules.get(f.name) or BY_ANNOTATION[next(k for k in kinds if k != "None")]
        if not ok(value):
            raise ValueError(f"{f.name} must be {'None or ' if 'None' in kinds else ''}{expected}, got {value!r}")


RNN_FIELDS = ("rnn_cell", "rnn_attention", "rnn_bidirectional", "rnn_input_feeding", "rnn_local_window",
               "rnn_embed_dim")


def check_recurrent(cfg) -> None:
    """The recurrent family's fields: refused on other families, checked against each other, defaults derived. A
    config contradicting itself (a local window without local attention, a bidirectional decoder) is one line."""
    if cfg.family != "rnn":
        given = [f"{name}={getattr(cfg, name)!r}" for name in RNN_FIELDS if getattr(cfg, name) is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: the rnn_* fields configure family='rnn', got family={cfg.family!r}")
        return
    if cfg.rnn_bidirectional in ("decoder", "both"):
        raise ValueError(f"rnn_bidirectional={cfg.rnn_bidirectional!r}: a decoder writes left to right and cannot read "
                         f"the words it has not written; expected 'encoder' or 'none'")
    cfg.rnn_cell = cfg.rnn_cell or "lstm"
    cfg.rnn_attention = cfg.rnn_attention or "global"
    cfg.rnn_bidirectional = cfg.rnn_bidirectional or "none"
    choice("rnn_cell", cfg.rnn_cell, RNN_CELLS)
    choice("rnn_attention", cfg.rnn_attention, RNN_ATTENTIONS)
    choice("rnn_bidirectional", cfg.rnn_bidirectional, ("encoder", "none"))
    luong = cfg.rnn_attention in ("global", "local_m", "local_p")
    if cfg.rnn_input_feeding and not luong:
        raise ValueError(f"rnn_input_feeding=True feeds Luong's attentional state h~_t back in, but "
                         f"rnn_attention={cfg.rnn_attention!r} has none; expected global, local_m or local_p")
    if cfg.rnn_input_feeding is None:
        cfg.rnn_input_feeding = luong
    local = cfg.rnn_attention in ("local_m", "local_p")
    if cfg.rnn_local_window is not None and not local:
        raise ValueError(f"rnn_local_window={cfg.rnn_local_window!r} is the window of local attention, but "
                         f"rnn_attention={cfg.rnn_attention!r}; expected local_m or local_p")
    if local:
        cfg.rnn_local_window = 10 if cfg.rnn_local_window is None else cfg.rnn_local_window
        low = 1 if cfg.rnn_attention == "local_p" else 0  # local_p's Gaussian needs sigma = D / 2 > 0
        if not isinstance(cfg.rnn_local_window, int) or isinstance(cfg.rnn_local_window, bool) \
                or cfg.rnn_local_window < low:
            raise ValueError(f"rnn_local_window must be an int >= {low} (the half-width D of the window "
                             f"[p_t - D, p_t + D]), got {cfg.rnn_local_window!r}")
    if cfg.rnn_embed_dim is None:
        cfg.rnn_embed_dim = cfg.d_model
    positive("rnn_embed_dim", cfg.rnn_embed_dim)
    if cfg.rnn_attention == "bahdanau" and cfg.d_ff % 2:
        raise ValueError(f"d_ff={cfg.d_ff}: Bahdanau's deep output takes the max of pairs (maxout), so d_ff must be "
                         f"even")
    head_input = cfg.d_ff // 2 if cfg.rnn_attention == "bahdanau" else cfg.d_model
    if cfg.tie_embeddings and head_input != cfg.rnn_embed_dim:
        raise ValueError(f"tie_embeddings=True shares the target embeddings (rnn_embed_dim={cfg.rnn_embed_dim}) with "
                         f"the output layer, whose input has {head_input} features "
                         f"({'d_ff / 2' if cfg.rnn_attention == 'bahdanau' else 'd_model'}); set tie_embeddings=False "
                         f"or make the two equal")


ATTN_SELECTS = ("soft", "hard", "local")
ATTN_ESTIMATORS = ("gumbel", "reinforce")
ATTN_DECODES = ("argmax", "sample")
CAPTION_DECODERS = ("lstm", "transformer")
IMAGE_ENCODERS = ("cnn", "patches")


def check_attention_pick(cfg) -> None:
    """The attn_* fields of hard and local attention (qkv/ops/hard_attention.py)."""
    for name, known in (("attn_select", ("soft", "hard", "local")), ("attn_estimator", ("gumbel", "reinforce")),
                        ("attn_decode", ("argmax", "sample"))):
        choice(name, getattr(cfg, name), known)
    positive("attn_local_window", cfg.attn_local_window)
    for name in ("attn_tau", "attn_entropy", "attn_doubly_stochastic", "attn_expectation", "attn_baseline_decay"):
        if getattr(cfg, name) is not None:
            finite(name, getattr(cfg, name), low=0.0)
    for name, ok, expected in (("attn_tau", cfg.attn_tau > 0, "> 0"),
                               ("attn_expectation", cfg.attn_expectation <= 1, "in [0, 1]"),
                               ("attn_baseline_decay", (cfg.attn_baseline_decay or 0) < 1, "in [0, 1)")):
        if not ok:
            raise ValueError(f"{name} must be {expected}, got {getattr(cfg, name)!r}")
    if cfg.attn_baseline_decay is None and cfg.attn_select != "soft" and cfg.attn_estimator == "reinforce":
        raise ValueError("attn_baseline_decay=None: REINFORCE (attn_estimator='reinforce') needs its moving-average "
                         "baseline (Xu et al. 2015 sec. 4.1); give a decay in [0, 1), e.g. 0.9")
    if cfg.attn_select != "soft" and cfg.family != "caption" and cfg.mixer != "attention" and not cfg.layer_pattern:
        raise ValueError(f"attn_select={cfg.attn_select!r} picks keys of softmax attention, but mixer={cfg.mixer!r} "
                         f"has none")


def check_caption(cfg) -> None:
    """An image-to-text model: its encoder and decoder, its grid of image cells, and its input as qkv.generate
    reads it (the image's C * H * W bytes as source ids, so max_positions must count them)."""
    choice("caption_decoder", cfg.caption_decoder, ("lstm", "transformer"))
    choice("image_encoder", cfg.image_encoder, ("cnn", "patches"))
    grid, pixels = cfg.image_size // cfg.patch_size, cfg.num_channels * cfg.image_size ** 2
    for bad, message in (
            (cfg.image_encoder == "cnn" and cfg.patch_size & (cfg.patch_size - 1),
             f"image_encoder='cnn' halves the image log2(patch_size) times: patch_size must be a power of 2, got "
             f"{cfg.patch_size}"),
            (cfg.attn_select == "local" and cfg.attn_local_window > grid,
             f"attn_local_window={cfg.attn_local_window} is larger than the {grid} x {grid} grid of image cells "
             f"(image_size / patch_size); expected attn_local_window <= {grid}"),
            (cfg.max_positions < pixels,
             f"max_positions={cfg.max_positions}: an image-to-text model reads its image as num_channels * "
             f"image_size^2 = {pixels} byte ids (qkv.generate's source); expected max_positions >= {pixels}"),
            (cfg.mixer != "attention" or cfg.layer_pattern is not None,
             f"an image-to-text model's decoder is an LSTM or softmax attention: mixer must be 'attention' with no "
             f"layer_pattern, got mixer={cfg.mixer!r}, layer_pattern={cfg.layer_pattern!r}")):
        if bad:
            raise ValueError(message)


def choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def finite(name, value, *, low=None):
    """A finite real number (inf and NaN pass ``> 0`` checks, and blow up a run many steps later)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (low is not None and value < low):
        raise ValueError(f"{name} must be a finite number{f' >= {low}' if low is not None else ''}, got {value!r}")
