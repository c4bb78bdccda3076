"""Hugging Face folders built on the spot, the way the hub ships them, for peer-parity tests: SentencePiece models
trained here on generated text (no corpus copied), tokenizer files of each format (T5's spiece.model, Marian's
source.spm / target.spm + vocab.json, mBART / mBART-50's sentencepiece.bpe.model), and tiny random-weight models.
"""
from __future__ import annotations

import io
import json
import random
from pathlib import Path

_ONSETS = ["", "b", "c", "d", "f", "g", "l", "m", "n", "p", "r", "s", "t", "v", "ch", "tr", "pl", "br", "qu", "ñ"]
_VOWELS = ["a", "e", "i", "o", "u", "á", "é", "í", "ó", "ú", "ü", "ai", "ou", "ie"]
_CODAS = ["", "", "", "n", "s", "r", "l", "nd", "st"]
_PUNCT = [".", ",", "!", "?", ";", ":", "...", "¿", "¡", "(", ")", "-", "'", '"']


def _word(rng: random.Random) -> str:
    w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(rng.randint(1, 3)))
    return w.capitalize() if rng.random() < 0.15 else w


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """n lines of made-up words (accents, capitals, punctuation, digits), a few hundred bytes of vocabulary each."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [_word(rng) for _ in range(rng.randint(3, 12))]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 2000)))
        text = " ".join(words)
        if rng.random() < 0.5:
            text += rng.choice(_PUNCT[:4])
        lines.append(text)
    return lines


def train_spm(path: Path, *, vocab_size: int = 300, seed: int = 0, **ids) -> Path:
    """Train a unigram SentencePiece model on ``corpus(seed=seed)`` and write it to ``path``. ``ids``: pad_id,
    unk_id, bos_id, eos_id as SentencePieceTrainer takes them (-1: absent)."""
    import sentencepiece as spm
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus(seed=seed)), model_writer=model,
                                   vocab_size=vocab_size, model_type="unigram", character_coverage=1.0,
                                   minloglevel=2, num_threads=1, **ids)
    path.write_bytes(model.getvalue())
    return path


def _json(path: Path, data) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")


def t5_tokenizer_files(folder: Path, extra_ids: int = 5) -> Path:
    """spiece.model (<pad> 0, </s> 1, <unk> 2, no BOS) + tokenizer_config.json, as t5-small ships them."""
    folder.mkdir(parents=True, exist_ok=True)
    train_spm(folder / "spiece.model", pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    extra = [f"<extra_id_{i}>" for i in range(extra_ids)]
    _json(folder / "tokenizer_config.json", {"tokenizer_class": "T5Tokenizer", "extra_ids": extra_ids,
                                             "additional_special_tokens": extra, "eos_token": "</s>",
                                             "unk_token": "<unk>", "pad_token": "<pad>", "model_max_length": 512})
    _json(folder / "special_tokens_map.json", {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                                               "additional_special_tokens": extra})
    return folder


def marian_tokenizer_files(folder: Path) -> Path:
    """source.spm and target.spm (two models, trained on different text) and one shared vocab.json, </s> 0,
    <unk> 1, <pad> last, as the opus-mt folders ship them."""
    folder.mkdir(parents=True, exist_ok=True)
    src = train_spm(folder / "source.spm", vocab_size=250, seed=1, unk_id=1, eos_id=2, bos_id=-1, pad_id=-1)
    tgt = train_spm(folder / "target.spm", vocab_size=250, seed=2, unk_id=1, eos_id=2, bos_id=-1, pad_id=-1)
    import sentencepiece as spm
    vocab = {"</s>": 0, "<unk>": 1}
    for path in (src, tgt):
        sp = spm.SentencePieceProcessor(model_file=str(path))
        for i in range(sp.get_piece_size()):
            piece = sp.id_to_piece(i)
            if not sp.is_control(i) and not sp.is_unknown(i):
                vocab.setdefault(piece, len(vocab))
    for code in (">>es<<", ">>fr<<"):  # a multilingual model's target-language tokens
        vocab[code] = len(vocab)
    vocab["<pad>"] = len(vocab)
    _json(folder / "vocab.json", vocab)
    _json(folder / "tokenizer_config.json", {"tokenizer_class": "MarianTokenizer", "source_lang": "en",
                                             "target_lang": "es", "separate_vocabs": False, "eos_token": "</s>",
                                             "unk_token": "<unk>", "pad_token": "<pad>", "model_max_length": 512})
    _json(folder / "special_tokens_map.json", {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"})
    return folder


def mbart50_tokenizer_files(folder: Path, *, src_lang: str = "en_XX", tgt_lang: str = "es_XX") -> Path:
    """sentencepiece.bpe.model (SentencePiece's <unk> 0, <s> 1, </s> 2, shifted by fairseq to <s> 0, <pad> 1, </s> 2,
    <unk> 3) + tokenizer_config.json naming MBart50Tokenizer and the languages, as mbart-large-50 ships them."""
    folder.mkdir(parents=True, exist_ok=True)
    train_spm(folder / "sentencepiece.bpe.model", unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    _json(folder / "tokenizer_config.json", {"tokenizer_class": "MBart50Tokenizer", "src_lang": src_lang,
                                             "tgt_lang": tgt_lang, "model_max_length": 1024})
    return folder


def mbart_tokenizer_files(folder: Path, *, src_lang: str = "en_XX", tgt_lang: str = "ro_RO") -> Path:
    """The mBART-25 layout: the same model file, MBartTokenizer (language code after </s>)."""
    folder.mkdir(parents=True, exist_ok=True)
    train_spm(folder / "sentencepiece.bpe.model", unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    _json(folder / "tokenizer_config.json", {"tokenizer_class": "MBartTokenizer", "src_lang": src_lang,
                                             "tgt_lang": tgt_lang, "model_max_length": 1024})
    return folder


# Strings every format is tested on: the empty string and whitespace alone (space, runs, tabs, newlines, CR LF,
# no-break and zero-width spaces), leading / trailing / double spaces, accents composed (NFC) and decomposed (NFD),
# punctuation, characters the models never saw (CJK, emoji, symbols), compatibility characters NFKC rewrites,
# digits, capitals, very long words, and added tokens written in the text.
PROBES = ["", " ", "  ", "\t", "\n", "\r\n", " \t\n ", "hola", "Hola, ¿qué tal?", "la canción del niño",
          "la cancio\u0301n del nin\u0303o", "  two  spaces   here ", "tab\there", "\tleading tab", "a\tb\nc",
          "trailing space ", " leading", "trailing newline\n", "a  ", "naïve café — 3.5 €", "nai\u0308ve cafe\u0301",
          "日本語 text", "emoji 🙂 here", "🙂", "a🙂b", "ÀÉÎÕÜ ñ Ñ", "A\u0300E\u0301 n\u0303", "no\u00a0break\u00a0",
          "zero\u200bwidth", "a.b,c!d?e;f:g", "¿¡...!?", "(paréntesis) \"comillas\" 'simples'", "100 200 3000",
          "ß æ ø å œ", "x" * 40, "a" * 300, "superlargapalabrasinespaciosquenoterminanuncajamásdeveras" * 3,
          "new\nline", "ﬁ ligature ½ ①", "ｆｕｌｌ ｗｉｄｔｈ", "a </s> b", "<pad>x<unk>",
          "<extra_id_0> hueco <extra_id_3>", "en_XX hola es_XX", "una <mask> más", ">>es<< hola", ">>xx<< nada",
          "end with tab\t"]


# -- whole folders: tokenizer files + a tiny random transformers model + generation_config.json -------------------

def _randomize(model, std: float):
    """Every weight N(0, std), norms around 1: logits spread wide enough that no two tokens nearly tie."""
    import torch
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            p.copy_(noise + (1.0 if ("norm" in name or "layer_norm" in name) and p.dim() == 1 else 0.0))
        for name, b in model.named_buffers():
            if name == "final_logits_bias":
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
    return model.eval()


def _generation_config(folder: Path, **settings) -> None:
    _json(folder / "generation_config.json", {k: v for k, v in settings.items() if v is not None})


_SEQ2SEQ = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64, dropout=0.0)


def marian_folder(folder: Path) -> Path:
    """An opus-mt-shaped folder: Marian's tokenizer files, a random MarianMTModel, and opus-mt's generation
    settings (beam search, pad forbidden, EOS forced at the length limit, renormalised scores)."""
    import transformers
    marian_tokenizer_files(folder)
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    pad = vocab["<pad>"]
    config = transformers.MarianConfig(vocab_size=len(vocab), pad_token_id=pad, eos_token_id=0,
                                       decoder_start_token_id=pad, forced_eos_token_id=0, **_SEQ2SEQ)
    _randomize(transformers.MarianMTModel(config), 0.6).save_pretrained(folder)  # 0.3: every source, one output
    _generation_config(folder, bad_words_ids=[[pad]], bos_token_id=0, decoder_start_token_id=pad, eos_token_id=0,
                       forced_eos_token_id=0, max_length=24, num_beams=4, pad_token_id=pad, renormalize_logits=True)
    return folder


def t5_folder(folder: Path) -> Path:
    """A t5-small-shaped folder: spiece.model, a random T5ForConditionalGeneration, T5's generation settings."""
    import transformers
    t5_tokenizer_files(folder)
    size = len(transformers.AutoTokenizer.from_pretrained(folder))
    config = transformers.T5Config(vocab_size=size, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4,
                                   dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    _randomize(transformers.T5ForConditionalGeneration(config), 0.3).save_pretrained(folder)
    _generation_config(folder, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
    return folder


def mbart_folder(folder: Path) -> Path:
    """An mbart-large-cc25-shaped folder (mBART-25: the language code after </s>), the model as mbart50_folder's."""
    mbart_tokenizer_files(folder)
    return mbart50_folder(folder, tokenizer_files=False)


def mbart50_folder(folder: Path, *, tokenizer_files: bool = True) -> Path:
    """An mbart-large-50-many-to-many-mmt-shaped folder: sentencepiece.bpe.model, a random MBart model and its
    generation settings (beams, early stopping, EOS forced at the limit); the target language comes at run time."""
    import transformers
    if tokenizer_files:
        mbart50_tokenizer_files(folder)
    size = len(transformers.AutoTokenizer.from_pretrained(folder))
    config = transformers.MBartConfig(vocab_size=size, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                      decoder_start_token_id=2, forced_eos_token_id=2, scale_embedding=True,
                                      **_SEQ2SEQ)
    _randomize(transformers.MBartForConditionalGeneration(config), 0.3).save_pretrained(folder)
    _generation_config(folder, bos_token_id=0, decoder_start_token_id=2, eos_token_id=2, forced_eos_token_id=2,
                       pad_token_id=1, max_length=20, num_beams=3, early_stopping=True)
    return folder


def _byte_bpe(folder: Path, *, specials: list[str], bos: str | None, eos: str, vocab_size: int = 400) -> int:
    """A byte-level BPE tokenizer.json (GPT-2's scheme) trained on generated text, with a BOS template when
    ``bos`` is given (Llama 3), and its tokenizer_config.json. Returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus(seed=3), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                                show_progress=False))
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    _json(folder / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos,
                                             **({"bos_token": bos} if bos else {}), "model_max_length": 64})
    return tok.get_vocab_size()


_DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64)


def gpt2_folder(folder: Path, positions: int = 64) -> Path:
    import transformers
    size = _byte_bpe(folder, specials=["<|endoftext|>"], bos=None, eos="<|endoftext|>")
    config = transformers.GPT2Config(vocab_size=size, n_positions=positions, n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
                                     eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    _randomize(transformers.GPT2LMHeadModel(config), 0.3).save_pretrained(folder)
    return folder


def llama3_folder(folder: Path, positions: int = 64) -> Path:
    """Llama 3.1/3.2's shape: a BOS template, llama3 RoPE scaling, tied embeddings (3.2)."""
    import transformers
    size = _byte_bpe(folder, specials=["<|begin_of_text|>", "<|end_of_text|>"], bos="<|begin_of_text|>",
                     eos="<|end_of_text|>")
    config = transformers.LlamaConfig(vocab_size=size, bos_token_id=0, eos_token_id=1, tie_word_embeddings=True,
                                      rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8,
                                                       "rope_theta": 500000.0},
                                      **{**_DECODER, "max_position_embeddings": positions})
    _randomize(transformers.LlamaForCausalLM(config), 0.3).save_pretrained(folder)
    return folder


def qwen3_folder(folder: Path, positions: int = 64) -> Path:
    import transformers
    size = _byte_bpe(folder, specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], bos=None, eos="<|endoftext|>")
    config = transformers.Qwen3Config(vocab_size=size, eos_token_id=0, head_dim=8, tie_word_embeddings=True,
                                      **{**_DECODER, "max_position_embeddings": positions})
    _randomize(transformers.Qwen3ForCausalLM(config), 0.3).save_pretrained(folder)
    return folder


