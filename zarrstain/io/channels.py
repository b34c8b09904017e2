"""Write channels into the pyramid of one image group, in an order that survives a crash.

In-place appends never expose a half-written channel:

1. a ``pending`` record is added to the ``zarrstain`` attributes (no channel is listed yet);
2. the new channels' chunks are written *beyond* the arrays' visible channel extent, through an
   in-memory view whose metadata has the grown shape: every reader still sees the old shape and
   ignores those chunks;
3. lower pyramid levels are computed from the written full-resolution data, likewise;
4. each level's shape is grown (one atomic metadata write per level);
5. the omero channel list and provenance are written last (one atomic write).

A crash before 4 leaves the store exactly as readers saw it before. Between 4 and 5 the new
channels are complete but unlabeled (readers see index labels). Overwriting an existing channel
first renames it ``"<label> [incomplete]"`` and restores the label only after its data is written.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import dask
import dask.array as da
import numpy as np
import zarr
from zarr.core.array import Array, AsyncArray

from ..errors import UnsupportedError
from .metadata import DIMS, ImageMeta, ome_attrs
from .pyramid import downsample_to

__all__ = [
    "INCOMPLETE_SUFFIX",
    "append_channels",
    "channel_entry",
    "set_image_attrs",
    "time_region",
    "to_store_axes",
    "with_time_points",
    "write_pyramid",
]

logger = logging.getLogger(__name__)

INCOMPLETE_SUFFIX = " [incomplete]"
_COLORS = ("00FFFF", "FF00FF", "FFFF00", "00FF00", "FF0000", "0000FF", "FFFFFF")


def now() -> str:
    """UTC time stamp for provenance."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def grown_view(arr: zarr.Array, shape: tuple[int, ...]) -> zarr.Array:
    """A handle on ``arr`` that addresses ``shape`` without writing any metadata.

    Uses zarr's array constructor with updated in-memory metadata: chunks written through it
    land at their normal keys, but readers keep the shape stored on disk until ``resize``.
    ``write_empty_chunks`` makes every written chunk exist, so completion can be checked by key.
    """
    meta = arr.metadata.update_shape(tuple(shape))
    return Array(AsyncArray(meta, arr.store_path, config={"write_empty_chunks": True}))


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
        if "ome" in attrs:
            attrs["ome"] = {**ome, "omero": omero}
        else:
            attrs["omero"] = omero
    if zarrstain is not None:
        attrs["zarrstain"] = zarrstain
    group.attrs.put(attrs)


def write_pyramid(
    arrays: list[zarr.Array],
    cax: int,
    blocks: list[tuple[da.Array, int]],
    where: str,
    record: dict[str, Any] | None = None,
    time: tuple[int, slice] | None = None,
) -> tuple[list[float], list[float], dict[str, Any]]:
    """Write channel blocks at full resolution, then derive every lower level from what was written.

    Parameters
    ----------
    arrays
        One (possibly grown) array per level, full resolution first.
    cax
        Index of the channel axis in the store's axes.
    blocks
        ``(data, first_channel)``: data in store axes order, written at ``first_channel``.
    where
        For messages.
    record
        Provenance that may hold dask values (e.g. normalization statistics that are part of the
        data's graph): they are computed together with the full-resolution level, sharing work.
    time
        ``(t_axis, slice)``: the blocks cover only these time points (the same at every level).

    Returns
    -------
    lo, hi
        Minimum and maximum of each block's channels, from the smallest level (for display windows).
    record
        ``record`` with its dask values computed, as JSON-ready Python values.
    """
    if time is not None and any(a.shape[time[0]] != arrays[0].shape[time[0]] for a in arrays):
        raise UnsupportedError(f"{where}: its pyramid downsamples t; write all time points")
    for level, arr in enumerate(arrays):
        chunks = tuple(arr.shards or arr.chunks)
        sources, regions = [], []
        for data, start in blocks:
            n = data.shape[cax]
            if level > 0:
                prev = arrays[level - 1]
                region = _region(prev.ndim, cax, start, n, time)
                above = da.from_array(prev, chunks=tuple(prev.shards or prev.chunks))[region]
                target = list(arr.shape)
                target[cax] = n
                if time is not None:
                    target[time[0]] = above.shape[time[0]]
                data = downsample_to(above, tuple(target), where)
            data = data.astype(arr.dtype).rechunk(
                tuple(1 if i == cax else c for i, c in enumerate(chunks))
            )
            sources.append(data)
            regions.append(_region(arr.ndim, cax, start, n, time))
        logger.info("%s: writing level %d (%s)", where, level, arr.path)
        # Sources are chunk-aligned with the zarr chunks, so tasks never share a chunk: no lock.
        stored = da.store(sources, [arr] * len(sources), regions=regions, lock=False, compute=False)
        if level == 0:
            # Graph optimization fuses layers and drops their annotations: keep the graph as
            # built when tasks ask for resources (model tasks that need a GPU worker).
            optimize = not _wants_resources(sources)
            _, record = dask.compute(stored, record or {}, optimize_graph=optimize)
        else:
            dask.compute(stored)
    smallest = arrays[-1]
    lo, hi = [], []
    for data, start in blocks:
        n = data.shape[cax]
        view = da.from_array(smallest)[_region(smallest.ndim, cax, start, n, time)]
        other = tuple(i for i in range(smallest.ndim) if i != cax)
        mins, maxs = da.compute(da.nanmin(view, axis=other), da.nanmax(view, axis=other))
        lo += [float(v) for v in np.atleast_1d(mins)]
        hi += [float(v) for v in np.atleast_1d(maxs)]
    return lo, hi, _jsonable(record or {})


