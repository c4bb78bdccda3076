"""The main job (`make demo`, `qkv demo`): watch a Transformer learn to translate, then see where it attends.

1. data: English -> Spanish numbers, dates and short phrases from qkv's own rule-based generator
   (``qkv.data.demo_task``), held-out sentences never seen in training; or the user's aligned files, of which a
   share is held out (by a hash of each source) when no validation files are given.
2. a byte-level BPE vocabulary shared by both languages, so one embedding table serves source, target and
   output, as in the original Transformer (Vaswani et al. 2017, sec. 3.4). It gives every line back exactly:
   accents, ñ, ¿ ¡, capitals and spacing are data, never normalised away.
3. a small pre-norm encoder-decoder trained with teacher forcing (``qkv.train``), with exact match and BLEU on
   held-out pairs at each evaluation (the quality curves beside the loss curves).
4. held-out translations by greedy and beam search beside the references: exact match (overall, per kind,
   accented references apart) and BLEU; for the built-in task also numbers drawn afresh, never seen in training.
5. into the output folder: checkpoint, loss and quality curves, cross-attention heatmaps, results.json and the
   HTML explorer (several sentences, every layer and head, the beam search step by step).

Run it again on the same folder: a finished run is evaluated again from its checkpoint (no retraining), an
interrupted one resumes from its last checkpoint with the tokenizer saved there. A folder holding anything else is
refused, as ``qkv train`` refuses an earlier run (``check_demo_folder``): the demo never overwrites a file it did
not write, unless told to (``overwrite``). A full disk is one line naming the file being written.
"""
from __future__ import annotations

import json
import logging
import sys
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import data as qd
from . import files, viz
from .checkpoint import RunLock
from .config import TrainConfig
from .data import split_of
from .data.demo_task import fresh_numbers, kind_of
from .demo_folder import MARKER, check_demo_folder, writing
from .explore import Explorer, attention_maps  # noqa: F401 (qkv.demo.attention_maps: the pair's three kinds)
from .models.build import load
from .presets import preset
from .tasks.seq2seq import sentence_room, translate
from .train import RESUME_MUST_MATCH, train

log = logging.getLogger("qkv.demo")

# A model that learns the task in under three minutes on 2 CPU cores (docs/benchmarks.md has what it reaches).
# Pre-norm: with the original post-norm blocks the same budget (700 steps, lr 2e-3 to 3e-3) did not get past
# ignoring the source, while pre-norm learned it; post-norm needs a long warmup to train stably (Xiong et al.
# 2020, "On Layer Normalization in the Transformer Architecture"). No dropout: 40,000 pairs, each seen about
# three times. No label smoothing: in this budget it held back the rare tokens (singular nouns only follow
# "one"), and the task has one right answer (docs/benchmarks.md compares both).
DEMO_MODEL = dict(d_model=128, n_layers=2, n_heads=4, d_ff=256, max_positions=64, dropout=0.0, prenorm=True)
DEMO_TRAIN = dict(max_steps=1200, max_tokens=1500, lr=2e-3, min_lr=1e-4, warmup_steps=100, schedule="cosine",
                  label_smoothing=0.0, weight_decay=0.01, betas=(0.9, 0.98), eval_every=300, eval_steps=5,
                  log_every=20, keep_last=1)
DEMO_PAIRS = 40000  # generated training pairs: more distinct numbers than steps can memorise, so it generalises
# Shared byte-level BPE: words become single tokens (the corpus is small), digits are spelled one by one and a
# space goes before every sentence, so "cuatro" is the same token first in a sentence and after "mil".
DEMO_TOKENIZER = dict(vocab_size=2000, min_frequency=1, individual_digits=True, prefix_space=True)
NUM_BEAMS = 4
HOLDOUT, HOLDOUT_CAP = 0.1, 500  # own data without validation files: share held out (half val, half test), cap each
N_EVAL_DURING_TRAINING = 200  # validation pairs translated at each evaluation (exact match and BLEU curves)


