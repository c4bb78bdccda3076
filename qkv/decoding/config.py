"""``GenerationConfig``: every decoding setting in one dataclass, checked when it is made, and the one place where
the defaults that depend on a model (end-of-sequence and padding ids, the decoder-start token, how many tokens to
generate) are decided: ``config.resolved(model, prompt_length)``.

Field names are transformers' ``GenerationConfig``'s, so a Hugging Face ``generation_config.json`` reads straight
in (``GenerationConfig.from_json``); the settings qkv adds (speculative decoding, static caches, compiling,
scores) carry names of their own. The comment after each field is its documentation: ``qkv generate --help`` and
``qkv translate --help`` print it (``qkv/decoding/args.py``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..files import inside, read_json
from . import checks as c
from .controls import RULES, LogitsControls, make_controls

DEFAULT_NEW_TOKENS = 20  # transformers' default length (max_length 20) when nothing says otherwise
# what transformers assumes for a field its file leaves out, where that differs from qkv's default
TRANSFORMERS_DEFAULTS = dict(top_k=50)
# transformers settings that change the output, with their neutral values: a file setting one otherwise is refused
UNSUPPORTED = dict(num_beam_groups=1, diversity_penalty=0.0, eta_cutoff=0.0, top_h=None, encoder_repetition_penalty=1.0,
                   encoder_no_repeat_ngram_size=0, suppress_tokens=None, begin_suppress_tokens=None, sequence_bias=None,
                   force_words_ids=None, constraints=None, exponential_decay_length_penalty=None, guidance_scale=None,
                   penalty_alpha=None, forced_decoder_ids=None, max_time=None, token_healing=False,
                   remove_invalid_values=False, watermarking_config=None, dola_layers=None)


def _setting(rule, default=None, *, flag: str | None = None, file: bool = True):
    """A field with its value rule; ``flag``: the command-line flag it becomes (None: not a flag); ``file``: read
    from a generation_config.json (False: how qkv runs a decode, which a handed file does not decide)."""
    return field(default=default, metadata=dict(rule=rule, flag=flag, file=file))


@dataclass(frozen=True)
class GenerationConfig:
    """How to decode. Made with keywords (``GenerationConfig(num_beams=4)``), from a dict or a JSON file with
    transformers' names (``from_dict``, ``from_json``), or changed with ``replace(**changes)``; every value is
    checked when the config is made (ValueError naming the file, the field, the value and what was expected).

    Example:

        >>> import qkv
        >>> beam = qkv.GenerationConfig(num_beams=4, max_new_tokens=10)
        >>> beam.replace(num_beams=1).num_beams, beam.to_dict()["num_beams"]
        (1, 4)
        >>> qkv.GenerationConfig(num_beams=0)
        Traceback (most recent call last):
        ValueError: num_beams must be an int >= 1, got 0
    """
    # -- how long
    max_new_tokens: int | None = _setting(c.int_at_least(1, optional=True), flag="--max-new-tokens")  # tokens to generate at most (unset: max_length minus the prompt, else 20 within the model's positions)
    max_length: int | None = _setting(c.int_at_least(1, optional=True))  # the longest sequence, prompt (or decoder-start token) included; max_new_tokens wins over it
    min_new_tokens: int = _setting(RULES["min_new_tokens"], 0, flag="--min-new-tokens")  # no end-of-sequence before this many new tokens
    min_length: int = _setting(RULES["min_length"], 0)  # no end-of-sequence while the sequence, prompt included, is shorter than this
    # -- which search
    num_beams: int = _setting(c.int_at_least(1), 1, flag="--num-beams")  # beam search width; 1 is greedy decoding or sampling
    do_sample: bool = _setting(c.boolean, False, flag="--sample")  # sample the next token instead of taking the most likely one
    num_return_sequences: int = _setting(c.int_at_least(1), 1)  # answers per input: the best beams (at most num_beams) or that many samples
    early_stopping: bool | str = _setting(c.early_stopping, False)  # beam search: False goes on while the best running beam could still win, True stops at num_beams finished hypotheses, "never" goes on while one could win at the maximum length
    length_penalty: float = _setting(c.number(), 1.0, flag="--length-penalty")  # beam search scores a hypothesis sum(log p) / length ** length_penalty: > 0 favours longer ones
    # -- the next token's scores
    temperature: float = _setting(c.number(low=0, expected="a finite number >= 0 (> 0 when sampling)"), 1.0, flag="--temperature")  # sampling: divide the logits by this (< 1 sharper, > 1 flatter)
    top_k: int | None = _setting(c.int_at_least(1, optional=True), flag="--top-k")  # sampling: only among the k most likely tokens
    top_p: float | None = _setting(c.number(low=0, high=1, low_open=True, optional=True), flag="--top-p")  # sampling: only among the most likely tokens that hold this much probability (nucleus sampling)
    min_p: float | None = _setting(RULES["min_p"], flag="--min-p")  # sampling: only tokens at least min_p times as likely as the most likely one
    typical_p: float | None = _setting(RULES["typical_p"], flag="--typical-p")  # sampling: the tokens whose surprisal is closest to the entropy, up to this much probability (locally typical sampling)
    epsilon_cutoff: float | None = _setting(RULES["epsilon_cutoff"], flag="--epsilon-cutoff")  # sampling: only tokens at least this likely, the most likely one always kept (truncation sampling; 0 = off)
    repetition_penalty: float = _setting(c.number(low=0, low_open=True), 1.0, flag="--repetition-penalty")  # > 1 discourages tokens already in the sequence (1 = off)
    no_repeat_ngram_size: int = _setting(RULES["no_repeat_ngram_size"], 0, flag="--no-repeat-ngram-size")  # no n-gram of this size appears twice (0 = off)
    bad_words_ids: tuple | None = _setting(RULES["bad_words_ids"])  # token sequences never produced
    forced_bos_token_id: int | None = _setting(RULES["forced_bos_token_id"])  # the first generated token (mBART-50: the target language)
    forced_eos_token_id: int | tuple | None = _setting(RULES["forced_eos_token_id"])  # end-of-sequence as the last token the length allows
    renormalize_logits: bool = _setting(RULES["renormalize_logits"], False)  # log-softmax the scores again after the controls
    # -- token ids
    eos_token_id: int | tuple | None = _setting(c.token_ids)  # id(s) that end a sequence (unset: the model's; an empty list: none)
    pad_token_id: int | None = _setting(lambda x: c.token_id(x, optional=True))  # fills finished rows (unset: the model's padding id, else the first end-of-sequence id, else 0)
    bos_token_id: int | None = _setting(lambda x: c.token_id(x, optional=True))  # the beginning-of-sequence id (read from files; decoding does not use it)
    decoder_start_token_id: int | None = _setting(lambda x: c.token_id(x, optional=True))  # encoder-decoder: the decoder's first token (unset: the model's)
    stop_strings: tuple | None = _setting(c.strings)  # end a row once its text holds one of these (needs a decode function)
    # -- speculative decoding (qkv/decoding/speculative.py)
    num_draft_tokens: int = _setting(c.int_at_least(1), 4, flag="--num-draft-tokens", file=False)  # speculative decoding: tokens the draft guesses per round
    adaptive_draft: bool = _setting(c.boolean, False, file=False)  # speculative decoding: more guesses after a round that kept them all, fewer after a rejection
    prompt_lookup_num_tokens: int | None = _setting(c.int_at_least(1, optional=True), flag="--prompt-lookup")  # prompt-lookup decoding: guess up to this many tokens by copying what followed the text's last n-gram earlier in it (no draft model; the same tokens)
    prompt_lookup_max_ngram: int = _setting(c.int_at_least(1), 3, file=False)  # prompt lookup: the longest n-gram matched
    # -- how it runs
    static_cache: bool = _setting(c.boolean, True, file=False)  # preallocate the cache for the whole run, so its buffers never move
    max_len: int | None = _setting(c.int_at_least(1, optional=True), file=False)  # positions of that cache (default: prompt + max_new_tokens)
    compile: bool = _setting(c.boolean, False, flag="--compile", file=False)  # decode through one torch.compile'd step: faster per token where overhead dominates (small models, GPUs), after a one-off compilation of seconds to a minute; the same tokens
    return_scores: bool = _setting(c.boolean, False, file=False)  # return a GenerateOutput: sequences, each token's log-probability, sequence scores
    # -- where it came from (not settings)
    source: str | None = field(default=None, compare=False, repr=False)  # the file it was read from, named in errors
    extra: dict = field(default_factory=dict, compare=False, repr=False)  # a file's fields qkv does not use, kept
    from_file: tuple = field(default=(), compare=False, repr=False)  # the settings the file set (errors name it)

    def __post_init__(self):
        where = f"{self.source}: " if self.source else ""
        for f in _FIELDS:
            value = getattr(self, f.name)
            try:
                object.__setattr__(self, f.name, f.metadata["rule"](value))
            except c.Bad as e:
                raise ValueError(f"{where}{f.name} must be {e}, got {value!r}") from None
        problem = _combination_problem(self)
        if problem:
            raise ValueError(where + problem)

    # -- making one ------------------------------------------------------------------------------------------
    def replace(self, **changes) -> "GenerationConfig":
        """A copy with ``changes`` (field names), checked again; an error names the changes, not the file the
        rest came from. TypeError names an unknown setting."""
        unknown = sorted(set(changes) - set(SETTINGS))
        if unknown:
            raise TypeError(f"unknown decoding setting(s) {unknown}; known: {', '.join(SETTINGS)}")
        if not changes:
            return self
        new = dataclasses.replace(self, source=None, **changes)  # checked without the file's name
        object.__setattr__(new, "source", self.source)
        object.__setattr__(new, "from_file", tuple(n for n in self.from_file if n not in changes))
        return new

    def _where(self, name: str) -> str:
        """The file's name, before an error about a value that came from it."""
        return f"{self.source}: " if self.source and name in self.from_file else ""

    @classmethod
    def from_dict(cls, settings: dict, *, source: str | None = None) -> "GenerationConfig":
        """A config from transformers-style settings (a generation_config.json's object), read as transformers
        reads them: a missing or null field takes transformers' default (``top_k`` 50), ``top_k: 0`` is off;
        fields qkv does not use are kept in ``extra``; a setting qkv does not implement, set to change the output,
        is refused (decoding on without it would print something else than transformers does). How qkv runs a
        decode (static caches, compiling, scores, speculative rounds) is not read from a file: kept in ``extra``."""
        where = f"{source}: " if source else ""
        if not isinstance(settings, dict):
            raise ValueError(f"{where}expected an object of generation settings, got {type(settings).__name__}")
        used = sorted(k for k, neutral in UNSUPPORTED.items() if settings.get(k) not in (neutral, None))
        if used:
            raise ValueError(f"{where}sets {used}, which qkv's decoding does not implement; its output would "
                             f"differ from transformers'")
        values = {**TRANSFORMERS_DEFAULTS, **{k: v for k, v in settings.items() if k in FILE_SETTINGS and v is not None}}
        if c.is_int(values.get("top_k")) and values["top_k"] == 0:
            values["top_k"] = None  # transformers: 0 turns top-k off
        extra = {k: v for k, v in settings.items() if k not in FILE_SETTINGS and k not in UNSUPPORTED}
        return cls(**values, source=source, extra=extra, from_file=tuple(values))

    @classmethod
    def from_json(cls, path, *, what: str | None = None) -> "GenerationConfig":
        """A generation_config.json (``from_dict``'s rules); errors name the file (or ``what``)."""
        name = what or str(path)
        return cls.from_dict(read_json(path, what=name), source=name)

    @classmethod
    def from_folder(cls, folder) -> "GenerationConfig":
        """A Hugging Face folder's decoding settings, as transformers' ``generate`` reads them: its
        generation_config.json, else the generation fields of its config.json (older folders keep them there);
        ``from_dict``'s rules. A file that links outside the folder is refused."""
        folder = Path(folder)
        source = folder / "generation_config.json"
        if not source.is_file():
            source = folder / "config.json"
        settings = read_json(inside(folder, source, what=source.name), what=str(source))
        if source.name == "config.json" and isinstance(settings, dict):
            # its token ids are the model's own (the qkv config holds them): ``resolved`` takes them from the model,
            # where an id outside the vocabulary (a tiny GPT-2 config keeps 50256) never ends a sequence, as in
            # transformers, instead of refusing a folder that transformers decodes
            own = {"eos_token_id", "pad_token_id", "bos_token_id", "decoder_start_token_id"}
            settings = {k: v for k, v in settings.items() if (k in FILE_SETTINGS or k in UNSUPPORTED) and k not in own}
        return cls.from_dict(settings, source=str(source))

    def to_dict(self) -> dict:
        """The settings a file holds that differ from qkv's defaults, as JSON values (``from_dict`` reads them
        back; top_k written even when off, as 0, since a file without it means transformers' 50)."""
        default = GenerationConfig()
        out = {"top_k": 0} if self.top_k is None else {}
        for name in FILE_SETTINGS:
            value = getattr(self, name)
            if value != getattr(default, name):
                out[name] = [list(v) if isinstance(v, tuple) else v for v in value] if isinstance(value, tuple) \
                    else value
        return out

    # -- meeting a model ---------------------------------------------------------------------------------------
    def resolved(self, model, prompt_length: int, *, logits_processor=None) -> "Resolved":
        """Every default decided against ``model`` for a decoder prompt of ``prompt_length`` positions (the
        prompt, or an encoder-decoder's decoder-start token and prefix), the one place this happens:

        - eos_token_id unset: the model config's (none if it has none); pad_token_id unset: the model's padding id,
          else the first end-of-sequence id, else 0; decoder_start_token_id unset: the model's;
        - max_new_tokens unset: max_length minus the prompt, else 20 tokens within the model's max_positions
          (transformers' rule);
        - every token id checked against the vocabulary."""
        cfg = model.config
        V = cfg.vocab_size
        eos = self.eos_token_id if self.eos_token_id is not None else getattr(cfg, "eos_token_id", None)
        eos_ids = () if eos is None else (eos,) if c.is_int(eos) else tuple(eos)
        if self.eos_token_id is None:  # the model's own: an id outside its vocabulary (a preset's GPT-2 id on a
            eos_ids = tuple(e for e in eos_ids if c.is_int(e) and 0 <= e < V)  # small vocabulary) never comes
        pad = self.pad_token_id if self.pad_token_id is not None else getattr(cfg, "pad_token_id", None)
        if self.pad_token_id is None and not (c.is_int(pad) and 0 <= pad < V):
            pad = None  # the model's, outside its vocabulary: as if unset
        pad = pad if pad is not None else eos_ids[0] if eos_ids else 0
        start = self.decoder_start_token_id if self.decoder_start_token_id is not None else \
            getattr(cfg, "decoder_start_token_id", None)
        for name, ids in (("eos_token_id", eos_ids), ("pad_token_id", (pad,)), ("decoder_start_token_id",
                                                                                ((start,) if start is not None else ()))):
            bad = [t for t in ids if not c.is_int(t) or not 0 <= t < V]
            if bad:
                raise ValueError(f"{self._where(name)}{name} must hold token ids in [0, {V}) (the vocabulary), got "
                                 f"{bad[0]!r}")
        controls = make_controls(**{name: getattr(self, name) for name in RULES}, vocab_size=V, eos_ids=eos_ids,
                                 logits_processor=logits_processor, where=self._where)
        return Resolved(config=self, max_new_tokens=self._new_tokens(prompt_length, cfg), vocab_size=V,
                        eos=torch.tensor(eos_ids, dtype=torch.long) if eos_ids else None, eos_ids=eos_ids, pad=pad,
                        decoder_start=start, controls=controls, stop_strings=self.stop_strings or ())

    def _new_tokens(self, prompt: int, cfg) -> int:
        where = self._where("max_length")
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        if self.max_length is not None:
            if self.max_length <= prompt:
                raise ValueError(f"{where}max_length={self.max_length} leaves nothing to generate after a {prompt}-"
                                 f"token prompt; expected max_length > {prompt}, or set max_new_tokens")
            return self.max_length - prompt
        limit = getattr(cfg, "max_positions", None)
        total = min(prompt + DEFAULT_NEW_TOKENS, limit) if limit else prompt + DEFAULT_NEW_TOKENS
        if total <= prompt:
            raise ValueError(f"a {prompt}-token prompt fills the model's {limit} positions (max_positions): nothing "
                             f"left to generate")
        return total - prompt


