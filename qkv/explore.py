"""Explore a model on any sentence: its output, every layer's and head's attention, and beam search step by step.

    explorer = Explorer(model, tokenizer)            # a translation model, a language model or an encoder
    example = explorer.example("twenty-one thousand")  # plain data for the page (``qkv.viz.explorer_page``)
    server = qkv.explore_server.make_server(explorer, port=8000)   # http://127.0.0.1:8000/

What an example holds, by the model's family:
  encoder-decoder  the translation by beam search (and greedy's), the encoder's self-attention, the decoder's
                   masked self-attention and the cross-attention, all under teacher forcing on that translation;
                   and the beam search itself, step by step (``qkv.generate.beam_search_trace``)
  decoder          the prompt's continuation by beam search (and greedy's), masked self-attention over prompt and
                   continuation, and the beam search
  encoder          self-attention only: an encoder reads its input at once and generates nothing
  image to text    a generated scene (its number is the input) captioned by beam search (and greedy), the
                   attention over the image's cells of each word (the "cross" kind: words x cells), the paper's
                   figure (each word over its upsampled attention, an inline PNG) and the beam search
A layer whose mixer returns no (T, S) map (a linear-time mixer without implicit weights) is shown as such.

The server (``qkv.explore_server``) is the standard library's ``http.server`` on 127.0.0.1 only, a thread per
connection and one model answering one request at a time. The page (``qkv/viz_explorer.html``) needs nothing from the network; what a user types comes back
either as a new example or as a message said in the page, never as a crash.
"""
from __future__ import annotations

import base64
import math
from dataclasses import dataclass

import torch

from .decoding import beam_search_trace
from .models import FAMILIES, decodable_positions, decoding_of, family_of
from .repetition import describe, repetition
from .tasks.seq2seq import (decoder_input_ids, end_source, output_text, output_tokens, sentence_room,
                           source_ids)
from .viz import AttentionMaps, explorer_example
from .viz_image import caption_png, scene_pixels

__all__ = ["Explorer", "ExploreInputError", "View", "view_of", "attention_maps", "seq2seq_maps", "self_maps",
           "token_labels", "sequence_logprob"]

MAX_CHARS = 500  # the longest input the explorer takes
MAX_HEADS_SHOWN = 32  # maps with more "heads" (RWKV's per-channel maps) are shown as their mean


class ExploreInputError(ValueError):
    """What is wrong with a user's text (empty, too long, not encodable): said in the page, not raised past it.

    Example:

        >>> import qkv
        >>> from qkv.data import CharTokenizer
        >>> tok = CharTokenizer.train(iter(["the cat sat", "le chat"]))
        >>> lm = qkv.build(qkv.preset("gpt2-tiny", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id)).eval()
        >>> from qkv.explore import Explorer, ExploreInputError
        >>> explorer = Explorer(lm, tok, max_chars=20)        # the page says the message; the server goes on
        >>> explorer.check("the cat sat the cat sat")
        Traceback (most recent call last):
        qkv.explore.ExploreInputError: That is 23 characters; the explorer takes at most 20.
        >>> issubclass(ExploreInputError, ValueError), len(explorer.check("the cat"))   # ids of a good input
        (True, 7)
    """


# -- attention maps of one example --------------------------------------------------------------------------

def token_labels(tokenizer, ids: list[int]) -> list[str]:
    """One readable label per id: the text each token adds (a token that only starts a multi-byte character gets
    "", the one completing it the character), special tokens by their own string.

    Example:

        >>> import qkv
        >>> from qkv.data import CharTokenizer
        >>> tok = CharTokenizer.train(iter(["the cat sat", "le chat"]))
        >>> from qkv.explore import token_labels
        >>> token_labels(tok, tok.encode("le chat") + [tok.eos_id])   # the text each token adds; specials by name
        ['l', 'e', ' ', 'c', 'h', 'a', 't', '</s>']
    """
    specials, V = set(tokenizer.special_ids), tokenizer.vocab_size
    labels, run, shown = [], [], ""
    for i in ids:
        if i in specials or not 0 <= i < V:  # an id the tokenizer lacks (a model's own start token): its number
            labels.append((tokenizer.id_to_token(i) if 0 <= i < V else None) or f"#{i}")
            run, shown = [], ""
            continue
        run.append(i)
        text = tokenizer.decode(run)
        if text.startswith(shown) and not text.endswith("\ufffd"):
            labels.append(text[len(shown):])
            shown = text
        else:
            labels.append("")
    return labels


