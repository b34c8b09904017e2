"""Which stored objects a region of an array touches: write units (shards, else chunks) and
the keys present, for resuming and clearing writes."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import zarr

from zarrstain.io._zarr_compat import chunk_key, delete_keys, list_keys

__all__ = ["delete_chunks", "keys_in", "stored_keys", "write_grid"]


def write_grid(arr: zarr.Array) -> tuple[int, ...]:
    """The unit one write task covers: a shard when sharded, else a chunk."""
    return tuple(arr.shards or arr.chunks)


#: the metadata documents beside an array's chunks (zarr v3, v2)
_METADATA = frozenset({"zarr.json", ".zarray", ".zattrs"})


def stored_keys(arr: zarr.Array) -> set[str]:
    """Keys (relative to ``arr``) of the chunks or shards present in the store."""
    return list_keys(arr) - _METADATA


def keys_in(arr: zarr.Array, where: tuple[slice, ...]) -> Iterator[tuple[str, tuple[slice, ...]]]:
    """(key, array region) of every write unit that ``where`` touches."""
    grid = write_grid(arr)
    ranges = []
    for sel, size, step in zip(where, arr.shape, grid, strict=True):
        lo, hi, _ = sel.indices(size)
        ranges.append(range(lo // step, -(-hi // step)) if hi > lo else range(0))
    for coords in itertools.product(*ranges):
        key = chunk_key(arr, coords)
        unit = tuple(
            slice(c * step, min((c + 1) * step, size))
            for c, step, size in zip(coords, grid, arr.shape, strict=True)
        )
        yield key, unit


def delete_chunks(arr: zarr.Array, regions: list[tuple[slice, ...]]) -> int:
    """Delete the stored chunks (shards) that ``regions`` touch; returns how many there were."""
    present = stored_keys(arr)
    doomed = {key for where in regions for key, _ in keys_in(arr, where) if key in present}
    delete_keys(arr, doomed)
    return len(doomed)
