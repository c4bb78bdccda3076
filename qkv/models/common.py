"""What every family shares: the base class (save, summary, caches), embeddings, blocks, input checks.

With positions.py and mixers.py, the only place outside the family files that reads ModelConfig; it turns fields
into primitives for ``qkv.nn``.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn

from .. import files
from ..config import PATTERN_LETTERS, ModelConfig
from ..nn import ACTIVATIONS, NORMS, Block, FeedForward, make_norm
from ..nn.cache import Cache, CrossKVCache, LayerCache
from ..ops.attention import SCORES
from ..ops.checks import checks_values
from ..ops.rope import check_rope_scaling
from .mixers import MIXER_KINDS, make_attention, mixing_flops
from .positions import WindowedRope, position_kind

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
# A training checkpoint is a model folder plus its trainer state (qkv/checkpoint.py writes it): a folder holding this
# file must carry its manifest.
TRAINER_STATE_FILE = "trainer_state.json"


class QKVModel(nn.Module):
    """Base of every family: holds the config, saves itself, counts parameters and FLOPs, makes caches."""

    config: ModelConfig

    def save(self, path) -> Path:
        """Write qkv's own folder: config.json + model.safetensors (tied weights stored once) + manifest.json (the
        sha256 of both, which ``qkv.load`` checks)."""
        from safetensors.torch import save_model  # optional dependency: needed only when a model is saved
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ValueError(f"{path}: is a file; expected a folder to write the model into")
        path.mkdir(parents=True, exist_ok=True)
        files.write_atomic(path / CONFIG_FILE, self.config.to_json())
        tmp = path / (WEIGHTS_FILE + ".tmp")
        try:
            save_model(self, str(tmp))
            tmp.replace(path / WEIGHTS_FILE)  # atomic: a crash mid-write leaves the old weights whole
        finally:
            tmp.unlink(missing_ok=True)
        files.write_manifest(path, [CONFIG_FILE, WEIGHTS_FILE])  # the folder may hold other files (tokenizer/, ...)
        return path

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        seen, total = set(), 0
        for name, p in self.named_parameters():
            if id(p) in seen or (exclude_embeddings and isinstance(self.get_submodule(name.rpartition(".")[0]),
                                                                   (nn.Embedding,))):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Forward FLOPs per token at context ``seq_len`` (default max_positions): each family's count (its record
        in ``qkv.models.registry``), from ``count_flops``."""
        raise NotImplementedError(f"{type(self).__name__} does not count its FLOPs")

    def layer_mixers(self) -> list[tuple[str, int | None]]:
        """(mixer, window) of every block: the stack ``summary`` prints and FLOPs are counted over."""
        return [self.config.layer_mixer(i) for i in range(self.config.n_layers)]

    def stack(self) -> str:
        """The blocks' mixers as pattern letters with a legend, e.g. "RARA (R retention, A attention)"."""
        letters, legend = pattern_letters(self.layer_mixers())
        return f"{letters} ({legend})"

    def describe(self) -> list[tuple[str, str]]:
        """(label, text) lines about the layers, for ``qkv info`` (``qkv.models.summary``)."""
        cfg = self.config
        window = f", window {cfg.window}" if cfg.window is not None else ""
        return [("layers x width", f"{cfg.n_layers} x {cfg.d_model}, heads {cfg.n_heads} (kv {cfg.n_kv_heads}), "
                                   f"head size {cfg.head_dim}, FFN {cfg.d_ff} ({cfg.activation})"),
                ("position", f"{cfg.position}; norm: {cfg.norm} ({'pre' if cfg.prenorm else 'post'})"),
                ("stack", f"{self.stack()}{window}")]

    def new_cache(self, batch_size: int, max_len: int | None = None, *, static: bool = False,
                  rewind: int = 0) -> Cache:
        """An empty decoding state for ``batch_size`` sequences (KV caches grow unless ``max_len`` is given).

        static: fixed shapes for compiled decoding (needs ``max_len``; see ``qkv.nn.cache``): every KV layer keeps
        every position. Otherwise sliding-window layers get rolling caches, bounded by their window (plus
        ``rewind`` positions, how far ``cache.crop`` may go back before the last call)."""
        blocks = self.decoder_blocks()

        def mixer_cache(block):
            window = getattr(block, "window", None)
            if window is None or static:
                return block.mixer.new_cache(max_len, static=static)
            return block.mixer.new_cache(max_len, window=window, rewind=rewind)

        return Cache([LayerCache(mixer=mixer_cache(b), cross=CrossKVCache() if b.cross is not None else None)
                      for b in blocks], batch_size=batch_size, max_len=max_len, static=static)

    def decoder_blocks(self):
        raise NotImplementedError(f"{type(self).__name__} does not decode token by token")


