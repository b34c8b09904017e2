"""Inter-process locks for metadata read-modify-write on local stores.

Two ``zarrstain predict`` processes may write into one plate at once: different scenes (they
touch different image groups, but both update the plate metadata of an ``out`` store) or
different models into the same scene (both grow the same arrays and channel list). Each such
read-modify-write runs under an exclusive ``flock`` on a lock file named after the group's
absolute path, in the system's temporary folder (``zarrstain-locks/``): nothing is added to the
store, where zarr would warn about a file it does not know. The lock serialises writers on one
machine; stores that are not local folders (object stores, HTTP) are not locked: one writer
per group there.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import zarr

try:  # POSIX; on other systems writers are not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["group_lock", "lock_path"]

logger = logging.getLogger(__name__)


def lock_path(group: zarr.Group) -> Path | None:
    """The lock file for ``group``, or None when it is not in a local folder."""
    root = getattr(group.store, "root", None)
    if root is None or fcntl is None:
        return None
    folder = (Path(root) / group.path).resolve()
    if not folder.is_dir():
        return None
    name = hashlib.sha256(str(folder).encode()).hexdigest()[:32]
    locks = Path(tempfile.gettempdir()) / "zarrstain-locks"
    locks.mkdir(exist_ok=True)
    return locks / f"{name}.lock"


def _reopen(group: zarr.Group) -> zarr.Group:
    """``group`` opened again: a Group object keeps the metadata it was opened with.

    Never from consolidated metadata: that is a snapshot, refreshed only after a write.
    """
    return zarr.open_group(store=group.store, path=group.path, mode="r+", use_consolidated=False)


@contextlib.contextmanager
def group_lock(group: zarr.Group) -> Iterator[zarr.Group]:
    """Lock ``group`` (local stores) for the block; yields it freshly opened under the lock.

    Use the yielded group: the one passed in may hold metadata from before another writer's
    change, and writing that back would undo the change.
    """
    path = lock_path(group)
    if path is None:
        yield group
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield _reopen(group)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