@dataclass
class DemoResult:
    """What the demo measured on the held-out test sentences, and where it wrote its files.

    exact_*: exact match of greedy / beam search; by_kind: per kind of sentence ("number", "date", "phrase" for
    the built-in task) and "accented" / "plain" (reference with or without accents, ñ or other marks), each
    {"n", "greedy", "beam"}; fresh: numbers drawn afresh and never seen in training, same form; reused: the run
    had finished before and was only evaluated again."""
    exact_greedy: float
    exact_beam: float
    bleu_greedy: float | None
    bleu_beam: float | None
    n_test: int
    train_seconds: float
    out_dir: str
    by_kind: dict = field(default_factory=dict)
    fresh: dict = field(default_factory=dict)
    steps: int = 0
    tokenizer: str = ""
    reused: bool = False


def _read_lines(path) -> list[str]:
    return [line.rstrip("\n") for line in Path(path).read_text(encoding="utf-8").splitlines()]


def bleu(hyps: list[str], refs: list[str]) -> float | None:
    """Corpus BLEU (sacrebleu, 0-100) of hypotheses against one reference each; None when sacrebleu is missing."""
    try:
        import sacrebleu  # optional dependency (qkv[extras]): without it the demo reports no BLEU
    except ImportError:
        return None
    return sacrebleu.corpus_bleu(hyps, [refs]).score


def accented(text: str) -> bool:
    """Whether text holds a letter with a mark (accents, ñ, ü, ...): its canonical decomposition differs."""
    return unicodedata.normalize("NFD", text) != text


def holdout_split(pairs, fraction: float = HOLDOUT, cap: int = HOLDOUT_CAP):
    """(train, val, test) of pairs: a share `fraction` held out by a hash of each source (half validation, half
    test; at most `cap` each, the rest trains), so a source and its repeats always land on the same side."""
    train, val, test = [], [], []
    for pair in pairs:
        side = {"train": train, "val": val, "test": test}[split_of(pair[0], fraction / 2, fraction / 2)]
        (side if side is train or len(side) < cap else train).append(pair)
    if not test and len(train) > 1:
        test.append(train.pop())
    if not val:
        val = list(test)
    if not train or not test:
        raise ValueError(f"--src holds {len(pairs)} pairs: too few to hold some out and train on the rest")
    return train, val, test


def _own_data(out: Path, src, tgt, val_src, val_tgt, test_src, test_tgt, echo):
    """The user's files; without validation files a share is held out into out/data. Returns the six paths."""
    for flag, path in (("--src", src), ("--tgt", tgt), ("--val-src", val_src), ("--val-tgt", val_tgt)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path}: no such file")
    if (val_src is None) != (val_tgt is None):
        raise ValueError("give both --val-src and --val-tgt (aligned held-out files), or neither to hold out a "
                         "share of --src/--tgt")
    if val_src is not None:
        return src, tgt, val_src, val_tgt, test_src or val_src, test_tgt or val_tgt
    pairs = qd.read_pairs(src, tgt)
    train, val, test = holdout_split(pairs)
    a, b = Path(src).suffix.lstrip(".") or "src", Path(tgt).suffix.lstrip(".") or "tgt"
    a, b = (a, b) if a != b else ("src", "tgt")
    paths = qd.write_splits({"train": train, "val": val, "test": test}, out / "data", a, b)
    echo(f"no --val-src/--val-tgt: held out {len(val)} pairs for validation and {len(test)} for testing "
         f"(by a hash of the source), training on {len(train)}; files in {out / 'data'}")
    return (*paths["train"], *paths["val"], *paths["test"])


def describe_tokenizer(tokenizer) -> str:
    """A few words on what a tokenizer is, e.g. "byte-level BPE", "WordPiece", "character"."""
    if tokenizer.kind == "char":
        return "character"
    spec = json.loads(tokenizer.hf.to_str()) if hasattr(tokenizer, "hf") else {}
    kind = (spec.get("model") or {}).get("type", tokenizer.kind)
    return f"byte-level {kind}" if '"ByteLevel"' in json.dumps(spec.get("pre_tokenizer")) else kind


def _checkpoint_step(path: Path) -> int | None:
    try:
        return int(path.name.rsplit("-", 1)[-1])
    except ValueError:
        return None


def _quality_callback(sources, references, tokenizer, max_new_tokens: int):
    """An eval_callback: greedy exact match and BLEU on held-out pairs, for the quality curves."""

    def callback(model, step):
        was_training = model.training
        model.eval()
        with torch.no_grad():
            hyps = translate(model, tokenizer, sources, max_new_tokens=max_new_tokens)
        model.train(was_training)
        exact = sum(h == r for h, r in zip(hyps, references)) / max(len(references), 1)
        score = bleu(hyps, references)
        return {"val_exact": exact, **({} if score is None else {"val_bleu": score})}
    return callback


