"""The ``qkv`` command: one table of subcommands. Each entry adds its flags and runs; errors are one line.

    qkv info --preset gpt2                       what a model is: parameters, FLOPs per token, memory
    qkv convert --from-hf DIR --out DIR          a Hugging Face folder -> qkv's own folder (and --to-hf back)
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Command:
    help: str
    example: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


class CLIError(Exception):
    """A mistake in what the user asked for: printed as one line, exit status 2."""


def _model_source(parser: argparse.ArgumentParser) -> None:
    g = parser.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", help="a named configuration (see `qkv info --list`)")
    g.add_argument("--checkpoint", help="a qkv model folder (config.json + model.safetensors), or a training "
                                        "output folder")
    g.add_argument("--hf", help="a local Hugging Face checkpoint folder")


def _load_model(args):
    import qkv
    if getattr(args, "preset", None):
        return qkv.build(qkv.preset(args.preset))
    if getattr(args, "hf", None):
        return qkv.from_hf(args.hf)
    return qkv.load(_model_folder(args.checkpoint))


def _model_folder(path):
    """A model folder, or a training output folder (its ``latest`` file names the newest checkpoint), or the
    demo's output folder (training output under train/)."""
    from pathlib import Path
    p = Path(path)
    for run in (p, p / "train"):
        if (run / "latest").is_file():
            return run / (run / "latest").read_text().strip()
    if (p / "config.json").is_file():
        return p
    raise CLIError(f"--checkpoint {path}: not a qkv model folder (no config.json) nor a training output folder "
                   f"(no 'latest' file)")


def _tokenizer_for(model_dir):
    """The tokenizer saved beside a checkpoint (training writes it to tokenizer/)."""
    from .data import Tokenizer
    folder = model_dir / "tokenizer"
    if not folder.is_dir():
        raise CLIError(f"{model_dir}: no tokenizer/ folder beside the weights; pass token ids or train with qkv")
    return Tokenizer.load(folder)


# -- info -------------------------------------------------------------------------------------------------------

def _info_args(p):
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--list", action="store_true", help="list the presets")
    g.add_argument("--preset", help="a named configuration, e.g. gpt2, llama-tiny, transformer-base")
    g.add_argument("--checkpoint", help="a qkv model folder")
    g.add_argument("--hf", help="a local Hugging Face checkpoint folder")
    p.add_argument("--seq-len", type=int, default=None, help="context length for the FLOPs count "
                                                               "(default: the model's max_positions)")


def _info(args):
    import qkv
    if args.list:
        for name, fields in sorted(qkv.PRESETS.items()):
            print(f"{name:18s} {fields['family']:16s} d_model={fields.get('d_model')} layers={fields.get('n_layers')}")
        return 0
    import torch
    with torch.device("meta"):  # sizes only: no memory, no initialisation time, even for big presets
        model = _load_model(args) if not args.preset else qkv.build(qkv.preset(args.preset))
    print(model.summary(args.seq_len))
    n = model.num_parameters()
    print(f"  training memory:  ~{16 * n / 2**30:.2f} GiB for weights, grads and AdamW state in fp32 "
          f"(activations extra)")
    print(model.config.to_json())
    return 0


# -- convert ----------------------------------------------------------------------------------------------------

def _convert_args(p):
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--from-hf", metavar="DIR", help="read a Hugging Face folder (config.json + weights)")
    g.add_argument("--from-rwkv", metavar="FILE", help="read an RWKV-LM .pth checkpoint")
    g.add_argument("--checkpoint", metavar="DIR", help="read a qkv model folder (for --to-hf)")
    p.add_argument("--to-hf", action="store_true", help="write a Hugging Face folder instead of a qkv folder")
    p.add_argument("--out", required=True, help="folder to write")


def _convert(args):
    import qkv
    if args.from_hf:
        model = qkv.from_hf(args.from_hf)
    elif args.from_rwkv:
        if not hasattr(qkv, "from_rwkv"):
            raise CLIError("RWKV checkpoints are not supported in this build")
        model = qkv.from_rwkv(args.from_rwkv)
    else:
        model = qkv.load(_model_folder(args.checkpoint))
    path = qkv.to_hf(model, args.out) if args.to_hf else model.save(args.out)
    print(f"wrote {path} ({model.num_parameters():,} parameters, {'Hugging Face' if args.to_hf else 'qkv'} format)")
    return 0