def count_flops(model: QKVModel, seq_len: int | None, *, tied_head: bool) -> int:
    """Forward FLOPs per token at context ``seq_len``: 2 per weight of every matmul (plus the output layer when it
    is tied to the embeddings, ``tied_head``), plus each layer's token mixing: softmax attention's scores and
    weighted sum (2 * 2 * T * d at context T; Kaplan et al. 2020, sec. 2.1), a sliding window's up to its width,
    and the recurrent mixers' state update and read, which do not grow with the context (``mixing_flops``)."""
    cfg = model.config
    T = seq_len or cfg.max_positions
    matmul = 2 * model.num_parameters(exclude_embeddings=True)
    if tied_head:
        matmul += 2 * cfg.d_model * cfg.vocab_size
    mixing = sum(mixing_flops(cfg, kind, window, T) for kind, window in model.layer_mixers())
    return int(matmul + mixing)


def pattern_letters(mixers: list[tuple[str, int | None]]) -> tuple[str, str]:
    """(letters, legend) of a stack: one pattern letter per block ("W" for sliding-window attention)."""
    letter = {v: k for k, v in reversed(PATTERN_LETTERS.items())}  # first letter of each mixer
    letters = "".join("W" if window is not None else letter[kind] for kind, window in mixers)
    legend = {ch: ("sliding-window attention" if ch == "W" else PATTERN_LETTERS[ch]) for ch in letters}
    return letters, ", ".join(f"{ch} {name}" for ch, name in legend.items())


def check_ids(input_ids, vocab_size: int) -> None:
    """input_ids: an integer tensor (B, T) of ids in [0, vocab_size); TypeError / ValueError say what is wrong."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int, torch.int16):
        raise TypeError(f"input_ids must be an integer tensor (B, T), got "
                        f"{getattr(input_ids, 'dtype', type(input_ids).__name__)}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (B, T), got shape {tuple(input_ids.shape)}")
    # one host read on the good path, skipped where values are trusted (a decoding loop's own tokens)
    if checks_values() and input_ids.numel() and not bool(((input_ids >= 0) & (input_ids < vocab_size)).all()):
        raise ValueError(f"input_ids must lie in [0, {vocab_size}) (vocab_size), got values in "
                         f"[{int(input_ids.min())}, {int(input_ids.max())}]")


def init_weights(module: nn.Module) -> None:
    """GPT-2's initialisation: N(0, 0.02) weights, zero biases, unit norms."""
    if isinstance(module, (nn.Linear, nn.Embedding)) and not hasattr(module, "inv_freq"):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


def check_names(cfg: ModelConfig) -> None:
    """The config's names that live with their code: activation and norm (qkv/nn), score and RoPE scaling
    (qkv/ops). ValueError names the field, the value and the known names. (ModelConfig checks its own lists.)"""
    for name, value, known in (("activation", cfg.activation, ACTIVATIONS), ("norm", cfg.norm, NORMS),
                               ("score", cfg.score, SCORES)):
        if value not in known:
            raise ValueError(f"{name} must be one of {known}, got {value!r}")
    if cfg.rope_scaling is not None:
        check_rope_scaling(cfg.rope_scaling, cfg.rotary_dim or cfg.head_dim)


