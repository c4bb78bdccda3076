"""The bottleneck, measured: an RNN encoder-decoder without attention against the same RNN with Bahdanau's, Luong's
global and Luong's local-p attention, and a Transformer of about the same size, on the same data; exact match
against source length, as Bahdanau et al. 2015 plot BLEU against sentence length (their fig. 2).

Claim (issue 24): without attention the decoder sees the source only through one fixed vector, and its accuracy
falls as sources grow; with attention it reads every source position at every step, and it does not fall.

The task is generated (``qkv/data/alignment_task.py``): strings of letters, 1 to 64 by default, each adjacent pair
swapped ("abcde" -> "badce"). The training sources have harmonic lengths (every length as many letters, so that the
fixed-vector RNN, which can hold only short sources, gets enough of them to start learning; with lengths drawn
uniformly it stays at chance at every length, --lengths uniform); the held-out sources have uniform lengths, every
length as many pairs. One letter is one token, so a source of n letters is n + 1 tokens with its EOS; the
true alignment is known, so each attention model's argmax alignment accuracy is reported too (Transformer: its
last layer's cross-attention, mean of heads). Every model trains through ``qkv.train.train`` (the seq2seq task:
teacher forcing, label smoothing, checkpoints) for the same time budget (``--minutes``, from a 20-step probe) or
the same step count (``--steps``), then greedy-decodes the held-out test set with ``qkv.generate``.

    python bench/rnn_attention.py --steps 8000               # CPU: five models, 8000 steps each (docs/benchmarks.md)
    python bench/rnn_attention.py --minutes 5                 # or the same wall-clock budget each (a quiet machine)
    python bench/rnn_attention.py --quick                     # a smoke run: tiny models, short sources, seconds

Writes OUT/result.json and the figure (default docs/figures/rnn_attention_length.png), prints the table and the
command that reproduces it.
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
from qkv.checkpoint import latest_checkpoint  # noqa: E402
from qkv.config import TrainConfig  # noqa: E402
from qkv.data import CharTokenizer  # noqa: E402
from qkv.data.alignment_task import LENGTHS, LETTERS, alignment_accuracy, make_pairs  # noqa: E402
from qkv.tasks.seq2seq import translate  # noqa: E402
from qkv.train import train  # noqa: E402

VARIANTS = ("none", "bahdanau", "global", "local_p", "transformer")
LABELS = {"none": "RNN, no attention", "bahdanau": "RNN + Bahdanau", "global": "RNN + Luong global (general)",
          "local_p": "RNN + Luong local-p (general)", "local_m": "RNN + Luong local-m (general)",
          "transformer": "Transformer"}
FIGURE = Path(__file__).resolve().parents[1] / "docs" / "figures" / "rnn_attention_length.png"


def model_config(variant: str, tok, args):
    """The variant's config: the RNNs share one bidirectional encoder of d_model units per direction (LSTM by
    default: on this task it finds the alignment in fewer steps than a GRU)."""
    special = dict(vocab_size=tok.vocab_size, pad_token_id=tok.pad_id, bos_token_id=tok.bos_id,
                   eos_token_id=tok.eos_id, decoder_start_token_id=tok.bos_id, max_positions=args.max_len + 8)
    if variant == "transformer":
        return qkv.preset("transformer-tiny", d_model=args.tf_d_model, n_heads=4, d_ff=2 * args.tf_d_model,
                          n_layers=args.tf_layers, prenorm=True, **special)  # pre-norm: stable at a high lr
    fields = dict(rnn_cell=args.cell, rnn_bidirectional="encoder", d_model=args.d_model, rnn_embed_dim=args.embed,
                  n_layers=1, rnn_attention=variant, **special)
    if variant == "bahdanau":
        return qkv.preset("rnnsearch-tiny", **fields, d_ff=args.d_model)
    score = {"none": "dot"}.get(variant, "bilinear")  # Luong's "general": the state (N) against annotations (2N)
    window = {"rnn_local_window": args.window} if variant.startswith("local") else {}
    return qkv.preset("luong-tiny", **fields, score=score, **window)


def write_data(out: Path, args) -> dict[str, Path]:
    """train / val / test .tsv files of (source, target) pairs, disjoint seeds; the test set's lengths uniform."""
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, n, seed, lengths in (("train", args.train, args.seed, args.lengths),
                                    ("val", 200, args.seed + 1, args.lengths),
                                    ("test", args.test, args.seed + 2, "uniform")):
        pairs = make_pairs(n, rule=args.rule, min_len=args.min_len, max_len=args.max_len, lengths=lengths, seed=seed)
        files[split] = out / f"{split}.tsv"
        files[split].write_text("".join(f"{s}\t{t}\n" for s, t in pairs))
    return files


