"""Language modelling on a token stream: causal (GPT: predict the next token) and masked (BERT: predict the 15% of
tokens that were masked). Both read text files, tokenize them once (cached in the run folder) and draw random
windows of ``block_size`` tokens."""
from __future__ import annotations

from pathlib import Path

from ..data import load_lm_data
from .batches import LMBatches, MLMBatches, take
from .loss import TaskLoss
from .task import Footprint, Task


class CausalLMLoss(TaskLoss):
    def logits(self, batch):
        x, y = batch  # (B, T), (B, T): y[:, t] is the token after x[:, t]
        return self.model(x), y


class MaskedLMLoss(TaskLoss):
    def logits(self, batch):
        hidden = self.model(batch.input_ids, batch.attention_mask)  # (B, T, d)
        return self.model.mlm_logits(hidden), batch.labels


def _token_splits(model_config, cfg, tokenizer):
    block = cfg.block_size or model_config.max_positions
    if block > model_config.max_positions:
        raise ValueError(f"block_size={block} exceeds the model's max_positions={model_config.max_positions}")
    splits = load_lm_data(cfg.data, tokenizer, Path(cfg.out_dir) / "data", block_size=block,
                          val_files=cfg.val_data, val_fraction=cfg.val_fraction)
    return splits, block


class CausalLM(Task):
    """x (B, T) -> logits (B, T, V) vs the next tokens y (B, T). Characters by default (nanoGPT's vocabulary, no
    special tokens: the text is one flow)."""
    name = "lm"
    loss = CausalLMLoss
    tokenizer = "char"
    specials = False
    special_ids = ()  # a language model has no padding, and any text may start or end anywhere
    fixed_shapes = True  # (B, T) windows of block_size
    uses_block_size = True

    def load(self, model_config, cfg, tokenizer):
        splits, block = _token_splits(model_config, cfg, tokenizer)
        train = LMBatches(splits.train, block, cfg.batch_size, seed=cfg.seed)
        return train, lambda: take(LMBatches(splits.val, block, cfg.batch_size, seed=cfg.seed + 1), cfg.eval_steps)

    def footprint(self, model_config, cfg):
        block = cfg.block_size or model_config.max_positions
        return Footprint(cfg.batch_size * block, f"batch_size={cfg.batch_size} x block_size={block}",
                         model_config.vocab_size, "vocab_size", 16 * cfg.batch_size * block)  # ids, targets: int64


class MaskedLM(CausalLM):
    """BERT's 15% masked tokens (80% [MASK], 10% random, 10% kept) -> MLM-head logits vs the original ids."""
    name = "mlm"
    loss = MaskedLMLoss
    tokenizer_kinds = ("bpe", "char", "wordpiece")
    specials = True
    special_ids = ("pad_token_id", "bos_token_id", "eos_token_id")

    def load(self, model_config, cfg, tokenizer):
        splits, block = _token_splits(model_config, cfg, tokenizer)
        kw = dict(tokenizer=tokenizer, mlm_probability=cfg.mlm_probability)
        train = MLMBatches(splits.train, block, cfg.batch_size, seed=cfg.seed, **kw)
        return train, lambda: take(MLMBatches(splits.val, block, cfg.batch_size, seed=cfg.seed + 1, **kw),
                                   cfg.eval_steps)
