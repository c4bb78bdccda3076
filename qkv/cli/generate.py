"""``qkv generate``: continue a prompt (or each line of a file) with a language model, printing tokens as they
come; beams, speculative decoding and scores print each output at once."""
from __future__ import annotations

import sys
import time

import torch

import qkv

from ..decoding import GenerationConfig, SpeculativeStats, generate, sliding_context, stream
from ..models import family_of
from .common import CLIError, Command, encode, file_lines, limit_and_eos, on_one_line, warn_loop
from .decoding_flags import check_decoding, decode_lines, decoding_args, decoding_config, generator
from .loading import load_source, model_folder, source_args


def _generate_args(p):
    source_args(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--prompt", default="", help="text to continue (default: the empty prompt, from BOS)")
    g.add_argument("--file", help="a file of prompts, one a line: each prompt and its continuation printed on one "
                                  "line, in the file's order (newlines inside written as \\n; blank lines stay blank)")
    decoding_args(p, GenerationConfig(max_new_tokens=100), speculative=True)
    p.add_argument("--draft", help="speculative decoding: a smaller qkv model folder with the same vocabulary guesses "
                                   "--num-draft-tokens tokens, the model checks them in one pass (greedy: the same "
                                   "tokens; sampling: the same distribution)")


def _draft(args) -> dict:
    """generate's draft_model from --draft (--num-draft-tokens and --prompt-lookup are decoding flags)."""
    if args.draft and args.prompt_lookup_num_tokens:
        raise CLIError("--draft and --prompt-lookup: pass one (prompt lookup is the draft)")
    if not args.draft:
        return {}
    try:
        folder = model_folder(args.draft)
    except CLIError as e:
        raise CLIError(str(e).replace("--checkpoint", "--draft", 1)) from None
    return dict(draft_model=qkv.load(folder))


def _generate(args):
    check_decoding(args)
    lines = None
    if args.file is not None:
        lines = file_lines(args.file, "prompts")
    source = load_source(args)
    model, tok, hf = source.model, source.tokenizer, source.hf
    record = family_of(model)
    if not record.continues:
        hint = "; use `qkv translate` for it" if record.has_source else ""
        raise CLIError(f"generate continues text with a decoder-only language model, but this checkpoint holds an "
                       f"{record.name!r} model{hint}")
    config = decoding_config(args, source.hf_folder)
    spec = _draft(args)
    if lines is not None and not args.stream:
        inputs = [encode(tok, line, f"--file {args.file}", add_special=hf) if line.strip() else None
                  for line in lines]
        if spec or config.prompt_lookup_num_tokens:
            raise CLIError("--draft / --prompt-lookup decode one prompt at a time: add --stream to --file")

        def show(i, tokens, score):
            text = "" if tokens is None else tok.decode(inputs[i] + tokens) if hf else lines[i] + tok.decode(tokens)
            print(on_one_line(text) + (f"\t{score:.4f}" if score is not None else ""), flush=True)
            warn_loop(f"--file {args.file} line {i + 1}", tokens or [], config.max_new_tokens, tok=tok)
        decode_lines(model, inputs, config, args, show)
        return 0
    for line in (lines if lines is not None else [args.prompt]):
        if lines is not None and not line.strip():
            print()
            continue
        _generate_one(args, model, tok, line, hf, config, spec)
    return 0


def _generate_one(args, model, tok, prompt, hf, config, spec):
    """One prompt: streamed token by token (greedy, sampling), or printed at once (beams, speculative, scores)."""
    # --hf: the tokenizer's own template (Llama 3's BOS), as transformers' tokenizer(prompt) does
    ids = encode(tok, prompt, "--prompt", add_special=hf)
    if not ids:
        if tok.bos_id is None:
            raise CLIError("--prompt is empty and the tokenizer has no BOS token to start from")
        ids = [tok.bos_id]
    input_ids = torch.tensor([ids])
    if config.num_beams > 1 or config.num_return_sequences > 1 or spec or config.prompt_lookup_num_tokens or \
            args.show_scores:
        out = _generate_at_once(args, model, input_ids, config, spec)
        _say_sliding(model, len(ids), config)  # said once the run went ahead: a refusal stays one line
        rows, scores = (out.sequences, out.sequences_scores.tolist()) if args.show_scores else (out, None)
        for r, row in enumerate(rows.tolist()):
            # --hf: transformers' batch_decode(skip_special_tokens=True) of prompt + continuation
            text = tok.decode(row) if hf else prompt + tok.decode(row[len(ids):])
            print(text + (f"\t{scores[r]:.4f}" if scores else ""))
        if len(rows) == 1:
            warn_loop(f"--prompt {prompt!r}", rows[0, len(ids):].tolist(), *limit_and_eos(config, model, len(ids)),
                      tok=tok)
        return 0
    if not hf:
        print(prompt, end="", flush=True)
    shown, generated = "", []
    decode = (lambda new: tok.decode(ids + new)) if hf else tok.decode
    try:
        for chunk in stream(model, input_ids, config, decode=decode, generator=generator(args)):
            generated.append(int(chunk.tokens[0]))
            shown += chunk.text[0]
            print(chunk.text[0], end="", flush=True)  # streaming: each piece as soon as it is decoded
    except BaseException:
        print(flush=True)  # end the echoed line: an error (or ^C) then starts on a line of its own
        raise
    if hf:  # what the stream held back (an unfinished character), so the line ends as transformers' text does
        final = tok.decode(ids + generated)
        print(final[len(shown):] if final.startswith(shown) else "\n" + final, end="")
    print()
    _say_sliding(model, len(ids), config)  # after the text: a refusal stays one line, the stream one block
    warn_loop(f"--prompt {prompt!r}", generated, *limit_and_eos(config, model, len(ids)), tok=tok)
    return 0


def _say_sliding(model, prompt_length: int, config) -> None:
    """One line on stderr when the decode runs past the model's learned positions (the context slides)."""
    found = sliding_context(model, prompt_length, limit_and_eos(config, model, prompt_length)[0])
    if found is not None:
        print(f"qkv generate: {found.describe()}", file=sys.stderr)


def _generate_at_once(args, model, input_ids, config, spec):
    """generate() for beams, scores and speculative decoding. Speculative: its acceptance on stderr and, with
    --show-scores, plain decoding of the same prompt run and timed after it (tokens per second of both)."""
    speculative = bool(spec) or config.prompt_lookup_num_tokens is not None
    if speculative and args.show_scores:  # timed: one-time costs (first kernels, packing) paid before, by both
        for warm in (model, *spec.values()):
            generate(warm, input_ids, max_new_tokens=2)
    stats, start = SpeculativeStats(), time.perf_counter()
    out = generate(model, input_ids, config, return_scores=args.show_scores, generator=generator(args),
                   **(dict(spec, speculative_stats=stats) if speculative else {}))
    took = time.perf_counter() - start
    if speculative:
        print(f"qkv generate: {stats.describe()}", file=sys.stderr)
    if speculative and args.show_scores:
        start = time.perf_counter()
        plain = generate(model, input_ids, config.replace(prompt_lookup_num_tokens=None), generator=generator(args))
        plain_took = time.perf_counter() - start
        T = input_ids.shape[1]
        fast, slow = (out.sequences.shape[1] - T) / took, (plain.shape[1] - T) / plain_took
        same = "" if config.do_sample else f"; the same tokens: {'yes' if torch.equal(out.sequences, plain) else 'NO'}"
        print(f"qkv generate: {fast:.1f} tokens/s speculative vs {slow:.1f} tokens/s plain decoding of the same "
              f"prompt ({fast / slow:.2f}x){same}", file=sys.stderr)
    return out


COMMAND = Command("continue a prompt with a language model, printing tokens as they come",
                  "qkv generate --checkpoint runs/shakespeare --prompt 'ROMEO:' --max-new-tokens 200 --sample "
                  "--top-k 40 --seed 1", _generate_args, _generate)
