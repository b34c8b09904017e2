"""The record of a write in progress: one format for in-place appends and new images.

Every crash-safe write (:func:`zarrstain.io.channels.begin_append`,
:func:`zarrstain.io.create.begin_create`) goes through the same steps, around this record kept
under the image group's ``attrs["zarrstain"]["pending"]``:

1. **begin**: describe the write (:class:`PendingRecord`); when the group's record is this very
   write and its stale chunks were cleared, resume (chunks already written are kept);
   otherwise store the record uncleared, delete the chunks of the slots it will write (stale
   chunks must not pass for written ones), and mark it cleared;
2. **write**: :func:`zarrstain.io.stream.write_pyramids` fills the slots, skipping chunks
   present on a resume;
3. **finish**: list the channels and replace the record with their provenance, in one
   metadata write.

A record from an older zarrstain without the fields a resume compares is simply not resumed:
the write starts over.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import zarr

from zarrstain.io.chunkgrid import stored_keys

__all__ = ["KEY", "PendingRecord", "begin", "now", "start"]

logger = logging.getLogger(__name__)

KEY = "pending"


def now() -> str:
    """UTC time stamp for provenance."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class PendingRecord:
    """A write in progress.

    Attributes
    ----------
    kind
        ``"append"`` (channels added to an existing image) or ``"create"`` (a new image).
    labels
        The channels written.
    fingerprint
        What produced them (see :func:`zarrstain.predict`); writes without one never resume.
    dtype
        Of the arrays written.
    time
        ``[start, stop]`` of the time points written, or None for all.
    first_new_index
        Appends: the channel index where new channels start.
    copied
        New images: source channels copied before the new ones.
    started, cleared
        When the write began, and whether the stale chunks of its slots are deleted (only
        then may a resume trust the chunks present).
    """

    kind: str
    labels: tuple[str, ...]
    fingerprint: str | None
    dtype: str
    time: tuple[int, int] | None = None
    first_new_index: int | None = None
    copied: tuple[str, ...] = ()
    started: str = ""
    cleared: bool = False

    #: the fields that identify a write (a resume needs all of them equal)
    IDENTITY = ("kind", "labels", "fingerprint", "dtype", "time", "first_new_index", "copied")

    @classmethod
    def describe(
        cls,
        kind: str,
        labels: Sequence[str],
        record: dict[str, Any],
        dtype: Any,
        time: slice | None,
        **extra: Any,
    ) -> PendingRecord:
        """The record of a write of ``labels`` with provenance ``record`` (its fingerprint)."""
        span = (time.start, time.stop) if time is not None else None
        return cls(kind, tuple(labels), record.get("fingerprint"), str(dtype), span, **extra)

    @classmethod
    def of(cls, group: zarr.Group) -> PendingRecord | None:
        """The record stored on ``group``, or None (also for unreadable older records)."""
        raw = (group.attrs.get("zarrstain") or {}).get(KEY)
        if not isinstance(raw, dict):
            return None
        fields = {f.name for f in dataclasses.fields(cls)}
        try:
            values = {k: v for k, v in raw.items() if k in fields}
            values["labels"] = tuple(values.get("labels") or ())
            values["copied"] = tuple(values.get("copied") or ())
            if values.get("time") is not None:
                values["time"] = tuple(values["time"])
            return cls(**values)
        except TypeError:  # a record missing fields this version needs
            return None

    def to_json(self) -> dict[str, Any]:
        """The record as stored (lists, not tuples)."""
        out = dataclasses.asdict(self)
        out["labels"], out["copied"] = list(self.labels), list(self.copied)
        out["time"] = list(self.time) if self.time is not None else None
        return out

    def resumes(self, old: PendingRecord | None) -> bool:
        """Whether ``old`` (the group's record) is this write, interrupted after clearing."""
        if not self.fingerprint or old is None or not old.cleared:
            return False
        return all(getattr(old, k) == getattr(self, k) for k in self.IDENTITY)


def begin(
    group: zarr.Group,
    record: PendingRecord,
    store: Callable[[dict[str, Any]], None],
    clear: Callable[[], None],
    can_resume: bool = True,
) -> bool:
    """Step 1 of a crash-safe write; returns True when an interrupted run is resumed.

    Parameters
    ----------
    group
        The image group holding the record.
    record
        This write.
    store
        Writes ``attrs["zarrstain"]`` (with whatever else the caller writes in the same
        metadata update, e.g. the omero block marking replaced channels incomplete).
    clear
        Deletes (or recreates) the slots' stale chunks.
    can_resume
        False when what the interrupted run left cannot be reused (arrays of another layout).
    """
    if can_resume and record.resumes(PendingRecord.of(group)):
        return True
    prov = dict(group.attrs.get("zarrstain") or {})
    started = dataclasses.replace(record, started=now(), cleared=False)
    store({**prov, KEY: started.to_json()})
    clear()
    store({**prov, KEY: dataclasses.replace(started, cleared=True).to_json()})
    return False


def start(
    group: zarr.Group,
    record: PendingRecord,
    store: Callable[[dict[str, Any]], None],
    clear: Callable[[], None],
    arrays: Callable[[], Sequence[zarr.Array]],
    where: str,
    can_resume: bool = True,
) -> list[set[str]] | None:
    """:func:`begin`, then what a resumed run keeps: the chunk keys of ``arrays()`` (else None).

    ``arrays`` is called after ``clear`` (which may recreate them); ``where`` names the image in
    the log line that says a write is resumed.
    """
    if not begin(group, record, store, clear, can_resume):
        return None
    logger.info("%s: resuming an interrupted write of %s", where, list(record.labels))
    return [stored_keys(a) for a in arrays()]


def fresh(record: PendingRecord) -> dict[str, Any]:
    """Step 1 for a group this write creates: its record, cleared from the start.

    A new group holds no stale chunks, so the record can be written with the group itself
    (one metadata write instead of three). Its arrays are created after it: a run cut short
    before they all exist leaves a record that :func:`begin` does not resume (``can_resume``
    is false without them), so the next run takes the full path.
    """
    return dataclasses.replace(record, started=now(), cleared=True).to_json()
