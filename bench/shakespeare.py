"""nanoGPT's CPU Shakespeare run: the default `qkv train` command beside its floor and its peers.

Claim (issue 15): the default command

    qkv train --preset gpt-char-tiny --data input.txt --max-steps 2000 --block-size 64 --batch-size 12

reaches nanoGPT's validation loss (1.886 at step 2000) in at most 0.9x nanoGPT's wall time, with no flag a user
must know; and qkv's trainer adds at most 3% over a bare PyTorch loop that trains the same model on the same
batches with the same settings. Rows:

  qkv train     the command itself, as a subprocess: wall of the whole command (start-up included), its final
                val loss, and its training loop's own wall (the summary's wall_s)
  bare loop     the floor: the same model (qkv.build of the run's config.json), the same batches, AdamW and schedule
                (qkv's make_optimizer), the same precision and compile choice (the run's train_config.json, where
                "auto" is resolved), the same evaluations (every eval_every steps, eval_steps batches); a plain loop
  transformers  GPT2LMHeadModel of the same size (exact GELU; GPT-2 always has biases) in that same bare loop
                (skipped without transformers)
  nanoGPT       with --nanogpt DIR: its train.py with the lead's command (SPEED_NOTES), wall of the whole command
                and the val loss it prints at the last step

    python bench/shakespeare.py [--data input.txt] [--steps 2000] [--nanogpt DIR --nanogpt-python PY] [--skip-hf]

Time only on a quiet machine (`uptime` load well under 1): every row runs alone, one after another.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import qkv  # noqa: E402
from qkv.config import ModelConfig, TrainConfig  # noqa: E402
from qkv.tasks import LMBatches, prepare_data  # noqa: E402
from qkv.train import make_optimizer  # noqa: E402
from qkv.train.compiling import compile_blocks, eager  # noqa: E402
from qkv.train.precision import autocast  # noqa: E402

# the shared data folder sits beside the repository (or beside the folder of worktrees)
DEFAULT_DATA = next((p / "shared/data/tinyshakespeare/input.txt" for p in ROOT.parents[:3]
                     if (p / "shared/data/tinyshakespeare/input.txt").is_file()),
                    ROOT.parent / "shared/data/tinyshakespeare/input.txt")
NANOGPT_VAL = 1.886  # nanoGPT's val loss at step 2000 with the command below (SPEED_NOTES, quiet machine)


def qkv_command(data: str, steps: int, out: Path) -> list[str]:
    """The default command; --out-dir, --overwrite and --no-progress only keep the bench's runs apart and quiet."""
    return [sys.executable, "-m", "qkv", "train", "--preset", "gpt-char-tiny", "--data", data, "--max-steps",
            str(steps), "--block-size", "64", "--batch-size", "12", "--out-dir", str(out), "--overwrite",
            "--no-progress"]


def nanogpt_command(python: str, steps: int, out: Path) -> list[str]:
    return [python, "train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
            "--eval_iters=20", "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
            "--n_embd=128", f"--max_iters={steps}", f"--lr_decay_iters={steps}", "--dropout=0.0",
            f"--eval_interval={min(250, steps)}", f"--out_dir={out}"]