def _wants_resources(arrays: list[da.Array]) -> bool:
    return any(
        "resources" in (getattr(layer, "annotations", None) or {})
        for a in arrays
        for layer in a.__dask_graph__().layers.values()
    )


def _jsonable(value: Any) -> Any:
    """Numpy scalars and arrays (computed provenance) as plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray | np.generic):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def _region(
    ndim: int, cax: int, start: int, n: int, time: tuple[int, slice] | None = None
) -> tuple[slice, ...]:
    region = [slice(start, start + n) if i == cax else slice(None) for i in range(ndim)]
    if time is not None:
        region[time[0]] = time[1]
    return tuple(region)


def time_region(dims: tuple[str, ...], time: slice | None) -> tuple[int, slice] | None:
    """``(t axis, slice)`` for :func:`write_pyramid`, or None for all time points."""
    return None if time is None or "t" not in dims else (dims.index("t"), time)


def append_channels(
    group: zarr.Group,
    meta: ImageMeta,
    data: da.Array,
    labels: list[str],
    record: dict[str, Any],
    where: str,
    time: slice | None = None,
) -> None:
    """Add (or overwrite) labeled channels in every level of an image group, crash-safely.

    Parameters
    ----------
    group, meta
        The image group and its validated metadata.
    data
        (t, c, z, y, x) data whose ``c`` entries are ``labels``; already in the store's dtype.
    labels
        Channel labels; those already present are overwritten (the caller checked permission).
    record
        Provenance to store per written label under ``attrs["zarrstain"]["channels"]``.
    where
        For messages.
    time
        ``data`` holds only these time points (a new channel's other time points stay empty).
    """
    dims = meta.axis_names
    if "c" not in dims:
        raise UnsupportedError(
            f"{where} has no channel axis (axes {''.join(dims)}), so channels cannot be added in "
            "place; write to a new store with out=... (CLI: --out)"
        )
    cax = dims.index("c")
    for lvl in meta.levels:
        if lvl.chunks[cax] != 1:
            raise UnsupportedError(
                f"{where}/{lvl.path} stores {lvl.chunks[cax]} channels per chunk; zarrstain adds "
                "channels in place only to stores chunked one channel per chunk; write to a new "
                "store with out=... (CLI: --out)"
            )
    n0 = _listed_channels(group, meta.levels[0].shape[cax])
    existing = list(meta.labels)[:n0]
    data = to_store_axes(data, dims)
    take = lambda idx: da.take(data, idx, axis=cax)  # noqa: E731
    new = [i for i, lab in enumerate(labels) if lab not in existing]
    replaced = [(i, existing.index(lab)) for i, lab in enumerate(labels) if lab in existing]
    arrays = [group[lvl.path] for lvl in meta.levels]
    views = []
    for arr in arrays:
        shape = list(arr.shape)
        shape[cax] = n0 + len(new)
        views.append(grown_view(arr, tuple(shape)))

    omero = _omero(group, existing, arrays[0].dtype)
    prov = dict(group.attrs.get("zarrstain") or {})
    prov["pending"] = {"labels": labels, "first_new_index": n0, "started": now()}
    for _, slot in replaced:
        omero["channels"][slot]["label"] = existing[slot] + INCOMPLETE_SUFFIX
    set_image_attrs(group, omero=omero, zarrstain=prov)

    blocks = ([(take(new), n0)] if new else []) + [(take([i]), slot) for i, slot in replaced]
    lo, hi, record = write_pyramid(views, cax, blocks, where, record, time_region(dims, time))

    for arr, view in zip(arrays, views, strict=True):
        if arr.shape != view.shape:  # grow; or shrink away slots of an interrupted earlier run
            arr.resize(view.shape)
    channels = omero["channels"]
    for k, i in enumerate(new):
        channels.append(channel_entry(labels[i], n0 + k, arrays[0].dtype, lo[k], hi[k]))
    for k, (i, slot) in enumerate(replaced):
        entry = channel_entry(labels[i], slot, arrays[0].dtype, lo[len(new) + k], hi[len(new) + k])
        channels[slot] = {**channels[slot], "label": labels[i], "window": entry["window"]}
    prov.pop("pending", None)
    written = prov.setdefault("channels", {})
    for lab in labels:
        written[lab] = with_time_points(record, written.get(lab) if time else None, time)
    set_image_attrs(group, omero=omero, zarrstain=prov)
    logger.info("%s: wrote channels %s", where, ", ".join(repr(x) for x in labels))


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
    omero.setdefault("rdefs", {"model": "color"})
    return omero
