"""How far a growing time-lapse has been written: its complete time points, read from the store.

A microscope that streams OME-Zarr (acquire-zarr, iohub's writers, ome-zarr-py) grows the
time axis of every array and writes each new time point's chunks. Whether a time point is
complete is decided from the store itself, never from the clock:

- the array's shape says how many time points the writer has declared;
- a time point is complete when every chunk (every shard, for sharded arrays) that holds it is
  in the store, or when a later time point is: writers write time points in order, and one
  that skips chunks holding nothing but the fill value (zarr-python's default) leaves those
  keys absent for good;
- a chunk that spans several time points is written as soon as its first time point is, so its
  time points count only once the writer has moved past it (the shape reaches beyond the
  chunk), or when the acquisition is known to be over (``final=True``: the writer closed the
  store, or the expected number of time points is written).

A time point partly written chunk by chunk is therefore never reported complete, whatever the
writer's chunking. Within one chunk (or shard) the store cannot tell: a shard is taken as
written once its key exists, which holds for streaming writers that store a shard when all its
chunks are filled (acquire-zarr), not for one that rewrites a shard plane by plane.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence

import zarr

from zarrstain.io._zarr_compat import chunk_key, list_keys

__all__ = ["complete_time_points"]


def _grid(
    arr: zarr.Array, extent: Sequence[int | None] | None = None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The outer chunk grid's block shape (shards where the array is sharded) and its counts
    (over ``extent`` where it gives a size)."""
    shards = getattr(arr, "shards", None)
    block = tuple(shards) if shards else tuple(arr.chunks)
    sizes = [
        n if extent is None or extent[i] is None else min(n, int(extent[i]))  # type: ignore[arg-type]
        for i, n in enumerate(arr.shape)
    ]
    return block, tuple(math.ceil(n / b) for n, b in zip(sizes, block, strict=True))


def complete_time_points(
    arr: zarr.Array,
    *,
    final: bool = False,
    keys: Iterable[str] | None = None,
    extent: Sequence[int | None] | None = None,
) -> int:
    """How many time points of ``arr`` (time on its first axis), from the first, are complete.

    Parameters
    ----------
    arr
        A (t, ...) array another process may be writing.
    final
        The acquisition is over: the time points of a last, multi-time-point chunk count.
    keys
        The array's store keys, listed already (default: listed here).
    extent
        Per axis, the size that counts (None: all): e.g. the acquired channels only, when
        channels predicted beside them are written after each time point.

    Returns
    -------
    int
        ``n``: time points ``0 … n − 1`` are written in full.
    """
    total = int(arr.shape[0])
    if total == 0:
        return 0
    block, counts = _grid(arr, extent)
    present = set(list_keys(arr) if keys is None else keys)
    per_t = block[0]
    last_full = -1
    for row in range(counts[0]):
        rest = itertools.product(*(range(n) for n in counts[1:]))
        if all(chunk_key(arr, (row, *other)) in present for other in rest):
            last_full = row
    if last_full < 0:
        return 0
    if per_t == 1:  # one time point per chunk: a later complete one vouches for the earlier
        return last_full + 1
    if last_full < counts[0] - 1 or final:  # the writer has moved past this chunk row
        return min((last_full + 1) * per_t, total)
    return min(last_full * per_t, total)
