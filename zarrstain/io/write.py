"""``write_channels``: add labeled channels to OME-Zarr scenes, in place or into a new store."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr
import zarr
import zarr.storage

from .. import __version__
from ..errors import ChannelError, ChannelExistsError, ShapeMismatchError, UnsupportedError
from .channels import INCOMPLETE_SUFFIX, append_channels, to_store_axes
from .create import create_image, write_collection_metadata
from .layout import Layout, find_layout, select_scenes
from .metadata import DIMS, ImageMeta, ome_attrs, parse_image
from .store import StoreLike, describe_store, is_remote, open_root

__all__ = ["write_channels"]

logger = logging.getLogger(__name__)


@dataclass
class _Plan:
    scene: str
    gpath: str
    meta: ImageMeta
    data: xr.DataArray
    labels: list[str]
    fingerprint: str | None
    record: dict[str, Any]


def write_channels(
    path: StoreLike,
    predictions: xr.DataArray | dict[str, xr.DataArray],
    *,
    scene: str | None = None,
    out: StoreLike | None = None,
    overwrite: bool = False,
    copy_channels: list[str] | bool = False,
    dtype: Any = None,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Write new labeled channels beside the existing ones, with pyramids and provenance.

    Parameters
    ----------
    path
        The source OME-Zarr store (image, plate or bioformats2raw collection).
    predictions
        A (t, c, z, y, x) DataArray whose ``c`` coordinates are the new channel labels, or a dict
        scene id → DataArray. t, z, y, x must match the scene's full-resolution level.
    scene
        Scene id for a single DataArray; defaults to ``predictions.attrs["scene"]`` (set by
        :func:`open_image`) and, for single-image stores, to the only scene.
    out
        Write into this new store instead, mirroring the source layout (plate and well
        metadata copied for the scenes written). Writing again into an existing ``out`` adds
        channels or scenes to it.
    overwrite
        Replace channels whose label already exists. Without it an existing label is refused,
        unless it was written from identical data (same fingerprint), in which case nothing is
        done: repeating a finished write changes nothing.
    copy_channels
        With ``out``: source channels to copy into the new store before the new ones (labels,
        or ``True`` for all).
    dtype
        Output dtype. Default: float predictions are written as float32, others as they are.
        In place, data is cast to the store's dtype, which must then be able to hold it: a
        float prediction into an integer store needs an explicit ``dtype``.
    storage_options
        Passed to fsspec for URLs.

    Raises
    ------
    ChannelExistsError
        A label exists and ``overwrite`` is false.
    ShapeMismatchError
        Predictions that do not fit the scene.
    ReadOnlyStoreError
        In-place writing to a store that cannot be written (use ``out``).

    Notes
    -----
    Every check runs before anything is written. The provenance of each channel (everything in
    ``predictions.attrs["zarrstain"]``, the package version, a fingerprint of the data and the
    time) is stored under the image group's ``zarrstain`` attribute.
    """
    src_root = open_root(path, "r" if out is not None else "r+", storage_options)
    where = describe_store(path)
    layout = find_layout(src_root, where)
    plans = [
        _plan(src_root, layout, sid, pred, where, dtype, out is None)
        for sid, pred in _by_scene(predictions, scene, layout, where).items()
    ]
    if out is None:
        _write_in_place(src_root, plans, overwrite, where)
    else:
        _write_new_store(src_root, layout, plans, out, overwrite, copy_channels, storage_options)


def _by_scene(
    predictions: xr.DataArray | dict[str, xr.DataArray],
    scene: str | None,
    layout: Layout,
    where: str,
) -> dict[str, xr.DataArray]:
    if isinstance(predictions, dict):
        if scene is not None:
            raise TypeError("pass scene= only with a single DataArray, not with a dict")
        select_scenes(layout, list(predictions), where)
        return predictions
    if not isinstance(predictions, xr.DataArray):
        raise TypeError(
            f"predictions must be an xarray.DataArray or a dict of them, not {type(predictions)}"
        )
    if scene is None:
        scene = predictions.attrs.get("scene")
    if scene is None and len(layout.scenes) == 1:
        scene = next(iter(layout.scenes))
    if scene is None:
        raise ChannelError(
            f"{where} holds {len(layout.scenes)} scenes; pass scene= to say which one the "
            "predictions belong to"
        )
    select_scenes(layout, scene, where)
    return {scene: predictions}


