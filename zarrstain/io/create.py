"""Create images in a new store that mirrors a source store's layout (``write_channels(out=...)``).

Arrays and pixels are written first, the image metadata next and the plate / well /
bioformats2raw metadata last, so an interrupted run never lists an image that is not complete.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import zarr

from zarrstain.io._zarr_compat import create_image, grown_view, image_array_kwargs
from zarrstain.io.blockwrite import fused_blocks
from zarrstain.io.channels import (
    channel_entry,
    rdefs_with_defaults,
    time_region,
    to_store_axes,
    with_time_points,
)
from zarrstain.io.layout import Layout
from zarrstain.io.metadata import DIMS, ImageMeta, ome_attrs
from zarrstain.io.pending import KEY, PendingRecord, fresh, start
from zarrstain.io.stream import PyramidWrite, region

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
    blocks: tuple[Any, Any] | None = None,
    new: bool = False,
    checked: bool = False,
    ome: tuple[str, dict[str, Any]] | None = None,
) -> PyramidWrite:
    """Start creating an image at ``gpath`` with the source's axes, scales and pyramid shapes.

    The arrays are created under a ``pending`` record (:mod:`zarrstain.io.pending`; the group
    carries no OME metadata yet, so nothing lists it as an image); the returned write, run by
    :func:`write_pyramids`, fills them and its ``finish`` writes the image metadata. A group
    left by an interrupted run of the same write (same fingerprint, labels, copies and time
    points) is resumed: its chunks already written are kept.

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
    blocks
        ``(source, convert)``: the same data computed one block at a time
        (:func:`zarrstain.io.blockwrite.fused_blocks`), or None.
    new
        Nothing exists at ``gpath`` yet: the group is created with its pending record (see
        :func:`zarrstain.io.pending.fresh`).
    checked
        With ``new``: the caller has seen that nothing exists there and that its parents do
        (the metadata are written without reading any).
    ome
        ``(version, OME attributes)`` of the source image, when they are not (yet) in
        ``src_group`` (a stream whose writer adds them when it closes: :mod:`zarrstain.live`).
    """
    pending = PendingRecord.describe("create", labels, record,
                                     _dtype(data, src_meta, copy_labels), time,
                                     copied=tuple(copy_labels))  # fmt: skip
    # one block per field along y and x: chunks need not follow the source's
    whole = blocks is not None and all(len(c) == 1 for c in blocks[0].grid[2:])
    if new and gpath:  # the group, its record and its arrays in one call
        attrs = {"zarrstain": {KEY: fresh(pending)}}
        image = _NewImage.plan(root, gpath, src_group, src_meta, data, labels, copy_labels, time,
                               where, whole, attrs, checked, ome)  # fmt: skip
        return _write(image, image.arrays, None, data, labels, src_meta, record, time, blocks)
    image = _NewImage.plan(root, gpath, src_group, src_meta, data, labels, copy_labels, time,
                           where, whole, ome=ome)  # fmt: skip
    arrays = [_resumable(image.group, *layout, image.dtype) for layout in image.layouts]

    def store(prov: dict[str, Any]) -> None:  # no OME metadata: not an image yet
        image.group.attrs.put({"zarrstain": {KEY: prov[KEY]}})

    def clear() -> None:  # overwrite: removes the chunks of an earlier run
        arrays[:] = image.create_arrays(root.metadata.zarr_format)

    done = start(image.group, pending, store, clear, lambda: arrays, where,
                 all(a is not None for a in arrays))  # fmt: skip
    return _write(image, arrays, done, data, labels, src_meta, record, time, blocks)


def _write(
    image: _NewImage,
    arrays: list[zarr.Array],
    done: list[set[str]] | None,
    data: da.Array,
    labels: list[str],
    src_meta: ImageMeta,
    record: dict[str, Any],
    time: slice | None,
    blocks: tuple[Any, Any] | None,
) -> PyramidWrite:
    """The write of ``image``'s arrays (``done``: the chunks a resumed run keeps)."""
    store_dims = tuple(d for d in DIMS if d in src_meta.axis_names or d == "c")
    lazy = [(to_store_axes(data.astype(image.dtype), store_dims), len(image.copy_idx))]
    tregion = time_region(store_dims, time)
    picks = [(list(range(len(labels))), len(image.copy_idx))]
    fused = fused_blocks(blocks, store_dims, image.dtype, picks, time)
    return PyramidWrite(
        image.where, arrays, image.cax, lazy, image.copies(), tregion, record, done,
        image.finish, fused,
    )  # fmt: skip


