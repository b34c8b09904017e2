"""Every use of zarr's non-public API, in one place, each pinned by a contract test.

zarrstain needs four things zarr does not expose publicly:

- :func:`grown_view`: a handle that writes chunks beyond an array's stored shape without
  writing its metadata (crash-safe appends: readers see the old shape until the final resize).
  Built from ``zarr.core.array.Array`` / ``AsyncArray`` and ``ArrayMetadata.update_shape``;
- :func:`list_keys` / :func:`delete_keys`: the store keys under an array, listed and deleted
  (completion of interrupted writes is read from the chunk keys present). Uses
  ``Array.store_path`` and the async store API run through ``zarr.core.sync.sync``;
- :func:`chunk_key`: the key of a chunk (or shard) from its grid coordinates
  (``ArrayMetadata.encode_chunk_key``: ``c/0/1`` in v3, ``0/1`` or ``0.1`` in v2);
- :func:`can_list`: whether the store can list keys (``Store.supports_listing``);
- :func:`write_regions`: several regions of several arrays written in one crossing to zarr's
  event loop (``Array._async_array.setitem`` gathered through ``sync``), so one task's chunks
  are encoded and stored concurrently.

- :func:`create_image`: an image group, its attributes and its arrays created in one call
  (``Group.create_hierarchy`` with array metadata documents made once per layout in memory),
  handles with ``write_empty_chunks``; where the caller has seen that nothing exists there,
  :func:`write_nodes` instead (``zarr.core.metadata.io.save_metadata`` gathered: the
  documents written concurrently, none read).

:func:`map_io` (public API only) runs metadata requests of many images concurrently.

``tests/io/test_zarr_compat.py`` checks each against the installed zarr; the cap on zarr in
``pyproject.toml`` is the newest minor release those tests passed on. When zarr changes one of
these, the contract test names it, and only this module needs to follow.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import zarr
import zarr.storage
from zarr.core.array import Array, AsyncArray
from zarr.core.group import AsyncGroup, GroupMetadata
from zarr.core.metadata.io import save_metadata
from zarr.core.sync import sync

T = TypeVar("T")
R = TypeVar("R")

__all__ = [
    "can_list",
    "chunk_key",
    "delete_keys",
    "grown_view",
    "list_keys",
    "map_io",
    "write_nodes",
    "write_regions",
]

#: threads for :func:`map_io`: requests wait on the store, not on the CPU
IO_THREADS = 8


def map_io(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[fn(x) for x in items]`` on a few threads, in order (the first error is raised).

    For per-image metadata requests (each a round trip to the store: milliseconds on a disk,
    more on an object store), which otherwise run one after another.
    """
    if len(items) <= 1 or IO_THREADS <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(IO_THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


def write_regions(writes: Sequence[tuple[zarr.Array, tuple[slice, ...], Any]]) -> None:
    """``arr[region] = values`` for every ``(arr, region, values)``, concurrently, in one call."""

    async def store() -> None:
        await asyncio.gather(*(a._async_array.setitem(w, v) for a, w, v in writes))

    sync(store())


@functools.lru_cache(maxsize=64)
def _array_metadata(
    zarr_format: int,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: str,
    dims: tuple[str, ...] | None,
) -> Any:
    """The metadata document of such an array, made once in memory (then only copied)."""
    arr = zarr.create_array(zarr.storage.MemoryStore(), shape=shape, chunks=chunks, dtype=dtype,
                            fill_value=0, zarr_format=zarr_format,
                            **image_array_kwargs(zarr_format, dims))  # fmt: skip
    return arr.metadata


def image_array_kwargs(zarr_format: int, dims: Sequence[str] | None) -> dict[str, Any]:
    """``create_array`` settings of an image's arrays: NGFF 0.4 (zarr v2) stores use "/"
    separated chunk keys, NGFF 0.5 (v3) name their dimensions."""
    if zarr_format == 2:
        return {"chunk_key_encoding": {"name": "v2", "separator": "/"}}
    return {"dimension_names": list(dims) if dims else None}


def create_image(
    parent: zarr.Group,
    name: str,
    attributes: dict[str, Any],
    arrays: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]],
    dtype: Any,
    dims: Sequence[str] | None,
    checked: bool = False,
) -> tuple[zarr.Group, list[zarr.Array]]:
    """Create group ``name`` under ``parent`` with ``attributes`` and arrays ``(path, shape,
    chunks)`` (zero-filled) in one call; nothing may exist there yet (``checked``: the caller
    has seen that nothing does, and that the parents exist: nothing is read).

    The arrays are returned with ``write_empty_chunks`` (every written chunk exists, so
    completion can be checked by key). One concurrent round of metadata writes instead of
    one ``create_array`` each (milliseconds apiece in zarr-python, however small the array).
    """
    fmt = parent.metadata.zarr_format
    kind = str(np.dtype(dtype))
    metas = {
        f"{name}/{path}": _array_metadata(
            fmt, tuple(shape), tuple(chunks), kind, tuple(dims) if dims and fmt == 3 else None
        )
        for path, shape, chunks in arrays
    }
    nodes: dict[str, Any] = {name: GroupMetadata(attributes=attributes, zarr_format=fmt), **metas}
    if checked:
        group = write_nodes(parent, nodes)[name]
    else:
        group = dict(parent.create_hierarchy(nodes))[name]
    config = {"write_empty_chunks": True}
    handles = [
        Array(AsyncArray(meta, parent.store_path / key, config=config))
        for key, meta in metas.items()
    ]
    return group, handles


