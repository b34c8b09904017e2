"""Data-parallel training over several processes, started by ``torchrun`` (the standard).

``torchrun --nproc-per-node 4 $(which zarrstain) train ...`` starts one process per GPU (or
per CPU share, with the gloo backend); each trains on its slice of a global batch of
``batch_size × world`` patches (:meth:`~zarrstain.training.sampler.PatchSampler.batch`: the
same patches one process would draw for that global batch), and the gradients are averaged
over the processes before every optimizer step: what ``DistributedDataParallel`` does, kept
outside the module so that every architecture trains as it is. Every process holds the same
weights; rank 0 alone writes checkpoints and reports progress. BatchNorm layers become
``SyncBatchNorm`` on GPUs (VisCy's ``sync_batchnorm``), so batch statistics span the global
batch; on CPUs torch has no ``SyncBatchNorm``, and each process normalizes by its own slice
(as plain ``DistributedDataParallel`` does). The random numbers a loss draws (a diffusion
step and its noise) come from a torch generator seeded per rank by (seed, rank).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["Ranks", "average_gradients", "broadcast_buffers", "setup", "synchronize"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    started: bool = False  # whether this process group was started here (and ends here)

    @property
    def main(self) -> bool:
        """Whether this process writes checkpoints and reports progress."""
        return self.rank == 0

    def device(self, device: str) -> str:
        """``auto`` on a multi-GPU run: this process's own GPU."""
        if self.world > 1 and device == "auto" and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return device

    def seed_losses(self, seed: int) -> None:
        """Seed torch's generator per rank, so that ranks draw different noise; a single
        process keeps its stream as it was."""
        if self.world > 1:
            torch.manual_seed(int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0]))

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the processes (a loss, for the history)."""
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda()
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def end(self) -> None:
        """End the process group if it was started here."""
        if self.started and dist.is_initialized():
            dist.destroy_process_group()


def setup(device: str) -> Ranks:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1), or a single process.

    The backend is NCCL when this process trains on a GPU, else gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    started = False
    if not dist.is_initialized():
        gpu = (torch.cuda.is_available() and device in ("auto", "cuda")) or device.startswith(
            "cuda"
        )
        if gpu:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if gpu else "gloo")
        started = True
    logger.info("training process %d of %d (backend %s)", rank, world, dist.get_backend())
    return Ranks(rank, world, local, started)


def average_gradients(params: Iterable[torch.Tensor], world: int) -> None:
    """Average every parameter's gradient over the processes (``DistributedDataParallel``'s
    all-reduce), in one flattened buffer."""
    if world == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def synchronize(module: torch.nn.Module, ranks: Ranks) -> torch.nn.Module:
    """Rank 0's weights and buffers everywhere; BatchNorm synchronized on GPUs."""
    if ranks.world == 1:
        return module
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, 0)
    if dist.get_backend() == "nccl":
        module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return module


def broadcast_buffers(module: torch.nn.Module, ranks: Ranks) -> None:
    """Rank 0's buffers (BatchNorm running statistics) everywhere, after each step, as
    ``DistributedDataParallel(broadcast_buffers=True)`` does: the processes validate alike."""
    if ranks.world == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer.data, 0)


def describe(ranks: Ranks) -> dict[str, Any]:
    """For the card: how many processes trained, on which backend."""
    if ranks.world == 1:
        return {}
    return {"processes": ranks.world, "backend": dist.get_backend()}
