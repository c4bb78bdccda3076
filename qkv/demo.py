"""The main job (`make demo`, `qkv demo`): watch a Transformer learn to translate, then see where it attends.

1. data: English -> Spanish numbers, dates and short phrases from qkv's own rule-based generator
   (``qkv.data.demo_task``), held-out sentences never seen in training; or the user's aligned files.
2. a word-level tokenizer (WordPiece) shared by both languages, so one embedding table serves source, target
   and output, as in the original Transformer (Vaswani et al. 2017, sec. 3.4).
3. a small post-norm encoder-decoder trained with teacher forcing and label smoothing (``qkv.train``).
4. held-out translations by greedy and beam search beside the references, exact match and BLEU.
5. into the output folder: checkpoint, loss curve, cross-attention heatmaps, and the HTML explorer.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger("qkv.demo")

# A model that learns the task in under three minutes on 2 CPU cores (docs/benchmarks.md has what it reaches).
# Pre-norm: with the original post-norm blocks the same budget (700 steps, lr 2e-3 to 3e-3) did not get past
# ignoring the source, while pre-norm learned it; post-norm needs a long warmup to train stably (Xiong et al.
# 2020, "On Layer Normalization in the Transformer Architecture"). No dropout: 20k generated pairs, ~4 epochs.
DEMO_MODEL = dict(d_model=128, n_layers=2, n_heads=4, d_ff=256, max_positions=64, dropout=0.0, prenorm=True)
DEMO_TRAIN = dict(max_steps=1200, max_tokens=1500, lr=2e-3, min_lr=1e-4, warmup_steps=100, schedule="cosine",
                  label_smoothing=0.1, weight_decay=0.01, betas=(0.9, 0.98), eval_every=600, eval_steps=5,
                  log_every=20, keep_last=1)


@dataclass
class DemoResult:
    """What the demo measured on the held-out test sentences, and where it wrote its files."""
    exact_greedy: float
    exact_beam: float
    bleu_greedy: float | None
    bleu_beam: float | None
    n_test: int
    train_seconds: float
    out_dir: str


def _read_lines(path) -> list[str]:
    return [line.rstrip("\n") for line in Path(path).read_text(encoding="utf-8").splitlines()]


def _bleu(hyps, refs):
    try:
        import sacrebleu
    except ImportError:
        return None
    return sacrebleu.corpus_bleu(hyps, [refs]).score


def attention_maps(model, tokenizer, source: str, target: str):
    """The three kinds of attention of one sentence pair under teacher forcing: encoder self-attention, decoder
    masked self-attention and cross-attention, as ``qkv.viz.AttentionMaps`` with token labels."""
    from .viz import AttentionMaps
    src_ids = tokenizer.encode(source) + [tokenizer.eos_id]
    tgt_ids = [model.config.decoder_start_token_id] + tokenizer.encode(target)
    src_tokens = tokenizer.tokens(source) + ["</s>"]
    tgt_tokens = ["<s>"] + tokenizer.tokens(target)
    with torch.no_grad():
        _, w = model(torch.tensor([src_ids]), torch.tensor([tgt_ids]), return_weights=True)
    return [AttentionMaps.from_batch("self", w.encoder_self, src_tokens, src_tokens),
            AttentionMaps.from_batch("masked", w.decoder_self, tgt_tokens, tgt_tokens),
            AttentionMaps.from_batch("cross", w.cross, tgt_tokens, src_tokens)]


def run_demo(out_dir="runs/demo", *, src=None, tgt=None, val_src=None, val_tgt=None, test_src=None, test_tgt=None,
             max_steps: int | None = None, n_train: int = 20000, n_test: int = 500, seed: int = 0, show: int = 10,
             progress: bool = True, echo=print) -> DemoResult:
    """Run the whole demo; ``echo`` prints the report (the CLI passes print). Returns the measured DemoResult."""
    from . import data as qd
    from .models.build import load
    from .generate import translate
    from .presets import preset
    from .config import TrainConfig
    from .train import train
    from . import viz

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (src is None) != (tgt is None):
        raise ValueError("give both --src and --tgt (aligned files), or neither for the built-in task")
    if src is None:
        echo(f"generating the English -> Spanish task into {out / 'data'} ({n_train} training pairs)")
        files = qd.make_demo_data(out / "data", train=n_train, val=n_test, test=n_test, seed=seed)
        (src, tgt), (val_src, val_tgt), (test_src, test_tgt) = files["train"], files["val"], files["test"]
    test_src, test_tgt = test_src or val_src, test_tgt or val_tgt

    tokenizer = qd.train_wordpiece([src, tgt], vocab_size=2000, lowercase=True, min_frequency=1)
    config = preset("transformer-tiny", **DEMO_MODEL, vocab_size=tokenizer.vocab_size,
                    pad_token_id=tokenizer.pad_id, bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                    decoder_start_token_id=tokenizer.bos_id)
    train_config = TrainConfig(**{**DEMO_TRAIN, **({"max_steps": max_steps} if max_steps else {})},
                               data=str(src), data_tgt=str(tgt), val_data=val_src and str(val_src),
                               val_data_tgt=val_tgt and str(val_tgt), out_dir=str(out / "train"), seed=seed,
                               progress=progress, resume=(out / "train" / "latest").is_file())
    echo(f"training a {config.n_layers}+{config.n_layers}-layer Transformer (d_model {config.d_model}, "
         f"vocabulary {tokenizer.vocab_size}) for {train_config.max_steps} steps")
    started = time.time()
    summary = train(config, train_config, tokenizer=tokenizer)
    train_seconds = time.time() - started
    model = load(summary.checkpoint).eval()

    sources, references = _read_lines(test_src), _read_lines(test_tgt)
    greedy = translate(model, tokenizer, sources)
    beam = translate(model, tokenizer, sources, num_beams=4)
    exact = lambda hyps: sum(h == r for h, r in zip(hyps, references)) / max(len(references), 1)  # noqa: E731
    result = DemoResult(exact(greedy), exact(beam), _bleu(greedy, references), _bleu(beam, references),
                        len(references), train_seconds, str(out))

    echo("\nheld-out sentences (never seen in training):")
    for s, r, g, b in list(zip(sources, references, greedy, beam))[:show]:
        echo(f"  {s}\n    reference: {r}\n    greedy:    {g}{'' if g == r else '   (x)'}\n"
             f"    beam 4:    {b}{'' if b == r else '   (x)'}")
    fmt = lambda x: "n/a (sacrebleu not installed)" if x is None else f"{x:.1f}"  # noqa: E731
    echo(f"\non {result.n_test} held-out sentences: exact match greedy {100 * result.exact_greedy:.1f}%, "
         f"beam {100 * result.exact_beam:.1f}%; BLEU greedy {fmt(result.bleu_greedy)}, beam {fmt(result.bleu_beam)}")

    # where it attends: one held-out pair with a clear word alignment
    pick = max(range(min(len(sources), 50)), key=lambda i: len(sources[i].split()) if greedy[i] == references[i] else 0)
    maps = attention_maps(model, tokenizer, sources[pick], references[pick])
    cross = maps[2]
    viz.plot_alignment(cross.mean_heads(-1), cross.queries, cross.keys, out / "cross_attention.png",
                       title="cross-attention (last layer, mean of heads)")
    viz.plot_attention(cross, out / "cross_attention_heads.png", title="cross-attention, every layer and head")
    viz.explorer_html(maps, out / "explorer.html", title=f"qkv demo: {sources[pick]}")
    curve = Path(train_config.out_dir) / "loss.png"
    (out / "results.json").write_text(json.dumps(result.__dict__, indent=2))
    echo(f"\nwrote {out}/: train/ (checkpoints, metrics.jsonl, {curve.name}), cross_attention.png, "
         f"cross_attention_heads.png, explorer.html, results.json  ({train_seconds:.0f} s of training)")
    return result