def train_one(variant: str, config, tok, files, args):
    lr = args.tf_lr if variant == "transformer" else args.lr
    common = dict(data=str(files["train"]), val_data=str(files["val"]), max_tokens=args.max_tokens, lr=lr,
                  min_lr=lr / 10, warmup_steps=50, label_smoothing=0.1, weight_decay=0.0,
                  device=args.device, progress=not args.quick, eval_steps=5, log_every=25, precision="fp32",
                  seed=args.seed, overwrite=True)
    quiet = lambda model, step: {}  # noqa: E731  (the bench scores the test set itself, after training)
    steps = args.steps
    if steps is None:  # a short probe measures the step time, then the budget sets the step count
        probe = train(config, TrainConfig(**{**common, "progress": False}, out_dir=f"{args.out}/{variant}-probe",
                                          max_steps=20, eval_every=0), tokenizer=tok, eval_callback=quiet)
        steps = max(50, int(args.minutes * 60 * probe.steps / probe.wall_s))
    summary = train(config, TrainConfig(**common, out_dir=f"{args.out}/{variant}", max_steps=steps,
                                        eval_every=steps if args.quick else max(steps // 4, 1)),
                    tokenizer=tok, eval_callback=quiet)
    return summary


def run_info(run: Path) -> dict:
    """steps, train_minutes and val_loss of a finished run: its bench.json, else its metrics.jsonl's last record."""
    if (run / "bench.json").is_file():
        return json.loads((run / "bench.json").read_text())
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    return dict(steps=last["step"], train_minutes=round(last["elapsed_s"] / 60, 2), val_loss=last.get("val_loss"))


def evaluate(model, tok, pairs, args):
    """Greedy translations of the test sources: per pair, exact match (1.0 or 0.0) and the share of reference letters
    the output has at their place; and the argmax alignment accuracy of the cross-attention under teacher forcing on
    the references (None without attention)."""
    sources = [s for s, _ in pairs]
    hyps = translate(model, tok, sources, max_new_tokens=args.max_len + 4, batch_size=64)
    exact = [float(h == t) for h, (_, t) in zip(hyps, pairs)]
    letters = [sum(a == b for a, b in zip(h, t)) / len(t) for h, (_, t) in zip(hyps, pairs)]
    maps, device = [], next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(pairs), 64):
            chunk = pairs[i: i + 64]
            src = [tok.encode(s) + [tok.eos_id] for s, _ in chunk]
            tgt = [[model.config.decoder_start_token_id] + tok.encode(t) for _, t in chunk]
            S, T = max(map(len, src)), max(map(len, tgt))
            ids = torch.tensor([x + [tok.pad_id] * (S - len(x)) for x in src], device=device)
            mask = torch.tensor([[1] * len(x) + [0] * (S - len(x)) for x in src], device=device)
            dec = torch.tensor([y + [tok.pad_id] * (T - len(y)) for y in tgt], device=device)
            _, w = model(ids, dec, mask, return_weights=True)
            if not w.cross:
                return exact, letters, None
            last = w.cross[-1].float().mean(1)  # (B, T, S): the last layer, mean of heads
            maps += [last[j, : len(tgt[j]), : len(src[j])].cpu() for j in range(len(chunk))]
    return exact, letters, alignment_accuracy(maps, [len(s) for s, _ in pairs], args.rule)


def buckets(pairs, values, width):
    """{(low, high): (mean of values, pairs)} by source length."""
    out: dict[tuple[int, int], list[float]] = {}
    for (s, _), e in zip(pairs, values):
        low = (len(s) - 1) // width * width + 1
        out.setdefault((low, low + width - 1), []).append(e)
    return {k: (sum(v) / len(v), len(v)) for k, v in sorted(out.items())}


def plot(results, path: Path, title: str) -> None:
    """Two panels against source length: exact match (the whole output right) and letters at their place."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, key, what in ((axes[0], "buckets", "exact match (%)"), (axes[1], "letters", "letters right (%)")):
        for variant, r in results.items():
            xs = [(lo + hi) / 2 for lo, hi in r[key]]
            ys = [100 * r[key][k][0] for k in r[key]]
            ax.plot(xs, ys, marker="o", label=f"{LABELS[variant]} ({r['params'] / 1e3:.0f}k)",
                    linestyle="--" if variant == "none" else "-")
        ax.set_xlabel("source length (letters)")
        ax.set_ylabel(what)
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="center right")
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(LABELS)}")
    p.add_argument("--rule", default="swap", choices=("swap", "reverse", "copy"))
    p.add_argument("--min-len", type=int, default=1), p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--train", type=int, default=20000, help="training pairs")
    p.add_argument("--lengths", default="harmonic", choices=LENGTHS,
                   help="how training source lengths are drawn: harmonic, P(k) ~ 1/k (every length as many letters), "
                        "or uniform (every length as many pairs); the test set's are uniform either way")
    p.add_argument("--test", type=int, default=800, help="held-out test pairs")
    p.add_argument("--d-model", type=int, default=64, help="RNN state size per direction")
    p.add_argument("--embed", type=int, default=32, help="RNN embedding size")
    p.add_argument("--cell", default="lstm", choices=("lstm", "gru"), help="the RNNs' cell")
    p.add_argument("--window", type=int, default=16, help="local attention's half-width D (Luong et al.: 10 for "
                   "sentences of <= 50 words; here sources reach 64 letters, and at D = 8 local-p did not find the "
                   "alignment in 800 steps)")
    p.add_argument("--tf-d-model", type=int, default=48), p.add_argument("--tf-layers", type=int, default=2)
    p.add_argument("--minutes", type=float, default=5.0, help="training budget per model (from a 20-step probe)")
    p.add_argument("--steps", type=int, help="train every model this many steps instead of a time budget")
    p.add_argument("--max-tokens", type=int, default=2048, help="padded tokens per step")
    p.add_argument("--lr", type=float, default=1e-2, help="peak learning rate of the RNNs (cosine to a tenth)")
    p.add_argument("--tf-lr", type=float, default=2e-3, help="peak learning rate of the Transformer")
    p.add_argument("--bucket", type=int, default=8, help="width of the source-length buckets")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: these small models' products gain nothing from more on a shared CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench-rnn-attention")
    p.add_argument("--figure", default=str(FIGURE), help="where the PNG goes")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny models, sources of 1-12, 10 steps")
    p.add_argument("--eval-only", action="store_true",
                   help="score the models an earlier run left in --out again (same data flags), no training")
    args = p.parse_args(argv)
    if args.quick:
        args.train, args.test, args.max_len, args.d_model, args.embed = 300, 40, 12, 16, 8
        args.tf_d_model, args.tf_layers, args.window, args.bucket = 16, 1, 2, 4
        args.steps = args.steps or 10
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(LABELS))
    if unknown:
        p.error(f"--variants: unknown {unknown}; expected some of {', '.join(LABELS)}")
    torch.set_num_threads(args.threads)
    if not 1 <= args.min_len <= args.max_len:
        p.error(f"--min-len {args.min_len} --max-len {args.max_len}: need 1 <= min-len <= max-len")
    out = Path(args.out)
    files = write_data(out / "data", args)
    tok = CharTokenizer.train(iter([LETTERS]))
    test_pairs = [tuple(line.split("\t")) for line in files["test"].read_text().splitlines()]
    results = {}
    for variant in variants:
        run = out / variant
        if args.eval_only:  # the models a previous run trained in OUT
            info, checkpoint = run_info(run), latest_checkpoint(run)
        else:
            summary = train_one(variant, model_config(variant, tok, args), tok, files, args)
            info = dict(steps=summary.steps, train_minutes=round(summary.wall_s / 60, 2), val_loss=summary.val_loss)
            (run / "bench.json").write_text(json.dumps(info))
            checkpoint = summary.checkpoint
        model = qkv.load(checkpoint).to(args.device).eval()
        started = time.time()
        exact, letters, align = evaluate(model, tok, test_pairs, args)
        results[variant] = dict(params=model.num_parameters(), **info, exact=sum(exact) / len(exact),
                                letters_right=sum(letters) / len(letters), alignment=align,
                                buckets=buckets(test_pairs, exact, args.bucket),
                                letters=buckets(test_pairs, letters, args.bucket),
                                eval_s=round(time.time() - started, 1))
        print(f"{variant}: {results[variant]['exact']:.3f} exact, {results[variant]['letters_right']:.3f} letters, "
              f"alignment {align}, {info['steps']} steps", flush=True)
    print_table(results, "buckets", "exact match (%) by source length")
    print_table(results, "letters", "letters right (%) by source length")
    title = (f"'{args.rule}' task, trained on {args.lengths} lengths 1-{args.max_len}, {len(test_pairs)} held-out "
             f"pairs, greedy decoding; "
             + (f"{args.steps} steps each" if args.steps else f"{args.minutes:g} min of training each"))
    plot(results, Path(args.figure), title)
    record = {v: {**r, **{k: {f"{lo}-{hi}": b for (lo, hi), b in r[k].items()} for k in ("buckets", "letters")}}
              for v, r in results.items()}
    (out / "result.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {args.figure} and {out / 'result.json'}")
    print("command: python bench/rnn_attention.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0


def print_table(results, key: str, what: str) -> None:
    """One markdown table: each model's size, training, overall scores, and ``key``'s buckets (``what``)."""
    keys = sorted({k for r in results.values() for k in r[key]})
    head = ["model", "params", "steps", "min", "exact", "letters", "align"] + [f"{lo}-{hi}" for lo, hi in keys]
    print(f"\n{what}:\n| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for variant, r in results.items():
        cells = [LABELS[variant], f"{r['params'] / 1e3:.0f}k", str(r["steps"]), f"{r['train_minutes']:.1f}",
                 f"{100 * r['exact']:.1f}", f"{100 * r['letters_right']:.1f}",
                 "-" if r["alignment"] is None else f"{100 * r['alignment']:.1f}"]
        cells += [f"{100 * r[key][k][0]:.0f}" if k in r[key] else "" for k in keys]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
