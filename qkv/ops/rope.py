"""Rotary position embedding (RoPE, Su et al. 2021): rotate pairs of q/k features by position-dependent angles,
so that q_m . k_n depends on m - n only.

Layout: the "rotate half" convention (GPT-NeoX, Hugging Face Llama): feature i pairs with feature i + d/2. The
tables and the rotation are computed in float32 and cast back (bf16 angles drift at long positions).
"""
from __future__ import annotations

import math

import torch


def rope_frequencies(rotary_dim: int, base: float = 10000.0, device=None) -> torch.Tensor:
    """(rotary_dim / 2,) inverse frequencies base^(-2i / rotary_dim).

    Example:

        >>> from qkv.ops import rope_frequencies
        >>> rope_frequencies(8, base=10000.0)   # (rotary_dim / 2,): 10000^(-2i/8)
        tensor([1.0000, 0.1000, 0.0100, 0.0010])
    """
    if rotary_dim <= 0 or rotary_dim % 2:
        raise ValueError(f"rotary_dim must be a positive even number, got {rotary_dim}")
    if base <= 0:
        raise ValueError(f"rope base must be > 0, got {base}")
    exponents = torch.arange(0, rotary_dim, 2, device=device, dtype=torch.float32) / rotary_dim
    return base ** -exponents


