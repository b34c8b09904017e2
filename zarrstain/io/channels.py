"""Write channels into the pyramid of one image group, in an order that survives a crash.

In-place appends never expose a half-written channel:

1. a ``pending`` record is added to the ``zarrstain`` attributes (no channel is listed yet),
   the chunks about to be written are deleted (leftovers of an earlier, different write) and
   the record is marked ``cleared``;
2. the new channels' chunks are written *beyond* the arrays' visible channel extent, through an
   in-memory view whose metadata has the grown shape: every reader still sees the old shape and
   ignores those chunks;
3. lower pyramid levels are computed from the written full-resolution data, likewise;
4. each level's shape is grown (one atomic metadata write per level);
5. the omero channel list and provenance are written last (one atomic write).

A crash before 4 leaves the store exactly as readers saw it before. Between 4 and 5 the new
channels are complete but unlabeled (readers see index labels). Overwriting an existing channel
first renames it ``"<label> [incomplete]"`` and restores the label only after its data is written.

Resuming: a chunk key exists only once its chunk is completely written (see
:mod:`zarrstain.io.stream`), so when the same write (same labels, fingerprint, dtype and time
points) finds its own cleared ``pending`` record, it computes only the chunks that are missing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import zarr

from zarrstain.errors import UnsupportedError, option
from zarrstain.io._zarr_compat import grown_view
from zarrstain.io.blockwrite import fused_blocks
from zarrstain.io.chunkgrid import delete_chunks
from zarrstain.io.metadata import DIMS, Axis, ImageMeta, canonical_dims, ome_attrs
from zarrstain.io.pending import KEY, PendingRecord, now, start
from zarrstain.io.stream import PyramidWrite, region

__all__ = [
    "INCOMPLETE_SUFFIX",
    "begin_append",
    "channel_entry",
    "full_rdefs",
    "rdefs_with_defaults",
    "set_image_attrs",
    "time_region",
    "to_store_axes",
    "with_time_points",
]

logger = logging.getLogger(__name__)

INCOMPLETE_SUFFIX = " [incomplete]"
_COLORS = ("00FFFF", "FF00FF", "FFFF00", "00FF00", "FF0000", "0000FF", "FFFFFF")


def to_store_axes(data: da.Array, axis_names: tuple[str, ...]) -> da.Array:
    """Drop the (length-1) dims of a (t, c, z, y, x) array that the store's image lacks."""
    index = tuple(slice(None) if d in axis_names else 0 for d in DIMS)
    return data[index]


