"""Decoding controls that edit the next-token scores, with transformers' names and semantics, so a Hugging Face
folder's generation_config.json means the same thing to ``qkv.generate`` as to ``transformers``' ``generate``.

Each sets scores to -inf (a token is forbidden) or forces one token (its score 0, every other -inf):

  no_repeat_ngram_size   n: no n-gram appears twice in the sequence (prompt included; Paulus et al. 2018, sec. 2.5)
  bad_words_ids          token sequences never produced: a sequence's last token is forbidden after the others
  min_length             no EOS while the sequence (prompt included) is shorter than this
  min_new_tokens         no EOS before this many new tokens
  forced_bos_token_id    the first generated token of a sequence of length 1 (mBART-50: the target language)
  forced_eos_token_id    EOS as the last token the length limit allows (Marian, mBART)
  logits_processor       the caller's functions ``f(input_ids (N, L), scores (N, V)) -> scores``, in order
  renormalize_logits     log-softmax again after the others (transformers' LogitNormalization)

They apply in that order (transformers' order); greedy decoding and sampling apply them to the logits, beam search
to the log-probabilities, as transformers does. Sampling then narrows the distribution (``warp``, after the
temperature, top-k and top-p): ``min_p`` keeps the tokens at least ``min_p`` times as likely as the best one
(Nguyen et al. 2024), ``typical_p`` the tokens whose surprisal is closest to the entropy, up to that mass (locally
typical sampling, Meister et al. 2023, sec. 4), ``epsilon_cutoff`` the tokens of probability at least epsilon
(epsilon sampling, Hewitt et al. 2022). Lengths count the whole sequence: prompt (decoder-only) or
decoder-start token (encoder-decoder) plus the tokens generated so far.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import checks as c


# The controls' settings (GenerationConfig's fields of the same names) and the rule each value follows
RULES = dict(no_repeat_ngram_size=c.int_at_least(0), bad_words_ids=c.token_sequences, min_length=c.int_at_least(0),
             min_new_tokens=c.int_at_least(0), forced_bos_token_id=lambda x: c.token_id(x, optional=True),
             forced_eos_token_id=c.token_ids, renormalize_logits=c.boolean,
             min_p=c.number(low=0, high=1, optional=True), typical_p=c.number(low=0, high=1, optional=True),
             epsilon_cutoff=c.number(low=0, high=1, high_open=True, optional=True))
TOKEN_IDS = ("bad_words_ids", "forced_bos_token_id", "forced_eos_token_id")  # checked against the vocabulary


@dataclass(frozen=True)
class LogitsControls:
    """The controls of a run, checked (``make_controls``); ``apply`` and ``warp`` use them."""
    no_repeat_ngram_size: int = 0
    bad_words_ids: tuple[tuple[int, ...], ...] = ()
    min_length: int = 0
    min_new_tokens: int = 0
    forced_bos_token_id: int | None = None
    forced_eos_token_id: tuple[int, ...] = ()
    renormalize_logits: bool = False
    min_p: float | None = None  # sampling only (``warp``)
    typical_p: float | None = None  # sampling only (``warp``)
    epsilon_cutoff: float | None = None  # sampling only (``warp``); 0 is off, as in transformers
    processors: tuple = ()  # the caller's logits_processor functions

    @property
    def active(self) -> bool:
        """Whether ``apply`` changes anything (the sampling warpers are ``warp``'s)."""
        return self.no_repeat_ngram_size > 0 or bool(self.bad_words_ids) or self.min_length > 0 or \
            self.min_new_tokens > 0 or self.forced_bos_token_id is not None or bool(self.forced_eos_token_id) or \
            self.renormalize_logits or bool(self.processors)

    @property
    def needs_sequences(self) -> bool:
        """Whether ``apply`` reads the tokens so far (n-gram and multi-token bans, the caller's processors do)."""
        return bool(self.no_repeat_ngram_size) or any(len(w) > 1 for w in self.bad_words_ids) or \
            bool(self.processors)

    def warp(self, scores: torch.Tensor) -> torch.Tensor:
        """Sampling's min-p, typical and epsilon filters, in transformers' order, on (N, V) scores (already divided
        by the temperature): -inf outside the kept set; the best token (min-p, epsilon) or the most typical one
        (typical) always stays."""
        if self.min_p is not None:
            probs = scores.softmax(-1)
            scores = scores.masked_fill(probs < self.min_p * probs.amax(-1, keepdim=True), float("-inf"))
        if self.typical_p is not None and self.typical_p < 1.0:
            scores = _typical(scores, self.typical_p)
        if self.epsilon_cutoff:
            # epsilon sampling (Hewitt et al. 2022): drop every token less likely than epsilon but the best
            unlikely = scores.softmax(-1) < self.epsilon_cutoff
            scores = scores.masked_fill(unlikely & (scores < scores.amax(-1, keepdim=True)), float("-inf"))
        return scores

    def apply(self, scores: torch.Tensor, sequences: torch.Tensor | None, *, length: int, prompt_length: int,
              max_length: int, eos: torch.Tensor | None) -> torch.Tensor:
        """scores (N, V) of the next token for sequences (N, length) (None unless ``needs_sequences``); returns
        the controlled scores. ``max_length``: the longest sequence the run allows (prompt + max_new_tokens)."""
        neg_inf = float("-inf")
        if self.no_repeat_ngram_size:
            scores = scores.masked_fill(_repeated_ngrams(sequences, self.no_repeat_ngram_size, scores.shape[-1]),
                                        neg_inf)
        if self.bad_words_ids:
            scores = scores.masked_fill(_bad_words(self.bad_words_ids, sequences, scores), neg_inf)
        if eos is not None and (length < self.min_length or length - prompt_length < self.min_new_tokens):
            scores = scores.index_fill(-1, eos.to(scores.device), neg_inf)
        if self.forced_bos_token_id is not None and length == 1:
            scores = _force(scores, [self.forced_bos_token_id])
        if self.forced_eos_token_id and length == max_length - 1:
            scores = _force(scores, list(self.forced_eos_token_id))
        for f in self.processors:
            out = f(sequences, scores)
            if not isinstance(out, torch.Tensor) or out.shape != scores.shape:
                raise ValueError(f"logits_processor {f!r} must return scores of shape {tuple(scores.shape)}, got "
                                 f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
            scores = out
        if self.renormalize_logits:
            scores = scores.log_softmax(-1)
        return scores


def _force(scores: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    forced = torch.full_like(scores, float("-inf"))
    forced[:, tokens] = 0.0
    return forced


def top_k_top_p(logits, top_k, top_p):
    """Sampling's first filters, on (N, V) logits already divided by the temperature. Mask (-inf) all but the
    top_k logits and the nucleus: the smallest set of tokens, best first, whose probability reaches top_p
    (Holtzman et al. 2020, sec. 3.1)."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of the better tokens; the best token always stays (0 < top_p)
        drop = (before >= top_p).scatter(-1, order, before >= top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _typical(scores: torch.Tensor, mass: float) -> torch.Tensor:
    """Locally typical sampling (Meister et al. 2023, eq. 6): rank tokens by |surprisal - entropy|, keep the most
    typical ones until their probability reaches ``mass`` (ties with the last kept one stay)."""
    logp = scores.log_softmax(-1)  # (N, V)
    entropy = -(logp.exp() * logp).nansum(-1, keepdim=True)  # (N, 1); nansum: -inf * 0 is no mass
    distance = (-logp - entropy).abs()
    sorted_distance, order = distance.sort(-1)
    cumulative = logp.gather(-1, order).exp().cumsum(-1)
    last = (cumulative < mass).sum(-1, keepdim=True).clamp(max=scores.shape[-1] - 1)  # (N, 1): last kept rank
    drop = sorted_distance > sorted_distance.gather(-1, last)
    drop[:, 0] = False  # the most typical token always stays
    return scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def _repeated_ngrams(sequences: torch.Tensor, n: int, V: int) -> torch.Tensor:
    """(N, V) bool: tokens that would complete an n-gram the row already holds (its last n - 1 tokens seen before,
    followed by that token)."""
    N, L = sequences.shape
    banned = torch.zeros(N, V, dtype=torch.long, device=sequences.device)
    if L < n:  # no n-gram complete yet
        return banned.bool()
    if n == 1:  # every token seen is banned
        return banned.scatter_add_(1, sequences, torch.ones_like(sequences)) > 0
    grams = sequences.unfold(1, n, 1)  # (N, L - n + 1, n): every n-gram so far
    tail = sequences[:, L - n + 1:]  # (N, n - 1): what the next token would extend
    match = (grams[:, :, :-1] == tail[:, None, :]).all(-1)  # (N, L - n + 1)
    return banned.scatter_add_(1, grams[:, :, -1], match.long()) > 0


def _bad_words(bad_words, sequences, scores) -> torch.Tensor:
    """(N, V) bool: the last token of every banned sequence whose other tokens end the row (always, for one token)."""
    N, V = scores.shape
    banned = torch.zeros(N, V, dtype=torch.bool, device=scores.device)
    for word in bad_words:
        if len(word) == 1:
            banned[:, word[0]] = True
        elif sequences is not None and sequences.shape[1] >= len(word) - 1:
            prefix = torch.tensor(word[:-1], device=sequences.device)
            ends = (sequences[:, sequences.shape[1] - len(prefix):] == prefix).all(-1)  # (N,)
            banned[:, word[-1]] |= ends
    return banned


def make_controls(*, vocab_size: int, eos_ids=(), logits_processor=None, where: str | Callable = "",
                  **settings) -> LogitsControls:
    """Checked controls from ``settings`` (names of ``RULES``; the others stay off): each value by its rule and
    token ids against the vocabulary; ValueError names the setting, its value and what it should be, after
    ``where`` (a file's name, or a function of the setting's name giving it). As in transformers, bad words that
    are just an EOS id are dropped (a sequence must be able to end)."""
    unknown = sorted(set(settings) - set(RULES))
    if unknown:
        raise TypeError(f"unknown logits controls {unknown}; known: {', '.join(RULES)}")
    prefix = where if callable(where) else (lambda name: where)
    checked = {}
    for name, value in settings.items():
        try:
            checked[name] = RULES[name](value)
        except c.Bad as e:
            raise ValueError(f"{prefix(name)}{name} must be {e}, got {value!r}") from None
    if checked.get("bad_words_ids") is None:
        checked.pop("bad_words_ids", None)
    eos = checked.get("forced_eos_token_id")
    checked["forced_eos_token_id"] = () if eos is None else (eos,) if c.is_int(eos) else eos
    for name in TOKEN_IDS:
        value = checked.get(name)
        ids = [] if value is None else [value] if c.is_int(value) else \
            [t for w in value for t in (w if isinstance(w, tuple) else (w,))]
        for t in ids:
            if t >= vocab_size:
                raise ValueError(f"{prefix(name)}{name} must hold token ids in [0, {vocab_size}), got {t!r}")
    if "bad_words_ids" in checked:
        checked["bad_words_ids"] = tuple(w for w in checked["bad_words_ids"] if not (len(w) == 1 and w[0] in set(eos_ids)))
    return LogitsControls(**checked, processors=_processors(logits_processor))


def _processors(logits_processor) -> tuple:
    """The caller's logits_processor: None, a function or a list of functions -> a tuple of functions."""
    if logits_processor is None:
        return ()
    if callable(logits_processor):
        return (logits_processor,)
    if isinstance(logits_processor, (list, tuple)) and all(callable(f) for f in logits_processor):
        return tuple(logits_processor)
    raise TypeError(f"logits_processor must be a function (input_ids, scores) -> scores or a list of them, got "
                    f"{logits_processor!r}")