def rope_tables(positions: torch.Tensor, inv_freq: torch.Tensor,
                attention_factor: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for the given integer positions: (..., T) -> two (..., T, rotary_dim) float32 tensors.
    ``attention_factor`` multiplies both (YaRN / LongRoPE's temperature; q . k scales by its square).

    Example:

        >>> import torch
        >>> from qkv.ops import rope_frequencies, rope_tables
        >>> cos, sin = rope_tables(torch.arange(6), rope_frequencies(4))
        >>> cos.shape, cos.dtype                                      # (T, rotary_dim), float32
        (torch.Size([6, 4]), torch.float32)
        >>> torch.allclose(cos ** 2 + sin ** 2, torch.ones(6, 4))
        True
    """
    angles = positions.to(inv_freq.dtype).unsqueeze(-1) * inv_freq  # (..., T, rotary_dim / 2)
    angles = torch.cat((angles, angles), dim=-1)  # (..., T, rotary_dim)
    if attention_factor != 1.0:
        return angles.cos() * attention_factor, angles.sin() * attention_factor
    return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` features of x (B, H, T, D); the rest pass through (partial rotary).

    cos, sin: (T, rotary_dim) or (B, T, rotary_dim) from ``rope_tables``.

    Example:

        >>> import torch
        >>> from qkv.ops import apply_rope, rope_frequencies, rope_tables
        >>> cos, sin = rope_tables(torch.arange(5), rope_frequencies(8))
        >>> x = torch.randn(8).expand(1, 2, 5, 8)            # one vector at every position, (B, H, T, D)
        >>> xr = apply_rope(x, cos, sin)                      # rotated by its position
        >>> torch.allclose(xr.norm(dim=-1), x.norm(dim=-1))  # a rotation keeps lengths
        True
        >>> torch.isclose(xr[0, 0, 3] @ xr[0, 0, 1], xr[0, 0, 2] @ xr[0, 0, 0]).item()   # q . k sees m - n only
        True
    """
    if cos.dim() == 3:  # per-sequence positions (left padding): broadcast over heads
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r], x[..., r:]
    xf = x_rot.to(torch.promote_types(x.dtype, torch.float32))  # float32 at least: never downcast float64
    rotated = (xf * cos + _rotate_half(xf) * sin).to(x.dtype)
    return torch.cat((rotated, x_pass), dim=-1) if x_pass.shape[-1] else rotated


# -- context extension: the scaled frequencies of Hugging Face's ``rope_parameters`` ---------------------------------
#
# Each variant changes the inverse frequencies (and, for YaRN and LongRoPE, multiplies cos and sin by an
# "attention factor", which scales q . k by its square). Parameter names are transformers' own, so a config's
# ``rope_parameters`` / ``rope_scaling`` dict carries over unchanged. ``original_max_position_embeddings`` is the
# pre-training context; for "dynamic" it is the length past which the base grows.

ROPE_SCALINGS = {
    # name: (required keys, optional keys) -- the registry the README's list is generated from
    "linear": (("factor",), ()),  # positions divided by factor (Chen et al. 2023, position interpolation)
    "dynamic": (("factor", "original_max_position_embeddings"), ()),  # NTK-aware base growth past the context
    "yarn": (("factor", "original_max_position_embeddings"),
             ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate")),  # Peng et al. 2023
    "llama3": (("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"), ()),
    "longrope": (("long_factor", "short_factor", "original_max_position_embeddings"), ("factor", "attention_factor")),
}


def check_rope_scaling(scaling: dict, rotary_dim: int) -> dict:
    """Validate a scaling dict ``{"rope_type": name, ...}`` (see ``ROPE_SCALINGS``); return it with only its own
    keys. Raises ValueError naming the key that is missing or wrong."""
    if not isinstance(scaling, dict):
        raise TypeError(f"rope_scaling must be a dict like {{'rope_type': 'linear', 'factor': 2.0}}, got "
                        f"{type(scaling).__name__}")
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind not in ROPE_SCALINGS:
        raise ValueError(f"rope_scaling rope_type must be one of {sorted(ROPE_SCALINGS)}, got {kind!r}")
    required, optional = ROPE_SCALINGS[kind]
    missing = [k for k in required if scaling.get(k) is None]
    if missing:
        raise ValueError(f"rope_scaling {kind!r} needs {list(required)}; missing {missing}")
    out = {"rope_type": kind, **{k: scaling[k] for k in required + optional if scaling.get(k) is not None}}
    def number(v) -> bool:  # finite: an infinite factor passes "> 0" and makes every angle NaN
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    for key in ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor",
                "attention_factor"):
        if key in out and not (number(out[key]) and out[key] > 0):
            raise ValueError(f"rope_scaling {key} must be a number > 0 (and finite), got {out[key]!r}")
    for key in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
        if key in out and not number(out[key]):
            raise ValueError(f"rope_scaling {key} must be a finite number, got {out[key]!r}")
    for key in ("long_factor", "short_factor"):
        if key in out and not (isinstance(out[key], (list, tuple)) and all(number(v) and v > 0 for v in out[key])):
            raise ValueError(f"rope_scaling {key} must be a list of finite numbers > 0, got {str(out[key])[:60]}")
    if kind == "llama3" and out["high_freq_factor"] <= out["low_freq_factor"]:
        raise ValueError(f"rope_scaling llama3 needs high_freq_factor > low_freq_factor, got "
                         f"{out['high_freq_factor']} <= {out['low_freq_factor']}")
    if kind == "longrope":
        for key in ("long_factor", "short_factor"):
            if len(out[key]) != rotary_dim // 2:
                raise ValueError(f"rope_scaling longrope {key} must hold rotary_dim / 2 = {rotary_dim // 2} numbers, "
                                 f"got {len(out[key])}")
    return out


def _inverse(rotary_dim: int, base, device=None) -> torch.Tensor:
    """1 / base^(2i / d), as transformers writes it (the division rounds differently from base^(-2i / d))."""
    return 1.0 / (base ** (torch.arange(0, rotary_dim, 2, device=device, dtype=torch.float32) / rotary_dim))


def scaled_frequencies(rotary_dim: int, base: float, scaling: dict | None, *, long: bool = False,
                       device=None) -> tuple[torch.Tensor, float]:
    """(rotary_dim / 2,) inverse frequencies and the attention factor of a scaling variant (None: plain RoPE).
    "dynamic" gives the frequencies within the original context (see ``dynamic_frequencies`` past it); "longrope"
    its short factors, or the long ones with ``long=True``."""
    if scaling is None:
        return rope_frequencies(rotary_dim, base, device), 1.0
    kind, p = scaling["rope_type"], scaling
    if kind == "linear":  # interpolation: position m is rotated as m / factor
        return _inverse(rotary_dim, base, device) / p["factor"], 1.0
    if kind == "dynamic":
        return _inverse(rotary_dim, base, device), 1.0
    if kind == "llama3":
        return _llama3(_inverse(rotary_dim, base, device), p), 1.0
    if kind == "yarn":
        return _yarn(rotary_dim, base, p, device)
    if kind == "longrope":
        factors = torch.tensor(p["long_factor" if long else "short_factor"], dtype=torch.float32, device=device)
        exponents = torch.arange(0, rotary_dim, 2, device=device, dtype=torch.float32) / rotary_dim
        factor = p.get("factor", 1.0)
        attention = p.get("attention_factor")
        if attention is None:  # Ding et al. 2024: sqrt(1 + ln(s) / ln(L_original))
            attention = 1.0 if factor <= 1.0 else \
                math.sqrt(1 + math.log(factor) / math.log(p["original_max_position_embeddings"]))
        return 1.0 / (factors * base ** exponents), float(attention)
    raise ValueError(f"unknown rope scaling {kind!r}; known: {sorted(ROPE_SCALINGS)}")


def dynamic_frequencies(rotary_dim: int, base: float, scaling: dict, seq_len: torch.Tensor) -> torch.Tensor:
    """Dynamic NTK scaling: past the original context L the base grows to base * (s * n / L - (s - 1))^(d / (d - 2))
    for a sequence of n positions, so the lowest frequency still spans it. ``seq_len`` is a tensor (the largest
    position + 1), so no host read happens and a compiled step keeps one graph."""
    s, L = scaling["factor"], scaling["original_max_position_embeddings"]
    n = torch.clamp(seq_len.to(torch.float32), min=float(L))
    grown = base * ((s * n / L) - (s - 1)) ** (rotary_dim / (rotary_dim - 2))
    exponents = torch.arange(0, rotary_dim, 2, device=seq_len.device, dtype=torch.float32) / rotary_dim
    return 1.0 / (grown ** exponents)


def _llama3(inv_freq: torch.Tensor, p: dict) -> torch.Tensor:
    """Llama 3.1: wavelengths longer than L / low_freq_factor are divided by factor, shorter than
    L / high_freq_factor kept, and those between interpolated smoothly."""
    factor, low, high, L = p["factor"], p["low_freq_factor"], p["high_freq_factor"], p["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > L / low, inv_freq / factor, inv_freq)
    smooth = (L / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < L / high) & ~(wavelen > L / low)
    return torch.where(medium, smoothed, scaled)


def _yarn(dim: int, base: float, p: dict, device) -> tuple[torch.Tensor, float]:
    """YaRN (Peng et al. 2023, sec. 3.2-3.4): dimensions that rotate more than beta_fast times over the original
    context keep their frequency, those rotating fewer than beta_slow times are interpolated (divided by factor), a
    linear ramp in between; cos and sin are scaled by 0.1 ln(factor) + 1."""
    factor, L = p["factor"], p["original_max_position_embeddings"]

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = p.get("attention_factor")
    if attention is None:
        if p.get("mscale") and p.get("mscale_all_dim"):
            attention = mscale(factor, p["mscale"]) / mscale(factor, p["mscale_all_dim"])
        else:
            attention = mscale(factor)
    beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

    def correction_dim(rotations):  # the dimension that turns `rotations` times over L positions
        return (dim * math.log(L / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # no zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device=device) - low) / (high - low)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    keep = 1 - ramp  # 1: extrapolate (keep the frequency), 0: interpolate
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - keep) + (1.0 / pos_freqs) * keep
    return inv_freq, float(attention)
