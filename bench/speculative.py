"""Speculative decoding's speed-up: plain greedy, a draft model, prompt lookup, and transformers' assisted
generation with the same pair, on character-level tinyshakespeare.

A target (default 6 layers x 384, GPT-2 shaped) and a draft (default 1 layer x 128) are trained on the same text
(--steps AdamW steps each on windows of --block characters, bf16 autocast where the device computes bf16
natively), so the draft agrees with the target as a real pair does: both have learned the text, the target
better. The models' positions end at --block, and a prompt plus its new tokens must fit in it: learned position
embeddings past the training window are untrained. With ``--weights DIR`` the pair is saved there on the first run
(about 35 minutes on 2 CPU cores) with a recipe.json, and read back on later ones (``--retrain`` to redo). Each
method then continues the same held-out prompts greedily; the script asserts that every qkv method prints the
target's greedy tokens, counts how many of transformers' outputs agree, and prints per method: tokens/s, the ratio
to qkv's plain greedy, acceptance rate (accepted / proposed guesses) and tokens per target forward pass (the best
of --repeats passes over the prompts). Two ratios close the table, like against like: qkv with the draft against
transformers' assisted generation with the same draft (its default, adaptive number of assistant tokens), and
prompt lookup against transformers' prompt lookup.

Timings depend on the machine and its load: run on a quiet machine (``--threads`` pins torch's threads).

    python bench/speculative.py [--weights runs/bench-speculative] [--quick] [--num-draft-tokens 4]
        [--target-layers 6 --target-width 384 --draft-layers 1 --draft-width 128 --steps 3000 --block 256]
        [--prompt-length 64 --new 192] [--device cuda --dtype bfloat16]
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import qkv  # noqa: E402
from qkv.decoding import SpeculativeStats  # noqa: E402
from qkv.train import native_bf16  # noqa: E402

DATA = Path("/work/shared/data/tinyshakespeare/input.txt")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(DATA), help="tinyshakespeare input.txt (skipped when absent)")
    p.add_argument("--weights", help="folder for the trained pair: read when present, written otherwise")
    p.add_argument("--retrain", action="store_true", help="train again even when --weights holds a pair")
    p.add_argument("--quick", action="store_true", help="a small pair, short training, few prompts (< 2 minutes)")
    p.add_argument("--target-layers", type=int, default=6)
    p.add_argument("--target-width", type=int, default=384)
    p.add_argument("--draft-layers", type=int, default=1)
    p.add_argument("--draft-width", type=int, default=128)
    p.add_argument("--steps", type=int, default=3000, help="AdamW steps for the target (and the draft)")
    p.add_argument("--draft-steps", type=int, help="AdamW steps for the draft (default: --steps)")
    p.add_argument("--block", type=int, default=256,
                   help="training window (characters) = the models' positions: prompt + new tokens must fit in it")
    p.add_argument("--batch", type=int, default=8, help="training windows per step")
    p.add_argument("--prompts", type=int, default=6)
    p.add_argument("--prompt-length", type=int, default=64)
    p.add_argument("--new", type=int, default=192, help="new tokens per prompt")
    p.add_argument("--num-draft-tokens", type=int, default=4)
    p.add_argument("--prompt-lookup", type=int, default=8, help="prompt_lookup_num_tokens")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, help="passes over the prompts per method; the best is kept (default 3, "
                   "--quick 1)")
    p.add_argument("--device", default="cpu", help="where to train and decode (cuda on a GPU machine)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="decoding weights' dtype")
    p.add_argument("--skip-hf", action="store_true", help="leave transformers' assisted generation out")
    args = p.parse_args(argv)
    if args.quick:
        args.target_layers, args.target_width, args.draft_layers, args.draft_width = 4, 128, 1, 64
        args.steps, args.block, args.prompts, args.prompt_length, args.new = 150, 128, 3, 32, 64
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    counts = ("target_layers", "target_width", "draft_layers", "draft_width", "block", "batch", "prompts",
              "prompt_length", "new", "num_draft_tokens", "prompt_lookup", "threads", "repeats")
    for name in counts + ("steps", "draft_steps"):
        value = getattr(args, name)
        if value is not None and value < (1 if name in counts else 0):
            p.error(f"--{name.replace('_', '-')} {value}: expected an int >= {1 if name in counts else 0}")
    if args.prompt_length + args.new > args.block:  # learned positions past the training window are untrained
        p.error(f"--prompt-length {args.prompt_length} + --new {args.new} = {args.prompt_length + args.new} "
                f"positions; expected at most --block {args.block}, the window the pair is trained on")
    return args


def config(vocab: int, layers: int, width: int, max_positions: int):
    return qkv.preset("gpt2-tiny", vocab_size=vocab, d_model=width, n_layers=layers, n_heads=max(width // 64, 2),
                      max_positions=max_positions, dropout=0.0, bos_token_id=None, eos_token_id=None,
                      pad_token_id=None)  # no EOS: every method writes --new tokens


def train(model, data: torch.Tensor, steps: int, block: int, batch: int, seed: int, label: str,
          device: torch.device):
    """AdamW on random windows (warm-up, then cosine decay), bf16 autocast where the device computes bf16
    natively; the weights stay float32."""
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, fused=True)
    g = torch.Generator().manual_seed(seed)
    bf16 = native_bf16(device)
    for step in range(steps):
        lr = 1e-3 * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr
        start = torch.randint(0, len(data) - block - 1, (batch,), generator=g)
        x = torch.stack([data[i: i + block] for i in start]).to(device)  # (batch, block)
        y = torch.stack([data[i + 1: i + block + 1] for i in start]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % max(steps // 5, 1) == 0:
            print(f"  {label}: step {step + 1}/{steps}, loss {loss.item():.3f}", file=sys.stderr, flush=True)
    return model.eval()


def pair(args, text: str):
    """(target, draft, vocabulary) trained now, or read from --weights (whose recipe.json says how they were made)."""
    folder = Path(args.weights) if args.weights else None
    if folder is not None and not args.retrain and (folder / "vocab.json").is_file():
        for part in ("target", "draft"):
            if not (folder / part / "config.json").is_file():
                raise SystemExit(f"--weights {folder}: holds vocab.json but no {part}/ model; pass --retrain to "
                                 f"train the pair there, or another folder")
        vocab = json.loads((folder / "vocab.json").read_text())
        recipe = folder / "recipe.json"
        print(f"pair read from {folder} (--retrain to train again)"
              + (f": {recipe.read_text().strip()}" if recipe.is_file() else ""), file=sys.stderr)
        return qkv.load(folder / "target").eval(), qkv.load(folder / "draft").eval(), vocab
    vocab = sorted(set(text))
    data = torch.tensor([vocab.index(c) for c in text], dtype=torch.long)
    device = torch.device(args.device)
    torch.manual_seed(0)  # each model's initialisation and batches come from its own seed
    target = train(qkv.build(config(len(vocab), args.target_layers, args.target_width, args.block)), data,
                   args.steps, args.block, args.batch, 0, "target", device)
    torch.manual_seed(1)
    draft = train(qkv.build(config(len(vocab), args.draft_layers, args.draft_width, args.block)), data,
                  args.draft_steps or args.steps, args.block, args.batch, 1, "draft", device)
    if folder is not None:
        target.save(folder / "target")
        draft.save(folder / "draft")
        (folder / "vocab.json").write_text(json.dumps(vocab))
        recipe = {k: getattr(args, k) for k in ("target_layers", "target_width", "draft_layers", "draft_width",
                                                 "steps", "draft_steps", "block", "batch", "device")}
        (folder / "recipe.json").write_text(json.dumps(recipe) + "\n")
    return target, draft, vocab


def timed(run, prompts, repeats: int = 1):
    """(tokens/s over all prompts, outputs) after one warm-up run on the first prompt: the best of ``repeats``
    passes over the prompts (the least disturbed one, as timeit takes the minimum)."""
    run(prompts[0])
    best = 0.0
    for _ in range(repeats):
        outputs, new, start = [], 0, time.perf_counter()
        for ids in prompts:
            out = run(ids)
            outputs.append(out[0, ids.shape[1]:].tolist())
            new += out.shape[1] - ids.shape[1]
        best = max(best, new / (time.perf_counter() - start))
    return best, outputs


def main(argv=None):
    args = parse_args(argv)
    if not Path(args.data).is_file():
        print(f"skipped: {args.data} is not a file (tinyshakespeare's input.txt)")
        return 0
    torch.set_num_threads(args.threads)
    try:
        text = Path(args.data).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        print(f"--data {args.data}: cannot be read as UTF-8 text ({e})", file=sys.stderr)
        return 2
    held_out = text[int(0.9 * len(text)):]
    step = len(held_out) // (args.prompts + 1)
    if int(0.9 * len(text)) <= args.block + 1 or step < args.prompt_length:
        print(f"--data {args.data}: {len(text)} characters; expected enough for training windows of --block "
              f"{args.block} in its first 90% and {args.prompts} prompts of {args.prompt_length} in the rest",
              file=sys.stderr)
        return 2
    target, draft, vocab = pair(args, text[: int(0.9 * len(text))])
    unknown = sorted(set(held_out) - set(vocab))
    if unknown:
        source = f"--weights {args.weights}" if args.weights else "the first 90% of --data"
        print(f"the pair's vocabulary (from {source}) lacks {''.join(unknown[:10])!r}, which the held-out prompts "
              f"of --data {args.data} use", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    target, draft = target.to(args.device, dtype), draft.to(args.device, dtype)
    prompts = [torch.tensor([[vocab.index(c) for c in held_out[i * step: i * step + args.prompt_length]]],
                            device=args.device) for i in range(args.prompts)]
    common = dict(max_new_tokens=args.new, eos_token_id=())
    rows = []

    def qkv_method(name, **kwargs):
        stats = SpeculativeStats()
        rate, outputs = timed(lambda ids: qkv.generate(target, ids, speculative_stats=stats, **common, **kwargs)
                              if kwargs else qkv.generate(target, ids, **common), prompts, args.repeats)
        rows.append((name, rate, stats if kwargs else None))
        return outputs

    with torch.inference_mode():
        greedy = qkv_method("qkv greedy")
        for name, kwargs in ((f"qkv draft (K={args.num_draft_tokens})",
                              dict(draft_model=draft, num_draft_tokens=args.num_draft_tokens)),
                             (f"qkv draft (adaptive K from {args.num_draft_tokens})",
                              dict(draft_model=draft, num_draft_tokens=args.num_draft_tokens, adaptive_draft=True)),
                             (f"qkv prompt lookup ({args.prompt_lookup})",
                              dict(prompt_lookup_num_tokens=args.prompt_lookup))):
            outputs = qkv_method(name, **kwargs)
            assert outputs == greedy, f"{name} changed the greedy tokens"
        hf_rows = hf_methods(args, target, draft, prompts, greedy) if not args.skip_hf else []
    report(args, rows, hf_rows)
    print("reproduce: python bench/speculative.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0


def report(args, rows, hf_rows):
    """The table: each method's tokens/s, its ratio to plain greedy, acceptance and tokens per target pass."""
    base = rows[0][1]
    print(f"\ntarget {args.target_layers}x{args.target_width}, draft {args.draft_layers}x{args.draft_width}, "
          f"{args.prompts} prompts of {args.prompt_length} characters, {args.new} new tokens each, greedy, "
          f"{args.threads} threads, {args.device}, {args.dtype}, best of {args.repeats} passes")
    print(f"{'method':44s} {'tokens/s':>9s} {'vs greedy':>9s} {'accepted':>9s} {'tok/pass':>9s}")
    for name, rate, stats in rows + hf_rows:
        accepted = f"{stats.acceptance_rate:9.2f}" if stats else f"{'':9s}"
        per_pass = f"{stats.tokens_per_round:9.2f}" if stats else f"{'':9s}"
        print(f"{name:44s} {rate:9.1f} {rate / base:8.2f}x {accepted} {per_pass}")
    print("every qkv method printed the target's greedy tokens (asserted)")
    if hf_rows:  # like against like: the same draft model, and prompt lookup against prompt lookup
        rate = {name.split(" [")[0].split(" (")[0]: r for name, r, _ in rows + hf_rows}
        drafted = max(r for name, r, _ in rows if name.startswith("qkv draft"))
        print(f"qkv with the draft (best K) / transformers assisted, same pair: "
              f"{drafted / rate['transformers assisted']:.2f}x")
        print(f"qkv prompt lookup / transformers prompt lookup: "
              f"{rate['qkv prompt lookup'] / rate['transformers prompt lookup']:.2f}x")


