"""What ``qkv info`` says about a model, as numbers (``ModelSummary``) and as text (``format_summary``): its size,
FLOPs per token, the memory of its weights, of training, and of decoding at a context length.

The decoding memory is measured, not derived by hand per mixer: a three-token input is prefilled through the
family's decode adapter into a fresh cache (on the meta device for a meta build: shapes, no memory, no arithmetic),
and each layer's cache is read. Softmax attention keeps keys and values per position (Vaswani et al. 2017, sec. 3.2:
one row of K and V per token), so its bytes per position times the context (a sliding window's width at most) give
the KV cache at ``seq_len``; a recurrent mixer's state does not grow with the context (Katharopoulos et al. 2020,
sec. 3.4: linear attention as an RNN), so its bytes are the state's; cross-attention keeps the source's keys and
values, per source position for a text source, whole for an image.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..files.memory import human, scaled
from ..nn.cache import CrossKVCache, KVCache, RecurrentCache
from ..ops.checks import trusted_values
from .positions import decodable_positions
from .registry import family_of

_PROBE = 3  # tokens prefilled to measure the caches (a window or a chunk never makes three positions special)


@dataclass(frozen=True)
class DecodingMemory:
    """Bytes one sequence's decoding state takes at a context of ``seq_len`` tokens. kv_cache: softmax
    self-attention's keys and values (``kv_layers`` layers); state: the recurrent mixers' states, the same at any
    length (``state_layers`` layers); source: cross-attention's keys and values of a ``seq_len``-token source, or
    of the whole image for an image model (``source_fixed``)."""
    seq_len: int
    kv_cache: int
    kv_layers: int
    state: int
    state_layers: int
    source: int
    source_fixed: bool


@dataclass(frozen=True)
class ModelSummary:
    """``qkv info``'s numbers. weights: bytes of the parameters as held (tied weights once); training: 16 bytes per
    parameter (fp32 weights, gradients and AdamW's two moments; activations extra); dtype: the weights' (the caches
    take it too); positions: the learned positions
    the model can read at most (None when its positions extrapolate); decoding: None for a family that does not
    decode; shape: (label, text) lines the family writes about its layers; warnings: one line each."""
    model: str
    family: str
    parameters: int
    non_embedding: int
    flops_per_token: int
    seq_len: int
    weights: int
    dtype: str
    training: int
    positions: int | None
    decoding: DecodingMemory | None
    shape: tuple[tuple[str, str], ...]
    warnings: tuple[str, ...]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def summarize(model, seq_len: int | None = None) -> ModelSummary:
    """The ``ModelSummary`` of ``model`` (built on any device, the meta device included) at context ``seq_len``
    (default: the config's max_positions)."""
    cfg = model.config
    T = seq_len or cfg.max_positions
    n = model.num_parameters()
    positions = decodable_positions(cfg)
    warnings = []
    if positions is not None and T > positions:
        warnings.append(f"--seq-len {T} is past the {positions} learned positions this model has: it cannot read "
                        f"a context that long at once, and the numbers at {T} describe a context it never sees")
    return ModelSummary(
        model=type(model).__name__, family=cfg.family, parameters=n,
        non_embedding=model.num_parameters(exclude_embeddings=True), flops_per_token=int(model.flops_per_token(T)),
        seq_len=T, weights=sum(p.numel() * p.element_size() for p in model.parameters()),
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."), training=16 * n,
        positions=positions, decoding=decoding_memory(model, T), shape=tuple(model.describe()),
        warnings=tuple(warnings))


def _probe_input(model, record) -> torch.Tensor:
    """A minimal input of the family's kind on the model's device: token ids (1, 3), or one blank image."""
    cfg, device = model.config, next(model.parameters()).device
    if record.text:
        return torch.zeros(1, _PROBE, dtype=torch.long, device=device)
    return torch.zeros(1, cfg.num_channels, cfg.image_size, cfg.image_size, device=device)


def decoding_memory(model, seq_len: int) -> DecodingMemory | None:
    """Bytes one sequence's decoding state takes at ``seq_len`` (see ``DecodingMemory``), read from the caches a
    short prefill fills; None for a family that does not decode (it reads its whole input at once)."""
    record = family_of(model.config)
    if record.decoding is None:
        return None
    cache = model.new_cache(1)
    with torch.no_grad(), trusted_values():  # no value checks: a meta tensor holds no values to check
        record.decoding.prefill(model, _probe_input(model, record), None, cache, _PROBE + 1)
    kv = state = source = kv_layers = state_layers = 0
    for layer in cache.layers:
        if isinstance(layer.mixer, KVCache) and layer.mixer.k is not None:
            k, v = layer.mixer.k, layer.mixer.v  # (B, H, capacity, D)
            per_position = (k[:, :, 0].numel() * k.element_size() + v[:, :, 0].numel() * v.element_size())
            window = layer.mixer.window
            kv += per_position * (seq_len if window is None else min(seq_len, window))
            kv_layers += 1
        elif isinstance(layer.mixer, RecurrentCache):
            state += sum(t.numel() * t.element_size() for t in layer.mixer.state.values())
            state_layers += 1
        if isinstance(layer.cross, CrossKVCache) and layer.cross.k is not None:
            source += _per_source(layer.cross.k, seq_len, record.text) + _per_source(layer.cross.v, seq_len,
                                                                                     record.text)
    if getattr(cache, "memory", None) is not None:  # the encoder output the cache keeps (B, S, Dm)
        source += _per_source(cache.memory.unsqueeze(1), seq_len, record.text)
    return DecodingMemory(seq_len, kv, kv_layers, state, state_layers, source, not record.text)


def _per_source(t: torch.Tensor, seq_len: int, text: bool) -> int:
    """Bytes of ``t`` (B, H, S, D) scaled from its S probe positions to ``seq_len`` (text), or as it is (image)."""
    nbytes = t.numel() * t.element_size()
    return nbytes * seq_len // t.shape[-2] if text else nbytes


# -- the text ------------------------------------------------------------------------------------------------------

def count_text(n: float) -> str:
    """A count in three significant figures with a decimal suffix: "999", "1.00 K", "242 K", "6.74 B"."""
    return scaled(n, 1000, ("", " K", " M", " B", " T"))


bytes_text = human  # bytes in binary units, as every qkv message says them ("1.00 KiB", "25.1 GiB")


def _layers(n: int, kind: str) -> str:
    return f"{n} {kind} layer{'s' if n != 1 else ''}"


def format_summary(s: ModelSummary) -> str:
    """The summary ``qkv info`` prints: one line per number, then the family's own lines about its layers.
    Warnings are not included (the caller says them where warnings go)."""
    lines = [f"{s.model} ({s.family})",
             f"  parameters:       {count_text(s.parameters)} ({s.parameters:,}; non-embedding "
             f"{count_text(s.non_embedding)})",
             f"  FLOPs per token:  {count_text(s.flops_per_token)} (forward, context {s.seq_len:,})",
             f"  weights memory:   {bytes_text(s.weights)} ({s.dtype})",
             f"  training memory:  ~{bytes_text(s.training)} (fp32 weights, grads and AdamW state; activations "
             f"extra)"]
    d = s.decoding
    if d is None:
        lines.append("  decoding memory:  none kept (it reads its whole input at once)")
    else:
        if d.kv_layers:
            lines.append(f"  KV cache:         {bytes_text(d.kv_cache)} at {d.seq_len:,} tokens, per sequence "
                         f"(keys and values of {_layers(d.kv_layers, 'softmax attention')})")
        if d.state_layers:
            lines.append(f"  recurrent state:  {bytes_text(d.state)} per sequence at any length "
                         f"({_layers(d.state_layers, 'recurrent')})")
        if d.source:
            where = "for the image" if d.source_fixed else f"for a {d.seq_len:,}-token source"
            lines.append(f"  source K/V:       {bytes_text(d.source)} {where}, per sequence (cross-attention)")
    lines += [f"  {label + ':':17s} {text}" for label, text in s.shape]
    return "\n".join(lines)