# -- train ------------------------------------------------------------------------------------------------------

def _train_args(p):
    from .config import TrainConfig, add_dataclass_arguments
    p.add_argument("--preset", help="model preset name (see `qkv info --list`), e.g. gpt-char-tiny")
    p.add_argument("--config", help="a YAML/JSON file with 'model' (or 'preset') and 'train' sections; flags "
                                    "override it")
    add_dataclass_arguments(p.add_argument_group("training (every TrainConfig field)"), TrainConfig,
                            defaults_to_none=True)


def _train(args):
    import dataclasses
    import json
    import logging
    from .train import configs_from_args, train
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model_config, train_config = configs_from_args(args)
    summary = train(model_config, train_config)
    print(json.dumps(dataclasses.asdict(summary), indent=1))
    return 0


# -- generate / translate -------------------------------------------------------------------------------------

def _decoding_args(p, *, beams_default):
    p.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate at most (default: 100)")
    p.add_argument("--num-beams", type=int, default=beams_default,
                   help=f"beam search width; 1 is greedy or sampling (default: {beams_default})")
    p.add_argument("--sample", action="store_true", help="sample instead of taking the most likely token")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: 1.0)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, help="sample among the most likely tokens holding this probability")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (default: 1.0)")
    p.add_argument("--seed", type=int, help="seed for sampling (reproducible output)")


def _compile_arg(p):
    p.add_argument("--compile", action="store_true",
                   help="decode through one torch.compile'd step (softmax-attention models): faster per token "
                        "where overhead dominates (small models, GPUs), after a one-off compilation of seconds "
                        "to a minute; the same tokens")


def _decoding_kwargs(args):
    import torch
    generator = torch.Generator().manual_seed(args.seed) if args.seed is not None else None
    return dict(max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
                top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty, generator=generator)


def _model_and_tokenizer(args):
    """(model, tokenizer) from --checkpoint (a qkv or training folder) or --hf (with its tokenizer.json)."""
    from pathlib import Path
    import qkv
    from .data import Tokenizer
    if getattr(args, "hf", None):
        model = qkv.from_hf(args.hf)
        if not (Path(args.hf) / "tokenizer.json").is_file():
            raise CLIError(f"--hf {args.hf}: no tokenizer.json in the folder")
        return model, Tokenizer.load(Path(args.hf) / "tokenizer.json")
    folder = _model_folder(args.checkpoint)
    return qkv.load(folder), _tokenizer_for(folder)


def _source_args(p):
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--checkpoint", help="a qkv model folder or training output folder (with tokenizer/)")
    g.add_argument("--hf", help="a local Hugging Face folder with tokenizer.json")


def _generate_args(p):
    _source_args(p)
    p.add_argument("--prompt", default="", help="text to continue (default: the empty prompt, from BOS)")
    _decoding_args(p, beams_default=1)
    _compile_arg(p)


def _generate(args):
    import torch
    from .generate import generate, stream
    model, tok = _model_and_tokenizer(args)
    ids = tok.encode(args.prompt)
    if not ids:
        if tok.bos_id is None:
            raise CLIError("--prompt is empty and the tokenizer has no BOS token to start from")
        ids = [tok.bos_id]
    input_ids = torch.tensor([ids])
    print(args.prompt, end="", flush=True)
    if args.num_beams > 1:
        out = generate(model, input_ids, num_beams=args.num_beams, compile=args.compile, **_decoding_kwargs(args))
        print(tok.decode(out[0, len(ids):].tolist()))
        return 0
    for chunk in stream(model, input_ids, decode=tok.decode, compile=args.compile, **_decoding_kwargs(args)):
        print(chunk.text[0], end="", flush=True)  # streaming: each piece as soon as it is decoded
    print()
    return 0


