"""The recurrent decoder, one target word per step, with its attention chosen by ``attention``:

  none      h_t = RNN(E y_{t-1}, h_{t-1}); p(y_t) = softmax(W h_t). The decoder starts from the encoder's final
            state and never looks back: the whole source squeezed into one vector (Sutskever et al. 2014,
            Cho et al. 2014)
  bahdanau  c_t = sum_j a_tj h_j with a_t = softmax(score(s_{t-1}, h_j)); s_t = RNN([E y_{t-1}; c_t], s_{t-1});
            p(y_t) = softmax(W_o maxout(U_o s_t + V_o E y_{t-1} + C_o c_t)) (Bahdanau et al. 2015, appendix A.2.2;
            the output reads s_t, as eq. (4) writes it)
  global,   h_t = RNN([E y_{t-1}; h~_{t-1}], h_{t-1}) (input feeding, sec. 3.3; without it RNN(E y_{t-1}, h_{t-1}));
  local_m,  c_t from the attention of h_t over the source (a window of it for the local kinds);
  local_p   h~_t = tanh(W_c [c_t; h_t]) (eq. 5); p(y_t) = softmax(W_s h~_t) (eq. 6) (Luong et al. 2015, sec. 3)

The cells are torch's GRUCell / LSTMCell (the GRU applies its reset gate after the hidden-state product, as cuDNN
does; Cho et al.'s applies it before), stacked ``n_layers`` deep with dropout between layers; the attention reads
the top layer. Everything a step carries lives in one dict of batch-first tensors, the ``state``:
  h (B, L, N) every layer's state; c (B, L, N) an LSTM's cells; feed (B, N) h~_{t-1} (input feeding);
  t (B,) target positions written so far (local_m: p_t = t)
so a decoding cache holds it as a recurrent state, and beam search reorders it by rows.

Glossary: B batch, T target steps, S source positions, L layers, N state size, E embedding size, Dm memory size,
V vocabulary.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .layers import Linear
from .rnn_attention import KINDS, RecurrentAttention
from .rnn_encoder import Encoded

ATTENTIONS = ("none", *KINDS)
CELLS = {"gru": nn.GRUCell, "lstm": nn.LSTMCell}


class RecurrentDecoder(nn.Module):
    """Embeddings, ``n_layers`` recurrent cells, the attention and the output layer.

    Args:
        vocab_size, embed_dim (E), hidden (N), n_layers (L), cell: "gru" | "lstm".
        attention: one of ``ATTENTIONS``. memory_dim: Dm, the encoder outputs' size. score: the attention score.
        input_feeding: feed h~_{t-1} into step t (global and local kinds). half_width: D of the local kinds.
        deep_output: bahdanau: the maxout layer's input size 2l (its output is l). bridge: the size of the
            encoder state the first state is computed from (s_0 = tanh(W_s h), one W_s per layer: a bidirectional
            encoder's backward state, Bahdanau et al. 2015, A.2.2; an LSTM's cells likewise, c_0 = tanh(W_c c), as
            Xu et al. 2015 start both h and c from the image); None: layer l starts from encoder layer l's final
            state (Sutskever et al. 2014, Luong et al. 2015), or zeros where the encoder has no layer l.
        dropout: on the embeddings, between layers and before the output layer.

    Example:

        >>> import torch
        >>> from qkv.nn import RecurrentDecoder, RecurrentEncoder
        >>> enc = RecurrentEncoder(50, 8, 16, 1)
        >>> dec = RecurrentDecoder(50, 8, 16, 1, attention="global", score="bilinear", input_feeding=True)
        >>> encoded = enc(torch.tensor([[5, 6, 7, 2]]))               # one source of S = 4
        >>> state, keys = dec.initial_state(encoded), dec.keys(encoded.memory)
        >>> out, w, state = dec.step(dec.embed(torch.tensor([1])), state, keys, encoded.memory[:, None])
        >>> tuple(dec.head(out).shape), tuple(w.shape)                # one word's logits (B, V), its weights (B, S)
        ((1, 50), (1, 4))
    """

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, n_layers: int, *, cell: str = "lstm",
                 attention: str = "global", memory_dim: int | None = None, score: str = "dot",
                 input_feeding: bool = False, half_width: int | None = None, deep_output: int | None = None,
                 bridge: int | None = None, dropout: float = 0.0):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {tuple(CELLS)}, got {cell!r}")
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        if input_feeding and attention in ("none", "bahdanau"):
            raise ValueError(f"input_feeding feeds Luong's attentional state h~_t; attention={attention!r} has none")
        if attention == "bahdanau" and (not deep_output or deep_output % 2):
            raise ValueError(f"attention='bahdanau' needs deep_output, an even int (maxout pairs), got {deep_output!r}")
        self.kind, self.lstm, self.input_feeding = attention, cell == "lstm", input_feeding
        memory_dim = memory_dim or hidden
        self.embed = nn.Embedding(vocab_size, embed_dim)
        first = embed_dim + (memory_dim if attention == "bahdanau" else hidden if input_feeding else 0)
        self.cells = nn.ModuleList(CELLS[cell](first if i == 0 else hidden, hidden) for i in range(n_layers))
        self.attention = None if attention == "none" else RecurrentAttention(
            hidden, memory_dim, kind=attention, score=score, half_width=half_width)
        out_dim = hidden
        if attention == "bahdanau":
            self.deep = Linear(hidden + embed_dim + memory_dim, deep_output)  # [U_o V_o C_o]
            out_dim = deep_output // 2
        elif attention != "none":
            self.combine = Linear(memory_dim + hidden, hidden, bias=False)  # W_c, eq. (5)
        self.bridge = None if bridge is None else nn.ModuleList(Linear(bridge, hidden) for _ in range(n_layers))
        # an LSTM's cells get a bridge of their own: at c_0 = 0 the source reaches the cell only through h_0, and
        # the fixed-vector baseline then barely learns (1-3 letter copies: 9.6% exact in 300 steps, the GRU 99.4%)
        self.cell_bridge = None if bridge is None or cell != "lstm" else nn.ModuleList(
            Linear(bridge, hidden) for _ in range(n_layers))
        self.head = Linear(out_dim, vocab_size)
        self.dropout = nn.Dropout(dropout)
        self.hidden, self.out_dim = hidden, out_dim

    # -- the state -------------------------------------------------------------------------------------------------
    def initial_state(self, encoded: Encoded) -> dict[str, torch.Tensor]:
        """The state before the first target word, from the encoder's final states."""
        B, L, N = encoded.memory.shape[0], len(self.cells), self.hidden
        zeros = encoded.memory.new_zeros(B, N)
        if self.bridge is not None:  # s_0 = tanh(W_s h_1 backward), h_1 of the top encoder layer's backward pass
            backward_h, backward_c = (f[:, -1] if f is not None else None for f in encoded.finals[-1])  # (B, N_enc)
            h = [torch.tanh(W(backward_h)) for W in self.bridge]
            c = [zeros] * L if self.cell_bridge is None else [torch.tanh(W(backward_c)) for W in self.cell_bridge]
        else:  # unidirectional: carry each encoder layer's final (h, c) over
            h = [encoded.finals[i][0][:, 0] if i < len(encoded.finals) else zeros for i in range(L)]
            c = [encoded.finals[i][1][:, 0] if i < len(encoded.finals) and self.lstm else zeros for i in range(L)]
        state = {"h": torch.stack(h, 1)}  # (B, L, N)
        if self.lstm:
            state["c"] = torch.stack(c, 1)
        if self.input_feeding:
            state["feed"] = zeros  # h~_0 = 0
        if self.kind == "local_m":
            state["t"] = torch.zeros(B, dtype=torch.long, device=zeros.device)
        return state

    def keys(self, memory: torch.Tensor) -> torch.Tensor | None:
        """The attention's keys (B, 1, S, .), once per source (None without attention)."""
        return None if self.attention is None else self.attention.keys(memory)

    # -- steps -----------------------------------------------------------------------------------------------------
    def step(self, x: torch.Tensor, state: dict, keys, values, mask=None):
        """One target word. x (B, E): the embedded previous word y_{t-1}; keys, values (B, 1, S, .) and mask (B, S)
        the attention's (values: the encoder outputs). Returns (out (B, out_dim) what the output layer reads,
        weights (B, S) or None, the new state)."""
        h, new, context, weights, steps = state["h"], dict(state), None, None, None
        if "t" in state:
            new["t"] = state["t"] + 1
            steps = new["t"][:, None]  # (B, 1) the position t of the word being written
        if self.kind == "bahdanau":  # the previous state asks (A.1.2); the context enters the recurrence
            context, weights = self.attention(h[:, -1:], keys, values, mask=mask)
            context, weights = context[:, 0], weights[:, 0]
            inp = torch.cat([x, context], -1)
        elif self.input_feeding:
            inp = torch.cat([x, state["feed"]], -1)
        else:
            inp = x
        hs, cs = [], []
        for i, cell in enumerate(self.cells):
            if i:
                inp = self.dropout(inp)
            if self.lstm:
                h_i, c_i = cell(inp, (h[:, i], state["c"][:, i]))
                cs.append(c_i)
            else:
                h_i = cell(inp, h[:, i])
            hs.append(h_i)
            inp = h_i
        top = hs[-1]  # (B, N)
        new["h"] = torch.stack(hs, 1)
        if self.lstm:
            new["c"] = torch.stack(cs, 1)
        if self.kind == "none":
            return top, None, new
        if self.kind == "bahdanau":  # deep output with maxout over pairs (A.2.2)
            t = self.deep(torch.cat([top, x, context], -1))  # (B, 2l)
            return t.view(*t.shape[:-1], -1, 2).amax(-1), weights, new
        context, weights = self.attention(top[:, None], keys, values, mask=mask, steps=steps)
        out = torch.tanh(self.combine(torch.cat([context[:, 0], top], -1)))  # h~_t (B, N)
        if self.input_feeding:
            new["feed"] = out
        return out, weights[:, 0], new

    def forward(self, ids: torch.Tensor, state: dict, keys, values, mask=None, *, last_only: bool = False,
                return_weights: bool = False):
        """ids (B, T) the previous words (teacher forcing: start token + target), read one step at a time.
        Returns (logits (B, T or 1, V), weights (B, T, S) or None, the state after the last step)."""
        x = self.dropout(self.embed(ids))  # (B, T, E)
        outs, maps = [], []
        for t in range(ids.shape[1]):
            out, weights, state = self.step(x[:, t], state, keys, values, mask)
            outs.append(out)
            maps.append(weights)
        out = outs[-1][:, None] if last_only else torch.stack(outs, 1)  # (B, T, out_dim)
        logits = self.head(self.dropout(out))
        weights = torch.stack(maps, 1) if return_weights and self.attention is not None else None
        return logits, weights, state
