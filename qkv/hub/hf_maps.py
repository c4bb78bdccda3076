"""What every Hugging Face weight map is made of: the ``Converter`` record of one architecture, the ``Pair``s of
qkv and checkpoint weight names, and helpers for config.json fields that changed names across transformers versions.
hf_decoder.py, hf_encoder.py and hf_seq2seq.py build their converters from these; hf.py lists them (one table)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..config import ModelConfig
from ..ops.rope import ROPE_SCALINGS

StateDict = dict[str, torch.Tensor]

# transformers' activation names -> qkv's (the ungated ones; decoders and BART-like models share them)
ACT_FROM_HF = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu",
               "silu": "silu", "swish": "silu"}


@dataclass(frozen=True)
class Converter:
    """How one Hugging Face architecture maps onto qkv.

    config_from_hf(hf_config dict) -> ModelConfig (of ``family``); state_from_hf(hf weights, config) -> qkv weights.
    The ``*_to_hf`` pair, when given, is the way back (``qkv convert --to-hf``)."""
    model_type: str
    architecture: str  # the class name written into an exported config.json
    family: str  # the qkv family its configs build (only a model of that family exports through it)
    config_from_hf: Callable[[dict], ModelConfig]
    state_from_hf: Callable[[StateDict, ModelConfig], StateDict]
    config_to_hf: Callable[[ModelConfig], dict] | None = None
    state_to_hf: Callable[[StateDict, ModelConfig], StateDict] | None = None
    unused: frozenset[str] = frozenset()  # config fields its models never read (not carried through config.json)


# -- helpers for the maps ------------------------------------------------------------------------------------------

class Weights:
    """A checkpoint's tensors with a name prefix stripped, and errors that name the missing key."""

    def __init__(self, state: StateDict, prefixes: tuple[str, ...] = ()):
        self.state = state
        self.prefix = next((p for p in prefixes if any(k.startswith(p) for k in state)), "")

    def __call__(self, key: str) -> torch.Tensor:
        full = self.prefix + key
        if full not in self.state:
            raise KeyError(f"weight {full!r} is missing from the checkpoint")
        return self.state[full]

    def get(self, key: str):
        return self.state.get(self.prefix + key)

    def __contains__(self, key: str) -> bool:
        return self.prefix + key in self.state


@dataclass(frozen=True)
class Pair:
    """One qkv weight and the checkpoint weight(s) it comes from. Several names are concatenated along dim 0
    (separate Q, K, V into qkv's fused projection), ``sizes`` splitting them again on the way out;
    ``transpose`` for GPT-2's Conv1D, which stores (in, out)."""
    ours: str
    theirs: str | tuple[str, ...]
    transpose: bool = False
    sizes: tuple[int, ...] | None = None


def map_from_hf(pairs: list[Pair], weights: Weights) -> StateDict:
    out = {}
    for p in pairs:
        names = (p.theirs,) if isinstance(p.theirs, str) else p.theirs
        parts = [weights(n).t() if p.transpose else weights(n) for n in names]
        out[p.ours] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    return out


def map_to_hf(pairs: list[Pair], state: StateDict) -> StateDict:
    out = {}
    for p in pairs:
        names = (p.theirs,) if isinstance(p.theirs, str) else p.theirs
        parts = state[p.ours].split(list(p.sizes), dim=0) if len(names) > 1 else (state[p.ours],)
        for n, t in zip(names, parts):
            out[n] = t.t() if p.transpose else t
    return out


def hf_get(hf: dict, *names, default=None):
    """The first of several config names that is present (names changed across transformers versions)."""
    for name in names:
        if hf.get(name) is not None:
            return hf[name]
    return default


def rope_parameters(hf: dict, params: dict | None = None) -> tuple[float, dict | None]:
    """(RoPE theta, qkv's ``rope_scaling`` dict or None) from a config's ``rope_parameters`` (transformers >= 5) or
    ``rope_theta`` + ``rope_scaling`` (older), filling in the defaults transformers would derive, so the qkv config
    holds every number it needs. ``params`` overrides where they are read from (one entry of a per-layer dict)."""
    if params is None:
        params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    params = dict(params)
    kind = params.get("rope_type", params.get("type")) or "default"
    theta = float(params.get("rope_theta") or hf.get("rope_theta") or 10000.0)
    if kind == "default":
        return theta, None
    if kind not in ROPE_SCALINGS:
        raise ValueError(f"RoPE scaling {kind!r} is not supported; supported: default, {', '.join(sorted(ROPE_SCALINGS))}")
    required, optional = ROPE_SCALINGS[kind]
    scaling = {"rope_type": kind, **{k: params[k] for k in required + optional if params.get(k) is not None}}
    if kind == "dynamic":  # transformers grows the base past max_position_embeddings
        scaling["original_max_position_embeddings"] = hf.get("max_position_embeddings", 2048)
    elif kind in ("yarn", "llama3", "longrope"):
        # a top-level original_max_position_embeddings wins (Phi-3 keeps it there), as in transformers
        scaling["original_max_position_embeddings"] = hf_get(hf, "original_max_position_embeddings", default=None) \
            or params.get("original_max_position_embeddings") or hf.get("max_position_embeddings", 2048)
        if kind in ("yarn", "longrope") and params.get("factor") is None:
            scaling["factor"] = hf.get("max_position_embeddings", 2048) / scaling["original_max_position_embeddings"]
    return theta, scaling


def rope_parameters_to_hf(cfg: ModelConfig) -> dict:
    """The way back: transformers' ``rope_parameters`` for a qkv config."""
    scaling = dict(cfg.rope_scaling or {"rope_type": "default"})
    return {**scaling, "rope_theta": cfg.rope_base}