def bert_tokenizer_files(folder: Path) -> int:
    """A BERT-style WordPiece tokenizer trained on generated text: tokenizer.json ([CLS] text [SEP]), vocab.txt and
    tokenizer_config.json, as bert-base-uncased ships them. Returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(corpus(seed=4), trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials,
                                                                      show_progress=False))
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                   ("[CLS]", tok.token_to_id("[CLS]")))
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    vocab = tok.get_vocab()
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in sorted(vocab, key=vocab.get)), encoding="utf-8")
    _json(folder / "tokenizer_config.json", {"tokenizer_class": "BertTokenizer", "do_lower_case": True,
                                             "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                                             "cls_token": "[CLS]", "mask_token": "[MASK]", "model_max_length": 64})
    return tok.get_vocab_size()


def bert_folder(folder: Path, architecture: str = "BertModel") -> Path:
    """A bert-base-shaped folder: WordPiece tokenizer files and a random model of ``architecture`` (BertModel
    holds a pooler; BertForPreTraining a pooler and the next-sentence head too)."""
    import transformers
    size = bert_tokenizer_files(folder)
    config = transformers.BertConfig(vocab_size=size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=64, pad_token_id=0)
    _randomize(getattr(transformers, architecture)(config), 0.3).save_pretrained(folder)
    return folder


def mistral_folder(folder: Path) -> Path:
    """Mistral's shape: a sliding window narrower than the positions, untied embeddings."""
    import transformers
    size = _byte_bpe(folder, specials=["<s>", "</s>"], bos="<s>", eos="</s>")
    config = transformers.MistralConfig(vocab_size=size, bos_token_id=0, eos_token_id=1, sliding_window=8,
                                        tie_word_embeddings=False, **_DECODER)
    _randomize(transformers.MistralForCausalLM(config), 0.3).save_pretrained(folder)
    return folder


def vit_folder(folder: Path) -> Path:
    """A ViT image classifier with its image processor's preprocessor_config.json."""
    import transformers
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                                    image_size=16, patch_size=4, num_labels=5)
    _randomize(transformers.ViTForImageClassification(config), 0.3).save_pretrained(folder)
    _json(folder / "preprocessor_config.json", {"image_processor_type": "ViTImageProcessor", "do_resize": True,
                                                "size": {"height": 16, "width": 16}, "do_normalize": True,
                                                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                                                "do_rescale": True, "rescale_factor": 1 / 255, "resample": 2})
    return folder