def _translate_args(p):
    _source_args(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--text", action="append", help="a sentence to translate (repeat for more)")
    g.add_argument("--file", help="a file of sentences, one a line")
    _decoding_args(p, beams_default=4)
    _compile_arg(p)
    p.set_defaults(max_new_tokens=60)


def _translate(args):
    from pathlib import Path
    import torch
    from .generate import stream
    from .generate import translate
    model, tok = _model_and_tokenizer(args)
    if model.config.family != "encoder_decoder":
        raise CLIError(f"translate needs an encoder-decoder model; this one is {model.config.family!r} "
                       f"(use `qkv generate`)")
    sentences = args.text or [line for line in Path(args.file).read_text(encoding="utf-8").splitlines()]
    if args.num_beams > 1 and not args.sample:
        for s, t in zip(sentences, translate(model, tok, sentences, num_beams=args.num_beams,
                                             max_new_tokens=args.max_new_tokens, batch_size=1,
                                             compile=args.compile)):
            print(t, flush=True)  # one line per sentence as soon as its beam search ends
        return 0
    for s in sentences:  # greedy or sampling: token by token
        src = torch.tensor([tok.encode(s) + [tok.eos_id]])
        for chunk in stream(model, src, decode=tok.decode, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id,
                            compile=args.compile, **_decoding_kwargs(args)):
            print(chunk.text[0], end="", flush=True)
        print()
    return 0


# -- eval -------------------------------------------------------------------------------------------------------

def _eval_args(p):
    _source_args(p)
    p.add_argument("--data", help="language models: a text file; translation: the source file")
    p.add_argument("--tgt", help="translation: the reference file aligned with --data")
    p.add_argument("--block-size", type=int, help="language models: window length (default: max_positions)")
    p.add_argument("--num-beams", type=int, default=1, help="translation: beam width for BLEU (default: 1)")
    p.add_argument("--max-batches", type=int, default=0, help="stop after this many batches (0: the whole file)")


def _eval(args):
    import math
    from pathlib import Path
    import torch
    import torch.nn.functional as F
    if not args.data:
        raise CLIError("pass --data FILE (and --tgt FILE for translation)")
    model, tok = _model_and_tokenizer(args)
    model.eval()
    if model.config.family == "encoder_decoder":
        if not args.tgt:
            raise CLIError("a translation model: pass --data SOURCE_FILE --tgt REFERENCE_FILE")
        from .data import read_pairs
        from .demo import _bleu
        from .generate import translate
        pairs = read_pairs(args.data, args.tgt)
        if args.max_batches:
            pairs = pairs[: 64 * args.max_batches]
        sources, refs = [s for s, _ in pairs], [t for _, t in pairs]
        hyps = translate(model, tok, sources, num_beams=args.num_beams)
        exact = sum(h == r for h, r in zip(hyps, refs)) / len(refs)
        bleu = _bleu(hyps, refs)
        print(f"sentences {len(refs)}  exact match {100 * exact:.1f}%  BLEU "
              f"{'n/a (pip install sacrebleu)' if bleu is None else f'{bleu:.2f}'}")
        return 0
    if model.config.family != "decoder":
        raise CLIError(f"eval supports language and translation models; this one is {model.config.family!r}")
    ids = torch.tensor(tok.encode(Path(args.data).read_text(encoding="utf-8")))
    block = args.block_size or model.config.max_positions
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


# -- demo -------------------------------------------------------------------------------------------------------

def _demo_args(p):
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo); an interrupted run "
                                                      "resumes from its last checkpoint with its saved tokenizer, a "
                                                      "finished one is evaluated again without training")
    p.add_argument("--src", help="your own source-language file, one sentence a line (default: qkv's generated "
                                 "English -> Spanish task)")
    p.add_argument("--tgt", help="the target-language file aligned with --src")
    p.add_argument("--val-src", help="held-out source file (with --src; default: a share of --src/--tgt is held "
                                     "out, chosen by a hash of each source)")
    p.add_argument("--val-tgt", help="held-out target file (with --val-src)")
    p.add_argument("--max-steps", type=int, help="training steps (default: the demo's tuned value)")
    p.add_argument("--seed", type=int, default=0, help="seed for data, weights and order (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _demo(args):
    import logging
    from .demo import run_demo
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    run_demo(args.out, src=args.src, tgt=args.tgt, val_src=args.val_src, val_tgt=args.val_tgt,
             max_steps=args.max_steps, seed=args.seed, progress=not args.no_progress)
    return 0


# -- explore ----------------------------------------------------------------------------------------------------

def _explore_args(p):
    _source_args(p)
    p.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default: 8000; 0: any free port)")
    p.add_argument("--text", action="append", help="a first sentence (or prompt) to show; repeat for more")
    p.add_argument("--num-beams", type=int, default=4, help="beam width of the beam view (default: 4)")
    p.add_argument("--max-new-tokens", type=int, help="longest output in tokens (default: what the model allows, "
                                                      "at most 60)")
    p.add_argument("--open", action="store_true", help="open the page in the default web browser")


