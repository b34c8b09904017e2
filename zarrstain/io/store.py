"""Open the root group of a zarr store from a path, an fsspec URL or a store object."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import zarr
import zarr.storage
from zarr.abc.store import Store
from zarr.errors import GroupNotFoundError

from zarrstain.errors import NotOmeZarrError, ReadOnlyStoreError, StoreNotFoundError, option

__all__ = [
    "StoreLike",
    "describe_store",
    "has_consolidated",
    "is_remote",
    "open_root",
    "refresh_consolidated",
    "store_location",
]

logger = logging.getLogger(__name__)

StoreLike = str | os.PathLike | Store | zarr.Group


def is_remote(path: Any) -> bool:
    """Whether ``path`` is an fsspec URL (``http://``, ``s3://``...) rather than a local path."""
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def describe_store(path: StoreLike) -> str:
    """The store as the user named it (a trailing slash dropped), for messages."""
    if isinstance(path, zarr.Group):
        return f"{path.store}/{path.path}".rstrip("/")
    if isinstance(path, Store):
        return str(path)
    text = os.fspath(path)
    return text if is_remote(text) else (text.rstrip("/") or text)


def store_location(path: StoreLike) -> str:
    """Where the store is, spelled one way: for fingerprints and provenance.

    ``plate.zarr``, ``./plate.zarr/``, ``/data//plate.zarr`` and a symlink to it are one
    store: local paths are made absolute and resolved; URLs lose doubled and trailing slashes
    in their path. (Messages keep the path as the user typed it: :func:`describe_store`.)
    """
    if isinstance(path, zarr.Group):
        return f"{store_location(path.store)}/{path.path}".rstrip("/")
    if isinstance(path, zarr.storage.LocalStore):
        return str(Path(path.root).resolve())
    if isinstance(path, Store):
        return str(path)
    text = os.fspath(path)
    if is_remote(text):
        scheme, rest = text.split("://", 1)
        host, _, tail = rest.partition("/")
        tail = "/".join(p for p in tail.split("/") if p)
        return f"{scheme}://{host}/{tail}".rstrip("/")
    if text.startswith("file://"):
        text = text[len("file://") :]
    return str(Path(text).expanduser().resolve())


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
                f"write the result to a local store with {option('out=...', '--out')}"
            )
        store = str(path)
    else:
        local = Path(os.fspath(path)).expanduser()
        if not local.exists():
            raise StoreNotFoundError(f"no such store: {name!r}; check the path")
        if mode != "r" and not os.access(local, os.W_OK):
            raise ReadOnlyStoreError(
                f"cannot modify {name} in place: it is not writable; "
                f"write the result to a new store with {option('out=...', '--out')}"
            )
        store = zarr.storage.LocalStore(local, read_only=(mode == "r"))
    try:
        kwargs: dict[str, Any] = {"mode": mode}
        if mode == "r+":
            # A store being modified is read as it is, never from its consolidated metadata
            # (a snapshot that :func:`refresh_consolidated` rewrites after the write).
            kwargs["use_consolidated"] = False
        if storage_options and isinstance(store, str):
            kwargs["storage_options"] = storage_options
        return zarr.open_group(store, **kwargs)
    except (GroupNotFoundError, FileNotFoundError) as exc:
        raise NotOmeZarrError(
            f"{name} is not a zarr group (no .zgroup or zarr.json at its root); "
            "point to the root of an OME-Zarr store"
        ) from exc
    except OSError as exc:  # aiohttp's connection errors, timeouts
        if not isinstance(store, str):
            raise
        raise StoreNotFoundError(
            f"cannot reach {name} ({type(exc).__name__}: {exc}); check the URL and the network"
        ) from None


def has_consolidated(root: zarr.Group) -> bool:
    """Whether the store at ``root`` holds consolidated metadata (v2 ``.zmetadata`` or v3).

    ngff-zarr and others write it by default; readers that find it trust it instead of the
    groups' own metadata, so a store modified in place must have it rewritten.
    """
    if root.metadata.consolidated_metadata is not None:  # opened from it
        return True
    try:
        snapshot = zarr.open_group(root.store, path=root.path, mode="r", use_consolidated=True)
    except (ValueError, KeyError, FileNotFoundError, GroupNotFoundError):
        return False
    return snapshot.metadata.consolidated_metadata is not None


def refresh_consolidated(root: zarr.Group, where: str) -> None:
    """Rewrite the consolidated metadata of ``root``'s store from its groups and arrays.

    Called last, after a write in place is complete: until then readers that use the snapshot
    see the store as it was before the write, which is consistent (no new channel listed).
    """
    logger.info("%s: rewriting its consolidated metadata", where)
    with warnings.catch_warnings():
        # zarr warns that v3 consolidated metadata is not in the spec yet: the store has it
        # already, and leaving it stale would be worse
        warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
        zarr.consolidate_metadata(root.store, path=root.path, zarr_format=root.metadata.zarr_format)
