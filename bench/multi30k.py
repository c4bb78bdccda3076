"""The original Transformer on Multi30k German -> English, scored by BLEU on test_2016_flickr.

Claim (issue 4): a from-scratch Transformer trained by qkv reaches the BLEU that published small from-scratch
models reach on this set (about 35-36), and >= 38 on a GPU in under 10 minutes of training. On a CPU the
script runs a smaller model for a time budget and reports what it reaches, honestly labelled.

    python bench/multi30k.py                          # CPU: d_model 256, 3+3 layers, --minutes 8
    python bench/multi30k.py --device cuda --preset transformer-base --minutes 10 --precision bf16
    python bench/multi30k.py --rnn rnnsearch-50 --minutes 8     # and RNNsearch (Bahdanau attention) beside it

It trains a shared byte-level BPE vocabulary on both sides (so source, target and output share one embedding,
Vaswani et al. 2017, sec. 3.4), trains with label smoothing 0.1 and the inverse-square-root schedule, then
decodes the test set with beam search (4 beams) and prints sacreBLEU's corpus BLEU.

With ``--rnn PRESET`` (rnnsearch-50, luong-global, luong-local-p) the recurrent encoder-decoder with attention
(issue 24) trains next to it on the same data, tokenizer, schedule and budget (the same --minutes, its own probe,
or the same --max-steps), at CPU sizes on a CPU (--rnn-d-model), and is scored the same way. ``--rnn-only`` skips
the Transformer (to set the RNN beside a Transformer row recorded earlier with the same budget).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import qkv  # noqa: E402
from qkv.config import TrainConfig  # noqa: E402
from qkv.data import train_bpe  # noqa: E402
from qkv.demo import bleu  # noqa: E402
from qkv.tasks.seq2seq import translate  # noqa: E402
from qkv.train import train  # noqa: E402

_HERE = Path(__file__).resolve()
DEFAULT_DATA = next((p / "shared/data/multi30k" for p in _HERE.parents[1:4] if (p / "shared/data/multi30k").is_dir()),
                    _HERE.parents[2] / "shared/data/multi30k")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder with {train,val,test_2016_flickr}.{de,en}")
    p.add_argument("--src", default="de"), p.add_argument("--tgt", default="en")
    p.add_argument("--preset", default="transformer-base", help="model preset; sizes below override it on CPU")
    p.add_argument("--d-model", type=int), p.add_argument("--layers", type=int), p.add_argument("--heads", type=int)
    p.add_argument("--vocab", type=int, default=8000, help="shared BPE vocabulary size")
    p.add_argument("--minutes", type=float, default=8.0, help="training time budget; sets max steps from a probe")
    p.add_argument("--max-steps", type=int, help="train this many steps instead of a time budget")
    p.add_argument("--max-tokens", type=int, default=4096, help="padded tokens per step")
    p.add_argument("--beams", type=int, default=4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/bench-multi30k")
    p.add_argument("--rnn", metavar="PRESET", help="also train this recurrent preset with attention (rnnsearch-50, "
                   "luong-global, luong-local-p) with the same budget")
    p.add_argument("--rnn-d-model", type=int, help="its state size (default 256 on CPU, the preset's elsewhere)")
    p.add_argument("--rnn-only", action="store_true", help="train and score only the --rnn preset, no Transformer")
    args = p.parse_args(argv)
    if args.rnn_only and not args.rnn:
        p.error("--rnn-only needs --rnn PRESET")
    data = Path(args.data)
    files = {s: (data / f"{s}.{args.src}", data / f"{s}.{args.tgt}") for s in ("train", "val", "test_2016_flickr")}
    missing = [str(f) for pair in files.values() for f in pair if not f.is_file()]
    if missing:
        print(f"skipped: Multi30k not found ({', '.join(missing[:2])} ...); pass --data")
        return 0
    torch.set_num_threads(args.threads)
    tok = train_bpe([*files["train"]], vocab_size=args.vocab)
    common = dict(data=str(files["train"][0]), data_tgt=str(files["train"][1]), val_data=str(files["val"][0]),
                  val_data_tgt=str(files["val"][1]), max_tokens=args.max_tokens, lr=1e-3, warmup_steps=400,
                  schedule="inverse_sqrt", label_smoothing=0.1, weight_decay=0.0, betas=(0.9, 0.98),
                  precision=args.precision, device=args.device, progress=True, eval_steps=10, log_every=25)
    sources = files["test_2016_flickr"][0].read_text(encoding="utf-8").splitlines()
    refs = files["test_2016_flickr"][1].read_text(encoding="utf-8").splitlines()
    result, hyps, rnn_hyps = dict(device=args.device, test_sentences=len(refs), beams=args.beams), None, None
    if not args.rnn_only:
        transformer, hyps = train_transformer(args, tok, common, sources, refs)
        result.update(transformer)
    if args.rnn:  # the recurrent model with attention, same data, tokenizer, schedule and budget
        result["rnn"], rnn_hyps = train_rnn(args, tok, common, sources, refs)
    print(json.dumps(result, indent=1))
    for i, (s, r) in enumerate(list(zip(sources, refs))[:3]):
        print(f"  {s}\n    reference: {r}" + (f"\n    qkv:       {hyps[i]}" if hyps else "")
              + (f"\n    {args.rnn}: {rnn_hyps[i]}" if rnn_hyps else ""))
    print("command: python bench/multi30k.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    (Path(args.out) / "result.json").write_text(json.dumps(result, indent=1))
    return 0


def train_transformer(args, tok, common: dict, sources: list[str], refs: list[str]) -> tuple[dict, list[str]]:
    """The Transformer at CPU sizes on a CPU, for --minutes (from a 20-step probe) or --max-steps; returns (its
    result, its translations of the test sources)."""
    cpu = args.device == "cpu"
    sizes = dict(d_model=args.d_model or (256 if cpu else 512), n_layers=args.layers or (3 if cpu else 6),
                 n_heads=args.heads or (4 if cpu else 8))
    sizes["d_ff"] = 4 * sizes["d_model"] if cpu else 2048
    config = qkv.preset(args.preset, **sizes, vocab_size=tok.vocab_size, max_positions=128, pad_token_id=tok.pad_id,
                        bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, decoder_start_token_id=tok.bos_id,
                        prenorm=True)
    model, result, hyps = train_and_score(config, "run", args, tok, common, sources, refs)
    return dict(model=sizes, **result), hyps


def train_rnn(args, tok, common: dict, sources: list[str], refs: list[str]) -> tuple[dict, list[str]]:
    """--rnn: the recurrent preset at CPU sizes on a CPU, trained and scored as the Transformer was; returns (its
    result, its translations of the test sources)."""
    n = args.rnn_d_model or (256 if args.device == "cpu" else None)
    sizes = {} if n is None else dict(d_model=n, rnn_embed_dim=n, d_ff=n)  # RNNsearch's maxout: 2l = d_model
    config = qkv.preset(args.rnn, **sizes, vocab_size=tok.vocab_size, max_positions=128, pad_token_id=tok.pad_id,
                        bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, decoder_start_token_id=tok.bos_id,
                        dropout=0.2)
    model, result, hyps = train_and_score(config, "rnn", args, tok, common, sources, refs)
    return dict(preset=args.rnn, stack=model.stack(), **result), hyps


def train_and_score(config, name: str, args, tok, common: dict, sources: list[str], refs: list[str]):
    """Train ``config`` into OUT/name for --max-steps, or for --minutes from a 20-step probe of its own (so every
    model gets the same time), then decode the test sources with beam search and score them. Returns (the model,
    its numbers, its translations)."""
    steps = args.max_steps
    if steps is None:  # a short probe measures the step time, then the budget sets the step count
        probe = train(config, TrainConfig(**{**common, "progress": False}, out_dir=f"{args.out}/{name}-probe",
                                          max_steps=20, eval_every=0), tokenizer=tok)
        per_step = probe.wall_s / probe.steps
        steps = max(50, int(args.minutes * 60 / per_step))
        print(f"probe: {per_step:.2f} s/step -> {steps} steps for {args.minutes} minutes ({config.family})")
    out = Path(args.out) / name
    summary = train(config, TrainConfig(**common, out_dir=str(out), max_steps=steps, eval_every=max(steps // 4, 1),
                                        resume=(out / "latest").is_file()), tokenizer=tok)
    model = qkv.load(summary.checkpoint).to(args.device).eval()
    started = time.time()
    hyps = translate(model.cpu() if args.device == "cpu" else model, tok, sources, num_beams=args.beams,
                     max_new_tokens=80)
    score = bleu(hyps, refs)
    return model, dict(params=model.num_parameters(), steps=summary.steps, train_minutes=round(summary.wall_s / 60, 2),
                       val_loss=summary.val_loss, bleu=None if score is None else round(score, 2),
                       decode_s=round(time.time() - started, 1)), hyps


if __name__ == "__main__":
    sys.exit(main())
