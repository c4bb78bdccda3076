"""Decoding state behind one interface: KV caches for softmax attention, recurrent states for the linear family.

The caller owns the cache (``model.new_cache(batch_size)``) and passes it to every forward call; a layer reads
and writes only its own entry. Buffers are allocated on first use, from the dtype and device of the tensors
written, so a cache never guesses where the model lives.

One regime. Every forward with a cache asks it where its T new tokens go (``Cache.begin``): a (T,) tensor of
cache positions, which every KV layer writes its keys and values at (``index_copy_``). Buffers are preallocated
when a capacity (``max_len``) is given, and grow by doubling otherwise. What the queries then read is the one
choice a cache makes:

- a *growing* cache (the default) hands back the positions written so far, 0 .. length - 1, so the new queries
  sit at the end of the keys and the causal rule needs no mask tensor (the fast eager path);
- a *static* cache (``static=True``, needs ``max_len``) hands back the whole buffer every time, so every step has
  the same shapes (one compiled graph, one CUDA graph); the model masks the positions not written yet. Its
  position counter is a tensor moved in place, so nothing inside a compiled step reads a Python number that
  changes from step to step; a compiled step cannot count on the host either, so whoever calls it advances the
  cache afterwards (``Cache.advance``; an eager forward advances it itself). Recurrent states are written in
  place, so their buffers never move either.

Every entry supports ``reorder(index)`` (beam search keeps the caches of the surviving beams instead of
recomputing them), ``crop(length)`` (rewind to the first ``length`` tokens: KV caches only, whose later positions
are simply written over) and ``snapshot()`` / ``restore(snap)`` (a recurrent state holds no per-token history, so
rewinding it means putting back a copy taken earlier); ``length`` counts the tokens seen.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


def _int(name: str, value, low: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


class _Cursor:
    """Where the current forward's tokens go: the (T,) cache positions, shared by every KV layer of one Cache."""
    __slots__ = ("slots",)

    def __init__(self):
        self.slots: torch.Tensor | None = None


