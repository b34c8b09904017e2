"""Open OME-Zarr scenes as lazy, labeled ``xarray.DataArray`` objects with dims (t, c, z, y, x)."""

from __future__ import annotations

import logging
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from dask.base import tokenize

from zarrstain.errors import SceneNotFoundError, UnsupportedError, option
from zarrstain.io._zarr_compat import map_io
from zarrstain.io.integrity import ChunkReader, missing_chunks
from zarrstain.io.layout import select_scenes
from zarrstain.io.metadata import DIMS, ImageMeta
from zarrstain.io.opened import OpenStore, open_store
from zarrstain.io.store import StoreLike, store_location

__all__ = ["check_chunks", "open_image", "open_scenes", "source_token"]

logger = logging.getLogger(__name__)


def open_scenes(
    path: StoreLike,
    *,
    scenes: str | list[str] | None = None,
    level: int = 0,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, xr.DataArray]:
    """Open every image of an OME-Zarr store as a lazy DataArray.

    Parameters
    ----------
    path
        Local path, fsspec URL (``http://...`` is read-only) or zarr store of an OME-Zarr image,
        HCS plate or bioformats2raw collection, NGFF 0.4 (zarr v2) or 0.5 (zarr v3).
    scenes
        Only these scene ids (unknown ids raise :class:`~zarrstain.errors.SceneNotFoundError`).
    level
        Pyramid level to open, 0 being full resolution.
    storage_options
        Passed to fsspec for URLs.

    Returns
    -------
    dict of str to xarray.DataArray
        Scene id → image, in store order: ``"A/1/0"`` for plate row/column/field, the series
        path for bioformats2raw, ``""`` for a single image. See :func:`open_image`.

    Notes
    -----
    Only metadata is read; pixels are read when the arrays are computed. ``path`` may be an
    :class:`~zarrstain.io.opened.OpenStore`, whose parsed layout is then reused.
    """
    src = open_store(path, "r", storage_options)
    location = store_location(src.path)
    ids = select_scenes(src.layout, scenes, src.where)
    # every image's metadata first, concurrently (round trips to an object store), then the
    # arrays, in store order
    map_io(lambda sid: src.meta(src.layout.scenes[sid]), ids)
    return {sid: _open_scene(src, sid, level, location) for sid in ids}


def open_image(
    path: StoreLike,
    scene: str | None = None,
    *,
    level: int = 0,
    storage_options: dict[str, Any] | None = None,
) -> xr.DataArray:
    """Open one image of an OME-Zarr store as a lazy DataArray.

    Parameters
    ----------
    path
        Store path or URL, as in :func:`open_scenes`.
    scene
        Scene id; may be omitted when the store holds one image.
    level
        Pyramid level to open, 0 being full resolution (``attrs["levels"]`` lists them).
    storage_options
        Passed to fsspec for URLs.

    Returns
    -------
    xarray.DataArray
        Dims exactly ``("t", "c", "z", "y", "x")`` (axes absent from the store have length 1),
        backed by a dask array chunked like the store. Coordinates: ``c`` holds the channel
        labels (omero metadata, else ``"0", "1", ...``); ``t``, ``z``, ``y``, ``x`` hold
        physical positions from the level's scale and translation. ``attrs`` holds ``units``,
        ``ngff_version``, ``store``, ``scene``, ``level``, ``levels`` and ``axes`` (the axes
        present in the store).

    Raises
    ------
    SceneNotFoundError
        ``scene`` is not in the store, or omitted while the store has several.
    """
    src = open_store(path, "r", storage_options)
    scenes = src.layout.scenes
    if scene is None:
        if len(scenes) != 1:
            raise SceneNotFoundError(
                f"{src.where} holds {len(scenes)} scenes; pass "
                f"{option('scene=', '--scene')} one of "
                f"{', '.join(repr(s) for s in list(scenes)[:5])}"
                + (" ..." if len(scenes) > 5 else "")
            )
        scene = next(iter(scenes))
    select_scenes(src.layout, scene, src.where)
    return _open_scene(src, scene, level, store_location(src.path))


def open_scene(path: StoreLike, scene: str, level: int = 0) -> xr.DataArray:
    """:func:`open_image` of a scene id known to be in the store (an
    :class:`~zarrstain.io.opened.OpenStore` is reused, its parsed metadata too)."""
    src = open_store(path, "r")
    return _open_scene(src, scene, level, src.location)


def _open_scene(src: OpenStore, scene: str, level: int, location: str) -> xr.DataArray:
    gpath = src.layout.scenes[scene]
    group = src.group(gpath)
    meta = src.meta(gpath)
    return image_to_dataarray(group, meta, level, scene=scene, store=location)


