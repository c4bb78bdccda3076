"""Translation: teacher forcing on (source, BOS + target) -> logits vs target + EOS, batches of about
``max_tokens`` padded tokens, a byte-level BPE shared by both sides by default, and greedy BLEU at evaluations.

The text rules of a qkv translation model live here, once, for training, the commands, the demo and the explorer:
a source is the sentence's tokens then EOS (``source_ids``); a target is the start token then the sentence's tokens
(``decoder_input_ids``); a side holds ``max_positions - 1`` tokens (``sentence_room``: EOS or the start token takes
the last position); an output's text is its tokens without the start token and EOS (``output_text``). Sentences in,
translations out: ``translate`` (batched by length, ``qkv.decoding.generate_many``) with ``translation_config``.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterable

import torch
import torch.nn as nn

from .. import data as qd
from ..decoding import GenerationConfig, generate_many
from .batches import EndlessBatches, take
from .loss import TaskLoss
from .task import Footprint, Task

log = logging.getLogger("qkv.train")

TRANSLATION_DEFAULTS = GenerationConfig(max_new_tokens=60)  # ``translate``'s, and the translate command's base


# -- the text rules of a translation model -------------------------------------------------------------------------

def sentence_room(max_positions: int) -> int:
    """The tokens of a sentence a translation model of ``max_positions`` positions reads or writes: the source's EOS
    (the encoder's side) and the start token (the decoder's) take one position."""
    return max_positions - 1


def source_ids(tokenizer, text: str) -> list[int]:
    """The encoder's input for a sentence: its tokens, then EOS, as ``qkv.data.load_parallel`` trains it."""
    return end_source(tokenizer.encode(text), tokenizer.eos_id)


def end_source(ids: list[int], eos_id: int) -> list[int]:
    """A sentence's token ids as the encoder reads them: EOS after them."""
    return list(ids) + [eos_id]


def decoder_input_ids(tokenizer, text: str, start_id: int) -> list[int]:
    """The decoder's input for a target sentence under teacher forcing: the start token, then its tokens."""
    return [start_id] + tokenizer.encode(text)


def output_tokens(ids: Iterable[int], eos_id: int | None, start_id: int | None = None) -> list[int]:
    """An output's own tokens: ``ids`` without the decoder's start token and EOS."""
    return [t for t in ids if t != eos_id and (start_id is None or t != start_id)]


def output_text(tokenizer, ids: Iterable[int], start_id: int | None = None) -> str:
    """An output's text: its tokens without the start token and EOS, detokenized."""
    return tokenizer.decode(output_tokens(ids, tokenizer.eos_id, start_id))


def translation_config(model, tokenizer, config: GenerationConfig | None = None, **overrides) -> GenerationConfig:
    """A translation's settings: the tokenizer's end-of-sequence and padding ids, and max_new_tokens within the
    decoder's positions (``sentence_room``)."""
    config = (config or TRANSLATION_DEFAULTS).replace(**overrides)
    limit = getattr(model.config, "max_positions", None)
    wanted = config.max_new_tokens or TRANSLATION_DEFAULTS.max_new_tokens
    return config.replace(eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id,
                          max_new_tokens=min(wanted, sentence_room(limit)) if limit else wanted)


def translate(model, tokenizer, sentences: list[str], config: GenerationConfig | None = None, *,
              batch_size: int = 64, **overrides) -> list[str]:
    """Translate sentences (each ``source_ids``) with ``qkv.decoding.generate_many`` (greedy or beam search, 60 new
    tokens at most by default; ``config`` and ``overrides`` as ``generate``'s), at most ``batch_size`` per batch,
    returning their ``output_text`` in the sentences' order."""
    config = translation_config(model, tokenizer, config, **overrides)
    inputs = [source_ids(tokenizer, s) for s in sentences]
    answers = generate_many(model, inputs, config, tokens_per_batch=1 << 62, max_batch_size=batch_size)
    start = model.config.decoder_start_token_id
    return [output_text(tokenizer, a.tokens, start) for a in answers]


class Seq2SeqLoss(TaskLoss):
    def logits(self, batch):
        logits = self.model(batch.input_ids, batch.decoder_input_ids, attention_mask=batch.attention_mask,
                            decoder_attention_mask=batch.decoder_attention_mask)  # (B, T, V)
        return logits, batch.labels