def _heads(w: torch.Tensor | None) -> torch.Tensor | None:
    """(B, H, T, S) -> the same, or its mean over H as one map when H is a channel count (RWKV: one map per
    channel, hundreds of them)."""
    if w is None or w.shape[1] <= MAX_HEADS_SHOWN:
        return w
    return w.float().mean(1, keepdim=True)


def seq2seq_maps(model, src_ids: list[int], tgt_ids: list[int], src_labels: list[str],
                 tgt_labels: list[str]) -> list[AttentionMaps]:
    """Encoder self-attention, decoder masked self-attention and cross-attention of one pair under teacher
    forcing: the source ids (EOS included) and the decoder's input (start token + target).

    Example:

        >>> import qkv
        >>> from qkv.data import CharTokenizer
        >>> tok = CharTokenizer.train(iter(["the cat sat", "le chat"]))
        >>> mt = qkv.build(qkv.preset("transformer-tiny", vocab_size=tok.vocab_size, pad_token_id=tok.pad_id,
        ...                           eos_token_id=tok.eos_id, decoder_start_token_id=tok.bos_id)).eval()
        >>> from qkv.explore import seq2seq_maps
        >>> src, tgt = tok.encode("cat") + [tok.eos_id], [tok.bos_id] + tok.encode("chat")
        >>> maps = seq2seq_maps(mt, src, tgt, ["c", "a", "t", "EOS"], ["BOS", "c", "h", "a", "t"])
        >>> maps[-1].kind, maps[-1].layers[0].shape                 # cross-attention: (H, T, S)
        ('cross', torch.Size([4, 5, 4]))
    """
    with torch.no_grad():
        _, w = model(torch.tensor([src_ids]), torch.tensor([tgt_ids]), return_weights=True)
    kinds = [("self", w.encoder_self, src_labels, src_labels), ("masked", w.decoder_self, tgt_labels, tgt_labels),
             ("cross", w.cross, tgt_labels, src_labels)]
    return [AttentionMaps.from_batch(kind, [_heads(x) for x in layers], queries, keys)
            for kind, layers, queries, keys in kinds if layers and any(x is not None for x in layers)]


def attention_maps(model, tokenizer, source: str, target: str) -> list[AttentionMaps]:
    """The three kinds of attention of one sentence pair under teacher forcing (``seq2seq_maps``), labelled with
    the tokens' text.

    Example:

        >>> import qkv
        >>> from qkv.data import CharTokenizer
        >>> tok = CharTokenizer.train(iter(["the cat sat", "le chat"]))
        >>> mt = qkv.build(qkv.preset("transformer-tiny", vocab_size=tok.vocab_size, pad_token_id=tok.pad_id,
        ...                           eos_token_id=tok.eos_id, decoder_start_token_id=tok.bos_id)).eval()
        >>> from qkv.explore import attention_maps
        >>> maps = attention_maps(mt, tok, "the cat", "le chat")   # teacher forcing on the pair
        >>> [(m.kind, m.n_layers, len(m.queries), len(m.keys)) for m in maps]   # source 7 chars + EOS, start + 7
        [('self', 2, 8, 8), ('masked', 2, 8, 8), ('cross', 2, 8, 8)]
    """
    src_ids = source_ids(tokenizer, source)
    tgt_ids = decoder_input_ids(tokenizer, target, model.config.decoder_start_token_id)
    return seq2seq_maps(model, src_ids, tgt_ids, token_labels(tokenizer, src_ids), token_labels(tokenizer, tgt_ids))