def _explore(args):
    from .explore import Explorer, ExploreInputError, make_server
    model, tok = _model_and_tokenizer(args)
    explorer = Explorer(model, tok, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens)
    examples = []
    for text in args.text or []:
        try:
            examples.append(explorer.example(text))
        except ExploreInputError as e:
            raise CLIError(f"--text {text!r}: {e}") from None
    server = make_server(explorer, port=args.port, examples=examples)
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    print(f"serving the explorer at {url} (this machine only); Ctrl-C stops it", flush=True)
    if args.open:
        import webbrowser
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0


# -- plot -------------------------------------------------------------------------------------------------------

def _plot_args(p):
    p.add_argument("what", choices=("attention", "curves"), help="attention: heatmaps of every layer and head; "
                                                                 "curves: the training curves of a run")
    p.add_argument("--checkpoint", help="attention: a model folder or training output; curves: a training "
                                        "output folder (or give --metrics)")
    p.add_argument("--metrics", help="curves: a metrics.jsonl file")
    p.add_argument("--text", help="attention, language models and encoders: the text to look at")
    p.add_argument("--src", help="attention, translation models: the source sentence")
    p.add_argument("--tgt", help="attention, translation models: the target sentence (default: the model's own "
                                 "greedy translation)")
    p.add_argument("--out", default="attention.png", help="the PNG to write (default: attention.png); the HTML "
                                                          "explorer goes beside it with --html")
    p.add_argument("--html", action="store_true", help="also write the interactive explorer (OUT with .html)")


def _plot(args):
    from pathlib import Path
    from . import viz
    out = Path(args.out)
    if args.what == "curves":
        metrics = Path(args.metrics) if args.metrics else None
        if metrics is None:
            if not args.checkpoint:
                raise CLIError("plot curves needs --metrics FILE or --checkpoint RUN_FOLDER")
            run = Path(args.checkpoint)
            metrics = next((m for m in (run / "metrics.jsonl", run / "train" / "metrics.jsonl") if m.is_file()), None)
            if metrics is None:
                raise CLIError(f"--checkpoint {run}: no metrics.jsonl there (nor in train/)")
        viz.plot_curves(metrics, out)
        print(f"wrote {out}")
        return 0
    if not args.checkpoint:
        raise CLIError("plot attention needs --checkpoint")
    import torch
    import qkv
    folder = _model_folder(args.checkpoint)
    model = qkv.load(folder)
    tok = _tokenizer_for(folder)
    if model.config.family == "encoder_decoder":
        if not args.src:
            raise CLIError("a translation model: pass --src (and optionally --tgt)")
        from .demo import attention_maps
        from .generate import translate
        tgt = args.tgt if args.tgt is not None else translate(model, tok, [args.src])[0]
        maps = attention_maps(model, tok, args.src, tgt)
    else:
        if not args.text:
            raise CLIError("pass --text")
        ids = tok.encode(args.text)
        tokens = tok.tokens(args.text)
        with torch.no_grad():
            result = model(torch.tensor([ids]), return_weights=True)
        weights = result[1]
        kind = "masked" if model.config.family == "decoder" else "self"
        maps = [viz.AttentionMaps.from_batch(kind, [w.self_attn for w in weights], tokens, tokens)]
    for m in maps:
        path = out if len(maps) == 1 else out.with_name(f"{out.stem}_{m.kind}{out.suffix}")
        viz.plot_attention(m, path, title=f"{m.kind} attention")
        print(f"wrote {path}")
    if args.html:
        viz.explorer_html(maps, out.with_suffix(".html"))
        print(f"wrote {out.with_suffix('.html')}")
    return 0