def _score(name_of, sources, references, greedy, beam) -> dict:
    """Exact match per group name_of(source, reference) (None: no group): {"n", "greedy", "beam"} each."""
    groups: dict[str, list[tuple[bool, bool]]] = {}
    for s, r, g, b in zip(sources, references, greedy, beam):
        name = name_of(s, r)
        if name is not None:
            groups.setdefault(name, []).append((g == r, b == r))
    return {k: {"n": len(v), "greedy": sum(g for g, _ in v) / len(v), "beam": sum(b for _, b in v) / len(v)}
            for k, v in groups.items()}


def _percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def run_demo(out_dir="runs/demo", *, src=None, tgt=None, val_src=None, val_tgt=None, test_src=None, test_tgt=None,
             max_steps: int | None = None, n_train: int = DEMO_PAIRS, n_test: int = 500, n_fresh: int = 500,
             n_examples: int = 6, seed: int = 0, show: int = 10, progress: bool = True, overwrite: bool = False,
             echo=print) -> DemoResult:
    """Run the whole demo; ``echo`` prints the report (the CLI passes print). Returns the measured DemoResult.

    A folder that holds a finished run is evaluated again without training; one that holds an interrupted run
    resumes it with the tokenizer saved in its last checkpoint; a folder holding anything else is refused unless
    ``overwrite`` (``check_demo_folder``). One demo at a time in a folder (``qkv.checkpoint.RunLock``). progress:
    bars with the time left, for training and for the evaluation after it."""
    begun = time.time()
    out = Path(out_dir)
    if (src is None) != (tgt is None):
        raise ValueError("give both --src and --tgt (aligned files), or neither for the built-in task")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: a file, expected a folder")
    try:  # the lock first: a second demo must not clear or write the folder of one that is running
        lock = RunLock(out).__enter__()
    except ValueError as e:
        raise ValueError(str(e).replace("out_dir=", "--out ").replace("--out-dir", "--out")) from None
    try:
        check_demo_folder(out, overwrite, echo)
        with writing(out / MARKER):
            files.write_atomic(out / MARKER, json.dumps({"written_by": "qkv demo"}) + "\n")
        result = _run_demo(out, src, tgt, val_src, val_tgt, test_src, test_tgt, max_steps=max_steps,
                           n_train=n_train, n_test=n_test, n_fresh=n_fresh, n_examples=n_examples, seed=seed,
                           show=show, progress=progress, echo=echo, begun=begun)
    finally:
        lock.__exit__(None, None, None)
    wall = time.time() - begun
    echo(f"the demo took {_duration(wall)} in all" + (f" ({_duration(result.train_seconds)} of training)"
                                                       if not result.reused else " (no training: evaluated again)"))
    return result


def _duration(seconds: float) -> str:
    """'2 min 05 s' or '48 s'."""
    whole = round(seconds)
    return f"{whole // 60} min {whole % 60:02d} s" if whole >= 60 else f"{whole} s"


def _translate_all(model, tokenizer, jobs, max_new: int, progress: bool) -> list[list[str]]:
    """The translations of each job (sentences, beams), in batches of 64 under one bar with the time left."""
    total = sum(len(sentences) for sentences, _ in jobs)
    outputs = []
    with tqdm(total=total, file=sys.stderr, unit="sentence", dynamic_ncols=True, desc="evaluate",
              disable=not progress) as bar:
        for sentences, beams in jobs:
            done = []
            for i in range(0, len(sentences), 64):
                done += translate(model, tokenizer, sentences[i:i + 64], num_beams=beams, max_new_tokens=max_new)
                bar.update(len(sentences[i:i + 64]))
            outputs.append(done)
    return outputs


def _data(out: Path, src, tgt, val_src, val_tgt, test_src, test_tgt, *, n_train, n_test, seed, echo) -> tuple:
    """The six files (train, validation and test; source and target each): the built-in task generated into
    out/data when no --src is given, else the user's (``_own_data``)."""
    if src is None:
        echo(f"generating the English -> Spanish task into {out / 'data'} ({n_train} training pairs)")
        with writing(out / "data"):
            made = qd.make_demo_data(out / "data", train=n_train, val=n_test, test=n_test, seed=seed)
        return (*made["train"], *made["val"], *made["test"])
    with writing(out / "data"):
        return _own_data(out, src, tgt, val_src, val_tgt, test_src, test_tgt, echo)