def channel_entry(label: str, index: int, dtype: np.dtype, lo: float, hi: float) -> dict[str, Any]:
    """An omero channel entry with a display window spanning the data's range."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        dmin, dmax = float(info.min), float(info.max)
    else:
        dmin, dmax = 0.0, 1.0
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:  # unknown or empty range
        lo, hi = dmin, dmax
    return {
        "label": label,
        "color": _COLORS[index % len(_COLORS)],
        "active": True,
        "coefficient": 1.0,
        "family": "linear",
        "inverted": False,
        "window": {
            "start": float(lo),
            "end": float(hi),
            "min": float(min(dmin, lo)),
            "max": float(max(dmax, hi)),
        },
    }


def set_image_attrs(
    group: zarr.Group, *, omero: dict | None = None, zarrstain: dict | None = None
) -> None:
    """Replace the omero and/or zarrstain attributes in one atomic metadata write."""
    _, ome = ome_attrs(group)
    attrs = group.attrs.asdict()
    if omero is not None:
        omero = {**omero, "rdefs": full_rdefs(omero.get("rdefs"), group, ome)}
        if "ome" in attrs:
            attrs["ome"] = {**ome, "omero": omero}
        else:
            attrs["omero"] = omero
    if zarrstain is not None:
        attrs["zarrstain"] = zarrstain
    group.attrs.put(attrs)


def full_rdefs(rdefs: dict | None, group: zarr.Group, ome: dict[str, Any]) -> dict[str, Any]:
    """omero ``rdefs`` with the fields readers need (see :func:`rdefs_with_defaults`), for the
    image ``group`` with OME metadata ``ome``."""
    nz = 1
    try:
        ms = ome["multiscales"][0]
        dims = canonical_dims([Axis(a["name"], a.get("type"), None) for a in ms["axes"]])
        shape = group[ms["datasets"][0]["path"]].shape
        nz = shape[dims.index("z")] if "z" in dims else 1
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        pass  # metadata checked elsewhere; a plane of 0 is always valid
    return rdefs_with_defaults(rdefs, nz)


def rdefs_with_defaults(rdefs: dict | None, nz: int) -> dict[str, Any]:
    """omero ``rdefs`` with the fields readers need: ``defaultT``, ``defaultZ``, ``model``.

    The NGFF omero block is transitional and loosely specified, but OMERO's rendering settings
    define these, and iohub's metadata model requires them (without them it lists no channel
    names). Existing values are kept; the defaults are the first time point and the middle
    z-plane (of ``nz``).
    """
    out = {**(rdefs or {})}
    out.setdefault("model", "color")
    out.setdefault("defaultT", 0)
    out.setdefault("defaultZ", nz // 2)
    return out


def time_region(dims: tuple[str, ...], time: slice | None) -> tuple[int, slice] | None:
    """``(t axis, slice)`` for :class:`~zarrstain.io.stream.PyramidWrite`, or None for all."""
    return None if time is None or "t" not in dims else (dims.index("t"), time)


def begin_append(
    group: zarr.Group,
    meta: ImageMeta,
    data: da.Array,
    labels: list[str],
    record: dict[str, Any],
    where: str,
    time: slice | None = None,
    blocks: tuple[Any, Any] | None = None,
) -> PyramidWrite:
    """Start adding (or overwriting) labeled channels in every level of an image group.

    Writes the ``pending`` record (:mod:`zarrstain.io.pending`; and ``[incomplete]`` labels for
    channels being replaced) and clears the chunks about to be written; returns the write for
    :func:`write_pyramids`, whose ``finish`` grows the arrays and lists the channels. The caller
    holds the group's lock until then. When the group's pending record is this very write (same
    labels, fingerprint, dtype and time points) an interrupted run is resumed: chunks already
    written are kept.

    Parameters
    ----------
    group, meta
        The image group and its validated metadata.
    data
        (t, c, z, y, x) data whose ``c`` entries are ``labels``; already in the store's dtype.
    labels
        Channel labels; those already present are overwritten (the caller checked permission).
    record
        Provenance to store per written label under ``attrs["zarrstain"]["channels"]``; its
        ``fingerprint`` identifies the write for resuming.
    where
        For messages.
    time
        ``data`` holds only these time points (a new channel's other time points stay empty).
    blocks
        ``(source, convert)``: the same data computed one block at a time
        (:func:`zarrstain.io.blockwrite.fused_blocks`), or None.
    """
    cax = _channel_axis(meta, where)
    append = _Append.plan(group, meta, labels, cax, time, where)
    pending = PendingRecord.describe("append", labels, record, append.arrays[0].dtype, time,
                                     first_new_index=append.n0)  # fmt: skip

    def store(prov: dict[str, Any]) -> None:
        set_image_attrs(group, omero=append.omero, zarrstain=prov)

    def clear() -> None:  # stale chunks must not pass for written ones on a resume
        for view in append.views:
            delete_chunks(view, [region(view.ndim, cax, s, n, append.tregion)
                                 for s, n in append.slots])  # fmt: skip

    done = start(group, pending, store, clear, lambda: append.views, where)
    data = to_store_axes(data, meta.axis_names)
    take = lambda idx: da.take(data, idx, axis=cax)  # noqa: E731
    picks = [(append.new, append.n0)] if append.new else []
    picks += [([i], slot) for i, slot in append.replaced]
    fused = fused_blocks(blocks, meta.axis_names, append.arrays[0].dtype, picks, time)
    lazy = [(take(idx), first) for idx, first in picks]
    return PyramidWrite(where, append.views, cax, lazy, [], append.tregion, record, done,
                        append.finish, fused)  # fmt: skip


def _channel_axis(meta: ImageMeta, where: str) -> int:
    """The channel axis of an image that can take channels in place; refuses others."""
    dims = meta.axis_names
    if "c" not in dims:
        raise UnsupportedError(
            f"{where} has no channel axis (axes {''.join(dims)}), so channels cannot be added in "
            f"place; write to a new store with {option('out=...', '--out')}"
        )
    cax = dims.index("c")
    for lvl in meta.levels:
        if lvl.chunks[cax] != 1:
            raise UnsupportedError(
                f"{where}/{lvl.path} stores {lvl.chunks[cax]} channels per chunk; zarrstain adds "
                "channels in place only to stores chunked one channel per chunk; write to a new "
                f"store with {option('out=...', '--out')}"
            )
    return cax


@dataclass
class _Append:
    """Where an append writes (slots, views) and how it finishes (lists the channels)."""

    group: zarr.Group
    labels: list[str]
    arrays: list[zarr.Array]
    views: list[zarr.Array]
    omero: dict[str, Any]
    n0: int
    new: list[int]  # indices (in labels) of channels added after the n0 listed ones
    replaced: list[tuple[int, int]]  # (index in labels, channel slot) of channels overwritten
    tregion: tuple[int, slice] | None
    time: slice | None
    where: str

    @classmethod
    def plan(
        cls,
        group: zarr.Group,
        meta: ImageMeta,
        labels: list[str],
        cax: int,
        time: slice | None,
        where: str,
    ) -> _Append:
        old = PendingRecord.of(group)
        n0 = _listed_channels(group, meta.levels[0].shape[cax])
        # a channel an interrupted overwrite left "[incomplete]" is that label's slot
        unfinished = {lab + INCOMPLETE_SUFFIX: lab for lab in (old.labels if old else ())}
        existing = [unfinished.get(lab, lab) for lab in list(meta.labels)[:n0]]
        new = [i for i, lab in enumerate(labels) if lab not in existing]
        replaced = [(i, existing.index(lab)) for i, lab in enumerate(labels) if lab in existing]
        arrays = [group[lvl.path] for lvl in meta.levels]
        views = [grown_view(arr, _with(arr.shape, cax, n0 + len(new))) for arr in arrays]
        omero = _omero(group, existing, arrays[0].dtype)
        for _, slot in replaced:
            omero["channels"][slot]["label"] = existing[slot] + INCOMPLETE_SUFFIX
        tregion = time_region(meta.axis_names, time)
        return cls(group, labels, arrays, views, omero, n0, new, replaced, tregion, time, where)

    @property
    def slots(self) -> list[tuple[int, int]]:
        """(first channel, count) of every region written."""
        return ([(self.n0, len(self.new))] if self.new else []) + [
            (slot, 1) for _, slot in self.replaced
        ]

    def finish(self, lo: list[float], hi: list[float], computed: dict[str, Any]) -> None:
        """Grow the arrays, then list the channels and their provenance in one write."""
        for arr, view in zip(self.arrays, self.views, strict=True):
            if arr.shape != view.shape:  # grow; or shrink away slots of an interrupted run
                arr.resize(view.shape)
        dtype, channels = self.arrays[0].dtype, self.omero["channels"]
        for k, i in enumerate(self.new):
            channels.append(channel_entry(self.labels[i], self.n0 + k, dtype, lo[k], hi[k]))
        for k, (i, slot) in enumerate(self.replaced):
            m = len(self.new) + k
            entry = channel_entry(self.labels[i], slot, dtype, lo[m], hi[m])
            channels[slot] = {**channels[slot], "label": self.labels[i], "window": entry["window"]}
        prov = dict(self.group.attrs.get("zarrstain") or {})
        prov.pop(KEY, None)
        written = prov.setdefault("channels", {})
        for lab in self.labels:
            previous = written.get(lab) if self.time else None
            written[lab] = with_time_points(computed, previous, self.time)
        set_image_attrs(self.group, omero=self.omero, zarrstain=prov)
        written_labels = ", ".join(repr(x) for x in self.labels)
        logger.info("%s: wrote channels %s", self.where, written_labels)


def _with(shape: tuple[int, ...], axis: int, size: int) -> tuple[int, ...]:
    out = list(shape)
    out[axis] = size
    return tuple(out)


def with_time_points(
    record: dict[str, Any], previous: dict[str, Any] | None, time: slice | None
) -> dict[str, Any]:
    """A label's provenance, with the time points written so far when only some were written."""
    entry = {**record, "written": now()}
    if time is not None:
        done = set(range(time.start, time.stop))
        if previous:
            done |= {t for lo, hi in previous.get("time_points", []) for t in range(lo, hi)}
        runs: list[list[int]] = []
        for t in sorted(done):
            if runs and runs[-1][1] == t:
                runs[-1][1] = t + 1
            else:
                runs.append([t, t + 1])
        entry["time_points"] = runs
    return entry


def _listed_channels(group: zarr.Group, n_stored: int) -> int:
    """Channels that count as present.

    After an interrupted append (shape grown, channel list not yet written) the trailing
    unlisted channels belong to the ``pending`` write; they are reused, not kept.
    """
    pending = (group.attrs.get("zarrstain") or {}).get("pending")
    listed = len((ome_attrs(group)[1].get("omero") or {}).get("channels") or [])
    if pending and 0 < listed < n_stored and pending.get("first_new_index") == listed:
        logger.warning(
            "%s: channels %d..%d of an interrupted write are unlisted; rewriting them",
            group.path or "image",
            listed,
            n_stored - 1,
        )
        return listed
    return n_stored


def _omero(group: zarr.Group, existing: list[str], dtype: np.dtype) -> dict[str, Any]:
    """The group's omero block, created (index labels, full-range windows) when absent."""
    _, ome = ome_attrs(group)
    omero = dict(ome.get("omero") or {})
    channels = [dict(c) for c in omero.get("channels") or []]
    # Keep the entries that exist (colors, windows); add index-labeled ones for unlisted channels.
    channels = channels[: len(existing)] + [
        channel_entry(existing[i], i, dtype, np.nan, np.nan)
        for i in range(len(channels), len(existing))
    ]
    omero["channels"] = channels
    return omero  # set_image_attrs completes its rdefs