# -- bench ------------------------------------------------------------------------------------------------------

def _bench_args(p):
    p.add_argument("name", nargs="?", help="which benchmark (a script in bench/); none: list them")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed on to the script (see its --help)")


def _bench(args):
    import subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "bench"
    scripts = sorted(p.stem for p in root.glob("*.py")) if root.is_dir() else []
    if not scripts:
        raise CLIError("the bench/ scripts ship with the source tree, not the installed package: run from a clone")
    if not args.name:
        print("benchmarks (qkv bench NAME [args]):\n  " + "\n  ".join(scripts))
        return 0
    if args.name not in scripts:
        raise CLIError(f"unknown benchmark {args.name!r}; available: {', '.join(scripts)}")
    return subprocess.call([sys.executable, str(root / f"{args.name}.py"), *args.args])


COMMANDS: dict[str, Command] = {
    "train": Command("train any model on your data: text (LM), parallel files (translation), images (ViT)",
                     "qkv train --preset gpt-char-tiny --data input.txt --max-steps 2000 --out-dir runs/shk",
                     _train_args, _train),
    "generate": Command("continue a prompt with a language model, printing tokens as they come",
                        "qkv generate --checkpoint runs/shk --prompt 'ROMEO:' --max-new-tokens 200 --sample "
                        "--top-k 40 --seed 1", _generate_args, _generate),
    "translate": Command("translate sentences with an encoder-decoder model (beam search, or streaming greedy)",
                         "qkv translate --checkpoint runs/demo --text 'three hundred twenty-one'",
                         _translate_args, _translate),
    "eval": Command("loss, perplexity and accuracy on a text file; BLEU and exact match on parallel files",
                    "qkv eval --checkpoint runs/demo --data test.en --tgt test.es --num-beams 4",
                    _eval_args, _eval),
    "demo": Command("the main job: train a small Transformer to translate, then show where it attends",
                    "qkv demo --out runs/demo", _demo_args, _demo),
    "explore": Command("a local web page: type a sentence, see the output, every layer's and head's attention "
                       "and beam search step by step", "qkv explore --checkpoint runs/demo --port 8000",
                       _explore_args, _explore),
    "info": Command("a model's configuration, parameters, FLOPs per token and memory",
                    "qkv info --preset gpt2 --seq-len 1024", _info_args, _info),
    "plot": Command("attention heatmaps (every layer and head) and training curves",
                    "qkv plot attention --checkpoint runs/demo --src 'march 5, 1999' --out attn.png --html",
                    _plot_args, _plot),
    "bench": Command("run a benchmark script from bench/ (each prints its ratio to a peer)",
                     "qkv bench attention --max-T 2048", _bench_args, _bench),
    "convert": Command("checkpoints between formats: Hugging Face folders, RWKV-LM files, qkv folders",
                       "qkv convert --from-hf ./gpt2-hf --out ./gpt2-qkv", _convert_args, _convert),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qkv", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="qkv: build, train, decode and inspect attention models.",
        epilog="examples:\n" + "\n".join(f"  {c.example}" for c in COMMANDS.values())
               + "\n\nEach command explains its options: qkv COMMAND --help")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help, epilog=f"example:\n  {cmd.example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.add_arguments(p)
        p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command].run(args) or 0
    except KeyboardInterrupt:
        print("qkv: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, TypeError, FileNotFoundError, KeyError, RuntimeError) as e:
        if args.debug:
            raise
        print(f"qkv {args.command}: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, CLIError) else 1


if __name__ == "__main__":
    sys.exit(main())