#: a new image written one block per field gets (y, x) chunks of whole planes up to this size
#: (else chunks grown to :data:`MIN_CHUNK_BYTES`): a plate stored in 32² chunks would otherwise
#: cost a file (an object-store request) per 4 KiB of predictions, to write and to view
PLANE_CHUNK_BYTES = 4 * 2**20
MIN_CHUNK_BYTES = 2**20


def _plane_chunks(shape: list[int], chunks: list[int], dims: list[str], itemsize: int) -> list[int]:
    """``chunks`` grown in y and x (never shrunk): whole planes when small, else ≥ 1 MiB."""
    if "y" not in dims or "x" not in dims:
        return chunks
    y, x = dims.index("y"), dims.index("x")
    rest = itemsize * int(np.prod([c for i, c in enumerate(chunks) if i not in (y, x)]))
    out = list(chunks)
    if shape[y] * shape[x] * rest <= PLANE_CHUNK_BYTES:
        out[y], out[x] = max(shape[y], chunks[y]), max(shape[x], chunks[x])
        return out
    while out[y] * out[x] * rest < MIN_CHUNK_BYTES and (out[y] < shape[y] or out[x] < shape[x]):
        axis = y if (out[y] <= out[x] and out[y] < shape[y]) or out[x] >= shape[x] else x
        out[axis] *= 2
    return out


def _dtype(data: da.Array, src_meta: ImageMeta, copy_labels: list[str]) -> np.dtype:
    """The new image's dtype: the predictions', or one that holds the copied channels too."""
    dtype = np.dtype(data.dtype)
    if copy_labels:
        dtype = np.result_type(dtype, np.dtype(src_meta.levels[0].dtype))
    return dtype


