"""RWKV-LM checkpoints (BlinkDL's releases of RWKV-4, 5.2, 6 and 7: a torch.save'd dict of tensors in a .pth file)
into qkv. There is no config file: the version is read from the keys and the sizes from the shapes.

Shared by every version (C = d_model, V = vocabulary, F = d_ff):

    emb.weight (V, C)   blocks.0.ln0.weight / bias (C,)   blocks.N.ln1 / ln2 .weight / .bias (C,)
    ln_out.weight / bias (C,)   head.weight (V, C)   blocks.N.ffn.key.weight (F, C), ffn.value.weight (C, F)

The time mix ("att") by version (A = dim_att = H N, H heads of size N; per-channel vectors stored as (1, 1, C)):

    4    time_decay (A,) = log w, time_first (A,), time_mix_k/v/r; key, value, receptance, output
    5.2  + ln_x (GroupNorm), gate, time_mix_g; time_decay (H, N) with w = exp(-exp(d)); time_faaaa (H, N) = u
    6    time_maa_x/w/k/v/r/g, time_maa_w1 (C, 5 R), time_maa_w2 (5, R, C), time_decay (1, 1, A),
         time_decay_w1 (C, Rd), time_decay_w2 (Rd, A), time_faaaa (H, N); gate, ln_x
    7    x_r/w/k/v/a/g, w0 w1 w2, a0 a1 a2, v0 v1 v2 (blocks after the first), g1 g2, k_k, k_a, r_k (H, N); ln_x

and the FFN: time_mix_k / time_mix_r + receptance (4, 5.2), time_maa_k / time_maa_r + receptance (6), x_k (7).
How the version is told (as the `rwkv` package tells it): x_r / r_k -> 7; time_maa -> 6; ln_x with a gate and a
two-dimensional time_decay -> 5.2 (5.0 / 5.1 are refused); none of these -> 4.

qkv's RWKV modules use RWKV-LM's parameter names, so the key map is a rename, "blocks.N.mixer.X" <-> "blocks.N.att.X",
listed in full from the model built for the checkpoint's shapes: every key on either side must be matched (block
0's v0 / v1 / v2 in RWKV-7 files are the one exception: RWKV-7 never uses them, and they are dropped).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from .. import files
from ..config import ModelConfig
from ..models import build
from ..models.sizing import check_layer_count

_TOP_KEYS = {"embed.tokens.weight": "emb.weight", "blocks.0.ln0.weight": "blocks.0.ln0.weight",
             "blocks.0.ln0.bias": "blocks.0.ln0.bias", "norm.weight": "ln_out.weight", "norm.bias": "ln_out.bias",
             "head.weight": "head.weight"}
VERSIONS = (4, 5.2, 6, 7)


def rwkv_version(state: dict[str, torch.Tensor]) -> float:
    """The RWKV-LM version a state dict was saved from: 4, 5.2, 6 or 7 (ValueError for 5.0 / 5.1)."""
    keys = list(state)
    if any(k.endswith(("att.x_r", "att.r_k")) for k in keys):
        return 7
    if any("time_maa" in k for k in keys):
        return 6
    if any(".ln_x." in k for k in keys):
        decay = state.get("blocks.0.att.time_decay")
        if any(k.endswith("att.gate.weight") for k in keys) and decay is not None and decay.dim() == 2 \
                and decay.shape[1] > 1:
            return 5.2
        raise ValueError("this is an RWKV-5.0 / 5.1 checkpoint (ln_x without a gate or per-head decays); from_rwkv "
                         "reads RWKV-4, 5.2, 6 and 7")
    return 4


def rwkv_key_map(model) -> dict[str, str]:
    """qkv parameter name -> RWKV-LM checkpoint key, for every parameter of a qkv RWKV model."""
    keys = {}
    for name in model.state_dict():
        if name in _TOP_KEYS:
            keys[name] = _TOP_KEYS[name]
        elif m := re.fullmatch(r"blocks\.(\d+)\.mixer\.(.+)", name):
            keys[name] = f"blocks.{m.group(1)}.att.{m.group(2)}"
        else:
            keys[name] = name  # blocks.N.ln1 / ln2 / ffn.*: the same name in both
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
    """The ModelConfig of an RWKV-LM state dict (RWKV-4, 5.2, 6 or 7), inferred from its keys and shapes."""
    for key in ("emb.weight", "blocks.0.att.key.weight", "blocks.0.ffn.key.weight", "head.weight"):
        if key not in state:
            raise ValueError(f"not an RWKV-LM checkpoint: key {key!r} is missing (keys: {sorted(state)[:6]}...)")
    version = rwkv_version(state)
    vocab, d_model = state["emb.weight"].shape
    d_att, d_ff = state["blocks.0.att.key.weight"].shape[0], state["blocks.0.ffn.key.weight"].shape[0]
    n_layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    check_layer_count([k for k in state if k.startswith("blocks.")], n_layers,
                             field="n_layers (1 + the largest block index)", source="the RWKV state dict")
    att = lambda name: state[f"blocks.0.att.{name}"]  # noqa: E731
    n_heads, head_dim, ranks = 1, d_att, None  # RWKV-4: no heads
    if version == 5.2:
        n_heads, head_dim = att("time_decay").shape
    elif version == 6:
        n_heads, head_dim = att("time_faaaa").shape
        ranks = {"mix": att("time_maa_w1").shape[1] // 5, "decay": att("time_decay_w1").shape[1]}
    elif version == 7:
        n_heads, head_dim = att("r_k").shape
        ranks = {"decay": att("w1").shape[1], "a": att("a1").shape[1], "gate": att("g1").shape[1]}
        if "blocks.1.att.v1" in state:
            ranks["v"] = state["blocks.1.att.v1"].shape[1]
    mixer = {4: "rwkv4", 5.2: "rwkv5", 6: "rwkv6", 7: "rwkv7"}[version]
    fields = dict(family="decoder", mixer=mixer, position="none", norm="layer", norm_eps=1e-5, bias=False,
                  tie_embeddings=False, vocab_size=vocab, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                  head_dim=head_dim, d_ff=d_ff, max_positions=4096, rwkv_ranks=ranks,
                  extra={"source": "rwkv-lm", "rwkv_version": version})
    return ModelConfig(**{**fields, **overrides})


def from_rwkv(path, *, dtype: torch.dtype | None = torch.float32, device=None):
    """An official RWKV-LM checkpoint (``.pth``, RWKV-4, 5.2, 6 or 7; the path may omit the suffix) as a DecoderLM.

    Weights are cast to ``dtype`` (float32 by default: releases are often bf16 / fp16; None keeps them).
    Feeding tokens through ``model(ids, cache)`` one at a time reproduces RWKV-LM's RNN mode.

    Example:

        >>> import tempfile, torch, qkv
        >>> from qkv.hub.rwkv import rwkv_key_map
        >>> model = qkv.build(qkv.preset("rwkv4-tiny")).eval()
        >>> state = {rwkv_key_map(model)[name]: t for name, t in model.state_dict().items()}   # RWKV-LM's key names
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     torch.save(state, f"{folder}/rwkv.pth")
        ...     again = qkv.from_rwkv(f"{folder}/rwkv")               # the suffix may be left out, as RWKV-LM does
        >>> ids = torch.tensor([[1, 2, 3]])
        >>> again.config.mixer, torch.allclose(again(ids), model(ids))
        ('rwkv4', True)
    """
    file = _resolve(path)
    state = files.load_tensor_pickle(file)  # plain tensors only, memory-mapped
    try:
        cfg = rwkv_config(state)
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from None
    model = build(cfg)
    ours = model.state_dict()
    keys = rwkv_key_map(model)
    files.check_dtypes({theirs: ours[name].dtype for name, theirs in keys.items()},
                       {k: t.dtype for k, t in state.items()}, source=file)  # integers where floats belong
    files.check_finite(state, source=file)
    ignored = {f"blocks.0.att.{n}" for n in ("v0", "v1", "v2")} if cfg.mixer == "rwkv7" else set()
    missing = sorted(theirs for theirs in keys.values() if theirs not in state)
    unused = sorted(set(state) - set(keys.values()) - ignored)
    if missing or unused:
        raise ValueError(f"RWKV-{cfg.extra['rwkv_version']} checkpoint keys do not match: missing {missing[:5]}, "
                         f"unexpected {unused[:5]}")
    converted = {}
    for name, theirs in keys.items():
        if state[theirs].numel() != ours[name].numel():
            raise ValueError(f"{theirs} has shape {tuple(state[theirs].shape)}; expected {tuple(ours[name].shape)}")
        t = state[theirs].reshape(ours[name].shape)  # per-channel vectors are stored as (1, 1, C)
        converted[name] = t.to(dtype) if dtype is not None else t
    if dtype is not None:
        model.to(dtype)
    model.load_state_dict(converted, strict=True)
    if device is not None:
        model.to(device)
    return model.eval()