def _plan(
    root: zarr.Group,
    layout: Layout,
    sid: str,
    pred: xr.DataArray,
    where: str,
    dtype: Any,
    in_place: bool,
) -> _Plan:
    gpath = layout.scenes[sid]
    swhere = f"{where}/{gpath}" if gpath else where
    meta = parse_image(root[gpath] if gpath else root, swhere)
    if set(pred.dims) != set(DIMS):
        raise ShapeMismatchError(
            f"predictions for scene {sid!r} have dims {pred.dims}; expected {DIMS} "
            "(use open_image, or DataArray.expand_dims / transpose)"
        )
    pred = pred.transpose(*DIMS)
    dims = meta.axis_names
    full = dict(zip(dims, meta.levels[0].shape, strict=True))
    for d in ("t", "z", "y", "x"):
        if pred.sizes[d] != full.get(d, 1):
            raise ShapeMismatchError(
                f"predictions for scene {sid!r} have {d}={pred.sizes[d]} but {swhere} has "
                f"{d}={full.get(d, 1)}; predict on the full-resolution level (level=0)"
            )
    labels = [str(v) for v in pred.coords["c"].values] if "c" in pred.coords else []
    if not labels or len(set(labels)) != len(labels) or any(not x for x in labels):
        raise ChannelError(
            f"predictions for scene {sid!r} need unique, non-empty channel labels as 'c' "
            f"coordinates; got {labels}"
        )
    if any(x.endswith(INCOMPLETE_SUFFIX) for x in labels):
        raise ChannelError(f"channel labels may not end in {INCOMPLETE_SUFFIX!r}: {labels}")
    target = np.dtype(dtype) if dtype is not None else None
    if target is None:
        target = np.dtype(np.float32) if np.issubdtype(pred.dtype, np.floating) else pred.dtype
    if in_place:
        store_dtype = np.dtype(meta.levels[0].dtype)
        if dtype is None and not np.can_cast(target, store_dtype, "same_kind"):
            raise UnsupportedError(
                f"{swhere} stores {store_dtype} and cannot hold {target} predictions without "
                f"rounding them; pass dtype='{store_dtype}' to round and clip, or write to a "
                "new store with out=... (CLI: --out) to keep them as they are"
            )
        target = store_dtype
    data = pred.data
    if not isinstance(data, dask.array.Array):
        data = dask.array.from_array(np.asarray(data), chunks=-1)
    data = data.astype(target)
    fingerprint = _fingerprint(pred)
    user = pred.attrs.get("zarrstain")
    record = {**(dict(user) if isinstance(user, dict) else {}), "zarrstain_version": __version__}
    if fingerprint:
        record["fingerprint"] = fingerprint
    record["dtype"] = str(target)
    return _Plan(sid, gpath, meta, pred.copy(data=data), labels, fingerprint, record)


def _fingerprint(pred: xr.DataArray) -> str | None:
    """The caller's fingerprint of what produced ``pred`` (``attrs["zarrstain"]["fingerprint"]``).

    ``predict`` sets one from the model hash, inputs, normalization and tiling, so a repeated
    run is recognised without computing anything. Plain data has none: its content decides.
    """
    given = (pred.attrs.get("zarrstain") or {}).get("fingerprint")
    return str(given) if given else None


def _same_content(group: zarr.Group, plan: _Plan, labels: list[str]) -> bool:
    """Whether the stored channels ``labels`` already hold exactly ``plan``'s data."""
    lvl = plan.meta.levels[0]
    cax = plan.meta.axis_names.index("c")
    stored = dask.array.from_array(group[lvl.path], chunks=lvl.chunks)
    existing = list(plan.meta.labels)
    checks = []
    for i, lab in enumerate(plan.labels):
        old = dask.array.take(stored, [existing.index(lab)], axis=cax)
        new = to_store_axes(plan.data.data[:, i : i + 1], plan.meta.axis_names)
        if old.shape != new.shape or old.dtype != new.dtype:
            return False
        same = old == new
        if np.issubdtype(old.dtype, np.floating):
            same |= dask.array.isnan(old) & dask.array.isnan(new)
        checks.append(same.all())
    return bool(all(dask.compute(*checks)))


