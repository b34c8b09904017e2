"""Inter-process locks for metadata read-modify-write on local stores.

Two ``zarrstain predict`` processes may write into one plate at once: different scenes (they
touch different image groups, but both update the plate metadata of an ``out`` store) or
different models into the same scene (both grow the same arrays and channel list). Each such
read-modify-write runs under an exclusive ``flock`` on a small file ``.zarrstain.lock`` in the
group's folder, so the second writer sees the first one's result. Stores that are not local
folders (object stores, HTTP) are not locked: one writer per group there.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import zarr

try:  # POSIX; on other systems writers are not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "group_lock"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".zarrstain.lock"


def _folder(group: zarr.Group) -> Path | None:
    root = getattr(group.store, "root", None)
    if root is None or fcntl is None:
        return None
    folder = Path(root) / group.path
    return folder if folder.is_dir() else None


def _reopen(group: zarr.Group) -> zarr.Group:
    """``group`` opened again: a Group object keeps the metadata it was opened with."""
    return zarr.open_group(store=group.store, path=group.path, mode="r+")


@contextlib.contextmanager
def group_lock(group: zarr.Group) -> Iterator[zarr.Group]:
    """Lock ``group`` (local stores) for the block; yields it freshly opened under the lock.

    Use the yielded group: the one passed in may hold metadata from before another writer's
    change, and writing that back would undo the change.
    """
    folder = _folder(group)
    if folder is None:
        yield group
        return
    with open(folder / LOCK_NAME, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield _reopen(group)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
