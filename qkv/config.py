"""ModelConfig: one validated dataclass describes every model qkv builds. Only ``qkv/models`` reads it.

Behaviour is chosen by fields (``position="rope"``, ``norm="rms"``), never by matching a model's name. Fields
left as None are derived in ``__post_init__`` from the others. Each field's comment is its documentation: the
command line shows it as the flag's help.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

FAMILIES = ("decoder", "encoder", "encoder_decoder", "vit")
POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "relative", "none")
MIXERS = ("attention", "linear", "retention", "rwkv4", "memory")


@dataclass
class ModelConfig:
    family: str = "decoder"  # decoder (GPT, Llama, linear-time), encoder (BERT), encoder_decoder (Transformer, T5, MBART), vit
    vocab_size: int = 50257  # tokens in the vocabulary
    d_model: int = 768  # width of the residual stream
    n_layers: int = 12  # blocks (the encoder's, in an encoder-decoder model)
    n_heads: int = 12  # query heads per attention layer
    n_kv_heads: int | None = None  # key/value heads (grouped-query attention); default n_heads
    head_dim: int | None = None  # size of one head; default d_model / n_heads
    d_ff: int | None = None  # hidden size of the FFN; default 4 * d_model
    n_decoder_layers: int | None = None  # decoder blocks of an encoder-decoder model; default n_layers
    max_positions: int = 1024  # longest sequence (learned positions, cache size)
    position: str = "learned"  # learned | sinusoidal | rope | alibi | relative (T5 bias) | none
    sinusoidal_interleaved: bool = True  # sin/cos interleaved (original) or all sines then all cosines (Marian)
    rope_base: float = 10000.0  # RoPE theta
    rotary_dim: int | None = None  # features rotated by RoPE; default head_dim
    relative_buckets: int = 32  # T5 relative-position buckets
    relative_max_distance: int = 128  # T5: distances beyond this share the last bucket
    position_offset: int = 0  # spare rows before position 0 in a learned table (MBART: 2)
    norm: str = "layer"  # layer | rms
    norm_eps: float = 1e-5  # epsilon of every norm
    norm_bias: bool = True  # LayerNorm with a bias
    prenorm: bool = True  # norm before each sublayer (GPT-2, Llama, T5) or after the residual (original, BERT)
    final_norm: bool | None = None  # a norm after the last block; default: prenorm
    embed_norm: bool = False  # a norm right after the embeddings (BERT, MBART)
    activation: str = "gelu_tanh"  # relu | gelu | gelu_tanh | silu | swiglu | geglu | geglu_tanh | reglu
    bias: bool = True  # biases in the attention input projections (and, by default, W_O and the FFN)
    out_bias: bool | None = None  # a bias on W_O; default: bias (Qwen2: biases on Q/K/V only)
    ffn_bias: bool | None = None  # biases in the FFN; default: bias
    score: str = "scaled_dot"  # attention score: additive | bilinear | dot | scaled_dot | cosine
    attn_scale: float | None = None  # logit scale; default head_dim^-0.5 (T5 uses 1.0 with score=dot)
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
    mixer: str = "attention"  # token mixer of decoder blocks: attention | linear | retention | rwkv4 | memory
    attention_every: int = 0  # hybrids: every k-th block uses softmax attention, the rest `mixer` (0: none)
    pad_token_id: int | None = None  # padding token
    bos_token_id: int | None = None  # beginning of sequence
    eos_token_id: int | None = None  # end of sequence
    decoder_start_token_id: int | None = None  # first decoder input of an encoder-decoder model
    extra: dict = field(default_factory=dict)  # free-form notes carried through save/load (e.g. source format)

    def __post_init__(self):
        _choice("family", self.family, FAMILIES)
        _choice("position", self.position, POSITIONS)
        _choice("mixer", self.mixer, MIXERS)
        _choice("norm", self.norm, ("layer", "rms"))
        from .nn.layers import ACTIVATIONS
        from .ops.attention import SCORES
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("score", self.score, SCORES)
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_positions"):
            _positive(name, getattr(self, name))
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        _positive("n_kv_heads", self.n_kv_heads)
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
        if self.position == "rope":
            rotary = self.rotary_dim or self.head_dim
            if rotary % 2 or rotary > self.head_dim:
                raise ValueError(f"rotary_dim must be even and <= head_dim ({self.head_dim}), got {rotary}")
        if self.window is not None and self.window < 0:
            raise ValueError(f"window must be >= 0 (how many earlier tokens a token sees), got {self.window}")
        for name in ("dropout", "attn_dropout", "ffn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.family == "vit" and self.image_size % self.patch_size:
            raise ValueError(f"patch_size ({self.patch_size}) must divide image_size ({self.image_size})")
        if self.attention_every < 0:
            raise ValueError(f"attention_every must be >= 0, got {self.attention_every}")

    # -- serialisation ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes) -> "ModelConfig":
        """A copy with some fields changed. Derived fields (head_dim, d_ff, ...) keep their values: to change a
        size, start from ``qkv.preset(name, **overrides)``, which derives them afresh."""
        d = self.to_dict()
        d.update(changes)
        return ModelConfig.from_dict(d)


def _choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
