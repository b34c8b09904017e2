"""Create images in a new store that mirrors a source store's layout (``write_channels(out=...)``).

Arrays and pixels are written first, the image metadata next and the plate / well /
bioformats2raw metadata last, so an interrupted run never lists an image that is not complete.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import dask.array as da
import numpy as np
import zarr

from ._zarr_compat import grown_view
from .channels import (
    channel_entry,
    set_image_attrs,
    time_region,
    to_store_axes,
    with_time_points,
)
from .layout import Layout
from .metadata import DIMS, ImageMeta, ome_attrs
from .stream import PyramidWrite, region, stored_keys

__all__ = ["begin_create", "write_collection_metadata"]

logger = logging.getLogger(__name__)


def _with_channel_axis(meta: ImageMeta, ms: dict[str, Any]) -> tuple[dict[str, Any], int, bool]:
    """The source multiscales entry with a channel axis inserted when the source has none."""
    ms = copy.deepcopy(ms)
    dims = list(meta.axis_names)
    if "c" in dims:
        return ms, dims.index("c"), False
    cax = 1 if dims[0] == "t" else 0
    ms["axes"].insert(cax, {"name": "c", "type": "channel"})

    def fix(transforms: list[dict[str, Any]]) -> None:
        for t in transforms:
            key = t["type"]
            t[key].insert(cax, 1.0 if key == "scale" else 0.0)

    for ds in ms["datasets"]:
        fix(ds["coordinateTransformations"])
    if ms.get("coordinateTransformations"):
        fix(ms["coordinateTransformations"])
    return ms, cax, True


def begin_create(
    root: zarr.Group,
    gpath: str,
    src_group: zarr.Group,
    src_meta: ImageMeta,
    data: da.Array,
    labels: list[str],
    copy_labels: list[str],
    record: dict[str, Any],
    where: str,
    time: slice | None = None,
) -> PyramidWrite:
    """Start creating an image at ``gpath`` with the source's axes, scales and pyramid shapes.

    The arrays are created (under a ``pending`` record; the group carries no OME metadata yet,
    so nothing lists it as an image); the returned write, run by :func:`write_pyramids`, fills
    them and its ``finish`` writes the image metadata. A group left by an interrupted run of the
    same write (same fingerprint, labels, copies and time points) is resumed: its chunks already
    written are kept.

    Parameters
    ----------
    root
        Root group of the new store.
    gpath
        Path of the image group in the new store (the source's path).
    src_group, src_meta
        The source image.
    data
        (t, c, z, y, x) new channels, already in the output dtype.
    labels
        Labels of ``data``'s channels.
    copy_labels
        Source channels to copy before the new ones (every pyramid level copied as is).
    record
        Provenance per new label.
    where
        For messages.
    time
        ``data`` holds only these time points (the others stay empty).
    """
    version, src_ome = ome_attrs(src_group)
    ms, cax, added = _with_channel_axis(src_meta, src_ome["multiscales"][0])
    axis_names = [a["name"] for a in ms["axes"]]
    copy_idx = [src_meta.labels.index(lab) for lab in copy_labels]
    n_out = len(copy_idx) + len(labels)
    dtype = np.dtype(data.dtype)
    if copy_idx:
        dtype = np.result_type(dtype, np.dtype(src_meta.levels[0].dtype))

    group = root.require_group(gpath) if gpath else root
    pending = {
        "labels": labels,
        "copied": copy_labels,
        "fingerprint": record.get("fingerprint"),
        "dtype": str(dtype),
        "time": [time.start, time.stop] if time is not None else None,
    }
    old = (group.attrs.get("zarrstain") or {}).get("pending") or {}
    resume = bool(pending["fingerprint"]) and all(old.get(k) == v for k, v in pending.items())
    layouts = []
    for lvl in src_meta.levels:
        shape, chunks = list(lvl.shape), list(lvl.chunks)
        if added:
            shape.insert(cax, 1)
            chunks.insert(cax, 1)
        shape[cax], chunks[cax] = n_out, 1
        layouts.append((lvl.path, tuple(shape), tuple(chunks)))
    arrays = [_resumable(group, *layout, dtype) for layout in layouts] if resume else []
    resume = resume and all(a is not None for a in arrays)
    if not resume:
        kwargs: dict[str, Any] = {}
        if root.metadata.zarr_format == 2:
            # NGFF 0.4 stores use "/" separated chunk keys (dimension_separator)
            kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        else:
            kwargs["dimension_names"] = axis_names
        arrays = [
            group.create_array(  # overwrite: removes the chunks of an earlier run
                path,
                shape=shape,
                chunks=chunks,
                dtype=dtype,
                fill_value=0,
                overwrite=True,
                config={"write_empty_chunks": True},
                **kwargs,
            )
            for path, shape, chunks in layouts
        ]
        # After the arrays (and so after the removal of any older chunks): a resume may trust
        # every chunk present once this record names the write. No OME metadata: not an image.
        group.attrs.put({"zarrstain": {"pending": pending}})
    else:
        logger.info("%s: resuming an interrupted write", where)
    # Copied channels: every level straight from the source's own pyramid.
    copies = []
    for k, i in enumerate(copy_idx):
        per_level = []
        for lvl in src_meta.levels:
            src = da.from_array(src_group[lvl.path], chunks=lvl.chunks)
            if added:
                src = src[(slice(None),) * cax + (None,)]
            per_level.append(src[region(src.ndim, cax, i, 1)].astype(dtype))
        copies.append((per_level, k))
    store_dims = tuple(d for d in DIMS if d in axis_names or d == "c")
    new = to_store_axes(data.astype(dtype), store_dims)

    def finish(lo: list[float], hi: list[float], computed: dict[str, Any]) -> None:
        src_channels = (src_ome.get("omero") or {}).get("channels") or []
        entries = [
            copy.deepcopy(src_channels[i])
            if i < len(src_channels) and src_meta.channel_labels
            else channel_entry(copy_labels[k], k, dtype, np.nan, np.nan)
            for k, i in enumerate(copy_idx)
        ]
        entries += [
            channel_entry(lab, len(copy_idx) + k, dtype, lo[k], hi[k])
            for k, lab in enumerate(labels)
        ]
        multiscales = {"multiscales": [ms]}
        if version == "0.5":
            attrs: dict[str, Any] = {"ome": {"version": version, **multiscales}}
        else:
            attrs = multiscales
        attrs["zarrstain"] = {
            "channels": {lab: with_time_points(computed, None, time) for lab in labels}
        }
        group.attrs.put(attrs)  # replaces the pending record
        set_image_attrs(group, omero={"channels": entries})
        logger.info("%s: created image with channels %s", where, ", ".join(copy_labels + labels))

    done = [stored_keys(a) for a in arrays] if resume else None
    tregion = time_region(store_dims, time)
    return PyramidWrite(
        where, arrays, cax, [(new, len(copy_idx))], copies, tregion, record, done, finish
    )


def _resumable(
    group: zarr.Group, path: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: np.dtype
) -> zarr.Array | None:
    """The array an interrupted run created at ``path``, if it has the expected layout."""
    arr = group.get(path)
    if not isinstance(arr, zarr.Array):
        return None
    if arr.shape != shape or tuple(arr.chunks) != chunks or arr.dtype != dtype:
        return None
    return grown_view(arr, shape)  # a handle that writes empty chunks too


def _put_ome(group: zarr.Group, version: str, key: str, value: Any) -> None:
    attrs = group.attrs.asdict()
    if version == "0.5":
        attrs["ome"] = {**attrs.get("ome", {}), "version": version, key: value}
    else:
        attrs[key] = value
    group.attrs.put(attrs)


def write_collection_metadata(
    root: zarr.Group, src_root: zarr.Group, layout: Layout, written: list[str]
) -> None:
    """Write plate/well or bioformats2raw metadata listing the images present in ``root``.

    Images already listed by an earlier run into the same store are kept.
    """
    if layout.kind == "image":
        return
    version = layout.version
    _, src_ome = ome_attrs(src_root)
    _, out_ome = ome_attrs(root)
    if layout.kind == "bioformats2raw":
        old = (ome_attrs(root["OME"])[1].get("series") or []) if "OME" in root else []
        series = [s for s in layout.scenes if s in set(old) | set(written)]
        ome_group = root.require_group("OME")
        _put_ome(ome_group, version, "series", series)
        _put_ome(root, version, "bioformats2raw.layout", src_ome["bioformats2raw.layout"])
        return
    present = {s for s in layout.scenes if s in written}
    for well in (out_ome.get("plate") or {}).get("wells", []):
        wgroup = root[well["path"]]
        for img in ome_attrs(wgroup)[1].get("well", {}).get("images", []):
            present.add(f"{well['path']}/{img['path']}")
    plate = copy.deepcopy(src_ome["plate"])
    wells = []
    for well in plate["wells"]:
        src_well = ome_attrs(src_root[well["path"]])[1]["well"]
        images = [im for im in src_well["images"] if f"{well['path']}/{im['path']}" in present]
        if not images:
            continue
        well_meta = {**copy.deepcopy(src_well), "images": images}
        _put_ome(root.require_group(well["path"]), version, "well", well_meta)
        wells.append(well)
    plate["wells"] = wells
    if "field_count" in plate:
        plate["field_count"] = max(
            (len(ome_attrs(root[w["path"]])[1]["well"]["images"]) for w in wells), default=0
        )
    _put_ome(root, version, "plate", plate)
    logger.info("plate metadata lists %d wells", len(wells))
