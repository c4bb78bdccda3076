"""Translation: teacher forcing on (source, BOS + target) -> logits vs target + EOS, batches of about
``max_tokens`` padded tokens, a byte-level BPE shared by both sides by default, and greedy BLEU at evaluations."""
from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn as nn

from .batches import EndlessBatches, take
from .loss import TaskLoss
from .task import Footprint, Task

log = logging.getLogger("qkv.train")


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
        from ..data import read_pairs
        if cfg.data_tgt is not None:
            return [cfg.data, cfg.data_tgt]
        pairs = read_pairs(cfg.data)  # a .tsv/.jsonl of pairs: both sides
        return iter([s + t for s, t in pairs] if kind == "char" else [t for pair in pairs for t in pair])

    def load(self, model_config, cfg, tokenizer):
        from .. import data as qd
        max_len = model_config.max_positions - 1  # room for the BOS / EOS the dataset adds
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
        from ..data import read_pairs
        from ..decoding import translate
        pairs = read_pairs(cfg.val_data, cfg.val_data_tgt)[:n]
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
