"""Write new channels of many images level by level, each level of every image in one dask graph.

One graph per pyramid level (not one per image) keeps every worker busy however small the
images are, and lets dask stream: a store task frees its block as soon as it is written, so
memory depends on the block size, not on the number of images or time points.

Completion is tracked by the chunks themselves. Channels are written through handles with
``write_empty_chunks``, so every chunk written exists as a key, and zarr writes each key
atomically (a temporary file renamed into place on local stores; a single PUT on object stores):
a key that exists is complete. Before a write starts, the chunks it will write are deleted, so
none can be mistaken for new; a resumed write (:attr:`PyramidWrite.done`) lists the keys present
and computes only the missing chunks, level by level.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr

from zarrstain.errors import UnsupportedError
from zarrstain.io._zarr_compat import map_io
from zarrstain.io.blockwrite import (
    FusedBlocks,
    block_tasks,
    combine_ranges,
    compute,
    covered_levels,
    gather,
)
from zarrstain.io.chunkgrid import keys_in, write_grid
from zarrstain.io.pyramid import downsample_to
from zarrstain.progress import PREDICT_PREFIX

__all__ = ["PyramidWrite", "region", "write_pyramids"]

logger = logging.getLogger(__name__)

Finish = Callable[[list[float], list[float], dict[str, Any]], None]


@dataclass
class PyramidWrite:
    """New channels of one image, to be written at every pyramid level.

    Attributes
    ----------
    where
        For messages.
    arrays
        One array handle per level, full resolution first, addressing the channels written
        (see :func:`zarrstain.io._zarr_compat.grown_view`).
    cax
        Index of the channel axis.
    blocks
        ``(data, first_channel)``: full-resolution data in store axes order, written at
        ``first_channel``; lower levels are derived from what was written one level up.
    copies
        ``(per-level data, first_channel)``: channels copied level by level (no derivation).
    time
        ``(t_axis, slice)``: the data covers only these time points.
    record
        Provenance, possibly holding dask values: computed with the full-resolution level.
    done
        Per level, the chunk keys already written by an interrupted run of this same write:
        they are not computed again. None: write every chunk.
    finish
        Called with the display range (minimum, maximum per channel of ``blocks``, from the
        smallest level) and the computed record once every level is written.
    fused
        The same new channels as ``blocks``, computed one task per model block
        (:mod:`zarrstain.io.blockwrite`): used for the levels those tasks can cover.
    """

    where: str
    arrays: list[zarr.Array]
    cax: int
    blocks: list[tuple[da.Array, int]]
    copies: list[tuple[list[da.Array], int]] = field(default_factory=list)
    time: tuple[int, slice] | None = None
    record: dict[str, Any] = field(default_factory=dict)
    done: list[set[str]] | None = None
    finish: Finish | None = None
    fused: FusedBlocks | None = None

    def sources(
        self, level: int, blocks: bool = True
    ) -> Iterator[tuple[da.Array, tuple[slice, ...]]]:
        """(data, region) pairs to store at ``level``, chunk-aligned with its array.

        ``blocks=False``: only the copied channels (the new ones are written elsewhere).
        """
        arr = self.arrays[level]
        for data, start in self.blocks if blocks else ():
            n = data.shape[self.cax]
            if level > 0:
                prev = self.arrays[level - 1]
                above = da.from_array(prev, chunks=write_grid(prev))
                above = above[region(prev.ndim, self.cax, start, n, self.time)]
                target = list(arr.shape)
                target[self.cax] = n
                if self.time is not None:
                    target[self.time[0]] = above.shape[self.time[0]]
                data = downsample_to(above, tuple(target), self.where)
            yield data, region(arr.ndim, self.cax, start, n, self.time)
        for per_level, start in self.copies:
            data = per_level[level]
            yield data, region(arr.ndim, self.cax, start, data.shape[self.cax], self.time)


def region(
    ndim: int, cax: int, start: int, n: int, time: tuple[int, slice] | None = None
) -> tuple[slice, ...]:
    """Channels ``start:start+n`` (and ``time``) of an ``ndim`` array."""
    out = [slice(start, start + n) if i == cax else slice(None) for i in range(ndim)]
    if time is not None:
        out[time[0]] = time[1]
    return tuple(out)


def _missing(
    data: da.Array, where: tuple[slice, ...], arr: zarr.Array, done: set[str] | None
) -> list[tuple[da.Array, tuple[slice, ...]]]:
    """The parts of ``data`` (to be stored at ``where``) whose chunks are not written yet."""
    if not done:
        return [(data, where)]
    origin = [sel.indices(size)[0] for sel, size in zip(where, arr.shape, strict=True)]
    todo = []
    for key, unit in keys_in(arr, where):
        if key in done:
            continue
        part = tuple(
            slice(max(u.start, sel.indices(size)[0]), min(u.stop, sel.indices(size)[1]))
            for u, sel, size in zip(unit, where, arr.shape, strict=True)
        )
        local = tuple(slice(p.start - o, p.stop - o) for p, o in zip(part, origin, strict=True))
        todo.append((data[local], part))
    return todo


def write_pyramids(jobs: list[PyramidWrite]) -> None:
    """Write every job, one dask computation per pyramid level, then call their ``finish``."""
    for job in jobs:
        time = job.time
        if time is not None and any(
            a.shape[time[0]] != job.arrays[0].shape[time[0]] for a in job.arrays
        ):
            raise UnsupportedError(f"{job.where}: its pyramid downsamples t; write all time points")
    n_levels = max((len(job.arrays) for job in jobs), default=0)
    records = [job.record for job in jobs]
    # levels the coarse block tasks write, per job (0: the lazy route writes every level)
    covered = [covered_levels(job.fused, job.arrays) if job.fused else 0 for job in jobs]
    calls, owner, resources = [], [], None
    for i, (job, n) in enumerate(zip(jobs, covered, strict=True)):
        if n and job.fused is not None:
            found = block_tasks(job.fused, job.arrays, n, job.done, job.cax)
            calls += found
            owner += [i] * len(found)
            resources = resources or job.fused.source.resources
    # named as model tasks: they are what runs on GPU workers (and what the cluster counts)
    tasks = gather(PREDICT_PREFIX + "blocks-" + uuid.uuid4().hex, calls, resources)
    if calls:
        logger.info("writing %d block task(s) of %d image(s)", len(calls), len(set(owner)))
    results: list[list[Any]] = [[] for _ in jobs]
    for level in range(n_levels):
        sources, targets, regions = [], [], []
        for job, n in zip(jobs, covered, strict=True):
            if level >= len(job.arrays):
                continue
            arr = job.arrays[level]
            grid = write_grid(arr)
            chunks = tuple(1 if i == job.cax else c for i, c in enumerate(grid))
            done = job.done[level] if job.done else None
            for data, where in job.sources(level, blocks=level >= n):
                data = data.astype(arr.dtype).rechunk(chunks)
                for part, part_region in _missing(data, where, arr, done):
                    sources.append(part)
                    targets.append(arr)
                    regions.append(part_region)
        if sources:  # levels the block tasks cover have none
            logger.info(
                "writing level %d: %d region(s) of %d image(s)", level, len(sources), len(jobs)
            )
        # Sources are aligned with the write grid, so tasks never share a chunk: no lock.
        stored = da.store(sources, targets, regions=regions, lock=False, compute=False)
        if level == 0:
            # Graph optimization fuses layers and drops their annotations: keep the graph as
            # built when tasks ask for resources (model tasks that need a GPU worker).
            optimize = not _wants_resources(sources) and resources is None
            # (only the records holding lazy values, the lazy route's statistics: walking
            # every record's nested dicts costs more than the coarse tasks themselves)
            lazy = [i for i, r in enumerate(records) if _has_dask(r)]
            _, computed, finished = compute(
                stored, [records[i] for i in lazy], tasks, optimize_graph=optimize
            )
            for i, record in zip(lazy, computed, strict=True):
                records[i] = record
            for i, result in zip(owner, finished, strict=True):
                results[i].append(result)
        elif sources:
            compute(stored)
    ranges: list[Any] = [None] * len(jobs)
    for i, (job, n) in enumerate(zip(jobs, covered, strict=True)):
        if n == len(job.arrays):  # the tasks saw every block at the smallest level
            ranges[i] = combine_ranges(results[i])
    lazy = [i for i, r in enumerate(ranges) if r is None]
    for i, r in zip(lazy, compute([_display_range(jobs[i]) for i in lazy])[0], strict=True):
        ranges[i] = r

    def finish(item: tuple[PyramidWrite, tuple[list[Any], list[Any]], dict[str, Any]]) -> None:
        job, (lo, hi), record = item
        if job.finish is not None:
            job.finish(display_values(lo), display_values(hi), _jsonable(record))

    map_io(finish, list(zip(jobs, ranges, records, strict=True)))  # each image's own metadata


def _has_dask(value: Any) -> bool:
    """Whether a record (nested dicts and lists) holds a dask collection."""
    if isinstance(value, dict):
        return any(_has_dask(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_dask(v) for v in value)
    return dask.is_dask_collection(value)


def _display_range(job: PyramidWrite) -> tuple[list[Any], list[Any]]:
    """Lazy minimum and maximum of each new channel, read from the smallest level."""
    smallest = job.arrays[-1]
    lo, hi = [], []
    for data, start in job.blocks:
        n = data.shape[job.cax]
        view = da.from_array(smallest)[region(smallest.ndim, job.cax, start, n, job.time)]
        other = tuple(i for i in range(smallest.ndim) if i != job.cax)
        lo.append(da.nanmin(view, axis=other))
        hi.append(da.nanmax(view, axis=other))
    return lo, hi


def display_values(values: list[Any]) -> list[float]:
    """Computed per-block minima (or maxima) as one flat list of floats."""
    return [float(v) for block in values for v in np.atleast_1d(block)]


def _wants_resources(arrays: list[da.Array]) -> bool:
    return any(
        "resources" in (getattr(layer, "annotations", None) or {})
        for a in arrays
        for layer in a.__dask_graph__().layers.values()
    )


def _jsonable(value: Any) -> Any:
    """Numpy scalars and arrays (computed provenance) as plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray | np.generic):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value
