"""Data for every family: tokenizers, language-model windows, translation pairs, masked-LM batches, images,
and the demo's English -> Spanish task."""
from qkv.data._files import read_lines, read_text
from qkv.data.demo_task import (english_number, generate_pairs, generate_splits, make_demo_data, spanish_number,
                                split_of, write_pairs, write_splits)
from qkv.data.images import ArrayImages, ImageFolder
from qkv.data.mlm import MLMBatch, MLMCollator, mask_tokens
from qkv.data.parallel import (IGNORE_INDEX, ParallelBatches, ParallelDataset, TokenBucketSampler, TranslationBatch,
                               collate_pairs, load_parallel, read_pairs)
from qkv.data.text import LMSplits, WindowSampler, load_lm_data, token_dtype, tokenize_files
from qkv.data.tokenizer import (ROLES, SPECIALS, CharTokenizer, HFTokenizer, SpecialTokens, Tokenizer, train_bpe,
                                train_wordpiece)
# After the base class: Tokenizer.load finds this kind among its subclasses (qkv.data.tokenizer.tokenizer_kinds)
from qkv.data.sentencepiece import SentencePieceTokenizer

__all__ = [
    "read_text", "read_lines",
    "Tokenizer", "CharTokenizer", "HFTokenizer", "SentencePieceTokenizer", "SpecialTokens", "SPECIALS", "ROLES", "train_bpe", "train_wordpiece",
    "tokenize_files", "load_lm_data", "LMSplits", "WindowSampler", "token_dtype",
    "read_pairs", "load_parallel", "ParallelDataset", "ParallelBatches", "TokenBucketSampler", "TranslationBatch",
    "collate_pairs", "IGNORE_INDEX",
    "MLMCollator", "MLMBatch", "mask_tokens",
    "ImageFolder", "ArrayImages",
    "generate_pairs", "generate_splits", "split_of", "write_pairs", "write_splits", "make_demo_data",
    "english_number", "spanish_number",
]