def room_past_the_end(hf_model, extra: int):
    """transformers' assisted generation lets the assistant guess past max_length and has the model check those
    guesses, which reads positions past the trained window; zero rows appended to the position table give those
    positions a place. They only ever shape guesses past the end, which are thrown away: no kept token changes."""
    wpe = hf_model.transformer.wpe
    grown = torch.nn.Embedding(wpe.num_embeddings + extra, wpe.embedding_dim, dtype=wpe.weight.dtype)
    with torch.no_grad():
        grown.weight.zero_()
        grown.weight[: wpe.num_embeddings] = wpe.weight
    hf_model.transformer.wpe = grown
    hf_model.config.n_positions += extra
    return hf_model


def hf_methods(args, target, draft, prompts, greedy):
    """transformers' greedy and assisted generation on the same pair (exported with qkv.to_hf); [] if absent."""
    try:
        import transformers
    except ImportError:
        print("transformers absent: its assisted generation is left out", file=sys.stderr)
        return []
    with tempfile.TemporaryDirectory() as tmp:
        qkv.to_hf(copy.deepcopy(target).cpu().float(), Path(tmp) / "t")  # exported in float32 from the host
        qkv.to_hf(copy.deepcopy(draft).cpu().float(), Path(tmp) / "d")
        dtype = getattr(torch, args.dtype)
        load = transformers.AutoModelForCausalLM.from_pretrained
        hf_t, hf_d = (room_past_the_end(load(Path(tmp) / name, dtype=dtype), 64).to(args.device).eval()
                      for name in ("t", "d"))
    kwargs = dict(max_new_tokens=args.new, do_sample=False, pad_token_id=0)
    rows = []
    for name, extra in (("transformers greedy", {}), ("transformers assisted (same draft)", dict(assistant_model=hf_d)),
                        (f"transformers prompt lookup ({args.prompt_lookup})",
                         dict(prompt_lookup_num_tokens=args.prompt_lookup))):
        rate, outputs = timed(lambda ids: hf_t.generate(ids, attention_mask=torch.ones_like(ids), **kwargs, **extra),
                              prompts, args.repeats)
        same = sum(o == g for o, g in zip(outputs, greedy))
        rows.append((f"{name} [{same}/{len(greedy)} = qkv]", rate, None))
    return rows


if __name__ == "__main__":
    sys.exit(main())
