"""Open the root group of a zarr store from a path, an fsspec URL or a store object."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

import zarr
import zarr.storage
from zarr.abc.store import Store
from zarr.errors import GroupNotFoundError

from ..errors import NotOmeZarrError, ReadOnlyStoreError, StoreNotFoundError

__all__ = ["StoreLike", "describe_store", "is_remote", "open_root"]

logger = logging.getLogger(__name__)

StoreLike = str | os.PathLike | Store | zarr.Group


def is_remote(path: Any) -> bool:
    """Whether ``path`` is an fsspec URL (``http://``, ``s3://``...) rather than a local path."""
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def describe_store(path: StoreLike) -> str:
    """A short human-readable name of the store for messages and provenance."""
    if isinstance(path, zarr.Group):
        return f"{path.store}/{path.path}".rstrip("/")
    if isinstance(path, Store):
        return str(path)
    return os.fspath(path)


def open_root(
    path: StoreLike,
    mode: Literal["r", "r+"] = "r",
    storage_options: dict[str, Any] | None = None,
) -> zarr.Group:
    """Open the root group of an existing zarr store.

    Parameters
    ----------
    path
        A local path, an fsspec URL (``http://``, ``s3://``, ...), a zarr store or a group.
    mode
        ``"r"`` to read, ``"r+"`` to modify an existing store.
    storage_options
        Passed to fsspec for URLs.

    Raises
    ------
    StoreNotFoundError
        Nothing exists at a local ``path``.
    NotOmeZarrError
        ``path`` exists but is not a zarr group.
    ReadOnlyStoreError
        ``mode="r+"`` on a store that cannot be written (HTTP, read-only files).
    """
    if isinstance(path, zarr.Group):
        return path
    name = describe_store(path)
    if isinstance(path, Store):
        store: Any = path
    elif is_remote(path):
        if mode != "r" and str(path).startswith(("http://", "https://")):
            raise ReadOnlyStoreError(
                f"cannot modify {name} in place: HTTP stores are read-only; "
                "write the result to a local store with out=... (CLI: --out)"
            )
        store = str(path)
    else:
        local = Path(os.fspath(path)).expanduser()
        if not local.exists():
            raise StoreNotFoundError(f"no such store: {name!r}; check the path")
        if mode != "r" and not os.access(local, os.W_OK):
            raise ReadOnlyStoreError(
                f"cannot modify {name} in place: it is not writable; "
                "write the result to a new store with out=... (CLI: --out)"
            )
        store = zarr.storage.LocalStore(local, read_only=(mode == "r"))
    try:
        kwargs: dict[str, Any] = {"mode": mode}
        if storage_options and isinstance(store, str):
            kwargs["storage_options"] = storage_options
        return zarr.open_group(store, **kwargs)
    except (GroupNotFoundError, FileNotFoundError) as exc:
        raise NotOmeZarrError(
            f"{name} is not a zarr group (no .zgroup or zarr.json at its root); "
            "point to the root of an OME-Zarr store"
        ) from exc