def _run_demo(out: Path, src, tgt, val_src, val_tgt, test_src, test_tgt, *, max_steps, n_train, n_test, n_fresh,
              n_examples, seed, show, progress, echo, begun: float) -> DemoResult:
    """The demo in a folder it may write: data, tokenizer, training (or the finished run), evaluation, views."""
    builtin = src is None
    src, tgt, val_src, val_tgt, test_src, test_tgt = _data(out, src, tgt, val_src, val_tgt, test_src, test_tgt,
                                                           n_train=n_train, n_test=n_test, seed=seed, echo=echo)
    train_dir = out / "train"
    latest = ckpt.latest_checkpoint(train_dir) if train_dir.is_dir() else None
    steps = max_steps or DEMO_TRAIN["max_steps"]
    tokenizer, described, longest = _tokenizer(src, tgt, latest, echo)
    config = preset("transformer-tiny", **DEMO_MODEL, vocab_size=tokenizer.vocab_size,
                    pad_token_id=tokenizer.pad_id, bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                    decoder_start_token_id=tokenizer.bos_id)
    train_config = TrainConfig(**{**DEMO_TRAIN, "max_steps": steps}, data=str(src), data_tgt=str(tgt),
                               val_data=str(val_src), val_data_tgt=str(val_tgt), out_dir=str(train_dir), seed=seed,
                               progress=progress, resume=latest is not None, tokenizer_type="bpe")
    # Outputs end at EOS; a cap 8 tokens past the longest training target only bounds a model that never ends.
    max_new = min(sentence_room(config.max_positions), longest + 8)
    previous = out / "results.json"
    val_pairs = qd.read_pairs(val_src, val_tgt)[:N_EVAL_DURING_TRAINING]
    checkpoint, reused, train_seconds = _train_or_reuse(config, train_config, tokenizer, latest, val_pairs, max_new,
                                                        previous, echo)
    model = load(checkpoint).eval()

    sources, references = _read_lines(test_src), _read_lines(test_tgt)
    drawn = {}
    if builtin:  # numbers never seen in training: as many digits as in training, and uniform in 0..999,999
        seen = set(_read_lines(src))
        drawn = {name: fresh_numbers(n_fresh, seen, seed=seed + 1 + uniform, uniform=uniform)
                 for name, uniform in (("numbers", False), ("numbers_uniform", True))}
    greedy, beam, by_kind, fresh = _evaluate(model, tokenizer, sources, references, drawn,
                                             kind_of if builtin else None, max_new, progress, echo)
    exact = lambda hyps: sum(h == r for h, r in zip(hyps, references)) / max(len(references), 1)  # noqa: E731
    result = DemoResult(exact(greedy), exact(beam), bleu(greedy, references), bleu(beam, references),
                        len(references), train_seconds, str(out), by_kind, fresh, _checkpoint_step(checkpoint) or 0,
                        described, reused)

    _report(result, sources, references, greedy, beam, show, echo)

    # where it attends: one held-out pair with a clear word alignment, and a few examples to explore
    pick = max(range(min(len(sources), 50)), key=lambda i: len(sources[i].split()) if greedy[i] == references[i] else 0)
    chosen = _examples(sources, references, greedy, beam, pick, kind_of if builtin else None, n_examples)
    _write_views(out, model, tokenizer, sources, references, pick, chosen, max_new,
                 "qkv demo: English -> Spanish" if builtin else "qkv demo: your translation model")
    record = {**asdict(result), "wall_seconds": time.time() - begun, "model": DEMO_MODEL,
              "train": {**DEMO_TRAIN, "max_steps": steps}, "tokenizer_settings": DEMO_TOKENIZER,
              "num_beams": NUM_BEAMS, "examples": [{"label": label, "source": s} for label, s in chosen]}
    with writing(previous):
        files.write_atomic(previous, json.dumps(record, indent=2, ensure_ascii=False))
    echo(f"\nwrote {out}/: train/ (checkpoints, metrics.jsonl, {(train_dir / 'loss.png').name}), "
         f"cross_attention.png, cross_attention_heads.png, explorer.html, results.json"
         f"\nexplore any sentence: qkv explore --checkpoint {out} (it opens with these examples)")
    return result


