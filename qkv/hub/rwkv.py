"""RWKV-LM checkpoints (BlinkDL's RWKV-4 releases, a torch.save'd dict of tensors in a .pth file) into qkv.

The format, read from the checkpoint's shapes alone (there is no config file):

    emb.weight (V, C)                          blocks.0.ln0.weight / bias (C,)   (embedding norm, block 0 only)
    blocks.N.ln1.weight / bias, blocks.N.ln2.weight / bias (C,)
    blocks.N.att.time_decay (A,), time_first (A,), time_mix_k / v / r (1, 1, C)
    blocks.N.att.key / value / receptance.weight (A, C), att.output.weight (C, A)
    blocks.N.ffn.time_mix_k / r (1, 1, C), ffn.key.weight (F, C), ffn.receptance.weight (C, C), ffn.value (C, F)
    ln_out.weight / bias (C,), head.weight (V, C)

C = d_model, A = dim_att (d_model in every release), F = d_ff (4 C). time_decay is stored as log w (RWKV-LM
computes with -exp(time_decay)); qkv's RWKVTimeMix keeps the same parameter and takes w = exp(time_decay).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from .. import safety
from ..config import ModelConfig

# qkv name <- RWKV-LM name, for one block; "{i}" is the block index. Every key is listed: nothing is guessed.
_BLOCK_KEYS = {
    "ln1.weight": "ln1.weight", "ln1.bias": "ln1.bias", "ln2.weight": "ln2.weight", "ln2.bias": "ln2.bias",
    "mixer.time_decay": "att.time_decay", "mixer.time_first": "att.time_first",
    "mixer.time_mix_k": "att.time_mix_k", "mixer.time_mix_v": "att.time_mix_v", "mixer.time_mix_r": "att.time_mix_r",
    "mixer.key.weight": "att.key.weight", "mixer.value.weight": "att.value.weight",
    "mixer.receptance.weight": "att.receptance.weight", "mixer.output.weight": "att.output.weight",
    "ffn.time_mix_k": "ffn.time_mix_k", "ffn.time_mix_r": "ffn.time_mix_r", "ffn.key.weight": "ffn.key.weight",
    "ffn.receptance.weight": "ffn.receptance.weight", "ffn.value.weight": "ffn.value.weight",
}
_TOP_KEYS = {"embed.tokens.weight": "emb.weight", "blocks.0.ln0.weight": "blocks.0.ln0.weight",
             "blocks.0.ln0.bias": "blocks.0.ln0.bias", "norm.weight": "ln_out.weight", "norm.bias": "ln_out.bias",
             "head.weight": "head.weight"}
# Keys that only later RWKV versions have: a checkpoint with any of them is not RWKV-4.
_LATER_VERSIONS = ("ln_x", "gate.weight", "time_maa", "time_faaaa", "time_state", "att.w0", "att.x_r")


def rwkv_key_map(n_layers: int) -> dict[str, str]:
    """qkv parameter name -> RWKV-LM checkpoint key for an RWKV-4 model of ``n_layers`` blocks."""
    keys = dict(_TOP_KEYS)
    for i in range(n_layers):
        keys.update({f"blocks.{i}.{ours}": f"blocks.{i}.{theirs}" for ours, theirs in _BLOCK_KEYS.items()})
    return keys


def _resolve(path) -> Path:
    """RWKV-LM names models without the suffix (its loader appends .pth): accept either."""
    path = Path(path)
    if path.is_file():
        return path
    with_suffix = path.with_name(path.name + ".pth")
    if with_suffix.is_file():
        return with_suffix
    raise FileNotFoundError(f"no RWKV checkpoint at {path} (nor {with_suffix})")


def rwkv_config(state: dict[str, torch.Tensor], **overrides) -> ModelConfig:
    """The ModelConfig of an RWKV-4 state dict, inferred from its shapes."""
    later = sorted({k for k in state for marker in _LATER_VERSIONS if marker in k})
    if later:
        raise ValueError(f"this checkpoint is not RWKV-4 (it has {later[:3]}...); from_rwkv reads RWKV-4 only")
    for key in ("emb.weight", "blocks.0.att.key.weight", "blocks.0.ffn.key.weight", "head.weight"):
        if key not in state:
            raise ValueError(f"not an RWKV-LM checkpoint: key {key!r} is missing (keys: {sorted(state)[:6]}...)")
    vocab, d_model = state["emb.weight"].shape
    d_att, d_ff = state["blocks.0.att.key.weight"].shape[0], state["blocks.0.ffn.key.weight"].shape[0]
    n_layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    safety.check_layer_count([k for k in state if k.startswith("blocks.")], n_layers,
                             field="n_layers (1 + the largest block index)", source="the RWKV state dict")
    fields = dict(family="decoder", mixer="rwkv4", position="none", norm="layer", norm_eps=1e-5, bias=False,
                  tie_embeddings=False, vocab_size=vocab, d_model=d_model, n_layers=n_layers, n_heads=1,
                  head_dim=d_att, d_ff=d_ff, max_positions=4096, extra={"source": "rwkv-lm", "rwkv_version": 4})
    return ModelConfig(**{**fields, **overrides})


def from_rwkv(path, *, dtype: torch.dtype | None = torch.float32, device=None):
    """An official RWKV-LM RWKV-4 checkpoint (``.pth``; the path may omit the suffix) as a qkv DecoderLM.

    Weights are cast to ``dtype`` (float32 by default: releases are often bf16 / fp16; None keeps them).
    Feeding tokens through ``model(ids, cache)`` one at a time reproduces RWKV-LM's RNN mode."""
    from ..models import build
    file = _resolve(path)
    state = safety.load_tensor_pickle(file)  # plain tensors only, memory-mapped
    try:
        cfg = rwkv_config(state)
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from None
    safety.check_finite(state, source=file)
    model = build(cfg)
    ours = model.state_dict()
    keys = rwkv_key_map(cfg.n_layers)
    missing = sorted(theirs for theirs in keys.values() if theirs not in state)
    unused = sorted(set(state) - set(keys.values()))
    if missing or unused:
        raise ValueError(f"RWKV-4 checkpoint keys do not match: missing {missing[:5]}, unexpected {unused[:5]}")
    converted = {}
    for name, theirs in keys.items():
        if state[theirs].numel() != ours[name].numel():
            raise ValueError(f"{theirs} has shape {tuple(state[theirs].shape)}; expected {tuple(ours[name].shape)}")
        t = state[theirs].reshape(ours[name].shape)  # time_mix_* are stored as (1, 1, C)
        converted[name] = t.to(dtype) if dtype is not None else t
    if dtype is not None:
        model.to(dtype)
    model.load_state_dict(converted, strict=True)
    if device is not None:
        model.to(device)
    return model.eval()
