"""An output image that grows with its source, one batch of time points at a time.

The length of the output's time axis *is* what is done: readers (napari, iohub) opening the
store while ``watch`` writes see only complete predicted time points, and a restarted
``watch`` continues from it. A batch of time points ``t0:t1`` is written as channels are
appended in place (:mod:`zarrstain.io.channels`):

1. its chunks are written *beyond* the arrays' visible time extent, through views whose
   metadata have the grown shape (readers keep seeing ``t0`` time points);
2. the lower pyramid levels are computed from the written full-resolution data, likewise;
3. the levels' shapes grow, the smallest level first and the full resolution last (one atomic
   metadata write each: the full resolution's decides what is done);
4. the provenance (``time_points``) and the display window follow in one attribute write.

A crash before 3 leaves the image as readers saw it; the batch is computed again on restart
(its chunks overwritten). The first batch creates the image (:func:`zarrstain.io.create.
begin_create`: arrays under a pending record, the OME metadata last), sized to that batch.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import dask.array as da
import numpy as np
import zarr

from zarrstain.io._zarr_compat import grown_view
from zarrstain.io.channels import channel_entry, set_image_attrs, to_store_axes, with_time_points
from zarrstain.io.create import begin_create
from zarrstain.io.metadata import ImageMeta, ome_attrs, parse_image
from zarrstain.io.stream import PyramidWrite, write_pyramids

__all__ = ["adopt_metadata", "predicted_time_points", "write_time_points"]

logger = logging.getLogger(__name__)


def predicted_time_points(group: zarr.Group | None, where: str) -> int:
    """How many time points an output image written by ``watch`` holds (0: none yet).

    The full-resolution level's time extent (grown last); a group without OME metadata (a
    first batch interrupted) holds none.
    """
    if group is None or "multiscales" not in ome_attrs(group)[1]:
        return 0
    meta = parse_image(group, where)
    return int(meta.levels[0].shape[meta.axis_names.index("t")])


def truncated(meta: ImageMeta, n_t: int) -> ImageMeta:
    """``meta`` with every level's time axis cut (or grown) to ``n_t`` time points."""
    tax = meta.axis_names.index("t")
    levels = tuple(
        dataclasses.replace(lvl, shape=(*lvl.shape[:tax], n_t, *lvl.shape[tax + 1 :]), array=None)
        for lvl in meta.levels
    )
    return dataclasses.replace(meta, levels=levels)


def write_time_points(
    root: zarr.Group,
    gpath: str,
    source: tuple[zarr.Group, ImageMeta, tuple[str, dict[str, Any]]],
    data: da.Array,
    labels: list[str],
    record: dict[str, Any],
    t0: int,
    where: str,
) -> None:
    """Write predicted time points ``t0 : t0 + len(data)`` of one image and make them visible.

    Parameters
    ----------
    root
        The output store's root group.
    gpath
        The image's path in it (the source's).
    source
        The source image's group, metadata and ``(version, OME attributes)``.
    data
        (t, c, z, y, x) predictions of these time points, in the output dtype.
    labels
        Their channel labels.
    record
        Provenance per label (possibly holding dask values: computed with the pixels).
    t0
        The first time point: the image's current length (0 creates the image).
    where
        For messages.
    """
    t1 = t0 + int(data.shape[0])
    group = root.get(gpath) if gpath else root
    if t0 == 0:
        src_group, src_meta, ome = source
        new = bool(gpath) and group is None
        job = begin_create(
            root, gpath, src_group, truncated(src_meta, t1), data, labels, [], record, where,
            time=slice(0, t1), new=new, ome=ome,
        )  # fmt: skip
    else:
        if not isinstance(group, zarr.Group):
            raise RuntimeError(f"{where}: the output image is missing; it held {t0} time points")
        job = _begin_extend(group, parse_image(group, where), data, labels, record, t0, t1, where)
    write_pyramids([job])


def _begin_extend(
    group: zarr.Group,
    meta: ImageMeta,
    data: da.Array,
    labels: list[str],
    record: dict[str, Any],
    t0: int,
    t1: int,
    where: str,
) -> PyramidWrite:
    """The write of time points ``t0:t1`` beyond the image's visible time extent."""
    dims = meta.axis_names
    tax, cax = dims.index("t"), dims.index("c")
    arrays = [group[lvl.path] for lvl in meta.levels]
    views = [grown_view(a, (*a.shape[:tax], t1, *a.shape[tax + 1 :])) for a in arrays]

    def finish(lo: list[float], hi: list[float], computed: dict[str, Any]) -> None:
        for arr, view in reversed(list(zip(arrays, views, strict=True))):  # full resolution last
            arr.resize(view.shape)
        _, ome = ome_attrs(group)
        omero = dict(ome.get("omero") or {})
        channels = [dict(c) for c in omero.get("channels") or []]
        prov = dict(group.attrs.get("zarrstain") or {})
        written = dict(prov.get("channels") or {})
        for k, label in enumerate(labels):
            slot = next((i for i, c in enumerate(channels) if c.get("label") == label), None)
            if slot is not None:  # widen the display window to the new time points' range
                old = channels[slot].get("window") or {}
                low = min(old.get("start", lo[k]), lo[k])
                high = max(old.get("end", hi[k]), hi[k])
                entry = channel_entry(label, slot, np.dtype(arrays[0].dtype), low, high)
                channels[slot] = {**channels[slot], "window": entry["window"]}
            written[label] = with_time_points(computed, written.get(label), slice(t0, t1))
        omero["channels"] = channels
        set_image_attrs(group, omero=omero, zarrstain={**prov, "channels": written})
        logger.debug("%s: time points %d:%d written", where, t0, t1)

    lazy = [(to_store_axes(data, dims), 0)]
    return PyramidWrite(where, views, cax, lazy, [], (tax, slice(t0, t1)), record, None, finish)


def adopt_metadata(root: zarr.Group, ome: tuple[str, dict[str, Any]], where: str) -> None:
    """Give the output image (at the root) the source's axes and scales, once its writer has
    written them (a stream followed before its OME metadata existed got provisional ones)."""
    if "multiscales" not in ome_attrs(root)[1]:
        return
    _, src = ome
    ms = dict(src["multiscales"][0])
    ours = ome_attrs(root)[1]["multiscales"][0]
    ms["datasets"] = [
        {**dataset, "path": mine["path"]}
        for dataset, mine in zip(ms["datasets"], ours["datasets"], strict=False)
    ]
    attrs = root.attrs.asdict()
    if "ome" in attrs:
        attrs["ome"] = {**attrs["ome"], "multiscales": [ms]}
    else:
        attrs["multiscales"] = [ms]
    root.attrs.put(attrs)
    logger.info("%s: axes and scales taken from the source's metadata", where)