def _tokenizer(src, tgt, latest, echo):
    """(tokenizer, a few words on it, the longest training target in tokens): the one saved with the run's last
    checkpoint (the very ids its weights were trained on), or a shared BPE trained on both sides; says whether
    every training line decodes back exactly."""
    if latest is not None:
        saved = latest / ckpt.TOKENIZER_DIR
        if not saved.is_dir():
            raise FileNotFoundError(f"{latest}: no {ckpt.TOKENIZER_DIR}/ folder, so its weights cannot be read; "
                                    f"choose another --out to train anew")
        tokenizer = qd.Tokenizer.load(saved)
    else:
        tokenizer = qd.train_bpe([src, tgt], **DEMO_TOKENIZER)
    described = f"{describe_tokenizer(tokenizer)} shared by both languages, {tokenizer.vocab_size} tokens"
    targets = _read_lines(tgt)
    lines = _read_lines(src) + targets
    encoded = tokenizer.encode_batch(lines)
    hf = getattr(tokenizer, "hf", None)  # the Rust side decodes a batch on all cores
    decoded = hf.decode_batch(encoded) if hf is not None else [tokenizer.decode(ids) for ids in encoded]
    broken = sum(d != line for d, line in zip(decoded, lines))
    echo(f"tokenizer: {described}" + (" (saved with the run)" if latest is not None else "") + "; "
         + ("every training line decodes back exactly" if not broken else
            f"{broken} of {len(lines)} training lines do not decode back exactly (not in Unicode NFC?)"))
    return tokenizer, described, max(map(len, encoded[len(lines) - len(targets):]), default=0)


def _evaluate(model, tokenizer, sources, references, drawn: dict, kind_of, max_new: int, progress: bool, echo):
    """(greedy, beam, by_kind, fresh): the held-out sentences translated both ways and scored per kind (when
    kind_of names one) and accented or plain; the fresh numbers ``drawn`` (name -> pairs) likewise."""
    jobs = [(sources, 1), (sources, NUM_BEAMS)] + [([s for s, _ in pairs], b) for pairs in drawn.values()
                                                   for b in (1, NUM_BEAMS)]
    echo(f"evaluating: {sum(len(x) for x, _ in jobs)} translations of held-out and fresh sentences, greedy and "
         f"beam search")
    greedy, beam, *fresh_outputs = _translate_all(model, tokenizer, jobs, max_new, progress)
    by_kind = _score(lambda s, r: kind_of(s), sources, references, greedy, beam) if kind_of else {}
    by_kind.update(_score(lambda s, r: "accented" if accented(r) else "plain", sources, references, greedy, beam))
    fresh = {}
    for i, (name, pairs) in enumerate(drawn.items()):
        fs, fr = [s for s, _ in pairs], [t for _, t in pairs]
        fresh[name] = _score(lambda s, r: "all", fs, fr, fresh_outputs[2 * i], fresh_outputs[2 * i + 1])["all"]
    return greedy, beam, by_kind, fresh


def _train_or_reuse(config, train_config, tokenizer, latest, val_pairs, max_new: int, previous: Path, echo):
    """(checkpoint, reused, seconds of training): a finished run's last checkpoint as it is (its settings compared
    with today's), or the run trained (resumed from ``latest`` when there is one)."""
    train_dir = Path(train_config.out_dir)
    if latest is not None and (_checkpoint_step(latest) or 0) >= train_config.max_steps:
        echo(f"{train_dir} holds a finished run ({latest.name}): evaluating it again, no training "
             f"(choose another --out to train anew)")
        train_seconds = 0.0
        saved_config = latest / ckpt.TRAIN_CONFIG_FILE
        if saved_config.is_file():
            diff = ckpt.config_diff(train_config.to_dict(), json.loads(saved_config.read_text()),
                                    only=RESUME_MUST_MATCH)
            if diff:
                echo("note: that run was trained with other settings than today's demo (" + "; ".join(diff)
                     + "); these are its results, choose another --out to train with the current ones")
        if previous.is_file():
            try:
                train_seconds = float(json.loads(previous.read_text()).get("train_seconds", 0.0))
            except (ValueError, AttributeError):
                pass
        return latest, True, train_seconds
    if latest is not None:
        echo(f"resuming the interrupted run in {train_dir} from {latest.name}")
    echo(f"training a {config.n_layers}+{config.n_layers}-layer Transformer (d_model {config.d_model}, "
         f"vocabulary {tokenizer.vocab_size}) for {train_config.max_steps} steps"
         + ("; the bar shows the time left (then a second bar, the evaluation)" if train_config.progress else ""))
    callback = _quality_callback([s for s, _ in val_pairs], [t for _, t in val_pairs], tokenizer, max_new)
    started = time.time()
    with writing(train_dir):
        summary = train(config, train_config, tokenizer=tokenizer, eval_callback=callback)
    return Path(summary.checkpoint or ckpt.latest_checkpoint(train_dir)), False, time.time() - started


