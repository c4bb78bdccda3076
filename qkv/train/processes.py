"""Distributed set-up: one process, or several under ``torchrun`` (DDP, or FSDP2 with ``fsdp=True``).

Every process draws the same global batch and keeps its share of the rows; gradients are averaged over processes
by DDP / FSDP, and the loop scales each process's loss so that the average is the sum over all targets divided by
their number: N processes follow one process's loss curve.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from ..nn.block import Block

log = logging.getLogger("qkv.train")


@dataclass
class Processes:
    """This process's place among the run's processes (rank 0 of 1 without torchrun)."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this run started the process group, so it ends it
    fsdp: bool = False  # parameters sharded with FSDP2 (else DDP when world > 1)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the processes, in place."""
        if self.world > 1:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def mean_per(self, total: torch.Tensor, n: int) -> float:
        """The sum of ``total`` over processes divided by ``n`` (at least 1), as a float."""
        return (self.sum(total) / max(n, 1)).item()

    def mean_per_and_any(self, total: torch.Tensor, n: int, flag: bool) -> tuple[float, bool]:
        """(``mean_per(total, n)``, whether ``flag`` is set on any process), in the one all-reduce: processes agree
        on a decision (stop after this step) without another round trip."""
        if self.world == 1:
            return (total / max(n, 1)).item(), flag
        both = torch.stack([total.double().reshape(()), torch.tensor(float(flag), dtype=torch.float64,
                                                                      device=total.device)])
        dist.all_reduce(both, op=dist.ReduceOp.SUM)
        loss_sum, flags = both.tolist()
        return loss_sum / max(n, 1), flags > 0

    def any(self, flag: bool, device) -> bool:
        """Whether ``flag`` is set on any process."""
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, obj) -> list:
        """Every process's ``obj``, in rank order."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()


def setup(device_name: str | None, fsdp: bool) -> tuple[Processes, torch.device]:
    """Join the process group torchrun describes (WORLD_SIZE, LOCAL_RANK...), or none; pick this process's device:
    ``device_name`` or CUDA when available (the local rank's GPU under torchrun), else the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name:
        device = check_device(device_name)
    else:
        device = torch.device(f"cuda:{local}" if world > 1 else "cuda") if torch.cuda.is_available() \
            else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world == 1 and not (dist.is_available() and dist.is_initialized()):
        return Processes(), device
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owns = True
    return Processes(dist.get_rank(), dist.get_world_size(), local, owns, fsdp), device


def check_device(name: str) -> torch.device:
    """``name`` as a torch.device after checking this machine has it; ValueError naming the flag otherwise."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={name!r} (--device): not a device name; expected cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} (--device): no CUDA GPU is available on this machine "
                         f"(torch.cuda.is_available() is False); use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device={name!r} (--device): this machine has {torch.cuda.device_count()} CUDA GPU(s); "
                         f"expected cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={name!r} (--device): MPS is not available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={name!r} (--device): qkv trains on cpu, cuda or mps")
    return device


def wrap(task_loss: nn.Module, procs: Processes, device: torch.device):
    """(the module each micro-step calls, an unsharded CPU copy of the model to save and load through or None).

    FSDP2 shards every block and the root; DDP wraps the task loss; one process calls it directly."""
    shadow = None
    if procs.world > 1 and procs.fsdp:
        from torch.distributed.fsdp import fully_shard
        shadow = copy.deepcopy(task_loss.model).to("cpu")
        for m in task_loss.model.modules():
            if isinstance(m, Block):
                fully_shard(m)
        fully_shard(task_loss)
    runner = task_loss
    if procs.world > 1 and not procs.fsdp:
        runner = nn.parallel.DistributedDataParallel(runner, device_ids=[device] if device.type == "cuda" else None)
    return runner, shadow


def no_sync(runner, task_loss, procs: Processes, *, enabled: bool):
    """Skip the gradient all-reduce on accumulation micro-steps; the last micro-step syncs the sum."""
    if not enabled or procs.world == 1:
        return contextlib.nullcontext()
    if procs.fsdp:
        @contextlib.contextmanager
        def fsdp_no_sync():
            task_loss.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                task_loss.set_requires_gradient_sync(True)
        return fsdp_no_sync()
    return runner.no_sync()


def full_weights(model, shadow, procs: Processes):
    """The model whose weights a checkpoint holds: the model itself, or under FSDP the shadow copy filled with the
    full weights gathered from the shards (on the main process)."""
    if shadow is None:
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if procs.main:
        shadow.load_state_dict(full)
    return shadow


def optimizer_state(task_loss, opt, procs: Processes) -> dict:
    """The optimizer's state, whole (gathered from the shards under FSDP; call ``task_loss.reshard()`` first)."""
    if procs.world > 1 and procs.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        return get_optimizer_state_dict(task_loss, opt, options=StateDictOptions(full_state_dict=True,
                                                                                 cpu_offload=True))
    return opt.state_dict()


def optimizer_groups(task_loss, opt, procs: Processes) -> list[dict]:
    """``opt``'s parameter groups as its saved state names them, read locally (no collective): every setting, and
    the parameters as ids numbered over the groups in order, or (FSDP's full state) as their names."""
    names = {id(p): n for n, p in task_loss.named_parameters()} if procs.world > 1 and procs.fsdp else None
    groups, i = [], 0
    for g in opt.param_groups:
        ids = [names[id(p)] for p in g["params"]] if names else list(range(i, i + len(g["params"])))
        i += len(g["params"])
        groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
    return groups


def load_optimizer(task_loss, opt, state: dict, procs: Processes) -> None:
    if procs.world > 1 and procs.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(task_loss, opt, state, options=StateDictOptions(full_state_dict=True))
    else:
        opt.load_state_dict(state)
