"""ModelConfig: one validated dataclass describes every model qkv builds. Only ``qkv/models`` reads it.

Behaviour is chosen by fields (``position="rope"``, ``norm="rms"``), never by matching a model's name. Fields
left as None are derived in ``__post_init__`` from the others. Each field's comment is its documentation: the
command line shows it as the flag's help.

This module imports nothing else of qkv but the leaf file readers (``qkv.files``) and its two helpers: every field's
type and range is checked from one table (``qkv/config_rules.py``; a config.json is data from elsewhere), and the
command line is made from the fields (``qkv/config_args.py``; its names are importable from here too). It names the families, positions and mixers (the
lists below, each covered exactly by its table in qkv/models: registry.py, positions.py, mixers.py); names that
live with their code (activations and norms in qkv/nn, scores and RoPE scalings in qkv/ops) are checked where they
live, when qkv/models builds the model (``qkv.models.common.check_names``).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .config_args import (NEGATIVE, add_dataclass_arguments, dataclass_from_args, field_help,  # noqa: F401 (re-exported)
                          join_negative_values, load_config_file)
from .config_rules import (ATTN_DECODES, ATTN_ESTIMATORS, ATTN_SELECTS, CAPTION_DECODERS,  # noqa: F401 (re-exported)
                           COUNT, IMAGE_ENCODERS, MODEL_RULES, NON_NEGATIVE, NUMBER, POSITIVE, POSITIVE_NUMBER, RATE,
                           RNN_ATTENTIONS, RNN_CELLS, TOKEN, check_attention_pick, check_caption, check_recurrent,
                           check_values, choice, finite, is_int, positive)

FAMILIES = ("decoder", "encoder", "encoder_decoder", "vit", "rnn", "caption")
POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "relative", "none")
ROTARY = ("rope",)  # the positions that rotate queries and keys: rotary_dim, rope_scaling, rope_local_base need one
# The mixers, one letter each for ``layer_pattern``; "W" is softmax attention limited to ``window`` earlier tokens.
PATTERN_LETTERS = {"A": "attention", "W": "attention", "L": "linear", "R": "retention", "K": "rwkv4", "M": "memory",
                   "5": "rwkv5", "6": "rwkv6", "7": "rwkv7", "G": "gla", "H": "hgrn2", "D": "deltanet", "E": "gated_deltanet",
                   "S": "mamba2"}
MIXERS = tuple(dict.fromkeys(PATTERN_LETTERS.values()))  # the names, in the letters' order


class _Serializable:
    """to/from plain dicts and JSON, shared by the config dataclasses."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        if not isinstance(d, dict):
            raise TypeError(f"{cls.__name__}: expected a mapping of field names to values, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; known fields: {sorted(known)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes):
        """A copy with some fields changed. Derived fields (a ModelConfig's head_dim, d_ff, ...) keep their values:
        to change a size, start from ``qkv.preset(name, **overrides)``, which derives them afresh."""
        return type(self).from_dict({**self.to_dict(), **changes})


@dataclass
class ModelConfig(_Serializable):
    """A model's architecture as one validated dataclass: each field is documented where it is declared, derived
    fields (``n_kv_heads``, ``head_dim``, ``d_ff``, ...) are filled in ``__post_init__``, and a bad value raises
    ValueError naming the field. Presets are named configs (``qkv.preset``); only ``qkv/models`` reads one.

    Example:

        >>> import qkv
        >>> cfg = qkv.ModelConfig(family="decoder", vocab_size=100, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
        >>> cfg.head_dim, cfg.n_kv_heads                   # D = d_model / H, G
        (8, 2)
        >>> qkv.ModelConfig.from_dict(cfg.to_dict()) == cfg, cfg.replace(n_layers=3).n_layers
        (True, 3)
    """
    family: str = "decoder"  # decoder (GPT, Llama, linear-time), encoder (BERT), encoder_decoder (Transformer, T5, MBART), vit, rnn (a recurrent encoder-decoder with Bahdanau / Luong attention), caption (image to text: Show, Attend and Tell)
    vocab_size: int = 50257  # tokens in the vocabulary
    d_model: int = 768  # width of the residual stream
    n_layers: int = 12  # blocks (the encoder's, in an encoder-decoder model)
    n_heads: int = 12  # query heads per attention layer
    n_kv_heads: int | None = None  # key/value heads (grouped-query attention); default n_heads
    head_dim: int | None = None  # size of one head; default d_model / n_heads
    d_ff: int | None = None  # hidden size of the FFN; default 4 * d_model (rnn with bahdanau attention: the maxout deep output's input 2l)
    n_decoder_layers: int | None = None  # decoder blocks of an encoder-decoder model; default n_layers
    max_positions: int = 1024  # longest sequence (learned positions, cache size)
    position: str = "learned"  # learned | sinusoidal | rope | alibi | relative (T5 bias) | none
    sinusoidal_interleaved: bool = True  # sin/cos interleaved (original) or all sines then all cosines (Marian)
    rope_base: float = 10000.0  # RoPE theta
    rotary_dim: int | None = None  # features rotated by RoPE; default head_dim
    rope_local_base: float | None = None  # RoPE theta of the sliding-window (W) layers, unscaled (Gemma 3: 10000 there, rope_base elsewhere); default: as the full layers
    rope_scaling: dict | None = None  # RoPE context extension in transformers' rope_parameters terms: {"rope_type": linear | dynamic | yarn | llama3 | longrope, "factor": ..., "original_max_position_embeddings": ...}
    relative_buckets: int = 32  # T5 relative-position buckets
    relative_max_distance: int = 128  # T5: distances beyond this share the last bucket
    position_offset: int = 0  # spare rows before position 0 in a learned table (MBART: 2)
    norm: str = "layer"  # layer | rms
    norm_eps: float = 1e-5  # epsilon of every norm
    norm_bias: bool = True  # LayerNorm with a bias
    norm_offset: float = 0.0  # RMSNorm scales by (norm_offset + weight): Gemma stores its gains around 0 and adds 1
    sandwich_norm: bool = False  # also a norm on each sublayer's output, before the residual add (Gemma 2/3)
    qk_norm: bool = False  # an RMSNorm over each head's queries and keys before RoPE (Qwen3, Gemma 3)
    prenorm: bool = True  # norm before each sublayer (GPT-2, Llama, T5) or after the residual (original, BERT)
    final_norm: bool | None = None  # a norm after the last block; default: prenorm
    embed_norm: bool = False  # a norm right after the embeddings (BERT, MBART)
    activation: str = "gelu_tanh"  # relu | gelu | gelu_tanh | silu | swiglu | geglu | geglu_tanh | reglu
    bias: bool = True  # biases in the attention input projections (and, by default, W_O and the FFN)
    out_bias: bool | None = None  # a bias on W_O; default: bias (Qwen2: biases on Q/K/V only)
    ffn_bias: bool | None = None  # biases in the FFN; default: bias
    score: str = "scaled_dot"  # attention score: additive | bilinear | dot | scaled_dot | cosine
    attn_scale: float | None = None  # logit scale; default head_dim^-0.5 (T5 uses 1.0 with score=dot)
    attn_softcap: float | None = None  # attention logits become c * tanh(logits / c) before the mask (Gemma 2)
    logit_softcap: float | None = None  # output logits become c * tanh(logits / c) (Gemma 2)
    window: int | None = None  # sliding-window attention: each token sees itself and this many before it
    tie_embeddings: bool = True  # the output layer shares the token embedding matrix
    scale_embeddings: bool = False  # multiply embeddings by sqrt(d_model) (original Transformer, sec. 3.4)
    scale_head: bool = False  # multiply the last hidden state by d_model^-0.5 before the head (T5, tied head)
    head_bias: bool = False  # a bias on the output layer, added to the logits (Marian / MBART final_logits_bias)
    dropout: float = 0.0  # on embeddings and sublayer outputs
    attn_dropout: float = 0.0  # on attention weights
    ffn_dropout: float = 0.0  # on the FFN's hidden activations (T5)
    type_vocab_size: int = 0  # segment (token type) embeddings, BERT: 2
    num_labels: int = 0  # classes of a sequence-classification head (encoder) or image classes (vit)
    mlm_head: bool = True  # encoder: a masked-LM head on top (BERT pre-training); False for a bare encoder
    image_size: int = 224  # ViT: input side in pixels
    patch_size: int = 16  # ViT: patch side in pixels
    num_channels: int = 3  # ViT: image channels
    mixer: str = "attention"  # token mixer of decoder blocks: attention | linear | retention | rwkv4 | memory | rwkv5 | rwkv6 | rwkv7 | gla | hgrn2 | deltanet | gated_deltanet | mamba2 (its state size is head_dim)
    layer_pattern: str | None = None  # hybrids: the blocks' mixers as letters, repeated over the layers: A attention, W sliding-window attention (window), L linear, R retention, K rwkv4, M memory, 5 / 6 / 7 rwkv5 / rwkv6 / rwkv7, G gla, H hgrn2, D deltanet, E gated_deltanet, S mamba2 (SSD); e.g. "LLLA" (default: every block `mixer`)
    rwkv_ranks: dict | None = None  # RWKV-6 / RWKV-7 low-rank sizes by name (6: mix, decay; 7: decay, a, v, gate); default RWKV-LM's, from d_model
    pad_token_id: int | None = None  # padding token
    bos_token_id: int | None = None  # beginning of sequence
    eos_token_id: int | None = None  # end of sequence
    decoder_start_token_id: int | None = None  # first decoder input of an encoder-decoder model
    rnn_cell: str | None = None  # family rnn (whose d_model is the recurrent state size, n_layers / n_decoder_layers its depths): the cell of encoder and decoder, gru | lstm (default lstm)
    rnn_attention: str | None = None  # family rnn: none (the decoder starts from the encoder's final state and never looks back, Sutskever et al. 2014) | bahdanau (Bahdanau et al. 2015) | global | local_m | local_p (Luong et al. 2015, sec. 3), scored by `score` (Luong's dot = dot, general = bilinear, concat = additive); default global
    rnn_bidirectional: str | None = None  # family rnn: the side that reads its sentence both ways, encoder (Bahdanau et al. 2015, sec. 3.2) | none (default); a decoder writes left to right and cannot
    rnn_input_feeding: bool | None = None  # family rnn: feed the previous attentional state h~_{t-1} into the next step (Luong et al. 2015, sec. 3.3); default on for global / local_m / local_p
    rnn_local_window: int | None = None  # family rnn, local_m / local_p: the window's half-width D around the aligned position p_t; local_p's Gaussian has sigma = D / 2 (default 10, Luong et al. 2015, sec. 4.1)
    rnn_embed_dim: int | None = None  # family rnn: the word embeddings' size (default d_model; Bahdanau et al. 2015: 620)
    attn_select: str = "soft"  # how a query picks keys in the attention that reads a context (a block's cross-attention where it has one, else its self-attention; an image-to-text model's attention over the image): soft | hard (one key) | local (a window of attn_local_window keys around a pick, soft inside)
    attn_estimator: str = "gumbel"  # how hard and local attention learn their pick: gumbel (Gumbel-softmax straight-through, Jang et al. 2017) | reinforce (sampled; REINFORCE with a moving-average baseline and an entropy bonus, Xu et al. 2015 sec. 4.1)
    attn_decode: str = "argmax"  # hard and local attention at evaluation and decoding: argmax | sample
    attn_local_window: int = 3  # local attention: the window's side (keys; k x k cells over an image)
    attn_tau: float = 1.0  # Gumbel-softmax temperature of the straight-through backward pass
    attn_entropy: float = 0.0  # REINFORCE: weight of the entropy bonus (lambda_e, Xu et al. 2015 eq. 12)
    attn_baseline_decay: float | None = 0.9  # REINFORCE: the moving-average baseline b <- d b + (1 - d) R (Xu et al.: 0.9); required
    attn_expectation: float = 0.0  # caption, LSTM decoder, REINFORCE: the share of training images whose picks are replaced by their expectation alpha (soft attention) for the whole caption (Xu et al. 2015 sec. 4.1: 0.5)
    attn_doubly_stochastic: float = 1.0  # caption, LSTM decoder: lambda of the doubly stochastic penalty lambda sum_i (1 - sum_t alpha_ti)^2 (Xu et al. 2015 sec. 4.2.1)
    caption_decoder: str = "lstm"  # caption: lstm (Show, Attend and Tell: attention, gating scalar, deep output) | transformer (decoder blocks with cross-attention over the image)
    image_encoder: str = "cnn"  # caption: cnn (log2(patch_size) stride-2 3x3 convolutions, then n_layers stride-1 ones, 3x3 but the last 1x1) | patches (ViT's patch embedding, then n_layers encoder blocks)
    extra: dict = field(default_factory=dict)  # free-form notes carried through save/load (e.g. source format)

    def __post_init__(self):
        """Validate every field (type and range), derive the fields left None, then check the rules between
        fields. ValueError names the field, the value and what was expected."""
        check_values(self, MODEL_RULES)
        for name, allowed in (("family", FAMILIES), ("position", POSITIONS), ("mixer", MIXERS)):
            choice(name, getattr(self, name), allowed)
        self._derive()
        self._check_positions()
        self._check_attention()
        self._check_stack()
        self._check_token_ids()
        check_recurrent(self)
        check_attention_pick(self)
        if self.family == "caption":
            check_caption(self)

    def _derive(self):
        """The fields left None, from the others: heads, sizes, biases, the final norm."""
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads})")
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(f"n_heads ({self.n_heads}) must divide d_model ({self.d_model}), "
                                 f"or give head_dim explicitly")
            self.head_dim = self.d_model // self.n_heads
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        if self.n_decoder_layers is None:
            self.n_decoder_layers = self.n_layers
        if self.out_bias is None:
            self.out_bias = self.bias
        if self.ffn_bias is None:
            self.ffn_bias = self.bias
        if self.final_norm is None:
            self.final_norm = self.prenorm

    def _check_positions(self):
        """RoPE's own fields need position='rope'; rotary_dim is even and at most head_dim."""
        if self.position in ROTARY:
            rotary = self.rotary_dim or self.head_dim
            if rotary % 2 or rotary > self.head_dim:
                raise ValueError(f"rotary_dim must be even and <= head_dim ({self.head_dim}), got {rotary}")
        if self.rope_local_base is not None and (self.position not in ROTARY or self.window is None):
            raise ValueError(f"rope_local_base={self.rope_local_base} is the RoPE base of sliding-window layers: it "
                             f"needs position='rope' and a window, got position={self.position!r}, window={self.window}")
        if self.rope_scaling is not None and self.position not in ROTARY:
            raise ValueError(f"rope_scaling is set but position={self.position!r}; it needs position='rope'")

    def _check_attention(self):
        """What limits softmax attention needs one: q/k norms and windows; patch_size divides image_size."""
        if self.qk_norm and self.mixer != "attention" and self.layer_pattern is None:
            raise ValueError(f"qk_norm normalises softmax attention's queries and keys; mixer={self.mixer!r} has none")
        if self.image_size % self.patch_size:  # a rule of the two fields (only an image model reads them)
            raise ValueError(f"patch_size ({self.patch_size}) must divide image_size ({self.image_size})")
        if self.layer_pattern is None:
            if self.window is not None and self.mixer != "attention":
                raise ValueError(f"window={self.window} limits softmax attention, but mixer={self.mixer!r} has none; "
                                 f"mix in sliding-window layers with layer_pattern (e.g. 'LW')")
            return
        bad = sorted(set(self.layer_pattern) - set(PATTERN_LETTERS))
        if not self.layer_pattern or bad:
            raise ValueError(f"layer_pattern must be a non-empty string of the letters {''.join(PATTERN_LETTERS)} "
                             f"({', '.join(f'{k} {v}' for k, v in PATTERN_LETTERS.items())}), got "
                             f"{self.layer_pattern!r}")
        if "W" in self.layer_pattern and self.window is None:
            raise ValueError(f"layer_pattern {self.layer_pattern!r} has sliding-window layers (W): set window "
                             f"(how many earlier tokens they see)")
        if "W" not in self.layer_pattern and self.window is not None:
            raise ValueError(f"window={self.window} is set but layer_pattern {self.layer_pattern!r} has no "
                             f"sliding-window layer (W) to use it")

    def _check_stack(self):
        """What the mixers of the stack need: RWKV-7's heads span d_model; RWKV's low-rank sizes are named ints."""
        period = len(self.layer_pattern) if self.layer_pattern else 1  # every kind shows in the first repeat
        kinds = {self.layer_mixer(i)[0] for i in range(min(self.n_layers, period))}
        if "rwkv7" in kinds and self.n_heads * self.head_dim != self.d_model:
            raise ValueError(f"RWKV-7 heads span d_model: n_heads * head_dim ({self.n_heads} * {self.head_dim}) must "
                             f"equal d_model ({self.d_model})")
        if self.rwkv_ranks is not None:
            known = {"mix", "decay", "a", "v", "gate"}
            bad = {k: v for k, v in self.rwkv_ranks.items()
                   if k not in known or not isinstance(v, int) or isinstance(v, bool) or v < 1}
            if bad:
                raise ValueError(f"rwkv_ranks has invalid entries {bad}; expected positive ints named {sorted(known)}")

    def _check_token_ids(self):
        """Special tokens are ids: ints >= 0 (eos_token_id may list several, as Llama 3's config.json does), or
        None. Not bounded by vocab_size: a preset cut to a small vocabulary keeps GPT-2's ids (an end token it can
        never emit); decoding checks the ids it is asked to use against the model's vocabulary."""
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            ids = value if isinstance(value, list) and name == "eos_token_id" else [value]
            if value is not None and not all(is_int(i) and i >= 0 for i in ids):
                several = " (or a list of them)" if name == "eos_token_id" else ""
                raise ValueError(f"{name} must be None or a token id (an int >= 0){several}, got {value!r}")

    def layer_mixer(self, layer: int) -> tuple[str, int | None]:
        """Block ``layer``'s mixer name and attention window (None: sees the whole prefix). Without a
        ``layer_pattern`` every block is ``mixer``, its attention limited by ``window`` when that is set."""
        if self.layer_pattern is None:
            return self.mixer, self.window if self.mixer == "attention" else None
        letter = self.layer_pattern[layer % len(self.layer_pattern)]
        return PATTERN_LETTERS[letter], self.window if letter == "W" else None

    @classmethod
    def from_dict(cls, d: dict):
        if not isinstance(d, dict):
            raise TypeError(f"{cls.__name__}: expected a mapping of field names to values, got {type(d).__name__}")
        d = dict(d)
        every = d.pop("attention_every", 0)  # configs saved before layer_pattern: every k-th block softmax
        if every:
            letter = {v: k for k, v in reversed(PATTERN_LETTERS.items())}[d.get("mixer", "attention")]
            d.setdefault("layer_pattern", letter * (every - 1) + "A")
        return super().from_dict(d)