def run_qkv(data: str, steps: int, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    done = subprocess.run(qkv_command(data, steps, out), capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(f"qkv train failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    return {"val_loss": summary["val_loss"], "wall_s": wall, "loop_s": summary["wall_s"]}


def run_nanogpt(folder: str, python: str, steps: int, out: Path) -> dict:
    t0 = time.perf_counter()
    done = subprocess.run(nanogpt_command(python, steps, out), capture_output=True, text=True, cwd=folder)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(f"nanoGPT failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    evals = re.findall(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)", done.stdout)
    if not evals:
        raise RuntimeError(f"nanoGPT printed no 'step N: train loss X, val loss Y' line:\n{done.stdout[-2000:]}")
    return {"val_loss": float(evals[-1][2]), "wall_s": wall, "loop_s": None}


def bare_run(model: torch.nn.Module, cfg: TrainConfig, data, forward, *, compile: bool) -> dict:
    """A plain loop: batch, forward under the run's autocast, cross-entropy, backward, clip, AdamW, schedule; the
    same evaluations as the run. ``forward(model, x)`` -> logits (B, T, V)."""
    device = torch.device("cpu")
    if compile:
        compile_blocks(model)
    opt, sched = make_optimizer(model, cfg, device)
    cast = autocast(cfg.precision, device)
    batches = LMBatches(data.train.sampler.tokens, data.train.sampler.block_size, cfg.batch_size, seed=cfg.seed)

    def evaluate() -> float:
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad(), eager(), cast():
            for x, y in data.val():
                logits = forward(model, x)
                total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
                count += y.numel()
        model.train()
        return total / count

    model.train()
    t0 = time.perf_counter()
    val = math.nan
    for step in range(1, cfg.max_steps + 1):
        x, y = next(batches)
        with cast():
            logits = forward(model, x)
        F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps:
            val = evaluate()
    return {"val_loss": val, "wall_s": None, "loop_s": time.perf_counter() - t0}


def hf_model(mc: ModelConfig, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=mc.vocab_size, n_positions=mc.max_positions, n_embd=mc.d_model, n_layer=mc.n_layers,
        n_head=mc.n_heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu",
        layer_norm_epsilon=mc.norm_eps, bos_token_id=None, eos_token_id=None, attn_implementation="sdpa"))
    return model


def table(results: dict) -> str:
    nano = results.get("nanoGPT")
    floor = results.get("bare loop")
    lines = [f"{'':14}{'val loss':>10}{'command s':>11}{'loop s':>9}{'/ nanoGPT':>11}{'/ bare loop':>13}"]
    for name, r in results.items():
        ratio_nano = f"{r['wall_s'] / nano['wall_s']:.3f}" if nano and r["wall_s"] else "-"
        ratio_bare = f"{r['loop_s'] / floor['loop_s']:.3f}" if floor and r["loop_s"] else "-"
        lines.append(f"{name:14}{r['val_loss']:>10.4f}{_s(r['wall_s']):>11}{_s(r['loop_s']):>9}{ratio_nano:>11}"
                     f"{ratio_bare:>13}")
    return "\n".join(lines)


def _s(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="tinyshakespeare's input.txt")
    p.add_argument("--steps", type=int, default=2000, help="training steps of every row (small for a smoke test)")
    p.add_argument("--out", default="runs/bench-shakespeare", help="folder for the runs and bench.json")
    p.add_argument("--skip-hf", action="store_true", help="no transformers row")
    p.add_argument("--nanogpt", metavar="DIR", help="a nanoGPT checkout with data/shakespeare_char prepared")
    p.add_argument("--nanogpt-python", default=sys.executable, help="the Python that runs nanoGPT (its own venv)")
    args = p.parse_args(argv)
    if not Path(args.data).is_file():
        print(f"skipped: {args.data} not found (get tinyshakespeare's input.txt and pass --data)")
        return {}
    out = Path(args.out).resolve()
    results = {"qkv train": run_qkv(args.data, args.steps, out / "qkv")}

    # the floor and transformers: the run's own resolved settings, model config and batches
    cfg = TrainConfig.from_dict(json.loads((out / "qkv/train_config.json").read_text()))
    cfg = cfg.replace(out_dir=str(out / "bare"), overwrite=False, resume=False, tokenizer=str(out / "qkv/tokenizer"))
    mc = ModelConfig.from_dict(json.loads((out / "qkv/config.json").read_text()))
    shutil.rmtree(out / "bare", ignore_errors=True)
    data = prepare_data(mc, cfg)
    torch.manual_seed(cfg.seed)
    results["bare loop"] = bare_run(qkv.build(mc), cfg, data, lambda m, x: m(x), compile=cfg.compile)
    if not args.skip_hf:
        try:
            model = hf_model(mc, cfg.seed)
        except ImportError:
            print("transformers is not installed: no transformers row")
        else:
            results["transformers"] = bare_run(model, cfg, data, lambda m, x: m(input_ids=x).logits, compile=False)
    if args.nanogpt:
        results["nanoGPT"] = run_nanogpt(args.nanogpt, args.nanogpt_python, args.steps, out / "nanogpt")

    print(f"tinyshakespeare characters, gpt-char-tiny (4 layers, 4 heads, 128 wide, block 64, batch 12), {args.steps} "
          f"steps, {torch.get_num_threads()} threads; precision {cfg.precision}, compile {cfg.compile} (the default "
          f"command's own choice); nanoGPT's val loss at 2000 steps: {NANOGPT_VAL}")
    print(table(results))
    print("goal: qkv train's command <= 0.9x nanoGPT's, val loss <= 1.886; loop <= 1.03x the bare loop's")
    print(f"reproduce: python bench/shakespeare.py --steps {args.steps}"
          + (f" --nanogpt {args.nanogpt} --nanogpt-python {args.nanogpt_python}" if args.nanogpt else ""))
    (out / "bench.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