#: metadata documents written concurrently by :func:`write_nodes`
NODES_IN_FLIGHT = 256


def write_nodes(parent: zarr.Group, nodes: dict[str, Any]) -> dict[str, zarr.Group]:
    """Write the metadata documents of new groups and arrays under ``parent`` concurrently,
    reading nothing: the caller has seen that none exists and that their parents do. Returns
    the groups among them, opened.
    """
    base = parent.store_path
    items = list(nodes.items())

    async def save(part: list[tuple[str, Any]]) -> None:
        await asyncio.gather(*(save_metadata(base / key, meta) for key, meta in part))

    # in slices: a plate's 10,000 wells at once would hold 10,000 pending writes (tens of
    # megabytes that the process keeps) for no speed-up over a few hundred in flight
    for first in range(0, len(items), NODES_IN_FLIGHT):
        sync(save(items[first : first + NODES_IN_FLIGHT]))
    return {
        key: zarr.Group(AsyncGroup(meta, base / key))
        for key, meta in nodes.items()
        if isinstance(meta, GroupMetadata)
    }


def grown_view(arr: zarr.Array, shape: tuple[int, ...]) -> zarr.Array:
    """A handle on ``arr`` that addresses ``shape`` without writing any metadata.

    Chunks written through it land at their normal keys, but readers keep the shape stored on
    disk until ``resize``. ``write_empty_chunks`` makes every written chunk exist, so
    completion can be checked by key.
    """
    meta = arr.metadata.update_shape(tuple(shape))
    return Array(AsyncArray(meta, arr.store_path, config={"write_empty_chunks": True}))


def _prefix(arr: zarr.Array) -> str:
    path = arr.store_path.path
    return f"{path}/" if path else ""


def list_keys(arr: zarr.Array) -> set[str]:
    """Keys under ``arr`` in its store, relative to the array (``zarr.json``, ``c/0/0``, ...)."""
    store, prefix = arr.store_path.store, _prefix(arr)

    async def listing() -> list[str]:
        return [key async for key in store.list_prefix(prefix)]

    return {key[len(prefix) :] for key in sync(listing())}


def delete_keys(arr: zarr.Array, keys: Iterable[str]) -> None:
    """Delete these keys (relative to ``arr``) from its store."""
    store, prefix = arr.store_path.store, _prefix(arr)
    doomed = [f"{prefix}{k}" for k in keys]

    async def delete() -> None:
        await asyncio.gather(*(store.delete(k) for k in doomed))

    if doomed:
        sync(delete())


def chunk_key(arr: zarr.Array, coords: tuple[int, ...]) -> str:
    """The key (relative to ``arr``) of the chunk, or shard, at grid position ``coords``."""
    return arr.metadata.encode_chunk_key(tuple(coords))


def can_list(arr: zarr.Array) -> bool:
    """Whether ``arr``'s store can list its keys (HTTP stores may not)."""
    return bool(arr.store_path.store.supports_listing)
