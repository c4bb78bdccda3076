"""``qkv eval``: loss, perplexity and accuracy of a language model on a text file; exact match and BLEU of a
translation model on parallel files; accuracy and per-class F1 of a classifier on a .tsv."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..data import read_pairs, read_text
from ..demo import bleu
from ..models import family_of
from ..tasks.classify import classification_metrics, confusion_matrix, load_classifier_data, model_labels, predict
from ..tasks.seq2seq import translate
from .common import CLIError, Command, encode, positive_flag
from .loading import model_and_tokenizer, source_args


def _eval_args(p):
    source_args(p)
    p.add_argument("--data", help="language models: a text file; translation: the source file; classifiers: a .tsv "
                                  "of text<TAB>label lines")
    p.add_argument("--tgt", help="translation: the reference file aligned with --data")
    p.add_argument("--block-size", type=int, help="language models: window length (default: max_positions)")
    p.add_argument("--num-beams", type=int, default=1, help="translation: beam width for BLEU (default: 1)")
    p.add_argument("--max-batches", type=int, default=0, help="stop after this many batches (0: the whole file)")


def _eval(args):
    if not args.data:
        raise CLIError("pass --data FILE (and --tgt FILE for translation)")
    positive_flag(args.block_size, "--block-size")
    positive_flag(args.num_beams, "--num-beams")
    positive_flag(args.max_batches, "--max-batches", zero_ok=True)
    model, tok = model_and_tokenizer(args)
    model.eval()
    record = family_of(model)
    if record.has_source:
        return _eval_translation(args, model, tok)
    if record.text and not record.continues and model.config.num_labels:
        return _eval_classifier(model, tok, args)
    if not record.continues:
        raise CLIError(f"eval supports language, translation and classification models; this one is "
                       f"{record.name!r}")
    return _eval_language_model(args, model, tok)


def _eval_language_model(args, model, tok):
    """Loss, perplexity and next-token accuracy over windows of --block-size tokens of --data."""
    ids = torch.tensor(encode(tok, read_text(args.data, "--data"), f"--data {args.data}"))
    block = args.block_size or model.config.max_positions
    if block > model.config.max_positions:
        raise CLIError(f"--block-size {block}: more than the model's {model.config.max_positions} positions "
                       f"(max_positions); expected --block-size <= {model.config.max_positions}")
    n = (len(ids) - 1) // block
    if n < 1:
        raise CLIError(f"--data has {len(ids)} tokens, fewer than one block of {block} + 1")
    if args.max_batches:
        n = min(n, 8 * args.max_batches)
    x = ids[: n * block].view(n, block)
    y = ids[1: n * block + 1].view(n, block)
    total, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, n, 8):
            logits = model(x[i: i + 8])
            total += F.cross_entropy(logits.flatten(0, 1).float(), y[i: i + 8].flatten(), reduction="sum").item()
            correct += (logits.argmax(-1) == y[i: i + 8]).sum().item()
    loss = total / (n * block)
    print(f"tokens {n * block}  loss {loss:.4f}  perplexity {math.exp(loss):.2f}  "
          f"accuracy {100 * correct / (n * block):.1f}%")
    return 0


def _eval_translation(args, model, tok):
    """Exact match and BLEU of the model's translations of --data against --tgt."""
    if not args.tgt:
        raise CLIError("a translation model: pass --data SOURCE_FILE --tgt REFERENCE_FILE")
    pairs = read_pairs(args.data, args.tgt)
    if args.max_batches:
        pairs = pairs[: 64 * args.max_batches]
    sources, refs = [s for s, _ in pairs], [t for _, t in pairs]
    for s in sources:
        encode(tok, s, f"--data {args.data}")
    hyps = translate(model, tok, sources, num_beams=args.num_beams)
    exact = sum(h == r for h, r in zip(hyps, refs)) / len(refs)
    score = bleu(hyps, refs)
    print(f"sentences {len(refs)}  exact match {100 * exact:.1f}%  BLEU "
          f"{'n/a (pip install sacrebleu)' if score is None else f'{score:.2f}'}")
    return 0


def _eval_classifier(model, tok, args):
    """Accuracy, each class's F1 and macro-F1 of a classifier on a .tsv of text<TAB>label lines."""
    labels = model_labels(model)
    texts, gold = load_classifier_data(args.data, labels)
    if args.max_batches:
        texts, gold = texts[: 32 * args.max_batches], gold[: 32 * args.max_batches]
    for t in texts:
        encode(tok, t, f"--data {args.data}")
    confusion = confusion_matrix(predict(model, tok, texts), gold, len(labels))
    m = classification_metrics(confusion, labels, prefix="")
    print(f"lines {len(texts)}  accuracy {100 * m['acc']:.1f}%  macro-F1 {m['macro_f1']:.4f}")
    for i, name in enumerate(labels):
        print(f"  {name}: F1 {m[f'f1/{name}']:.4f}  (support {int(confusion[i].sum())})")
    return 0


COMMAND = Command("loss, perplexity and accuracy on a text file; BLEU and exact match on parallel files; "
                  "accuracy and per-class F1 of a classifier on a .tsv",
                  "qkv eval --checkpoint runs/demo --data test.en --tgt test.es --num-beams 4", _eval_args, _eval)