def load_config(path) -> ModelConfig:
    """The ModelConfig of a qkv model folder's config.json: every field type- and range-checked, the names that
    live with their code too; ValueError names the file, the field, the value and what was expected."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a qkv model folder: {CONFIG_FILE} is missing")
    fields = files.read_json(files.inside(path, path / CONFIG_FILE, what=CONFIG_FILE))
    try:
        config = ModelConfig.from_dict(fields)
        check_names(config)
        return config
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path / CONFIG_FILE}: {e}") from None


# -- embeddings and positions -----------------------------------------------------------------------------------

class Embeddings(nn.Module):
    """Token embeddings (scaled by sqrt(d_model) if asked) + absolute positions + token types, then an optional
    norm and dropout."""

    def __init__(self, cfg: ModelConfig, *, tokens: nn.Embedding | None = None):
        super().__init__()
        self.tokens = tokens if tokens is not None else nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0
        added = position_kind(cfg).added
        self.positions = added(cfg) if added else None
        self.types = nn.Embedding(cfg.type_vocab_size, cfg.d_model) if cfg.type_vocab_size else None
        self.norm = make_norm(cfg.norm, cfg.d_model, eps=cfg.norm_eps, bias=cfg.norm_bias,
                              offset=cfg.norm_offset) if cfg.embed_norm else None
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids, positions, token_type_ids=None):
        """input_ids (B, T), positions (T,) or (B, T) -> (B, T, d_model)."""
        x = self.tokens(input_ids)
        if self.scale != 1.0:
            x = x * self.scale
        if self.positions is not None:
            x = x + self.positions(positions).to(x.dtype)
        if self.types is not None:
            types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            x = x + self.types(types)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x) if self.dropout.p else x


def make_block(cfg: ModelConfig, *, layer: int = 0, cross: bool = False, mixer: str | None = None) -> Block:
    """Block ``layer`` of a stack: its mixer and window from ``cfg.layer_mixer`` (``mixer`` forces a full-context
    one, e.g. the encoder-decoder stacks' softmax attention)."""
    name, window = (mixer, None) if mixer else cfg.layer_mixer(layer)
    if name not in MIXER_KINDS:
        raise ValueError(f"mixer {name!r} is not available; known mixers: {sorted(MIXER_KINDS)}")
    kind = MIXER_KINDS[name]
    if kind.block is not None:
        if cross:
            raise ValueError(f"mixer {name!r} builds a whole block without cross-attention; cross=True needs a mixer")
        return kind.block(cfg, layer)
    ffn = FeedForward(cfg.d_model, cfg.d_ff, activation=cfg.activation, bias=cfg.ffn_bias, dropout=cfg.ffn_dropout)
    # hard / local attention (attn_select) picks among the context a block reads: its cross-attention's if it has
    # one, else its own tokens
    mixer = make_attention(cfg, picks=False) if cross and kind.layer is make_attention else kind.layer(cfg)
    return Block(cfg.d_model, mixer, ffn, cross=make_attention(cfg) if cross else None,
                 norm=cfg.norm, prenorm=cfg.prenorm, eps=cfg.norm_eps, norm_bias=cfg.norm_bias, dropout=cfg.dropout,
                 window=window, norm_offset=cfg.norm_offset, sandwich=cfg.sandwich_norm)


def run_blocks(blocks, x: torch.Tensor, cache: Cache | None = None, *, return_weights: bool = False,
               masks: dict | None = None, **kwargs):
    """x through every block, block i with ``cache.layers[i]``; the other keywords go to every block, and each
    block's own ``window`` to its mixer. ``masks`` (static decoding) maps each window of the blocks to
    the mask that already holds it, given to the blocks of that window instead. Blocks that declare
    ``takes_shared`` also get one dict that lives for this call (RWKV-7's first-layer values ride in it).
    Returns (x, list of BlockWeights per block, empty unless ``return_weights``)."""
    weights, shared = [], {}
    for i, block in enumerate(blocks):
        window, kw = getattr(block, "window", None), kwargs
        if isinstance(kwargs.get("rope"), WindowedRope):
            kw = {**kwargs, "rope": kwargs["rope"].full if window is None else kwargs["rope"].local}
        if masks is not None:
            kw = {**kw, "mask": masks[window]}
        elif window is not None:
            kw = {**kw, "window": window}
        if getattr(block, "takes_shared", False):
            kw = {**kw, "shared": shared}
        x = block(x, cache=None if cache is None else cache.layers[i], return_weights=return_weights, **kw)
        if return_weights:
            x, w = x
            weights.append(w)
    return x, weights


def final_norm(cfg: ModelConfig) -> nn.Module:
    return make_norm(cfg.norm, cfg.d_model, eps=cfg.norm_eps, bias=cfg.norm_bias, offset=cfg.norm_offset) \
        if cfg.final_norm else nn.Identity()
