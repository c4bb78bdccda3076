"""nanoGPT's CPU Shakespeare run, trained by qkv and by Hugging Face transformers' GPT-2 side by side.

Claim: qkv's training loop reaches nanoGPT's reported validation loss (~1.88 after 2000 steps of the
character-level run: 4 layers, 4 heads, 128 wide, block 64, batch 12, lr 1e-3 cosine to 1e-4, no dropout) in
about the time the same model takes in transformers. Both models see the very same batches (qkv's WindowSampler,
same seed), the same AdamW (betas 0.9/0.99, weight decay 0.1 on matrices, clip 1.0) and the same schedule, and
are scored on the same validation windows.

    python bench/shakespeare.py [--data PATH] [--steps 2000] [--threads 2] [--skip-hf]
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import qkv  # noqa: E402
from qkv.config import TrainConfig  # noqa: E402
from qkv.tasks import LMBatches, label_smoothed_nll  # noqa: E402
from qkv.train import make_optimizer, prepare_data, train  # noqa: E402

_HERE = Path(__file__).resolve()
# the shared data folder sits beside the repository (or beside the folder of worktrees)
DEFAULT_DATA = next((p / "shared/data/tinyshakespeare/input.txt" for p in _HERE.parents[1:4]
                     if (p / "shared/data/tinyshakespeare/input.txt").is_file()),
                    _HERE.parents[2] / "shared/data/tinyshakespeare/input.txt")


def hf_run(model_config, cfg: TrainConfig, data) -> dict:
    """The same run on transformers' GPT2LMHeadModel, with a plain loop over the same batches."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(cfg.seed)
    hf_cfg = GPT2Config(vocab_size=model_config.vocab_size, n_positions=model_config.max_positions,
                        n_embd=model_config.d_model, n_layer=model_config.n_layers, n_head=model_config.n_heads,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new",
                        layer_norm_epsilon=model_config.norm_eps, bos_token_id=None, eos_token_id=None)
    model = GPT2LMHeadModel(hf_cfg)
    model.config._attn_implementation = "sdpa"
    model.train()
    opt, sched = make_optimizer(model, cfg, torch.device("cpu"))
    batches = LMBatches(data.train.sampler.tokens, data.train.sampler.block_size, cfg.batch_size, seed=cfg.seed)
    t0 = time.perf_counter()
    for step in range(1, cfg.max_steps + 1):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        loss = label_smoothed_nll(logits, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
    model.eval()
    with torch.no_grad():
        losses = [label_smoothed_nll(model(input_ids=x).logits, y).item() for x, y in data.val()]
    wall = time.perf_counter() - t0
    return {"val_loss": sum(losses) / len(losses), "wall_s": wall,
            "params": sum(p.numel() for p in model.parameters())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="tinyshakespeare input.txt")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--eval-steps", type=int, default=50, help="validation batches of 12 windows")
    p.add_argument("--out", default="runs/bench-shakespeare")
    p.add_argument("--skip-hf", action="store_true")
    args = p.parse_args(argv)
    if not Path(args.data).is_file():
        print(f"skipped: {args.data} not found (get tinyshakespeare's input.txt and pass --data)")
        return 0
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    model_config = qkv.preset("gpt-char-tiny", dropout=0.0)
    cfg = TrainConfig(data=args.data, out_dir=args.out, max_steps=args.steps, batch_size=12, block_size=64,
                      lr=1e-3, min_lr=1e-4, warmup_steps=min(100, args.steps // 10), betas=(0.9, 0.99), weight_decay=0.1, grad_clip=1.0,
                      schedule="cosine", eval_every=0, eval_steps=args.eval_steps, log_every=50, seed=1337,
                      keep_last=1, progress=sys.stderr.isatty())
    import shutil
    shutil.rmtree(args.out, ignore_errors=True)
    data = prepare_data(model_config, cfg)
    results = {}
    s = train(model_config, cfg, data=data)
    results["qkv"] = {"val_loss": s.val_loss, "wall_s": s.wall_s,
                      "params": sum(p.numel() for p in qkv.load(s.checkpoint).parameters())}
    if not args.skip_hf:
        try:
            results["transformers"] = hf_run(data.model_config, cfg, data)
        except ImportError:
            print("transformers is not installed: qkv alone")
    print(f"tinyshakespeare char-level, gpt-char-tiny (4L 4H 128d, block 64, batch 12), {args.steps} steps, "
          f"{args.threads} CPU threads; nanoGPT reports val loss ~1.88")
    print(f"{'':14}{'val loss':>10}{'wall s':>10}{'params':>10}")
    for name, r in results.items():
        print(f"{name:14}{r['val_loss']:>10.4f}{r['wall_s']:>10.1f}{r['params']:>10,}")
    if "transformers" in results:
        print(f"time ratio qkv / transformers: {results['qkv']['wall_s'] / results['transformers']['wall_s']:.2f}")
    print(f"reproduce: python bench/shakespeare.py --steps {args.steps} --threads {args.threads}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bench.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
