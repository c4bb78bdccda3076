"""``qkv plot``: attention heatmaps of every layer and head of one input (``qkv.viz``; an image-to-text model's
words over its image, ``qkv.viz_image``), and the training curves of a run."""
from __future__ import annotations

from pathlib import Path

import torch

import qkv

from .. import viz
from ..explore import Explorer, attention_maps
from ..models import family_of
from ..tasks.seq2seq import translate
from ..viz_image import caption_figure, load_pixels
from .common import CLIError, Command, encode
from .loading import model_folder, tokenizer_for


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
    p.add_argument("--image", help="attention, image-to-text models: the image to caption (a PNG of the model's size; "
                                   "default: a generated scene)")
    p.add_argument("--out", default="attention.png", help="the one PNG to write (default: attention.png): every "
                                                          "layer and head; a translation model's self, masked and "
                                                          "cross attention stacked in it")
    p.add_argument("--html", action="store_true", help="also write the interactive explorer beside it: OUT with "
                                                       ".html (the only other file written)")
    p.add_argument("--scale", choices=("auto", "linear", "log"), default="auto",
                   help="attention: colour scale of the heatmaps; linear (0 to each head's max) or log (symmetric, 3 "
                        "decades: shows the fading rows of recurrent mixers); auto: log when any layer is not "
                        "softmax attention")


def _plot(args):
    out = _out_file(args.out)
    if args.what == "curves":
        return _curves(args, out)
    return _attention(args, out)


def _out_file(value: str) -> Path:
    """--out as the one file to write: not a folder, and a format matplotlib writes (its suffix), checked before
    any model is loaded."""
    from matplotlib.backend_bases import FigureCanvasBase  # matplotlib: loaded only when a plot is drawn
    out = Path(value)
    if out.is_dir():
        raise CLIError(f"--out {value}: is a folder; expected the file to write, e.g. {out / 'attention.png'}")
    kinds = FigureCanvasBase.get_supported_filetypes()
    if out.suffix.lower().lstrip(".") not in kinds:
        raise CLIError(f"--out {value}: expected a file name ending in .png (or one of "
                       f"{', '.join('.' + k for k in sorted(kinds))})")
    return out


def _curves(args, out: Path) -> int:
    """The training curves of --metrics, or of the run folder --checkpoint (metrics.jsonl there or in train/)."""
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


def _attention(args, out: Path) -> int:
    """The heatmaps of every attention kind of the model over --text (or --src / --tgt, or --image)."""
    if not args.checkpoint:
        raise CLIError("plot attention needs --checkpoint")
    folder = model_folder(args.checkpoint)
    model = qkv.load(folder)
    tok = tokenizer_for(folder)
    record = family_of(model)
    if not record.text and record.has_source:  # image to text: each word beside where it looked (qkv/viz_image.py)
        path, caption = caption_figure(model, tok, args.image, out)
        print(f"wrote {path} ({caption})")
        if args.html:  # the explorer's view of the same image: each word's weights over the cells, the beam search
            example = Explorer(model, tok).image_example(load_pixels(model.config, args.image),
                                                         source=args.image or "generated scene 0")
            viz.explorer_html([example], out.with_suffix(".html"), title="qkv explorer: an image-to-text model")
            print(f"wrote {out.with_suffix('.html')}")
        return 0
    if not record.text:
        raise CLIError(f"plot attention reads text; a {type(model).__name__} model takes images (use qkv.viz on its "
                       f"weights)")
    if not model.layer_mixers():  # the recurrent baseline without attention (rnn_attention 'none'): no alignment
        raise CLIError(f"--checkpoint {args.checkpoint}: this {record.name!r} model has no attention maps: none of its "
                       f"layers attends (as a recurrent model with rnn_attention 'none', whose decoder reads the source "
                       f"through the encoder's final state)")
    scale = args.scale
    if scale == "auto":
        scale = "linear" if all(kind == "attention" for kind, _ in model.layer_mixers()) else "log"
    maps = _maps(args, model, tok, record)
    if not maps:
        raise CLIError(f"--checkpoint {args.checkpoint}: this {record.name!r} model's layers return no attention "
                       f"maps; nothing to plot")
    single = len(maps) == 1
    viz.plot_attention(maps[0] if single else maps, out, title=f"{maps[0].kind} attention" if single else None,
                       scale=scale)
    print(f"wrote {out}: {', '.join(m.kind for m in maps)} attention ({scale} colour scale)")
    if args.html:
        viz.explorer_html(maps, out.with_suffix(".html"))
        print(f"wrote {out.with_suffix('.html')}")
    return 0


def _maps(args, model, tok, record) -> list:
    """The attention maps of one input: a translation model's three kinds over --src and --tgt (default: its own
    greedy translation), a language model's or an encoder's self-attention over --text."""
    if record.has_source:
        if not args.src:
            raise CLIError("a translation model: pass --src (and optionally --tgt)")
        tgt = args.tgt if args.tgt is not None else translate(model, tok, [args.src])[0]
        return attention_maps(model, tok, args.src, tgt)
    if not args.text:
        raise CLIError("pass --text")
    ids = encode(tok, args.text, "--text")
    tokens = tok.tokens(args.text)
    with torch.no_grad():
        result = model(torch.tensor([ids]), return_weights=True)
    weights = result[1]
    kind = "masked" if record.causal else "self"
    return [viz.AttentionMaps.from_batch(kind, [w.self_attn for w in weights], tokens, tokens)]


COMMAND = Command("attention heatmaps (every layer and head) and training curves",
                  "qkv plot attention --checkpoint runs/demo --src 'march 5, 1999' --out attn.png --html",
                  _plot_args, _plot)