def _report(result: DemoResult, sources, references, greedy, beam, show: int, echo) -> None:
    """The held-out translations beside their references, then exact match and BLEU overall, per kind and on
    fresh numbers."""
    echo("\nheld-out sentences (never seen in training):")
    for s, r, g, b in list(zip(sources, references, greedy, beam))[:show]:
        echo(f"  {s}\n    reference: {r}\n    greedy:    {g}{'' if g == r else '   (x)'}\n"
             f"    beam {NUM_BEAMS}:    {b}{'' if b == r else '   (x)'}")
    fmt = lambda x: "n/a (sacrebleu not installed)" if x is None else f"{x:.1f}"  # noqa: E731
    echo(f"\non {result.n_test} held-out sentences: exact match greedy {_percent(result.exact_greedy)}, "
         f"beam {_percent(result.exact_beam)}; BLEU greedy {fmt(result.bleu_greedy)}, beam {fmt(result.bleu_beam)}")
    for name, s in result.by_kind.items():
        echo(f"  {name + ':':10s} greedy {_percent(s['greedy']):>6s}, beam {_percent(s['beam']):>6s}  "
             f"({s['n']} sentences)")
    for name, s in result.fresh.items():
        how = "digit counts as in training" if name == "numbers" else "uniform in 0..999,999"
        echo(f"fresh numbers never seen in training ({s['n']}, {how}): greedy {_percent(s['greedy'])}, "
             f"beam {_percent(s['beam'])}")


def _write_views(out: Path, model, tokenizer, sources, references, pick: int, examples: list, max_new: int,
                 title: str) -> None:
    """Where it attends, into ``out``: the alignment of one held-out pair (cross_attention.png), every layer's and
    head's cross-attention (cross_attention_heads.png), and the explorer of ``examples`` (label, sentence)."""
    # by kind, not by place: a recurrent encoder-decoder has no self-attention, only the cross map (its alignment)
    cross = next(m for m in attention_maps(model, tokenizer, sources[pick], references[pick]) if m.kind == "cross")
    with writing(out / "cross_attention.png"):
        viz.plot_alignment(cross.mean_heads(-1), cross.queries, cross.keys, out / "cross_attention.png",
                           title="cross-attention (last layer, mean of heads)")
    with writing(out / "cross_attention_heads.png"):
        viz.plot_attention(cross, out / "cross_attention_heads.png", title="cross-attention, every layer and head")
    explorer = Explorer(model, tokenizer, num_beams=NUM_BEAMS, max_new_tokens=max_new)
    shown = [explorer.example(s, label=label) for label, s in examples]
    with writing(out / "explorer.html"):
        viz.explorer_html(shown, out / "explorer.html", title=title)


def _examples(sources, references, greedy, beam, pick, kind_of, n: int = 6):
    """(label, source) of a few held-out sentences worth exploring: the alignment example, one of each kind, one
    with an accented reference, and one the model gets wrong if there is one."""
    chosen, seen = [pick], set()
    if kind_of is not None:
        seen.add(kind_of(sources[pick]))
        for i, s in enumerate(sources):
            if kind_of(s) not in seen:
                seen.add(kind_of(s))
                chosen.append(i)
    for test in (lambda i: accented(references[i]), lambda i: beam[i] != references[i] or greedy[i] != references[i],
                 lambda i: True):
        i = next((i for i in range(len(sources)) if i not in chosen and test(i)), None)
        if i is not None and len(chosen) < n:
            chosen.append(i)
    def label(i):
        tag = kind_of(sources[i]) if kind_of is not None else None
        return (f"{tag}: " if tag else "") + sources[i] + ("  (x)" if beam[i] != references[i] else "")
    return [(label(i), sources[i]) for i in chosen[:n]]