def self_maps(model, ids: list[int], labels: list[str], kind: str) -> list[AttentionMaps]:
    """A decoder's masked (kind "masked") or an encoder's bidirectional ("self") self-attention over ids.

    Example:

        >>> import qkv
        >>> from qkv.data import CharTokenizer
        >>> tok = CharTokenizer.train(iter(["the cat sat", "le chat"]))
        >>> lm = qkv.build(qkv.preset("gpt2-tiny", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id)).eval()
        >>> from qkv.explore import self_maps
        >>> (maps,) = self_maps(lm, tok.encode("the cat"), list("the cat"), "masked")
        >>> maps.n_layers, maps.layers[0].shape, float(maps.layers[0][0, 0, 1:].sum())   # causal: token 0 sees itself
        (2, torch.Size([4, 7, 7]), 0.0)
    """
    with torch.no_grad():
        _, weights = model(torch.tensor([ids]), return_weights=True)
    layers = [_heads(w.self_attn) for w in weights]
    return [AttentionMaps.from_batch(kind, layers, labels, labels)] if any(w is not None for w in layers) else []


# -- one example ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class View:
    """What the explorer does with a family, from its record (``qkv.models.registry``): translate a source (the
    record ``has_source``), continue a prompt (``continues``) or read a text at once (an encoder, no decoding).

    Example:

        >>> import qkv
        >>> from qkv.data import CharTokenizer
        >>> tok = CharTokenizer.train(iter(["the cat sat", "le chat"]))
        >>> mt = qkv.build(qkv.preset("transformer-tiny", vocab_size=tok.vocab_size, pad_token_id=tok.pad_id,
        ...                           eos_token_id=tok.eos_id, decoder_start_token_id=tok.bos_id)).eval()
        >>> from qkv.explore import view_of
        >>> view = view_of(mt)                                # a View: what the explorer does with this family
        >>> view.name, view.source, view.generates, view.output_label
        ('translate', True, True, 'translation')
    """
    name: str  # "translate", "generate", "encode" or "describe"
    source: bool  # the input is a source: EOS appended, the output translates it
    generates: bool  # an output is decoded (beam search shown)
    verb: str
    title: str
    output_label: str
    image: bool = False  # the input is an image (a generated scene's number), the output its caption


_VIEWS = (View("translate", True, True, "translate", "qkv explorer: a translation model", "translation"),
          View("generate", False, True, "continue", "qkv explorer: a language model", "continuation"),
          View("encode", False, False, "read", "qkv explorer: an encoder", ""),
          View("describe", False, True, "caption", "qkv explorer: an image-to-text model", "caption", image=True))
MAX_SCENE = 2 ** 32 - 1  # a scene's number seeds numpy's generator


def view_of(model) -> View:
    """The explorer's view of a model, from its family's record: a text family's, or "describe" for one that
    reads pixels and decodes text (an image captioner); ValueError for one that reads pixels and writes no text.

    Example:

        >>> import qkv
        >>> from qkv.explore import view_of
        >>> [view_of(qkv.build(qkv.preset(p))).name for p in ("transformer-tiny", "gpt2-tiny", "bert-tiny", "sat-soft")]
        ['translate', 'generate', 'encode', 'describe']
        >>> view_of(qkv.build(qkv.preset("vit-tiny")))
        Traceback (most recent call last):
        ValueError: model: family 'vit' writes no text to explore; expected one of [...]
    """
    record = family_of(model)
    if not record.text:
        if record.decoding is not None:
            return _VIEWS[3]
        raise ValueError(f"model: family {record.name!r} writes no text to explore; expected one of "
                         f"{sorted(name for name, f in FAMILIES.items() if f.text or f.decoding is not None)}")
    return _VIEWS[0] if record.has_source else _VIEWS[1] if record.continues else _VIEWS[2]