class KVCache:
    """Keys and values of one self-attention layer, (B, G, capacity, D), written at positions given by a tensor.

    max_len: the capacity, allocated once (None: start small and double when full, so writing stays amortised
    O(1)). static: hand back the whole buffer at every update (fixed shapes; see the module docstring), which needs
    ``max_len``. window: a sliding-window layer (a query sees itself and ``window`` earlier keys): the cache rolls,
    keeping only the last ``window`` keys (plus ``rewind`` more, so that ``crop`` can go that far back) between
    calls, so its memory is bounded by the window, not the sequence (Mistral's rolling buffer, Jiang et al. 2023,
    sec. 2). ``update`` then returns those plus the new ones, in order; ``length`` still counts every token seen.
    A static cache keeps every position: it never rolls.

    Example:

        >>> import torch
        >>> from qkv.nn import KVCache
        >>> cache = KVCache(max_len=8)                                   # capacity allocated once
        >>> k, v = cache.update(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4))   # (B, G, T, D)
        >>> k, v = cache.update(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4))
        >>> k.shape, cache.length, tuple(cache.k.shape)                  # keys to attend over: (B, G, length, D)
        (torch.Size([1, 2, 4, 4]), 4, (1, 2, 8, 4))
        >>> cache.crop(2); cache.length
        2
    """

    def __init__(self, max_len: int | None = None, *, window: int | None = None, static: bool = False,
                 rewind: int = 0):
        if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 0):
            raise ValueError(f"window must be None or an int >= 0, got {window!r}")
        if max_len is not None:
            _int("max_len", max_len, 1)
        if static and max_len is None:
            raise ValueError("static decoding needs a preallocated cache: new_cache(batch_size, max_len=...)")
        if static and window is not None:
            raise ValueError(f"a static cache keeps every position and cannot roll; got window={window} "
                             f"(make the cache with new_cache(..., static=True), which does not pass it)")
        self.max_len, self.window, self.static, self.rewind = max_len, window, static, _int("rewind", rewind)
        self.k: torch.Tensor | None = None  # (B, G, capacity, D)
        self.v: torch.Tensor | None = None  # (B, G, capacity, Dv)
        self.length = 0
        self.stored = 0  # rolling: positions held in the buffer, the last ``stored`` of ``length``
        self.cursor: _Cursor | None = None  # set by Cache: the positions of the current forward's tokens

    def _allocate(self, k_new: torch.Tensor, v_new: torch.Tensor, capacity: int, keep: int, start: int = 0):
        """New buffers of ``capacity`` positions holding positions ``start .. start + keep`` of the old ones."""
        B, G, _, D = k_new.shape
        k = k_new.new_zeros(B, G, capacity, D)
        v = v_new.new_zeros(B, G, capacity, v_new.shape[-1])
        if keep:
            k[:, :, :keep] = self.k[:, :, start: start + keep]
            v[:, :, :keep] = self.v[:, :, start: start + keep]
        self.k, self.v = k, v

    def update(self, k_new: torch.Tensor, v_new: torch.Tensor,
               slots: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, G, T, D) keys and values at cache positions ``slots`` (T,) (default: the positions the owning
        Cache handed out for this forward, else length .. length + T - 1); return the keys and values to attend
        over: positions 0 .. length - 1 (B, G, length, D), the whole buffer (static), or the rolling window."""
        T = k_new.shape[2]
        if slots is None:
            slots = self.cursor.slots if self.cursor is not None and self.cursor.slots is not None else \
                torch.arange(self.length, self.length + T, device=k_new.device)
        if self.window is not None:
            return self._roll(k_new, v_new, slots)
        if self.static:
            if self.k is None:
                self._allocate(k_new, v_new, self.max_len, 0)
            self.k.index_copy_(2, slots, k_new)
            self.v.index_copy_(2, slots, v_new)
            return self.k, self.v  # the Cache advances ``length`` (Cache.commit / advance): no Python counter here
        end = self.length + T
        if self.k is None or end > self.k.shape[2]:
            if self.max_len is not None and end > self.max_len:
                raise ValueError(f"KV cache is full: {end} positions needed, max_len is {self.max_len}")
            capacity = self.max_len or max(end, 2 * (0 if self.k is None else self.k.shape[2]), 16)
            self._allocate(k_new, v_new, capacity, self.length if self.k is not None else 0)
        self.k.index_copy_(2, slots, k_new)
        self.v.index_copy_(2, slots, v_new)
        self.length = end
        return self.k.narrow(2, 0, end), self.v.narrow(2, 0, end)

    def _roll(self, k_new: torch.Tensor, v_new: torch.Tensor, slots: torch.Tensor):
        """The sliding-window update: the last ``window + rewind`` keys kept, then the T new ones, (B, G, kept + T,
        D). The buffer holds window + rewind + T positions (+ 1 while decoding one token at a time): it is
        reallocated only when a call brings more tokens than it has room for, or shrunk back after a long prompt."""
        T = k_new.shape[2]
        if self.max_len is not None and self.length + T > self.max_len:
            raise ValueError(f"KV cache is full: {self.length + T} positions needed, max_len is {self.max_len}")
        held = self.window + self.rewind
        kept = min(self.stored, held)
        capacity = held + T
        if self.k is None or self.k.shape[2] < kept + T or self.k.shape[2] > max(capacity, held + 1):
            self._allocate(k_new, v_new, capacity, kept, self.stored - kept)
        elif kept < self.stored:  # slide the kept keys to the front (clone: source and target overlap)
            self.k[:, :, :kept] = self.k[:, :, self.stored - kept: self.stored].clone()
            self.v[:, :, :kept] = self.v[:, :, self.stored - kept: self.stored].clone()
        # buffer index of position p: p - (positions before the buffer's first one)
        index = slots - (self.length - kept)
        self.k.index_copy_(2, index, k_new)
        self.v.index_copy_(2, index, v_new)
        self.stored, self.length = kept + T, self.length + T
        return self.k.narrow(2, 0, self.stored), self.v.narrow(2, 0, self.stored)

    def advance(self, n: int) -> None:
        """Count ``n`` more tokens written by static updates (which leave every counter as it was)."""
        self.length += n
        self.stored = self.length

    def crop(self, length: int) -> None:
        """Forget every position from ``length`` on: the next token is written at ``length``. A rolling cache can go
        back only as far as it still holds the window of keys before that point (``rewind`` extra positions)."""
        _int("length", length)
        if length > self.length:
            raise ValueError(f"crop(length={length}): the cache holds {self.length} tokens; expected length <= "
                             f"{self.length}")
        if self.window is not None:
            first = self.length - self.stored  # the oldest position still held
            if min(length, self.window) > length - first:
                raise ValueError(f"crop(length={length}): this rolling cache holds positions {first} .. "
                                 f"{self.length - 1} and needs the {self.window} before the new end; it can go back "
                                 f"to {first + self.window} at most (more needs new_cache(..., rewind=N))")
            self.stored -= self.length - length
        else:
            self.stored = length
        self.length = length

    def snapshot(self) -> int | tuple:
        """What ``restore`` needs to come back here: the length (the keys before it stay in the buffer until
        written over), and for a rolling cache, which overwrites its oldest keys, a copy of the few it holds."""
        if self.window is None or self.k is None:
            return self.length
        return self.length, self.stored, self.k[:, :, :self.stored].clone(), self.v[:, :, :self.stored].clone()

    def restore(self, snap: int | tuple) -> None:
        if isinstance(snap, int):
            self.crop(snap)
            return
        length, stored, k, v = snap
        self.k, self.v = k.clone(), v.clone()  # the snapshot stays usable for another restore
        self.length, self.stored = length, stored

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the batch rows ``index`` (B',). With B' == B (beam search) the rows are rewritten in place and only
        the filled positions are copied: the buffer never moves, and a long preallocated tail costs nothing."""
        if self.k is None:
            return
        if index.numel() == self.k.shape[0]:
            end = self.stored if self.window is not None else self.length
            self.k[:, :, :end] = self.k[:, :, :end].index_select(0, index)
            self.v[:, :, :end] = self.v[:, :, :end].index_select(0, index)
        else:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


