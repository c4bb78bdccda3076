"""The recurrent encoder: word embeddings, then a stack of torch's fused recurrent layers (nn.GRU / nn.LSTM), each
bidirectional or not (Bahdanau et al. 2015, sec. 3.2: the annotation of word j is [forward h_j; backward h_j]).

Padding may lie anywhere in a row: each row's tokens are moved to its front, in order, and run as a packed
sequence (so neither direction reads a padding token, and each row's final states are its own), then put back
at their places. A padded batch gives each row what it gives alone.

Glossary: B batch, S source positions, E embedding size, N state size per direction, Dm = N * directions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


@dataclass
class Encoded:
    """The encoder's answer. memory: (B, S, Dm) the top layer's outputs at every position (zero at padding).
    finals: per layer, its final states (h (B, directions, N), c (B, directions, N) or None for a GRU); the
    backward direction's final state is the one that read the row's first token last."""
    memory: torch.Tensor
    finals: list[tuple[torch.Tensor, torch.Tensor | None]]


class RecurrentEncoder(nn.Module):
    """Embeddings and ``n_layers`` recurrent layers (one ``nn.GRU`` / ``nn.LSTM`` module each, so that dropout sits
    between them and each layer's final state is at hand).

    Args: vocab_size; embed_dim E; hidden N (per direction); n_layers; cell "gru" | "lstm"; bidirectional;
    dropout on the embeddings and between layers.

    Example:

        >>> import torch
        >>> from qkv.nn import RecurrentEncoder
        >>> enc = RecurrentEncoder(50, 8, 16, 2, cell="gru", bidirectional=True)
        >>> out = enc(torch.tensor([[5, 6, 7, 2], [8, 2, 0, 0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]))
        >>> tuple(out.memory.shape), tuple(out.finals[-1][0].shape)   # (B, S, 2N); top layer's h (B, 2, N)
        ((2, 4, 32), (2, 2, 16))
        >>> bool((out.memory[1, 2:] == 0).all())                      # padding positions read as zero
        True
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, n_layers: int, *, cell: str = "lstm",
                 bidirectional: bool = False, dropout: float = 0.0):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {tuple(CELLS)}, got {cell!r}")
        directions = 2 if bidirectional else 1
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.layers = nn.ModuleList(
            CELLS[cell](embed_dim if i == 0 else directions * hidden, hidden, batch_first=True,
                        bidirectional=bidirectional) for i in range(n_layers))
        self.dropout = nn.Dropout(dropout)
        self.lstm, self.directions, self.out_dim = cell == "lstm", directions, directions * hidden

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> Encoded:
        """ids (B, S); mask (B, S), 1 = token, 0 = padding (anywhere), or None. An all-padding row reads one
        padding token (its outputs are masked by whoever attends)."""
        x = self.dropout(self.embed(ids))  # (B, S, E)
        B, S = ids.shape
        if mask is None:
            finals = []
            for i, layer in enumerate(self.layers):
                x, state = layer(self.dropout(x) if i else x)  # (B, S, Dm)
                finals.append(_batch_first(state, self.lstm))
            return Encoded(x, finals)
        mask = mask.bool()
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices  # (B, S): tokens first, in order
        lengths = mask.sum(1).clamp(min=1).cpu()  # once per source: pack_padded_sequence takes them on the host
        x = x.gather(1, order[..., None].expand(-1, -1, x.shape[-1]))
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        finals = []
        for i, layer in enumerate(self.layers):
            if i:
                packed = packed._replace(data=self.dropout(packed.data))
            packed, state = layer(packed)
            finals.append(_batch_first(state, self.lstm))
        out, _ = pad_packed_sequence(packed, batch_first=True, total_length=S)  # (B, S, Dm), tokens first
        back = order.argsort(1)  # (B, S): where each original position went
        memory = out.gather(1, back[..., None].expand(-1, -1, out.shape[-1])) * mask[..., None].to(out.dtype)
        return Encoded(memory, finals)


def _batch_first(state, lstm: bool):
    """nn.GRU's h_n or nn.LSTM's (h_n, c_n), each (directions, B, N) -> (B, directions, N)."""
    if lstm:
        h, c = state
        return h.transpose(0, 1), c.transpose(0, 1)
    return state.transpose(0, 1), None