class Translation(Task):
    """Vaswani et al. 2017, sec. 5.1 share one BPE vocabulary between the languages; byte-level, so every text
    encodes and decodes back exactly."""
    name = "seq2seq"
    loss = Seq2SeqLoss
    tokenizer = "bpe"
    sentences = True
    special_ids = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")
    row_batches = False  # max_tokens per micro-step, split over the processes by rows

    def check_paths(self, cfg):
        super().check_paths(cfg)
        if cfg.data_tgt is not None and cfg.val_data is not None and cfg.val_data_tgt is None:
            raise ValueError(f"val_data={cfg.val_data!r} (--val-data): the training data are two aligned files "
                             f"(--data, --data-tgt), so the validation data need their target side too: pass "
                             f"--val-data-tgt")

    def tokenizer_texts(self, cfg, kind):
        if cfg.data_tgt is not None:
            return [cfg.data, cfg.data_tgt]
        pairs = qd.read_pairs(cfg.data)  # a .tsv/.jsonl of pairs: both sides
        return iter([s + t for s, t in pairs] if kind == "char" else [t for pair in pairs for t in pair])

    def load(self, model_config, cfg, tokenizer):
        max_len = sentence_room(model_config.max_positions)  # room for the BOS / EOS the dataset adds
        # A tokenizer that encodes targets on their own side (a Hugging Face Marian / T5 / mBART folder) trains the
        # way transformers does: labels = encode_target(target), decoder input = decoder_start_token_id +
        # labels[:-1], or (mBART, whose labels carry the language) labels[-1] + labels[:-1].
        hf = callable(getattr(tokenizer, "encode_target", None))
        wrap = hf and bool(getattr(tokenizer, "decoder_starts_from_last_label", False))
        start = model_config.decoder_start_token_id if hf and not wrap else None
        if wrap:
            log.info("targets as transformers trains mBART: encode_target, the last label first")
        elif start is not None:
            log.info("targets as transformers trains them: encode_target, decoder_start_token_id=%d first", start)
        kw = dict(max_len=max_len, decoder_start_id=start, start_from_last_label=wrap)
        ds = qd.load_parallel(cfg.data, cfg.data_tgt, tokenizer, **kw)
        train = EndlessBatches(qd.ParallelBatches(ds, cfg.max_tokens, seed=cfg.seed))
        if not cfg.val_data:
            return train, None
        vds = qd.load_parallel(cfg.val_data, cfg.val_data_tgt, tokenizer, **kw)
        return train, lambda: take(iter(qd.ParallelBatches(vds, cfg.max_tokens, shuffle=False)), cfg.eval_steps)

    def footprint(self, model_config, cfg):
        return Footprint(cfg.max_tokens, f"max_tokens={cfg.max_tokens}", model_config.vocab_size, "vocab_size",
                         16 * cfg.max_tokens)

    def eval_callback(self, cfg, tokenizer, n: int = 200):
        """Greedy BLEU on the first ``n`` held-out pairs at every evaluation (when the run has aligned validation
        files)."""
        if not (cfg.val_data and cfg.val_data_tgt):
            return None
        pairs = qd.read_pairs(cfg.val_data, cfg.val_data_tgt)[:n]
        return bleu_callback([s for s, _ in pairs], [t for _, t in pairs],
                             lambda model, sources: translate(model, tokenizer, sources))


def bleu_callback(sources: list[str], references: list[str], translate: Callable[[nn.Module, list[str]], list[str]]):
    """An eval_callback scoring corpus BLEU (sacrebleu) of ``translate(model, sources)`` against ``references``.

    translate decodes (e.g. greedy or beam search with ``qkv.generate``) and detokenizes; it runs with the model
    in eval mode and without gradients. Without sacrebleu installed the callback reports nothing."""
    if len(sources) != len(references):
        raise ValueError(f"sources has {len(sources)} lines but references has {len(references)}")
    try:
        import sacrebleu
    except ImportError:
        log.warning("sacrebleu is not installed: no BLEU during training (pip install 'qkv[extras]')")
        return lambda model, step: {}

    def callback(model, step):
        was_training = model.training
        model.eval()
        with torch.no_grad():
            hyps = translate(model, sources)
        model.train(was_training)
        return {"val_bleu": sacrebleu.corpus_bleu(hyps, [references]).score}
    return callback