def settings_fields() -> tuple:
    """The fields that are decoding settings (not ``source`` / ``extra``)."""
    return tuple(f for f in dataclasses.fields(GenerationConfig) if "rule" in f.metadata)


_FIELDS = settings_fields()
SETTINGS = tuple(f.name for f in _FIELDS)
FILE_SETTINGS = tuple(f.name for f in settings_fields() if f.metadata["file"])  # what a generation_config.json sets


def _combination_problem(g: GenerationConfig) -> str | None:
    """What is wrong with a combination of (individually valid) settings, or None."""
    if g.num_beams > 1 and g.num_return_sequences > g.num_beams:
        return (f"num_return_sequences must be <= num_beams ({g.num_beams}) in beam search, got "
                f"{g.num_return_sequences}")
    if g.num_beams == 1 and not g.do_sample and g.num_return_sequences > 1:
        return (f"num_return_sequences > 1 needs do_sample=True or num_beams > 1 (greedy decoding returns one "
                f"sequence per input), got {g.num_return_sequences}")
    if g.num_beams > 1 and g.do_sample:
        return f"do_sample=True is not supported with num_beams > 1 (got num_beams={g.num_beams}); use num_beams=1 to sample"
    if g.do_sample and g.temperature == 0:
        return f"temperature must be a number > 0 when sampling, got {g.temperature!r}"
    if g.num_beams > 1 and g.stop_strings:
        return f"stop_strings work with num_beams=1 only, got num_beams={g.num_beams}"
    if g.compile and not g.static_cache:
        return "compile=True needs static_cache=True: the compiled step writes a preallocated cache"
    return None


@dataclass(frozen=True)
class Resolved:
    """A config met with a model and a prompt (``GenerationConfig.resolved``): what a run reads. eos: (E,) ids
    that end a sequence, or None; controls: the logits controls (``qkv/decoding/controls.py``)."""
    config: GenerationConfig
    max_new_tokens: int
    vocab_size: int
    eos: torch.Tensor | None
    eos_ids: tuple
    pad: int
    decoder_start: int | None
    controls: LogitsControls
    stop_strings: tuple

    def __getattr__(self, name):  # the config's settings read through: resolved.num_beams, resolved.top_k, ...
        if name in SETTINGS:
            return getattr(object.__getattribute__(self, "config"), name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