SCHEDULES = ("cosine", "inverse_sqrt", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TOKENIZER_TYPES = ("auto", "bpe", "char", "wordpiece")


@dataclass
class TrainConfig(_Serializable):
    """How to train: data, optimisation, precision, evaluation, checkpoints. Read by ``qkv.train.train``.

    Batch sizes are global: ``batch_size`` sequences (LM) per micro-step summed over every process, so a run
    on N processes sees the same batches, and follows the same loss curve, as one process.

    Example:

        >>> import qkv
        >>> cfg = qkv.TrainConfig(batch_size=8, lr=3e-4, max_steps=100)
        >>> cfg.batch_size, cfg.lr, qkv.TrainConfig.from_dict(cfg.to_dict()) == cfg
        (8, 0.0003, True)
        >>> qkv.TrainConfig(lr=-1)
        Traceback (most recent call last):
        ValueError: need lr > 0 and 0 <= min_lr <= lr, got lr=-1, min_lr=0.0001
    """
    data: str | None = None  # training data: a text file (LM, MLM), a .tsv/.jsonl of pairs or the source side of aligned files (translation), an image folder or .npz (ViT)
    data_tgt: str | None = None  # translation: the target side, aligned line by line with --data
    val_data: str | None = None  # validation data in the same form; default: the last val_fraction of --data (LM) or none
    val_data_tgt: str | None = None  # translation: the target side of --val-data
    src_lang: str | None = None  # translation with --init of a multilingual checkpoint (mBART): the source language code, e.g. en_XX (default: its tokenizer_config.json)
    tgt_lang: str | None = None  # translation with --init of a multilingual checkpoint (mBART): the target language code its labels carry, e.g. es_XX (default: its tokenizer_config.json)
    val_fraction: float = 0.1  # LM without --val-data: the share of the corpus held out (its tail)
    tokenizer: str | None = None  # a saved tokenizer folder or tokenizer.json; default: one trained on --data, of --tokenizer-type
    tokenizer_type: str = "auto"  # the tokenizer trained on --data without --tokenizer: auto (byte-level BPE shared by both sides for translation, characters for language models and MLM) | bpe | char | wordpiece (MLM only: lowercases, strips accents, does not round-trip); train_config.json records the one used
    out_dir: str = "runs/train"  # where checkpoints, metrics.jsonl, the loss plot and the tokenizer go
    max_steps: int = 1000  # optimizer steps to train for
    batch_size: int = 12  # sequences per micro-step, over all processes together (translation: see max_tokens)
    max_tokens: int = 4096  # translation: padded tokens per micro-step, over all processes together
    block_size: int | None = None  # LM/MLM context length in tokens (classify: the longest text kept); default the model's max_positions up to 1024 (linear-time presets declare 4096+); the opening line and train_config.json say the one used
    grad_accum: int = 1  # micro-steps accumulated into one optimizer step
    lr: float = 1e-3  # peak learning rate (reached at the end of warmup)
    min_lr: float = 1e-4  # cosine: the learning rate at max_steps
    weight_decay: float = 0.1  # AdamW decoupled weight decay, on tensors of 2+ dims (matrices, embeddings), not biases or norms
    betas: tuple[float, float] = (0.9, 0.99)  # AdamW (beta1, beta2)
    eps: float = 1e-8  # AdamW epsilon
    warmup_steps: int = 100  # steps of linear warmup from 0 to lr
    schedule: str = "cosine"  # cosine (to min_lr at max_steps) | inverse_sqrt (Vaswani et al. 2017, sec. 5.3) | constant
    grad_clip: float = 1.0  # clip the global gradient norm to this (0: no clipping)
    label_smoothing: float = 0.0  # epsilon of label smoothing (0.1 in Vaswani et al. 2017, sec. 5.4)
    precision: str = "auto"  # auto (bf16 where the device multiplies bf16 in hardware: a CUDA GPU from Ampere on, a CPU with AVX512-BF16 or AMX; fp32 elsewhere) | fp32 | bf16 (autocast, float32 weights) | fp16 (autocast with a GradScaler); train_config.json records the one used
    compile: bool | None = None  # torch.compile each residual block (one graph every layer reuses; evaluation stays eager); default (auto): when the run has 6000+ steps of fixed-shape batches on one process and a compiler is at hand, else eager; falls back to eager if compiling fails; train_config.json records the one used
    seed: int = 1337  # seeds weights, data order, dropout
    eval_every: int = 250  # evaluate every this many steps (0: only at the end)
    eval_steps: int = 20  # validation batches per evaluation
    log_every: int = 10  # write a metrics.jsonl line every this many steps
    save_every: int = 0  # checkpoint every this many steps (0: at evaluations and at the end)
    keep_last: int = 2  # checkpoints kept besides the best one (0: keep all)
    resume: bool = False  # continue from the latest checkpoint in out_dir (Ctrl-C or SIGTERM saves one at the next step)
    overwrite: bool = False  # start afresh in an out_dir that holds an earlier run, deleting its checkpoints and metrics
    fsdp: bool = False  # under torchrun: shard parameters with FSDP2 (fully_shard) instead of DDP
    device: str | None = None  # cpu | cuda | cuda:N ...; default cuda when available (the local rank's under torchrun)
    progress: bool = True  # show a progress bar on stderr
    mlm_probability: float = 0.15  # MLM: share of tokens selected for prediction
    init: str | None = None  # start from a pretrained checkpoint instead of random weights: a qkv model or run folder, a Hugging Face folder or hub id (org/name), or an RWKV-LM .pth file; its model config and tokenizer are used (unlike --resume, no optimizer state)
    task: str = "auto"  # what to train: auto (the family's own: lm for decoders, seq2seq for encoder-decoders, mlm for encoders, image for ViT, caption for image-to-text) | classify (an encoder's classification head on text<TAB>label lines of a .tsv) | lm | seq2seq | mlm | image | caption (images and their captions: a folder with captions.tsv, or 'generated' for qkv.data.shapes' scenes)

    def __post_init__(self):
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        choice("schedule", self.schedule, SCHEDULES)
        choice("precision", self.precision, PRECISIONS)
        choice("tokenizer_type", self.tokenizer_type, TOKENIZER_TYPES)
        for name in ("src_lang", "tgt_lang"):
            if getattr(self, name) is not None and not self.init:
                raise ValueError(f"{name}={getattr(self, name)!r}: the language codes apply to fine-tuning a "
                                 f"multilingual checkpoint (mBART); pass init too, or drop {name}")
        for name in ("max_steps", "batch_size", "grad_accum", "max_tokens"):
            positive(name, getattr(self, name))
        if self.block_size is not None:
            positive("block_size", self.block_size)
        for name in ("warmup_steps", "eval_every", "eval_steps", "log_every", "save_every", "keep_last"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        positive("log_every", self.log_every)
        for name in ("lr", "min_lr", "weight_decay", "eps", "grad_clip", "label_smoothing", "val_fraction",
                     "mlm_probability"):
            finite(name, getattr(self, name))
        if not isinstance(self.betas, tuple) or not all(isinstance(b, (int, float)) and not isinstance(b, bool)
                                                        for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.resume and self.overwrite:
            raise ValueError("resume=True and overwrite=True exclude each other: continue the run in out_dir "
                             "(--resume) or replace it (--overwrite)")
        if self.schedule == "inverse_sqrt" and self.warmup_steps < 1:
            raise ValueError("schedule='inverse_sqrt' needs warmup_steps >= 1 (its peak is at the end of warmup)")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        for name in ("weight_decay", "grad_clip", "eps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
