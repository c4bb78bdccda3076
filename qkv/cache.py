"""Decoding state behind one interface: KV caches for softmax attention, recurrent states for the linear family.

The caller owns the cache (``model.new_cache(batch_size)``) and passes it to every forward call; a layer reads
and writes only its own entry. Buffers are allocated on first use, from the dtype and device of the tensors
written, so a cache never guesses where the model lives.

Every entry supports ``reorder(index)`` (beam search keeps the caches of the surviving beams instead of
recomputing them) and reports ``length`` (tokens seen).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


class KVCache:
    """Keys and values of one self-attention layer, preallocated as (B, G, capacity, D), written by index.

    With ``max_len`` given the buffer never moves (static shapes for compiled or CUDA-graph decoding); without
    it the capacity doubles when full, so appending stays amortised O(1).

    With ``window`` (a sliding-window layer: a query sees itself and ``window`` earlier keys) the cache rolls: it
    keeps only the last ``window`` keys between calls, so its memory is bounded by the window, not the sequence
    (Mistral's rolling buffer, Jiang et al. 2023, sec. 2). ``update`` then returns those plus the new ones, in order,
    and ``length`` still counts every token seen. A rolling cache cannot be written at static slots."""

    def __init__(self, max_len: int | None = None, *, window: int | None = None):
        if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 0):
            raise ValueError(f"window must be None or an int >= 0, got {window!r}")
        self.max_len, self.window = max_len, window
        self.k: torch.Tensor | None = None  # (B, G, capacity, D)
        self.v: torch.Tensor | None = None  # (B, G, capacity, Dv)
        self.length = 0
        self.stored = 0  # positions held in the buffer: ``length``, or at most window + the last call's tokens
        self.slots: torch.Tensor | None = None  # (T,) where the next update writes; None: append at ``length``

    def _grow(self, k_new: torch.Tensor, v_new: torch.Tensor, needed: int) -> None:
        if self.max_len is not None and needed > self.max_len:
            raise ValueError(f"KV cache is full: {needed} positions needed, max_len is {self.max_len}")
        capacity = self.max_len or max(needed, 2 * (0 if self.k is None else self.k.shape[2]), 16)
        B, G, _, D = k_new.shape
        k = k_new.new_zeros(B, G, capacity, D)
        v = v_new.new_zeros(B, G, capacity, v_new.shape[-1])
        if self.k is not None:
            k[:, :, : self.length] = self.k[:, :, : self.length]
            v[:, :, : self.length] = self.v[:, :, : self.length]
        self.k, self.v = k, v

    def update(self, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append (B, G, T, D) keys and values; return all keys and values so far, (B, G, length, D).

        With ``slots`` set (static decoding, see ``Cache.use_slots``) the new keys and values are written at those
        positions of the preallocated buffer instead, and the whole buffer comes back, (B, G, max_len, D): its
        shape never changes, and the caller masks the positions not yet written."""
        if self.slots is not None:
            self.k.index_copy_(2, self.slots, k_new)
            self.v.index_copy_(2, self.slots, v_new)
            return self.k, self.v
        if self.window is not None:
            return self._roll(k_new, v_new)
        end = self.length + k_new.shape[2]
        if self.k is None or end > self.k.shape[2]:
            self._grow(k_new, v_new, end)
        T = k_new.shape[2]
        self.k.narrow(2, self.length, T).copy_(k_new)  # narrow + copy_: the cheapest write per decode step
        self.v.narrow(2, self.length, T).copy_(v_new)
        self.length = self.stored = end
        return self.k.narrow(2, 0, end), self.v.narrow(2, 0, end)

    def _roll(self, k_new: torch.Tensor, v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The sliding-window update: the last ``window`` keys kept, then the T new ones; (B, G, kept + T, D).

        The buffer holds window + T positions (window + 1 while decoding one token at a time): it is reallocated
        only when a call brings more tokens than it has room for, or shrunk back after a long prompt."""
        T = k_new.shape[2]
        if self.max_len is not None and self.length + T > self.max_len:
            raise ValueError(f"KV cache is full: {self.length + T} positions needed, max_len is {self.max_len}")
        kept = min(self.stored, self.window)
        capacity = self.window + T
        if self.k is None or self.k.shape[2] < kept + T or self.k.shape[2] > max(capacity, self.window + 1):
            B, G, _, D = k_new.shape
            k, v = k_new.new_zeros(B, G, capacity, D), v_new.new_zeros(B, G, capacity, v_new.shape[-1])
            if kept:
                k[:, :, :kept] = self.k[:, :, self.stored - kept: self.stored]
                v[:, :, :kept] = self.v[:, :, self.stored - kept: self.stored]
            self.k, self.v = k, v
        elif kept < self.stored:  # slide the kept keys to the front (clone: source and target overlap)
            self.k[:, :, :kept] = self.k[:, :, self.stored - kept: self.stored].clone()
            self.v[:, :, :kept] = self.v[:, :, self.stored - kept: self.stored].clone()
        self.k.narrow(2, kept, T).copy_(k_new)
        self.v.narrow(2, kept, T).copy_(v_new)
        self.stored, self.length = kept + T, self.length + T
        return self.k.narrow(2, 0, self.stored), self.v.narrow(2, 0, self.stored)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the batch rows ``index`` (B',). With B' == B (beam search) the rows are rewritten in place and only
        the filled positions are copied: the buffer never moves, and a long preallocated tail costs nothing."""
        if self.k is None:
            return
        if index.numel() == self.k.shape[0]:
            end = self.stored if self.slots is None else self.length
            self.k[:, :, :end] = self.k[:, :, :end].index_select(0, index)
            self.v[:, :, :end] = self.v[:, :, :end].index_select(0, index)
        else:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


class CrossKVCache:
    """Keys and values of one cross-attention layer: computed once from the encoder output, reused every step."""

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def reorder(self, index: torch.Tensor) -> None:
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


@dataclass
class LayerCache:
    """What one block keeps between steps: its mixer's state (a KVCache or a recurrent state) and, in a decoder
    with cross-attention, the encoder's keys and values."""
    mixer: object = None
    cross: CrossKVCache | None = None

    def reorder(self, index: torch.Tensor, *, cross: bool = True) -> None:
        for part in (self.mixer, self.cross if cross else None):
            if part is not None:
                part.reorder(index)


@dataclass
class Cache:
    """A whole model's decoding state: one LayerCache per block, plus the number of tokens already fed.

    ``extra`` holds per-model state that is not per-layer (the encoder output of an encoder-decoder model)."""
    layers: list[LayerCache]
    batch_size: int
    length: int = 0
    extra: dict = field(default_factory=dict)
    max_len: int | None = None  # preallocated positions per layer (None: the caches grow)
    slots: torch.Tensor | None = None  # static decoding: (T,) positions the next forward writes (``use_slots``)

    def use_slots(self, slots: torch.Tensor | None) -> None:
        """Static decoding: the next forward writes its keys and values at positions ``slots`` (T,) of the
        preallocated buffers and attends over all ``max_len`` of them under a mask, so every step has the same
        shapes (one compiled graph, one CUDA graph). Lengths are then the caller's to advance (``advance``);
        ``None`` returns to appending. Needs ``max_len`` and softmax-attention layers, filled once (the prompt).

        The tensor is shared, not copied: a decoding loop moves to the next position with ``slots += 1``."""
        if slots is not None:
            if self.max_len is None:
                raise ValueError("static decoding needs a preallocated cache: new_cache(batch_size, max_len=...)")
            for layer in self.layers:
                if isinstance(layer.mixer, KVCache) and layer.mixer.window is not None:
                    raise ValueError("static decoding needs every position in the cache, and this one rolls "
                                     "(a sliding-window layer): make it with new_cache(..., static=True)")
                if not isinstance(layer.mixer, KVCache) or layer.mixer.k is None:
                    raise ValueError("static decoding needs softmax-attention layers whose cache holds the prompt "
                                     f"already; got a {type(layer.mixer).__name__} "
                                     f"{'before any token' if isinstance(layer.mixer, KVCache) else ''}".rstrip())
        self.slots = slots
        for layer in self.layers:
            if isinstance(layer.mixer, KVCache):
                layer.mixer.slots = slots

    def advance(self, n: int) -> None:
        """Count ``n`` more tokens after static-slot forwards (which leave every length as it was)."""
        self.length += n
        for layer in self.layers:
            layer.mixer.length += n
            if isinstance(layer.mixer, KVCache):
                layer.mixer.stored = layer.mixer.length

    def reorder(self, index: torch.Tensor, *, cross: bool = True) -> None:
        """Keep the batch rows ``index`` (B',) in that order: beam search's survivors.

        cross=False leaves the per-source state alone (cross-attention K/V and ``extra``): beam search moves rows
        only among the beams of one source, whose encoder state is identical, so copying it would be wasted."""
        for layer in self.layers:
            layer.reorder(index, cross=cross)
        for key, value in self.extra.items():
            if cross and isinstance(value, torch.Tensor):
                self.extra[key] = value.index_select(0, index)
        self.batch_size = int(index.numel())


class RecurrentCache:
    """The state of one linear-time layer (linear attention, retention, RWKV, compressive memory): named tensors,
    batch first, replaced at every step and never grown. Its size does not depend on how many tokens it has seen,
    which is what these layers trade softmax attention's exact recall for.

    Each layer owns its names (e.g. ``S`` and ``z`` for linear attention; ``att_shift``, ``a``, ``b``, ``p`` and
    ``ffn_shift`` for an RWKV-4 block). Tensors are created by the layer on first use, from its inputs' dtype and
    device; ``length`` is advanced by the layer that owns the entry."""

    def __init__(self):
        self.state: dict[str, torch.Tensor] = {}
        self.length = 0

    def __contains__(self, name: str) -> bool:
        return name in self.state

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.state[name]

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        self.state[name] = value

    def numel(self) -> int:
        """Numbers held: constant in the number of tokens seen (tests check it)."""
        return sum(t.numel() for t in self.state.values())

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the batch rows ``index`` (B',) in that order (beam search's survivors)."""
        for name, t in self.state.items():
            self.state[name] = t.index_select(0, index)
