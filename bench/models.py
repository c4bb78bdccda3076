"""Claim: qkv's GPT-2 and BERT are no slower than transformers' at the same size, forward and training step.

Both models get the same config and the same weights (transformers model -> save_pretrained -> qkv.from_hf, the
production converter), run in the same process, alternating, on the same inputs. The training step is forward +
backward + AdamW step on the LM loss (GPT-2: next token; BERT: masked-LM head on every position, with a padded
batch). Prints milliseconds (median of --repeat runs), the ratio qkv / peer, and the command.

    PYTHONPATH=. python bench/models.py                      # CPU, float32, 6 layers x 384, batch 4 x 128, vocab 8192
    PYTHONPATH=. python bench/models.py --device cuda --dtype bfloat16 --layers 12 --width 768 --compile
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

import qkv


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--heads", type=int, default=None, help="default: width / 64")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--vocab", type=int, default=8192,
                   help="vocabulary of both models (0: the real one, GPT-2 50257 / BERT 30522). The default keeps "
                        "the output matmul, identical code in both, from drowning the blocks being compared")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--models", default="gpt2,bert")
    return p.parse_args(argv)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, warmup, repeat):
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def _pair(args, device, dtype):
    """(name, qkv model, peer model, qkv logits fn, peer logits fn, inputs) per architecture asked for."""
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    heads = args.heads or max(1, args.width // 64)
    B, T = args.batch, args.seq
    vocab = {"vocab_size": args.vocab} if args.vocab else {}
    out = []
    for name in args.models.split(","):
        if name == "gpt2":
            cfg = transformers.GPT2Config(**vocab, n_embd=args.width, n_layer=args.layers, n_head=heads, n_positions=max(T, 1024),
                                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
            peer = transformers.GPT2LMHeadModel(cfg)
            ids = torch.randint(0, cfg.vocab_size, (B, T), device=device)
            inputs = dict(ids=ids, mask=None)
        elif name == "bert":
            cfg = transformers.BertConfig(**vocab, hidden_size=args.width, num_hidden_layers=args.layers,
                                          num_attention_heads=heads, intermediate_size=4 * args.width,
                                          max_position_embeddings=max(T, 512), hidden_dropout_prob=0.0,
                                          attention_probs_dropout_prob=0.0)
            peer = transformers.BertForMaskedLM(cfg)
            ids = torch.randint(1, cfg.vocab_size, (B, T), device=device)
            mask = torch.ones_like(ids)
            mask[-1, 3 * T // 4:] = 0  # one padded sequence: the realistic batch carries a mask
            inputs = dict(ids=ids, mask=mask)
        else:
            raise SystemExit(f"--models: unknown model {name!r}; known: gpt2, bert")
        with tempfile.TemporaryDirectory() as folder:
            peer.save_pretrained(folder)
            ours = qkv.from_hf(folder)
        peer = peer.to(device=device, dtype=dtype)
        ours = ours.to(device=device, dtype=dtype)
        if name == "gpt2":
            ours_fn = lambda m, x: m(x["ids"])  # noqa: E731
            peer_fn = lambda m, x: m(input_ids=x["ids"]).logits  # noqa: E731
        else:
            ours_fn = lambda m, x: m.mlm_logits(m(x["ids"], x["mask"]))  # noqa: E731
            peer_fn = lambda m, x: m(input_ids=x["ids"], attention_mask=x["mask"]).logits  # noqa: E731
        out.append((name, ours, peer, ours_fn, peer_fn, inputs))
    return out


def _loss(logits, ids, causal):
    if causal:
        logits, ids = logits[:, :-1], ids[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids.reshape(-1))


def main(argv=None):
    args = parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    rows = []
    for name, ours, peer, ours_fn, peer_fn, x in _pair(args, device, dtype):
        with torch.no_grad():
            diff = (ours_fn(ours.eval(), x).float() - peer_fn(peer.eval(), x).float()).abs().max().item()
        runners = {}
        for who, model, fn in (("qkv", ours, ours_fn), ("peer", peer, peer_fn)):
            call = torch.compile(lambda m, x, f=fn: f(m, x)) if args.compile else fn
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

            def forward(model=model, call=call):
                with torch.no_grad():
                    call(model.eval(), x)

            def train_step(model=model, call=call, opt=opt):
                model.train()
                loss = _loss(call(model, x), x["ids"], causal=name == "gpt2")
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            runners[who] = (forward, train_step)
        for i, kind in enumerate(("forward", "train step")):
            times = {"qkv": [], "peer": []}
            for who in times:  # warm both first
                _time(runners[who][i], device, args.warmup, 0)
            for _ in range(args.repeat):  # then alternate, so drift hits both alike
                for who in times:
                    times[who] += _time(runners[who][i], device, 0, 1)
            q, p = statistics.median(times["qkv"]), statistics.median(times["peer"])
            # The ratio is the median of back-to-back pairs: robust to load that drifts during the run.
            ratio = statistics.median(a / b for a, b in zip(times["qkv"], times["peer"]))
            rows.append((name, kind, q, p, ratio, diff))
    import transformers
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, device {args.device}, "
          f"dtype {args.dtype}, compile {args.compile}, threads {torch.get_num_threads()}; {args.layers} layers x "
          f"{args.width} wide, batch {args.batch} x {args.seq} tokens, vocab {args.vocab or 'real'}, median of {args.repeat}")
    print(f"{'model':<6} {'pass':<11} {'qkv ms':>9} {'peer ms':>9} {'qkv/peer':>9} {'max |diff|':>11}")
    for name, kind, q, p, r, diff in rows:
        print(f"{name:<6} {kind:<11} {q:>9.1f} {p:>9.1f} {r:>9.2f} {diff:>11.1e}")
    print("command: PYTHONPATH=. python bench/models.py " + " ".join(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
