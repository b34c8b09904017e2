"""The store ``write_channels(out=...)`` writes into: found, created or checked.

A local path, or a prefix of an object store (``s3://``, ``gs://``, ...: created there);
HTTP is read-only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import fsspec
import zarr
import zarr.storage
from zarr.abc.store import Store

from zarrstain.errors import (
    NotOmeZarrError,
    ParameterError,
    ReadOnlyStoreError,
    UnsupportedError,
    option,
)
from zarrstain.io.metadata import ome_attrs, parse_image
from zarrstain.io.repeat import WritePlan, existing_state
from zarrstain.io.store import StoreLike, describe_store, is_remote, open_root

__all__ = ["check_out", "existing_out", "open_or_create_out", "open_out"]


def existing_out(out: StoreLike, mode: str, storage_options: dict | None) -> zarr.Group | None:
    """The ``out`` store's root when it exists (None when it does not)."""
    if isinstance(out, zarr.Group):
        return out
    if not _exists(out, storage_options):
        return None
    try:
        return open_root(out, mode, storage_options)
    except NotOmeZarrError:
        raise ParameterError(
            f"{describe_store(out)} exists and is not a zarr store; choose a new path for "
            f"{option('out=', '--out')}"
        ) from None


def _exists(out: StoreLike, storage_options: dict | None) -> bool:
    if isinstance(out, Store):
        return True
    if not is_remote(out):
        return Path(os.fspath(out)).exists()
    if str(out).startswith(("http://", "https://")):
        raise ReadOnlyStoreError(
            f"cannot write {describe_store(out)}: HTTP stores are read-only; pass a local "
            f"path or an object-store URL (s3://, gs://, ...) as {option('out=', '--out')}"
        )
    fs, where = fsspec.core.url_to_fs(str(out), **(storage_options or {}))
    return bool(fs.exists(where))


def open_out(out: StoreLike, zarr_format: int, storage_options: dict | None) -> zarr.Group:
    """The ``out`` store's root, created (zarr ``zarr_format``) when it does not exist."""
    return open_or_create_out(out, zarr_format, storage_options)[0]


def open_or_create_out(
    out: StoreLike, zarr_format: int, storage_options: dict | None
) -> tuple[zarr.Group, bool]:
    """:func:`open_out`, and whether it created the store (then it holds nothing else)."""
    root = existing_out(out, "r+", storage_options)
    if root is None:
        if is_remote(out):  # a new prefix of an object store
            return zarr.open_group(
                str(out), mode="w-", zarr_format=zarr_format, storage_options=storage_options
            ), True
        store: Any = zarr.storage.LocalStore(Path(os.fspath(out)))
        return zarr.open_group(store, mode="w-", zarr_format=zarr_format), True
    if root.metadata.zarr_format != zarr_format:
        raise UnsupportedError(
            f"{describe_store(out)} is a zarr v{root.metadata.zarr_format} store but the source "
            f"is zarr v{zarr_format}; choose a new out= path"
        )
    return root, False


def check_out(
    out: StoreLike,
    plans: list[WritePlan],
    overwrite: bool,
    storage_options: dict | None,
) -> dict[str, str]:
    """What writing into ``out`` would do, without writing (``dry_run``)."""
    root = existing_out(out, "r", storage_options)
    result = {}
    for plan in plans:
        existing = (root.get(plan.gpath) if plan.gpath else root) if root is not None else None
        done = False
        if isinstance(existing, zarr.Group) and "multiscales" in ome_attrs(existing)[1]:
            where = f"{describe_store(out)}/{plan.gpath}" if plan.gpath else describe_store(out)
            meta = parse_image(existing, where)
            done = existing_state(existing, plan.with_meta(meta), overwrite, where)
        result[plan.scene] = "unchanged" if done else "to write"
    return result
