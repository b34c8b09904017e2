"""Coarse writes: one task per model block computes it and writes every pyramid level it covers.

The lazy route (:mod:`zarrstain.io.stream`) stores a dask array level by level: dozens of graph
tasks per field (reading each chunk, normalizing, padding, overlapping, predicting, cropping,
casting, rechunking, storing, then the same again per level). When the values come from a
:class:`BlockSource` (``PredictionPlan.run`` builds one per scene: it reads a block with its
halo straight from the store), each block is one task instead: it computes the block, casts it
as the lazy route would, writes its full-resolution chunks in one zarr call and, in memory,
the lower levels whose chunks it covers entirely. Levels below those (blocks too small to
cover their chunks) are then derived from the store as before.

The result is identical to the lazy route's, chunk for chunk (``tests/engine/test_coarse.py``).
Resuming works as before: a block whose chunks are all stored is skipped.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import dask
import dask.threaded
import numpy as np
import zarr
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from zarrstain.io._zarr_compat import write_regions
from zarrstain.io.chunkgrid import keys_in
from zarrstain.io.pyramid import downsample_block, level_factor

__all__ = [
    "BlockSource",
    "BlockTask",
    "FusedBlocks",
    "block_tasks",
    "compute",
    "covered_levels",
    "fused_blocks",
    "gather",
]

logger = logging.getLogger(__name__)


class BlockSource(Protocol):
    """Computes any block of a scene's (t, c, z, y, x) predictions on its own.

    Attributes
    ----------
    grid
        Block sizes along (t, z, y, x) of the predictions (dask-style chunks, cropped to the
        data's shape): block ``(i, j, k, l)`` covers those cores.
    resources
        dask.distributed resources a block task needs (``{"GPU": 1}``), or None.
    """

    grid: tuple[tuple[int, ...], ...]
    resources: dict[str, float] | None

    def block(self, index: tuple[int, int, int, int]) -> np.ndarray:
        """The predictions of one block, (t, c, z, y, x), as the lazy route computes them."""


@dataclass
class FusedBlocks:
    """A write whose new channels are computed block by block from a :class:`BlockSource`.

    Attributes
    ----------
    source
        The predictions.
    convert
        A block of predictions → the stored values: store axes (``dims``), the arrays' dtype,
        every predicted channel.
    dims
        The store's axes (a subset of t, c, z, y, x in that order).
    picks
        Per region written, the predicted channels it takes and its first channel slot.
    time_start
        The first time point the predictions cover in the store.
    """

    source: BlockSource
    convert: Callable[[np.ndarray], np.ndarray]
    dims: tuple[str, ...]
    picks: list[tuple[list[int], int]]
    time_start: int = 0

    def indices(self) -> list[tuple[int, ...]]:
        """Every block's index, in C order."""
        return [tuple(int(v) for v in i) for i in np.ndindex(*(len(c) for c in self.source.grid))]

    def level0(self, index: tuple[int, ...], pick: int) -> tuple[slice, ...]:
        """The store region (full resolution) of one block's channels ``picks[pick]``."""
        ranges = {}
        for axis, (chunks, i) in zip(
            "tzyx", zip(self.source.grid, index, strict=True), strict=True
        ):
            start = int(sum(chunks[:i]))
            ranges[axis] = slice(start, start + chunks[i])
        t = ranges["t"]
        ranges["t"] = slice(t.start + self.time_start, t.stop + self.time_start)
        channels, first = self.picks[pick]
        ranges["c"] = slice(first, first + len(channels))
        return tuple(ranges[d] for d in self.dims)


@dataclass(frozen=True)
class StoreValues:
    """Predictions (t, c, z, y, x) → stored values: ``convert``, the store's axes, ``dtype``."""

    convert: Callable[[np.ndarray], np.ndarray]
    dims: tuple[str, ...]
    dtype: np.dtype

    def __call__(self, block: np.ndarray) -> np.ndarray:
        values = self.convert(block)
        values = values[tuple(slice(None) if d in self.dims else 0 for d in "tczyx")]
        return values.astype(self.dtype, copy=False)


def fused_blocks(
    blocks: tuple[BlockSource, Callable[[np.ndarray], np.ndarray]] | None,
    dims: tuple[str, ...],
    dtype: np.dtype,
    picks: list[tuple[list[int], int]],
    time: slice | None,
) -> FusedBlocks | None:
    """The :class:`FusedBlocks` of a write given ``(source, convert)``, or None without one."""
    if blocks is None:
        return None
    source, convert = blocks
    values = StoreValues(convert, tuple(dims), np.dtype(dtype))
    return FusedBlocks(source, values, tuple(dims), picks, time.start if time else 0)


def _aligned(where: tuple[slice, ...], arr: zarr.Array) -> bool:
    """Whether ``where`` covers whole write units (chunks or shards) of ``arr``."""
    grid = arr.shards or arr.chunks
    return all(
        s.start % g == 0 and (s.stop % g == 0 or s.stop == n)
        for s, g, n in zip(where, grid, arr.shape, strict=True)
    )


def _shrink(
    where: tuple[slice, ...], factors: Sequence[int], upper: Sequence[int], lower: Sequence[int]
) -> tuple[slice, ...] | None:
    """A region one level down, or None when it does not cover whole downsampling windows."""
    out = []
    for s, f, m, n in zip(where, factors, upper, lower, strict=True):
        if s.start % f or (s.stop % f and s.stop != m):
            return None
        lo, hi = s.start // f, (n if s.stop == m else s.stop // f)
        if hi <= lo:
            return None
        out.append(slice(lo, hi))
    return tuple(out)


def regions(fused: FusedBlocks, arrays: list[zarr.Array], index: tuple[int, ...], levels: int):
    """Per level (up to ``levels``) and pick, the store region of block ``index``."""
    out = [[fused.level0(index, p) for p in range(len(fused.picks))]]
    for k in range(1, levels):
        factors = level_factor(arrays[k - 1].shape, arrays[k].shape)
        down = [_shrink(w, factors, arrays[k - 1].shape, arrays[k].shape) for w in out[-1]]
        if any(d is None for d in down):
            break
        out.append(down)
    return out


def covered_levels(fused: FusedBlocks, arrays: list[zarr.Array]) -> int:
    """How many levels, from full resolution down, the block tasks write (0: none).

    A level is covered when every block's region there is whole write units (so no two tasks
    share a chunk) and whole downsampling windows of the level above.
    """
    covered = len(arrays)
    for index in fused.indices():
        per_level = regions(fused, arrays, index, covered)
        n = 0
        for k, level in enumerate(per_level):
            if not all(_aligned(w, arrays[k]) for w in level):
                break
            n = k + 1
        covered = min(covered, n)
        if covered == 0:
            break
    return covered


def _write_block(
    fused: FusedBlocks,
    arrays: list[zarr.Array],
    index: tuple[int, ...],
    where: list[list[tuple[slice, ...]]],
    done: list[set[str]] | None,
    cax: int,
) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """Compute one block, write its regions at every covered level; min/max at the last one.

    Returns None when an interrupted run already wrote all of it (nothing computed).
    """
    if done is not None and all(
        key in done[k] for k, level in enumerate(where) for w in level
        for key, _ in keys_in(arrays[k], w)
    ):  # fmt: skip
        return None
    values = fused.convert(fused.source.block(index))
    parts = [np.take(values, channels, axis=cax) for channels, _ in fused.picks]
    lows: list[np.ndarray] = []
    highs: list[np.ndarray] = []
    writes: list[tuple[zarr.Array, tuple[slice, ...], np.ndarray]] = []
    for k, level in enumerate(where):
        arr = arrays[k]
        if k > 0:
            shapes = [tuple(s.stop - s.start for s in w) for w in level]
            factors = level_factor(arrays[k - 1].shape, arr.shape)
            parts = [downsample_block(p, factors, s) for p, s in zip(parts, shapes, strict=True)]
        writes += [
            (arr, w, p.astype(arr.dtype, copy=False)) for p, w in zip(parts, level, strict=True)
        ]
    write_regions(writes)  # every level's chunks at once
    other = tuple(i for i in range(values.ndim) if i != cax)
    for part in parts:
        lows.append(np.nanmin(part, axis=other) if part.size else np.array([]))
        highs.append(np.nanmax(part, axis=other) if part.size else np.array([]))
    return lows, highs


@dataclass(frozen=True)
class BlockTask:
    """One block's task (a picklable call): see :func:`_write_block`."""

    fused: FusedBlocks
    arrays: list[zarr.Array]
    index: tuple[int, ...]
    where: list[list[tuple[slice, ...]]]
    done: list[set[str]] | None
    cax: int

    def __call__(self) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
        return _write_block(self.fused, self.arrays, self.index, self.where, self.done, self.cax)


def block_tasks(
    fused: FusedBlocks,
    arrays: list[zarr.Array],
    levels: int,
    done: list[set[str]] | None,
    cax: int,
) -> list[BlockTask]:
    """One task per block, each writing ``levels`` levels; see :func:`_write_block`."""
    return [
        BlockTask(fused, arrays[:levels], index, regions(fused, arrays, index, levels), done, cax)
        for index in fused.indices()
    ]


def gather(name: str, calls: Sequence[Callable[[], Any]], resources: dict | None) -> Delayed:
    """One graph of ``calls`` (one task each, none depending on another) and their results.

    Built as one layer, not one ``dask.delayed`` per call: delayed inspects every argument
    and merges one graph per call, which costs more than the tasks do on a plate of small
    fields. ``resources`` annotate the calls (``{"GPU": 1}`` on a cluster).
    """
    keys = [(name, i) for i in range(len(calls))]
    layer = MaterializedLayer(
        {key: (call,) for key, call in zip(keys, calls, strict=True)},
        annotations={"resources": resources} if resources else None,
    )
    out = f"{name}-results"
    graph = HighLevelGraph(
        {name: layer, out: MaterializedLayer({out: (_results, *keys)})},
        {name: set(), out: {name}},
    )
    return Delayed(out, graph)


def compute(*args: Any, **kwargs: Any) -> tuple[Any, ...]:
    """``dask.compute(*args, **kwargs)``, on the threads where no scheduler is chosen and no
    ``distributed`` client can exist.

    With no scheduler given, dask imports ``distributed`` (~0.1 s once dask and xarray are
    imported) to look for a default client; none exists while ``distributed`` is not
    imported, and dask would then use the threads these graphs default to. A configured
    scheduler or a client is used as before.
    """
    if "distributed" not in sys.modules and dask.config.get("scheduler", None) is None:
        # (the function, not the name "threads": a name makes dask look for a client too)
        return dask.compute(*args, scheduler=dask.threaded.get, **kwargs)
    return dask.compute(*args, **kwargs)


def _results(*values: Any) -> list[Any]:
    return list(values)


def combine_ranges(
    results: list[tuple[list[np.ndarray], list[np.ndarray]] | None],
) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """Per pick, the minimum and maximum over every block; None when a block was skipped."""
    if not results or any(r is None for r in results):
        return None
    lows = [np.fmin.reduce(np.stack(p), axis=0) for p in zip(*(r[0] for r in results), strict=True)]
    highs = [
        np.fmax.reduce(np.stack(p), axis=0) for p in zip(*(r[1] for r in results), strict=True)
    ]
    return lows, highs