class CrossKVCache:
    """Keys and values of one cross-attention layer: computed once from the encoder output, reused every step.

    Example:

        >>> import torch
        >>> from qkv.nn import CrossKVCache, MultiHeadAttention
        >>> cross, memory = MultiHeadAttention(8, 2), torch.randn(1, 6, 8)   # encoder output (B, S, d_model)
        >>> cache = CrossKVCache()
        >>> x = torch.randn(1, 3, 8)
        >>> steps = torch.cat([cross(x[:, t:t + 1], memory, cache=cache) for t in range(3)], dim=1)
        >>> cache.length, torch.allclose(steps, cross(x, memory), atol=1e-6)   # keys of the memory computed once
        (6, True)
    """

    def __init__(self):
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def reorder(self, index: torch.Tensor) -> None:
        if self.k is not None:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


class RecurrentCache:
    """The state of one linear-time layer (linear attention, retention, RWKV, compressive memory): named tensors,
    batch first, never grown. Its size does not depend on how many tokens it has seen, which is what these layers
    trade softmax attention's exact recall for.

    Each layer owns its names (e.g. ``S`` and ``z`` for linear attention; ``att_shift``, ``a``, ``b``, ``p`` and
    ``ffn_shift`` for an RWKV-4 block). Tensors are created by the layer on first use, from its inputs' dtype and
    device; a later write replaces them, or, in a static cache, is copied into them (their memory never moves, as
    a CUDA graph needs). ``length`` is advanced by the layer (``commit``), or, static, by its Cache.

    Example:

        >>> import torch
        >>> from qkv.nn import LinearAttention
        >>> layer = LinearAttention(16, 2).double()
        >>> x = torch.randn(2, 5, 16, dtype=torch.float64)                    # (B, T, d_model)
        >>> cache = layer.new_cache()                                          # a RecurrentCache: its size never grows
        >>> steps = torch.cat([layer(x[:, t:t + 1], cache=cache) for t in range(5)], dim=1)
        >>> layer(x).shape, torch.allclose(steps, layer(x))                    # token by token = one pass
        (torch.Size([2, 5, 16]), True)
        >>> sorted(cache.state)                                               # named tensors of this layer
        ['S', 'z']
    """

    def __init__(self, *, static: bool = False):
        self.state: dict[str, torch.Tensor] = {}
        self.length = 0
        self.static = static

    def __contains__(self, name: str) -> bool:
        return name in self.state

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.state[name]

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        old = self.state.get(name)
        if self.static and old is not None and old.shape == value.shape and old.dtype == value.dtype:
            old.copy_(value)
        else:
            self.state[name] = value

    def commit(self, n: int) -> None:
        """The layer fed ``n`` tokens (a static cache's Cache counts them instead: ``Cache.advance``)."""
        if not self.static:
            self.length += n

    def advance(self, n: int) -> None:
        self.length += n

    def numel(self) -> int:
        """Numbers held: constant in the number of tokens seen (tests check it)."""
        return sum(t.numel() for t in self.state.values())

    def snapshot(self) -> tuple[int, dict[str, torch.Tensor]]:
        """A copy of the state, to ``restore`` later (rewinding a recurrence means putting its state back)."""
        return self.length, {name: t.clone() for name, t in self.state.items()}

    def restore(self, snap: tuple[int, dict[str, torch.Tensor]]) -> None:
        length, state = snap
        for name in set(self.state) - set(state):
            del self.state[name]  # made after the snapshot (a first step's buffers): absent then
        for name, t in state.items():
            self[name] = t.clone()  # the snapshot stays usable for another restore
        self.length = length

    def crop(self, length: int) -> None:
        if length != self.length:
            raise ValueError(f"crop(length={length}): a recurrent state keeps no per-token history ({self.length} "
                             f"tokens are summed into it); take cache.snapshot() at length {length} and "
                             f"cache.restore(snap) instead")

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the batch rows ``index`` (B',) in that order (beam search's survivors)."""
        for name, t in list(self.state.items()):
            self[name] = t.index_select(0, index)


@dataclass
class LayerCache:
    """What one block keeps between steps: its mixer's state (a KVCache or a RecurrentCache) and, in a decoder
    with cross-attention, the encoder's keys and values.

    Example:

        >>> import qkv
        >>> model = qkv.build(qkv.preset("transformer-tiny"))
        >>> layer = model.new_cache(batch_size=1).layers[0]   # one decoder block's part
        >>> type(layer.mixer).__name__, type(layer.cross).__name__
        ('KVCache', 'CrossKVCache')
    """
    mixer: object = None
    cross: CrossKVCache | None = None

    def reorder(self, index: torch.Tensor, *, cross: bool = True) -> None:
        for part in (self.mixer, self.cross if cross else None):
            if part is not None:
                part.reorder(index)


@dataclass
class CacheSnapshot:
    """What ``Cache.snapshot`` took: the length and each layer's part (a KV length, or a copy of a state).

    Example:

        >>> import torch, qkv
        >>> model = qkv.build(qkv.preset("rwkv4-tiny")).eval()   # a recurrent state: rewinding needs a copy
        >>> cache = model.new_cache(batch_size=1)
        >>> _ = model(torch.tensor([[1, 2, 3]]), cache)
        >>> snap = cache.snapshot()                               # a CacheSnapshot
        >>> a = model(torch.tensor([[4]]), cache)
        >>> cache.restore(snap); b = model(torch.tensor([[4]]), cache)
        >>> snap.length, torch.equal(a, b)
        (3, True)
    """
    length: int
    layers: list


@dataclass
class Cache:
    """A whole model's decoding state: one LayerCache per block, the number of tokens already fed, and (encoder-
    decoder models) the encoder's output and its padding, kept here once for the whole run.

    max_len: positions preallocated per KV layer (None: the caches grow). static: fixed shapes for compiled
    decoding (see the module docstring); after a compiled forward its caller advances it (``advance``).

    Example:

        >>> import torch, qkv
        >>> model = qkv.build(qkv.preset("gpt2-tiny")).eval()
        >>> ids = torch.tensor([[5, 6, 7, 8, 9]])
        >>> cache = model.new_cache(batch_size=1)                 # one LayerCache per block
        >>> prompt, step = model(ids[:, :4], cache), model(ids[:, 4:], cache)   # 4 tokens, then 1 more
        >>> cache.length, len(cache.layers), torch.allclose(step[:, -1], model(ids)[:, -1], atol=1e-5)   # = no cache
        (5, 2, True)
    """
    layers: list[LayerCache]
    batch_size: int
    length: int = 0
    max_len: int | None = None
    static: bool = False
    memory: torch.Tensor | None = None  # (B, S, d_model): the encoder output, for cross-attention
    memory_mask: torch.Tensor | None = None  # (B, S): its padding, 1 = token
    position: torch.Tensor | None = None  # static: (1,) the next position, moved in place by ``advance``
    cursor: _Cursor = field(default_factory=_Cursor)

    def __post_init__(self):
        if self.static and self.max_len is None:
            raise ValueError("static decoding needs a preallocated cache: new_cache(batch_size, max_len=...)")
        for layer in self.layers:
            if isinstance(layer.mixer, KVCache):
                layer.mixer.cursor = self.cursor

    def begin(self, T: int, device) -> torch.Tensor:
        """The (T,) cache positions of the next forward's T tokens, handed to every KV layer. No host read: a growing
        cache counts on the host, a static one in its ``position`` tensor."""
        if self.static:
            if self.position is None or self.position.device != torch.device(device):
                self.position = torch.tensor([self.length], device=device)
            slots = self.position if T == 1 else self.position + torch.arange(T, device=device)
        else:
            slots = torch.arange(self.length, self.length + T, device=device)
        self.cursor.slots = slots
        return slots

    def keys(self, T: int) -> int:
        """How many key positions the queries of a T-token forward attend over: every position of a static cache,
        else the ones written so far, these T included (the queries are then the last T: no mask needed)."""
        return self.max_len if self.static else self.length + T

    def commit(self, T: int) -> None:
        """The forward fed T tokens: a growing cache's layers counted theirs, a static cache counts for all of them
        here, except inside a compiled graph (no Python counter may change there: the caller advances after it)."""
        if not self.static:
            self.length += T
        elif not torch.compiler.is_compiling():
            self.advance(T)

    def advance(self, n: int) -> None:
        """Count ``n`` more tokens after forwards through a static cache (which leave every counter as it was)."""
        self.length += n
        for layer in self.layers:
            layer.mixer.advance(n)
        if self.position is not None:
            self.position += n

    def crop(self, length: int) -> None:
        """Rewind to the first ``length`` tokens (KV layers only: see ``snapshot`` for recurrent states)."""
        _int("length", length)
        if length > self.length:
            raise ValueError(f"crop(length={length}): the cache holds {self.length} tokens; expected length <= "
                             f"{self.length}")
        for layer in self.layers:
            layer.mixer.crop(length)
        self._moved_to(length)

    def snapshot(self) -> CacheSnapshot:
        """Everything ``restore`` needs to rewind here: KV lengths, and copies of recurrent states."""
        return CacheSnapshot(self.length, [layer.mixer.snapshot() for layer in self.layers])

    def restore(self, snap: CacheSnapshot) -> None:
        """Back to the moment of ``snap``: KV layers cropped, recurrent states put back. Decoding on from here gives
        what decoding from that moment gave."""
        if len(snap.layers) != len(self.layers):
            raise ValueError(f"restore: the snapshot has {len(snap.layers)} layers, this cache {len(self.layers)}")
        for layer, part in zip(self.layers, snap.layers):
            layer.mixer.restore(part)
        self._moved_to(snap.length)

    def _moved_to(self, length: int) -> None:
        self.length = length
        if self.position is not None:
            self.position.fill_(length)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the cache holds (what a CUDA graph must find at the same address on every replay)."""
        out = [t for t in (self.memory, self.memory_mask, self.position) if t is not None]
        for layer in self.layers:
            for part in (layer.mixer, layer.cross):
                if isinstance(part, (KVCache, CrossKVCache)) and part.k is not None:
                    out += [part.k, part.v]
                elif isinstance(part, RecurrentCache):
                    out += list(part.state.values())
        return out

    def reorder(self, index: torch.Tensor, *, cross: bool = True) -> None:
        """Keep the batch rows ``index`` (B',) in that order: beam search's survivors.

        cross=False leaves the per-source state alone (cross-attention K/V and the encoder output): beam search
        moves rows only among the beams of one source, whose encoder state is identical, so copying it would be
        wasted."""
        for layer in self.layers:
            layer.reorder(index, cross=cross)
        if cross:
            if self.memory is not None:
                self.memory = self.memory.index_select(0, index)
            if self.memory_mask is not None:
                self.memory_mask = self.memory_mask.index_select(0, index)
        self.batch_size = int(index.numel())