@dataclass
class _NewImage:
    """The layout of an image being created, and how it finishes (writes its metadata)."""

    group: zarr.Group
    src_group: zarr.Group
    src_meta: ImageMeta
    version: str
    src_ome: dict[str, Any]
    ms: dict[str, Any]
    cax: int
    added: bool  # the source has no channel axis: one is inserted
    copy_idx: list[int]
    labels: list[str]
    copy_labels: list[str]
    dtype: np.dtype
    time: slice | None
    where: str
    arrays: list[zarr.Array] = field(default_factory=list)  # when created with the group
    whole_planes: bool = False  # one block writes each field: chunks need not follow the source

    @classmethod
    def plan(
        cls,
        root: zarr.Group,
        gpath: str,
        src_group: zarr.Group,
        src_meta: ImageMeta,
        data: da.Array,
        labels: list[str],
        copy_labels: list[str],
        time: slice | None,
        where: str,
        whole_planes: bool = False,
        attrs: dict[str, Any] | None = None,
        checked: bool = False,
        ome: tuple[str, dict[str, Any]] | None = None,
    ) -> _NewImage:
        """``attrs``: create the group (nothing exists there; ``checked``: seen by the caller)
        with these attributes, and its arrays (``arrays``). ``ome``: the source's OME
        attributes (default: read from ``src_group``)."""
        version, src_ome = ome if ome is not None else ome_attrs(src_group)
        ms, cax, added = _with_channel_axis(src_meta, src_ome["multiscales"][0])
        copy_idx = [src_meta.labels.index(lab) for lab in copy_labels]
        dtype = _dtype(data, src_meta, copy_labels)
        group = root.require_group(gpath) if gpath and attrs is None else root
        image = cls(group, src_group, src_meta, version, src_ome, ms, cax, added, copy_idx,
                    list(labels), list(copy_labels), dtype, time, where,
                    whole_planes=whole_planes)  # fmt: skip
        if attrs is not None:
            dims = image.axis_names
            image.group, image.arrays = create_image(
                root, gpath, attrs, image.layouts, dtype, dims, checked
            )
        return image

    @property
    def axis_names(self) -> list[str]:
        return [a["name"] for a in self.ms["axes"]]

    @property
    def layouts(self) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
        """(path, shape, chunks) per level: the source's, one channel per chunk; planes grown
        to whole planes (or 1 MiB chunks) where one block writes the whole field."""
        out = []
        for lvl in self.src_meta.levels:
            shape, chunks = list(lvl.shape), list(lvl.chunks)
            if self.added:
                shape.insert(self.cax, 1)
                chunks.insert(self.cax, 1)
            shape[self.cax], chunks[self.cax] = len(self.copy_idx) + len(self.labels), 1
            if self.whole_planes:
                chunks = _plane_chunks(shape, chunks, self.axis_names, self.dtype.itemsize)
            out.append((lvl.path, tuple(shape), tuple(chunks)))
        return out

    def create_arrays(self, zarr_format: int) -> list[zarr.Array]:
        """Every level's array, replacing (and so emptying) any left by an earlier run."""
        kwargs = image_array_kwargs(zarr_format, self.axis_names)
        return [
            self.group.create_array(path, shape=shape, chunks=chunks, dtype=self.dtype,
                                    fill_value=0, overwrite=True,
                                    config={"write_empty_chunks": True}, **kwargs)
            for path, shape, chunks in self.layouts
        ]  # fmt: skip

    def copies(self) -> list[tuple[list[da.Array], int]]:
        """Copied channels: every level straight from the source's own pyramid."""
        out = []
        for k, i in enumerate(self.copy_idx):
            per_level = []
            for lvl in self.src_meta.levels:
                src = da.from_array(self.src_group[lvl.path], chunks=lvl.chunks)
                if self.added:
                    src = src[(slice(None),) * self.cax + (None,)]
                per_level.append(src[region(src.ndim, self.cax, i, 1)].astype(self.dtype))
            out.append((per_level, k))
        return out

    def finish(self, lo: list[float], hi: list[float], computed: dict[str, Any]) -> None:
        """Write the image metadata (replacing the pending record) in one write."""
        src_channels = (self.src_ome.get("omero") or {}).get("channels") or []
        entries = [
            copy.deepcopy(src_channels[i])
            if i < len(src_channels) and self.src_meta.channel_labels
            else channel_entry(self.copy_labels[k], k, self.dtype, np.nan, np.nan)
            for k, i in enumerate(self.copy_idx)
        ]
        n = len(self.copy_idx)
        entries += [channel_entry(lab, n + k, self.dtype, lo[k], hi[k])
                    for k, lab in enumerate(self.labels)]  # fmt: skip
        multiscales = {"multiscales": [self.ms]}
        if self.version == "0.5":
            attrs: dict[str, Any] = {"ome": {"version": self.version, **multiscales}}
        else:
            attrs = multiscales
        attrs["zarrstain"] = {
            "channels": {lab: with_time_points(computed, None, self.time) for lab in self.labels}
        }
        nz = dict(zip(self.axis_names, self.layouts[0][1], strict=True)).get("z", 1)
        omero = {"channels": entries, "rdefs": rdefs_with_defaults(None, nz)}
        if self.version == "0.5":
            attrs["ome"]["omero"] = omero
        else:
            attrs["omero"] = omero
        self.group.attrs.put(attrs)  # replaces the pending record, in one write
        channels = ", ".join(self.copy_labels + self.labels)
        logger.info("%s: created image with channels %s", self.where, channels)


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
    wells, counts = [], []
    for well in plate["wells"]:
        src_group = layout.groups.get(well["path"])  # (not `or`: a group's truth lists it)
        if src_group is None:
            src_group = src_root[well["path"]]
        src_well = ome_attrs(src_group)[1]["well"]
        images = [im for im in src_well["images"] if f"{well['path']}/{im['path']}" in present]
        if not images:
            continue
        well_meta = {**copy.deepcopy(src_well), "images": images}
        wgroup = root.require_group(well["path"])
        if ome_attrs(wgroup)[1].get("well") != well_meta:  # (a re-run writes nothing)
            _put_ome(wgroup, version, "well", well_meta)
        wells.append(well)
        counts.append(len(images))
    plate["wells"] = wells
    if "field_count" in plate:
        plate["field_count"] = max(counts, default=0)
    if out_ome.get("plate") != plate:
        _put_ome(root, version, "plate", plate)
    logger.info("plate metadata lists %d wells", len(wells))