def image_to_dataarray(
    group: zarr.Group, meta: ImageMeta, level: int, *, scene: str, store: str
) -> xr.DataArray:
    """Wrap one level of a validated image group as a (t, c, z, y, x) DataArray."""
    if not 0 <= level < len(meta.levels):
        raise UnsupportedError(
            f"{store}: scene {scene!r} has pyramid levels 0..{len(meta.levels) - 1}, not {level}"
        )
    lvl = meta.levels[level]
    arr = lvl.array if lvl.array is not None else group[lvl.path]
    # A name from the store location and the array metadata (not the pixels) is stable across
    # processes, so graphs built from the same store tokenize identically.
    name = "zarrstain-read-" + tokenize(store, group.path, lvl.path, arr.metadata.to_dict())
    reader = ChunkReader(arr, "/".join(p for p in (store, group.path, lvl.path) if p))
    meta_array = np.empty((0,) * arr.ndim, dtype=arr.dtype)  # (else dask reads x[0:0])
    data = da.from_array(
        reader, chunks=lvl.chunks, name=name, asarray=False, fancy=False, meta=meta_array
    )
    present = meta.axis_names
    data = data[tuple(slice(None) if d in present else None for d in DIMS)]
    size = dict(zip(DIMS, data.shape, strict=True))
    scale = dict(zip(present, lvl.scale, strict=True))
    trans = dict(zip(present, lvl.translation, strict=True))
    coords: dict[str, Any] = {
        d: trans.get(d, 0.0) + scale.get(d, 1.0) * np.arange(size[d], dtype=np.float64)
        for d in ("t", "z", "y", "x")
    }
    coords["c"] = list(meta.labels)
    attrs = {
        "store": store,
        "scene": scene,
        "ngff_version": meta.version,
        "axes": "".join(present),
        "units": meta.units(),
        "scale": {d: scale.get(d, 1.0) for d in ("t", "z", "y", "x")},
        "level": level,
        "levels": [
            {"path": lv.path, "shape": list(lv.shape), "scale": list(lv.scale)}
            for lv in meta.levels
        ],
        # per-channel records of the channels zarrstain wrote (see write_channels)
        "provenance": dict((group.attrs.get("zarrstain") or {}).get("channels") or {}),
    }
    return xr.DataArray(data, dims=DIMS, coords=coords, attrs=attrs, name=meta.name or None)


def source_token(
    data: xr.DataArray, channels: list[str] | None = None, scene: str | None = None
) -> str:
    """A stable identity of ``data``'s values (of its ``channels`` only, when given), for
    fingerprints of what was computed from them.

    For data opened from a store: the store, scene, level, channel labels and coordinates, so
    adding other channels to the store (which changes the array's shape) does not change it;
    ``scene``: that of another scene of the store with the same coordinates. Otherwise the
    dask name (a hash of the values for in-memory arrays).
    """
    if "store" in data.attrs and "scene" in data.attrs:
        scene = data.attrs["scene"] if scene is None else scene
        # as lists: label arrays' string width changes when longer labels are added
        coords = {d: data.coords[d].values.tolist() for d in data.dims if d in data.coords}
        if channels is not None:  # as data.sel(c=channels) would give (without building it)
            coords["c"] = [str(c) for c in channels]
        return tokenize(data.attrs["store"], scene, data.attrs.get("level"), coords)
    if channels is not None:
        data = data.sel(c=channels)
    arr = data.data
    return arr.name if isinstance(arr, da.Array) else tokenize(np.asarray(arr))


def check_chunks(
    path: StoreLike,
    wanted: dict[str, tuple[list[str], slice | None]],
    *,
    allow_missing: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> int:
    """Check that the full-resolution chunks of some channels and time points are all stored.

    Parameters
    ----------
    path
        The store.
    wanted
        Scene id → (channel labels, time slice or None for all).
    allow_missing
        Count missing chunks instead of raising.
    storage_options
        Passed to fsspec for URLs.

    Returns
    -------
    int
        The number of missing chunks.

    Raises
    ------
    DataError
        A chunk is missing and ``allow_missing`` is false.
    """
    src = open_store(path, "r", storage_options)

    def count(item: tuple[str, tuple[list[str], slice | None]]) -> int:
        sid, (labels, time) = item
        gpath = src.layout.scenes[sid]
        swhere = src.where_of(gpath)
        meta = src.meta(gpath)
        level = meta.levels[0]
        arr = level.array if level.array is not None else src.group(gpath)[level.path]
        dims = meta.axis_names
        missing = 0
        for label in labels:
            region = [slice(None)] * len(dims)
            if "c" in dims:
                i = list(meta.labels).index(label)
                region[dims.index("c")] = slice(i, i + 1)
            if time is not None and "t" in dims:
                region[dims.index("t")] = time
            missing += missing_chunks(
                arr, tuple(region), f"{swhere}, channel {label!r}", allow_missing
            )
        return missing

    # one listing per field: concurrent, as each is a round trip to an object store
    return sum(map_io(count, list(wanted.items())))