def _existing_state(group: zarr.Group, plan: _Plan, overwrite: bool, where: str) -> bool:
    """Whether the write is already done; raises when labels exist and may not be replaced."""
    present = set(plan.meta.labels)
    clash = [lab for lab in plan.labels if lab in present]
    if not clash:
        return False
    if len(clash) == len(plan.labels):
        done = (group.attrs.get("zarrstain") or {}).get("channels") or {}
        if plan.fingerprint:
            same = all((done.get(x) or {}).get("fingerprint") == plan.fingerprint for x in clash)
        else:  # with overwrite, comparing would compute the data twice: just write it
            same = not overwrite and _same_content(group, plan, clash)
        if same:
            logger.info("%s: channels %s already hold this data; nothing to do", where, clash)
            return True
    if not overwrite:
        raise ChannelExistsError(
            f"channel {clash[0]!r} already exists in {where}; pass overwrite=True "
            "(CLI: --overwrite) to replace it, or choose another output label"
        )
    return False


def _write_in_place(root: zarr.Group, plans: list[_Plan], overwrite: bool, where: str) -> None:
    todo = []
    for plan in plans:
        group = root[plan.gpath] if plan.gpath else root
        swhere = f"{where}/{plan.gpath}" if plan.gpath else where
        if not _existing_state(group, plan, overwrite, swhere):
            todo.append((group, plan, swhere))
    for group, plan, swhere in todo:
        append_channels(group, plan.meta, plan.data.data, plan.labels, plan.record, swhere)


def _open_out(out: StoreLike, zarr_format: int, storage_options: dict | None) -> zarr.Group:
    if isinstance(out, zarr.Group):
        return out
    if not is_remote(out) and not Path(os.fspath(out)).exists():
        store: Any = zarr.storage.LocalStore(Path(os.fspath(out)))
        return zarr.open_group(store, mode="w-", zarr_format=zarr_format)
    root = open_root(out, "r+", storage_options)
    if root.metadata.zarr_format != zarr_format:
        raise UnsupportedError(
            f"{describe_store(out)} is a zarr v{root.metadata.zarr_format} store but the source "
            f"is zarr v{zarr_format}; choose a new out= path"
        )
    return root


def _write_new_store(
    src_root: zarr.Group,
    layout: Layout,
    plans: list[_Plan],
    out: StoreLike,
    overwrite: bool,
    copy_channels: list[str] | bool,
    storage_options: dict | None,
) -> None:
    out_where = describe_store(out)
    to_copy = {}
    for plan in plans:  # check copy labels before creating anything
        src_labels = list(plan.meta.labels)
        wanted = src_labels if copy_channels is True else list(copy_channels or [])
        missing = [lab for lab in wanted if lab not in src_labels]
        if missing:
            raise ChannelError(
                f"cannot copy channel {missing[0]!r}: scene {plan.scene!r} has {src_labels}"
            )
        clash = set(wanted) & set(plan.labels)
        if clash:
            raise ChannelError(f"labels {sorted(clash)} are both copied and new; rename them")
        to_copy[plan.scene] = wanted
    root = _open_out(out, src_root.metadata.zarr_format, storage_options)
    written = []
    for plan in plans:
        src_group = src_root[plan.gpath] if plan.gpath else src_root
        swhere = f"{out_where}/{plan.gpath}" if plan.gpath else out_where
        existing = root.get(plan.gpath) if plan.gpath else root
        if isinstance(existing, zarr.Group) and "multiscales" in ome_attrs(existing)[1]:
            meta = parse_image(existing, swhere)
            plan = _Plan(**{**plan.__dict__, "meta": meta})
            if not _existing_state(existing, plan, overwrite, swhere):
                data = plan.data.data.astype(meta.levels[0].dtype)
                append_channels(existing, meta, data, plan.labels, plan.record, swhere)
        else:
            create_image(
                root,
                plan.gpath,
                src_group,
                plan.meta,
                plan.data.data,
                plan.labels,
                to_copy[plan.scene],
                plan.record,
                swhere,
            )
        written.append(plan.scene)
    write_collection_metadata(root, src_root, layout, written)