@dataclass
class Explorer:
    """A model that writes or reads text (an image-to-text model too) and its tokenizer, answering the explorer's
    questions (``example``; ``image_example`` for an image of the user's).

    num_beams: the beam width shown (>= 2). max_new_tokens: the longest output (default: what the model's
    positions allow, at most 60 tokens for translations and 40 for continuations). max_chars: the longest input.

    Example:

        >>> import qkv
        >>> from qkv.data import CharTokenizer
        >>> tok = CharTokenizer.train(iter(["the cat sat", "le chat"]))
        >>> lm = qkv.build(qkv.preset("gpt2-tiny", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id)).eval()
        >>> from qkv.explore import Explorer
        >>> explorer = Explorer(lm, tok, num_beams=2, max_new_tokens=3)
        >>> example = explorer.example("the cat")            # the page's data: outputs, maps, the beam search
        >>> explorer.task, [k["kind"] for k in example["kinds"]], example["beam"] is not None
        ('generate', ['masked'], True)
    """
    model: torch.nn.Module
    tokenizer: object
    num_beams: int = 4
    max_new_tokens: int | None = None
    max_chars: int = MAX_CHARS
    length_penalty: float = 1.0

    def __post_init__(self):
        self.view = view_of(self.model)
        if not isinstance(self.num_beams, int) or self.num_beams < 2:
            raise ValueError(f"num_beams={self.num_beams!r}: the beam view needs an int >= 2")
        if self.max_new_tokens is not None and (not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1):
            raise ValueError(f"max_new_tokens={self.max_new_tokens!r}: expected an int >= 1 or None")
        if (self.view.source or self.view.image) and (self.tokenizer.eos_id is None or self.tokenizer.pad_id is None):
            raise ValueError(f"tokenizer: a {self.view.output_label} model needs EOS and padding tokens")
        self.model.eval()

    @property
    def task(self) -> str:
        """"translate", "generate" or "encode" (the view's name)."""
        return self.view.name

    def check(self, text) -> list[int]:
        """The ids of a user's text (for an image model: [the scene's number]), or ExploreInputError saying what is
        wrong with it."""
        if self.view.image:
            return [self.scene_number(text)]
        if not isinstance(text, str):
            raise ExploreInputError(f"expected a sentence (text), got {type(text).__name__}")
        if not text.strip():
            raise ExploreInputError("Type a sentence first: the input is empty.")
        if len(text) > self.max_chars:
            raise ExploreInputError(f"That is {len(text)} characters; the explorer takes at most {self.max_chars}.")
        lone = next((i for i, c in enumerate(text) if "\ud800" <= c <= "\udfff"), None)
        if lone is not None:  # JSON and a command line can spell one; no text holds one, no tokenizer reads one
            raise ExploreInputError(f"The text holds a lone surrogate U+{ord(text[lone]):04X} at character {lone}, "
                                    f"which is not a character; expected valid Unicode text.")
        try:
            ids = self.tokenizer.encode(text, add_special=not self.view.generates)
        except ValueError as e:  # a character tokenizer without an unknown token names the character
            raise ExploreInputError(f"The model's vocabulary cannot spell this: {e}") from None
        room = sentence_room(self._positions()) if self.view.source else self._positions()
        if self.view.generates and not self.view.source:
            room -= 1  # at least one new token
        if len(ids) > room:
            raise ExploreInputError(f"That is {len(ids)} tokens; this model reads at most {room}. Try a shorter text.")
        if not ids:
            raise ExploreInputError("The tokenizer made no tokens of this text.")
        return ids

    def scene_number(self, text) -> int:
        """An image model's input: the number of a generated scene (qkv.data.shapes), 0 .. 2^32 - 1, as text."""
        shown = text if isinstance(text, str) and len(text) <= 40 else f"{type(text).__name__}"
        if not isinstance(text, str) or not text.strip().isdigit() or not text.strip().isascii() \
                or int(text.strip()) > MAX_SCENE:
            raise ExploreInputError(f"An image model captions a generated scene: type its number, 0 to {MAX_SCENE} "
                                    f"(got {shown!r}).")
        return int(text.strip())

    def unknown_characters(self, text: str) -> list[str]:
        """Characters of text the vocabulary has no token for (read as the unknown token)."""
        unk = self.tokenizer.unk_id
        if unk is None:
            return []
        return sorted(c for c in set(text) if not c.isspace() and unk in self.tokenizer.encode(c))

    def _positions(self) -> int:
        """Positions the model reads (relative positions, as T5's, have no table: the input is the limit)."""
        return self.model.config.max_positions or 4 * self.max_chars

    def _new_tokens(self, prompt: int) -> int:
        if self.view.source:
            limit = min(60, sentence_room(self._positions()))
        else:  # a position table ends; other positions extrapolate
            bound = decodable_positions(self.model.config)
            limit = min(40, bound - prompt if bound is not None else 40)
        return max(1, min(limit, self.max_new_tokens or limit))

    def example(self, text: str, *, label: str | None = None) -> dict:
        """Run the model on text; return the page's example (``qkv.viz.explorer_example``): the output by beam
        search and by greedy decoding, the attention maps and the beam view. Raises ExploreInputError."""
        ids = self.check(text)
        if self.view.image:
            return self._image_example(ids[0], label)
        tok, cfg = self.tokenizer, self.model.config
        unknown = self.unknown_characters(text)
        warning = None
        if unknown:
            listed = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in unknown[:8])
            warning = f"Not in the model's vocabulary, read as {tok.specials.get('unk', 'unknown')}: {listed}."
        if not self.view.generates:
            maps = self_maps(self.model, ids, token_labels(tok, ids), "self")
            ex = explorer_example(maps, source=text, label=label, note="An encoder reads its whole input at once and "
                                  "generates nothing: here is its self-attention.")
            ex["warning"] = warning
            return ex
        src = end_source(ids, tok.eos_id) if self.view.source else ids
        eos = tok.eos_id if tok.eos_id is not None else ()
        pad = tok.pad_id if tok.pad_id is not None else (0 if eos == () else eos)
        limit = self._new_tokens(len(src))
        trace = beam_search_trace(self.model, torch.tensor([src]), num_beams=self.num_beams,
                                  max_new_tokens=limit, length_penalty=self.length_penalty,
                                  eos_token_id=eos, pad_token_id=pad)
        best = trace.sequences[0, trace.prompt_length:].tolist()[: trace.lengths[0]]
        body = output_tokens(best, tok.eos_id)
        loop, greedy_loop = self.loop_warning(best, limit), self.loop_warning(trace.greedy, limit)
        loops = ([f"The {self.view.output_label} {loop}" + (" (greedy decoding's too)." if greedy_loop else ".")]
                 if loop else [f"Greedy decoding's {self.view.output_label} {greedy_loop}."] if greedy_loop else [])
        warning = " ".join([warning] * bool(warning) + loops) or None
        output, greedy = tok.decode(body), output_text(tok, trace.greedy)
        if self.view.source:
            start = [cfg.decoder_start_token_id]
            maps = seq2seq_maps(self.model, src, start + body, token_labels(tok, src), token_labels(tok, start + body))
        else:
            maps = self_maps(self.model, src + body, token_labels(tok, src + body), "masked")
        note = None
        if not maps:
            note = "This model's layers return no attention maps (linear-time mixers without implicit weights)."
        ex = explorer_example(maps, source=text, label=label, output=output, greedy=greedy,
                              output_label=self.view.output_label,
                              beam=self._beam_view(trace, src), note=note)
        ex["warning"] = warning
        return ex

    def _image_example(self, scene: int, label: str | None) -> dict:
        return self.image_example(scene_pixels(self.model.config, scene), source=f"generated scene {scene}",
                                  label=label)

    def image_example(self, pixels: torch.Tensor, *, source: str, label: str | None = None) -> dict:
        """An image (C, S, S) uint8 captioned: beam search and greedy, each word's attention over the cells (kind
        "cross": words x cells "row,col"; the model's cross-attention layers and heads where it has them, else its
        one attention), the paper's figure as an inline PNG, and the beam view. source: what the page calls it."""
        tok, model = self.tokenizer, self.model
        src = pixels.long().flatten().tolist()  # the image's bytes: qkv.generate's source for an image model
        limit = max(1, min(40, self.max_new_tokens or 40))
        trace = beam_search_trace(model, torch.tensor([src]), num_beams=self.num_beams, max_new_tokens=limit,
                                  length_penalty=self.length_penalty, eos_token_id=tok.eos_id,
                                  pad_token_id=tok.pad_id)
        best = trace.sequences[0, trace.prompt_length:].tolist()[: trace.lengths[0]]
        body = [t for t in best if t != tok.eos_id]
        start = [model.config.decoder_start_token_id]
        with torch.no_grad():
            _, w = model(pixels[None], torch.tensor([start + body]), return_weights=True)
        layers = list(w.cross) if getattr(w, "cross", None) else [w.weights[:, None]]  # (1, H, T, N) each
        R, C = model.grid
        # step t reads word t - 1 and writes word t: each query is labelled with the word it wrote
        maps = [AttentionMaps.from_batch("cross", [_heads(x) for x in layers], token_labels(tok, body + [tok.eos_id]),
                                         [f"{r},{c}" for r in range(R) for c in range(C)])]
        png, _, _ = caption_png(model, tok, pixels, num_beams=self.num_beams)
        ex = explorer_example(maps, source=source, label=label, output=tok.decode(body),
                              greedy=tok.decode([t for t in trace.greedy if t != tok.eos_id]),
                              output_label=self.view.output_label, beam=self._beam_view(trace, src),
                              note=f"Each word over where it looked ({model.config.attn_select} attention over the "
                                   f"{R} x {C} cells of the image); the maps are words x cells, row-major.")
        ex["image"] = {"figure": "data:image/png;base64," + base64.b64encode(png).decode("ascii"),
                       "grid": [R, C], "size": model.config.image_size}
        ex["warning"], ex["input_hint"] = None, "type a scene number (0, 1, 2, ...)"
        return ex

    def loop_warning(self, generated: list[int], limit: int) -> str | None:
        """What a decode did when its generated ids (EOS included, if it came) ran to ``limit`` repeating
        themselves (``qkv.repetition.describe``), else None."""
        eos = self.tokenizer.eos_id
        body = output_tokens(generated, eos)
        found = repetition(body, hit_limit=len(generated) >= limit and eos not in generated)
        return None if found is None else describe(found, self.tokenizer.decode(list(found.unit)), limit=limit)

    def _beam_view(self, trace, src: list[int]) -> dict:
        """The beam trace as the page draws it: token text, summed log-probabilities, statuses, greedy's path."""
        tok, lp = self.tokenizer, self.length_penalty
        steps, paths = [], [()]
        for step in trace.steps:
            new_paths = [paths[max(p, 0)] + (t,) for p, t in zip(step.parents, step.tokens)]
            steps.append({"tokens": [_last_label(tok, path) for path in new_paths], "ids": step.tokens,
                          "parents": step.parents, "scores": step.scores, "status": step.status,
                          "greedy": step.greedy})
            paths = new_paths
        finals = []
        for row, score, length in zip(trace.sequences.tolist(), trace.scores, trace.lengths):
            out = row[trace.prompt_length:][:length]
            finals.append({"text": output_text(tok, out), "length": length,
                           "score": _finite(score), "logprob": _finite(score * length ** lp)})
        greedy = None
        if trace.greedy:
            logprob = sequence_logprob(self.model, src, trace.greedy)
            greedy = {"text": output_text(tok, trace.greedy), "length": len(trace.greedy),
                      "logprob": _finite(logprob), "score": _finite(logprob / len(trace.greedy) ** lp)}
        labels = [_last_label(tok, tuple(trace.greedy[: i + 1])) for i in range(len(trace.greedy))]
        return {"k": self.num_beams, "length_penalty": lp, "steps": steps, "final": finals, "greedy": greedy,
                "greedy_tokens": labels}


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _last_label(tokenizer, path: tuple[int, ...]) -> str:
    """The text the last token of path adds to the rest (its special-token string for EOS and the like; "" for a
    token that only starts a multi-byte character)."""
    specials = set(tokenizer.special_ids)
    if path[-1] in specials:
        return tokenizer.id_to_token(path[-1]) or str(path[-1])
    head = [t for t in path[:-1] if t not in specials]
    before, full = tokenizer.decode(head).rstrip("\ufffd"), tokenizer.decode(head + [path[-1]])
    return full[len(before):] if full.startswith(before) and not full.endswith("\ufffd") else ""


def sequence_logprob(model, src: list[int], tokens: list[int]) -> float:
    """Summed log-probability of tokens after src: the source (encoder-decoder) or the prompt (decoder).

    Example:

        >>> import math, torch, qkv
        >>> from qkv.explore import sequence_logprob
        >>> lm = qkv.build(qkv.preset("gpt2-tiny")).eval()
        >>> logp = lm(torch.tensor([[1, 2, 3]])).log_softmax(-1)        # (B, T, V)
        >>> by_hand = logp[0, 0, 2].item() + logp[0, 1, 3].item()       # log p(2 | 1) + log p(3 | 1 2)
        >>> math.isclose(sequence_logprob(lm, [1], [2, 3]), by_hand, abs_tol=1e-4)
        True
    """
    with torch.no_grad():
        logits = decoding_of(model).teacher_forced(model, src, tokens)  # (L, V)
    logp = logits.double().log_softmax(-1)
    return float(logp.gather(1, torch.tensor(tokens)[:, None]).sum())
