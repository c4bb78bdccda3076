"""``qkv explore``: a local web page (``qkv.explore``, served on loopback by ``qkv.explore_server``): type a sentence,
see the output, every layer's and head's attention and beam search step by step."""
from __future__ import annotations

import webbrowser

from ..config_args import one_line
from ..demo_folder import saved_examples
from ..explore import ExploreInputError, Explorer
from .. import explore_server  # by module: a test swaps its make_server for a server that stops at once
from .common import CLIError, Command, warn_once
from .loading import model_and_tokenizer, source_args


def _explore_args(p):
    source_args(p)
    p.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default: 8000; 0: any free port)")
    p.add_argument("--text", action="append", help="a first sentence (or prompt; for an image-to-text model "
                                                  "a generated scene's number) to show; repeat for more")
    p.add_argument("--num-beams", type=int, default=4, help="beam width of the beam view (default: 4)")
    p.add_argument("--max-new-tokens", type=int, help="longest output in tokens (default: what the model allows, "
                                                      "at most 60)")
    p.add_argument("--open", action="store_true", help="open the page in the default web browser")


def _examples(args, explorer) -> list:
    """The page's first examples: --text, else a demo folder's (those its explorer.html shows)."""
    examples = []
    for text in args.text or []:
        try:
            examples.append(explorer.example(text))
        except ExploreInputError as e:
            raise CLIError(f"--text {text!r}: {e}") from None
    if not args.text and getattr(args, "checkpoint", None):
        try:
            saved = saved_examples(args.checkpoint)
        except ValueError as e:
            saved = []
            warn_once("examples", f"{one_line(e)}; the explorer opens without the demo's examples")
        for label, text in saved:
            try:
                examples.append(explorer.example(text, label=label))
            except ExploreInputError as e:
                warn_once("examples", f"the demo's example {text!r} is left out: {e}")
    return examples


def _explore(args):
    model, tok = model_and_tokenizer(args)
    explorer = Explorer(model, tok, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens)
    server = explore_server.make_server(explorer, port=args.port, examples=_examples(args, explorer))
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    print(f"serving the explorer at {url} (this machine only); Ctrl-C stops it", flush=True)
    if args.open:
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        server.server_close()
    return 0


COMMAND = Command("a local web page: type a sentence, see the output, every layer's and head's attention "
                  "and beam search step by step", "qkv explore --checkpoint runs/demo --port 8000",
                  _explore_args, _explore)
