"""Compiling a run's model: regional compilation of its residual blocks, and what "auto" means.

A stack repeats one block, so compiling the block (not the whole model) compiles one graph that every layer reuses,
instead of the whole model's train and eval graphs, and the step still gets the fusions around each matrix product
(norms, GELU, residual adds, casts). Embeddings, head and loss stay eager. Evaluation runs the blocks eagerly (``eager``): a no-grad forward is another graph, and twenty
batches every few hundred steps do not repay its compile.

"auto" (``compile=None``) compiles when the run is long enough to repay the cold compile, on one process, for a
task whose batches keep one shape (a new shape would be a new compile); any failure to compile (no C++ compiler,
an unsupported op) falls back to eager at the first step, with a warning.
"""
from __future__ import annotations

import contextlib
import logging
import shutil

import torch
import torch.nn as nn

from ..nn.block import Block

log = logging.getLogger("qkv.train")

# Steps from which "auto" compiles. gpt-char-tiny (4 x 128, batch 12 x 64) with bf16 autocast, one thread, in CPU
# seconds (less sensitive to a loaded machine than wall time, still noisy): a cold compile of the block cost ~26 s,
# and the compiled step saved ~4.6 ms of ~56 ms (8%), so it repays itself after ~5,700 steps; a 2,000-step run is
# faster eager. Larger models save more per step for a similar compile, so this errs towards eager for them.
COMPILE_MIN_STEPS = 6000


def resolve_compile(setting: bool | None, *, max_steps: int, fixed_shapes: bool, device: torch.device,
                    world: int) -> bool:
    """``setting`` made concrete: True / False as given; None ("auto"): compile when the run has at least
    COMPILE_MIN_STEPS steps, on one process, for fixed-shape batches, where a compiler backend is at hand."""
    if setting is not None:
        return bool(setting)
    return (max_steps >= COMPILE_MIN_STEPS and fixed_shapes and world == 1 and device.type in ("cpu", "cuda")
            and compiler_available(device))


def compiler_available(device: torch.device) -> bool:
    """Whether Inductor can build kernels for ``device``: a C++ compiler for the CPU, Triton for CUDA."""
    if device.type == "cpu":
        return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def compile_blocks(model: nn.Module) -> int:
    """Compile the forward of every residual block of ``model`` (in place); returns how many. Identical blocks share
    one compiled graph (their weights are its inputs)."""
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for b in blocks:
        b.forward = torch.compile(b.forward, dynamic=False)
    return len(blocks)


def uncompile_blocks(model: nn.Module) -> None:
    """Back to the eager forward of every block (undoes ``compile_blocks``)."""
    for m in model.modules():
        if isinstance(m, Block) and "forward" in vars(m):
            del m.forward


def eager():
    """A context in which compiled code runs eagerly (evaluation), where this torch can say so."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()
