"""Training batches, drawn in the main process or in ``DataLoader`` worker processes.

A batch is a function of the seed and the step alone (:meth:`PatchSampler.batch`: patch ``i``
of step ``k`` from a generator seeded by (seed, k, i)), so the batches are the same with 0, 1
or 8 workers, on one process or as the slices of a global batch over several
(``part=(rank, world)``), and a resumed run continues with the batches an uninterrupted one
would have drawn.

Workers read and normalize patches ahead of the model (``prefetch`` batches each), each
reading the store itself; dask runs synchronously inside a worker (the parallelism is the
workers'), and torch keeps to one thread there.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from zarrstain.training.sampler import PatchSampler

__all__ = ["StepBatches", "batches"]

logger = logging.getLogger(__name__)


class StepBatches(Dataset):
    """Step → that step's batch ``(inputs, targets, mask, scenes)`` as numpy arrays.

    Parameters
    ----------
    sampler
        Where patches come from.
    batch_size
        Patches this process trains on per step.
    part
        ``(rank, world)``: this process's slice of a global batch of ``batch_size × world``
        patches (``(0, 1)``: the whole batch).
    """

    def __init__(self, sampler: PatchSampler, batch_size: int, part: tuple[int, int] = (0, 1)):
        self.sampler, self.batch_size, self.part = sampler, int(batch_size), part

    def __len__(self) -> int:  # steps are indices; any step can be asked for
        return 2**62

    def __getitem__(self, step: int) -> tuple[np.ndarray, ...]:
        rank, _ = self.part
        return self.sampler.batch(int(step), self.batch_size, first=rank * self.batch_size)


def _worker_init(_: int) -> None:
    import dask

    dask.config.set(scheduler="synchronous")  # a forked thread pool would never run


def batches(
    sampler: PatchSampler,
    steps: range,
    batch_size: int,
    *,
    workers: int = 0,
    prefetch: int = 2,
    part: tuple[int, int] = (0, 1),
) -> Iterator[tuple[np.ndarray, ...]]:
    """The batches of ``steps``, in order: drawn here (``workers=0``) or by ``workers``
    processes, ``prefetch`` batches ahead each."""
    dataset = StepBatches(sampler, batch_size, part)
    if workers == 0:
        for step in steps:
            yield dataset[step]
        return
    loader = DataLoader(
        dataset,
        batch_size=None,  # the dataset gives whole batches
        sampler=list(steps),
        num_workers=workers,
        prefetch_factor=prefetch,
        worker_init_fn=_worker_init,
        collate_fn=lambda b: tuple(np.asarray(a) for a in b),
    )
    for batch in loader:
        yield tuple(a.numpy() if isinstance(a, torch.Tensor) else a for a in batch)
