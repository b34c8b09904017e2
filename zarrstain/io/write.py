"""``write_channels``: add labeled channels to OME-Zarr scenes, in place or into a new store."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import xarray as xr
import zarr
import zarr.storage
from zarr.core.group import GroupMetadata

from zarrstain.errors import (
    ChannelError,
    UnsupportedError,
    option,
)
from zarrstain.io._zarr_compat import map_io, write_nodes
from zarrstain.io.channels import begin_append
from zarrstain.io.checked import plan_write, time_of
from zarrstain.io.create import begin_create, write_collection_metadata
from zarrstain.io.dtypes import cast
from zarrstain.io.layout import Layout, select_scenes
from zarrstain.io.lock import group_lock, lock_path
from zarrstain.io.metadata import ome_attrs, parse_image
from zarrstain.io.opened import OpenStore, open_store
from zarrstain.io.outstore import check_out, open_or_create_out, open_out
from zarrstain.io.repeat import Pending, WritePlan, existing_state
from zarrstain.io.store import (
    StoreLike,
    describe_store,
    has_consolidated,
    refresh_consolidated,
)
from zarrstain.io.stream import PyramidWrite, write_pyramids

__all__ = ["write_channels"]

logger = logging.getLogger(__name__)

#: a batch's scene ids → their final (predictions, block sources): see write_predictions
Prepare = Callable[[list[str]], tuple[Mapping[str, xr.DataArray], Mapping[str, Any]]]
Refresh = Callable[[list[WritePlan]], list[WritePlan]]


def write_channels(
    path: StoreLike,
    predictions: xr.DataArray | dict[str, xr.DataArray],
    *,
    scene: str | None = None,
    out: StoreLike | None = None,
    overwrite: bool = False,
    copy_channels: list[str] | bool = False,
    dtype: Any = None,
    time: slice | Mapping[str, slice | None] | None = None,
    dry_run: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, str]:
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
    time
        The predictions hold only these time points of the scene (``slice(t0, t1)``): they
        are written there, a new channel's other time points stay empty (zero) and the
        provenance lists the time points written (``time_points``). A mapping scene id →
        slice gives each scene its own (scenes of a plate may differ in length).
    dry_run
        Run every check, write nothing.
    storage_options
        Passed to fsspec for URLs.

    Returns
    -------
    dict
        Scene id → ``"written"``, or ``"unchanged"`` (already held this data); with
        ``dry_run``, ``"to write"`` or ``"unchanged"``.

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
    return write_predictions(
        path, predictions, scene=scene, out=out, overwrite=overwrite,
        copy_channels=copy_channels, dtype=dtype, time=time, dry_run=dry_run,
        storage_options=storage_options,
    )  # fmt: skip


def write_predictions(
    path: StoreLike,
    predictions: xr.DataArray | dict[str, xr.DataArray] | dict[str, Pending],
    *,
    sources: Mapping[str, Any] | None = None,
    prepare: Prepare | None = None,
    complete: list[str] | None = None,
    scene: str | None = None,
    out: StoreLike | None = None,
    overwrite: bool = False,
    copy_channels: list[str] | bool = False,
    dtype: Any = None,
    time: slice | Mapping[str, slice | None] | None = None,
    dry_run: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, str]:
    """:func:`write_channels`, where ``sources`` (scene id → a
    :class:`~zarrstain.io.blockwrite.BlockSource` of the same predictions) lets one task per
    model block compute and write them (``PredictionPlan.run``); scenes without one, and
    levels the blocks cannot cover, take the lazy route.

    ``prepare``, given the scene ids of a batch (of :data:`BATCH`) about to be written,
    returns their final ``(predictions, sources)``: plates stream through, each batch's
    inputs read just before it is written. ``predictions`` are then what is checked (shapes,
    labels, dtypes) before anything is written; with ``prepare`` they may be
    :class:`~zarrstain.io.repeat.Pending` (checked already): only their labels and
    fingerprints decide what is done before their batch is prepared. ``complete``: scenes
    ``out`` holds complete already (an earlier run's), listed in its plate metadata with
    those written now.
    """
    mode = "r" if out is not None or dry_run else "r+"
    src = open_store(path, mode, storage_options)  # an OpenStore given is reused
    where, layout = src.where, src.layout
    by_scene = _by_scene(predictions, scene, layout, where)
    sources = sources or {}
    plans = []
    for sid, pred in by_scene.items():
        when = time_of(time, sid)
        if isinstance(pred, Pending):
            if prepare is None:
                raise TypeError(f"scene {sid!r}: a Pending prediction needs prepare=")
            # (its metadata are parsed again when its batch is prepared: not held meanwhile)
            plans.append(WritePlan(sid, src.layout.scenes[sid], None, None, list(pred.labels),
                                   pred.fingerprint, {}, when))  # fmt: skip
            continue
        plans.append(plan_write(src, sid, pred, dtype, out is None, when, sources.get(sid)))
    refresh = functools.partial(_refresh, src, prepare, dtype, out is None)
    if out is None:
        return _write_in_place(src, plans, overwrite, dry_run, refresh)
    return _write_new_store(
        src, plans, out, overwrite, copy_channels, storage_options, dry_run, refresh,
        complete or [],
    )  # fmt: skip


def _refresh(
    src: OpenStore, prepare: Prepare | None, dtype: Any, in_place: bool, plans: list[WritePlan]
) -> list[WritePlan]:
    """A batch's plans with the predictions ``prepare`` gives for it (unchanged without one)."""
    if prepare is None or not plans:
        return plans
    preds, sources = prepare([p.scene for p in plans])
    return [
        plan_write(src, p.scene, preds[p.scene], dtype, in_place, p.time, sources.get(p.scene))
        for p in plans
    ]


def list_complete(
    path: StoreLike,
    out: StoreLike,
    scenes: list[str],
    storage_options: dict[str, Any] | None = None,
) -> None:
    """List ``scenes``, complete in ``out`` (an interrupted run finished them but not its
    plate metadata), in ``out``'s plate or bioformats2raw metadata; unchanged when they are.
    """
    src = open_store(path, "r", storage_options)
    root = open_out(out, src.root.metadata.zarr_format, storage_options)
    with group_lock(root) as fresh_root:
        write_collection_metadata(fresh_root, src.root, src.layout, scenes)


def _by_scene(
    predictions: xr.DataArray | dict[str, Any],
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
            f"{where} holds {len(layout.scenes)} scenes; pass {option('scene=', '--scene')} "
            "to say which one the predictions belong to"
        )
    select_scenes(layout, scene, where)
    return {scene: predictions}


#: Images whose writes share one graph per pyramid level. Each holds its lock (a file handle)
#: until its metadata is written; batches keep both bounded on plates of thousands of fields.
BATCH = 64


def _write_in_place(
    src: OpenStore,
    plans: list[WritePlan],
    overwrite: bool,
    dry_run: bool,
    refresh: Refresh,
) -> dict[str, str]:
    todo, result = [], {}
    for plan in plans:
        group, swhere = src.group(plan.gpath), src.where_of(plan.gpath)
        checked = _with_meta(src, plan)
        if dry_run and "c" not in checked.meta.axis_names:
            raise UnsupportedError(
                f"{swhere} has no channel axis, so channels cannot be added in place; write "
                f"to a new store with {option('out=...', '--out')}"
            )
        done = existing_state(group, checked, overwrite, swhere)
        result[plan.scene] = "unchanged" if done else ("to write" if dry_run else "written")
        if not done:
            todo.append((group, plan, swhere))
    if dry_run:
        return result
    consolidated = bool(todo) and has_consolidated(src.root)
    # Locks are taken in one global order (their file names), so two writers whose scenes
    # overlap cannot deadlock; each is held from the pending record to the channel list.
    todo.sort(key=lambda item: str(lock_path(item[0]) or ""))
    batches = [todo[first : first + BATCH] for first in range(0, len(todo), BATCH)]
    for batch, final in ahead(batches, lambda b: refresh([plan for _, plan, _ in b])):
        with contextlib.ExitStack() as stack:
            locked = []
            for (group, _, swhere), plan in zip(batch, final, strict=True):
                # re-read under the lock: another process may have added channels meanwhile
                group = stack.enter_context(group_lock(group))
                fresh = plan.with_meta(parse_image(group, swhere))
                if existing_state(group, fresh, overwrite, swhere):
                    result[plan.scene] = "unchanged"
                    continue
                locked.append((group, fresh, swhere))

            def begin(item: tuple[zarr.Group, WritePlan, str]) -> PyramidWrite:
                group, fresh, swhere = item
                return begin_append(group, fresh.meta, fresh.data.data, fresh.labels,
                                    fresh.record, swhere, fresh.time, _blocks(fresh))  # fmt: skip

            write_pyramids(map_io(begin, locked))  # begun concurrently (metadata requests)
    if consolidated:  # last: until now, readers of the snapshot saw the store as before
        refresh_consolidated(src.root, src.where)
    return result


T = TypeVar("T")
R = TypeVar("R")


def ahead(batches: Sequence[T], prepare: Callable[[T], R]) -> Iterator[tuple[T, R]]:
    """``(batch, prepare(batch))`` for each batch, the next one prepared while the caller
    writes this one.

    Preparing a batch reads its fields and computes their statistics; writing one runs the
    model on it. Done one after the other, the model (a GPU above all) would wait on every
    batch's reads; here they overlap it, and at most two batches are held. A refusal raised
    by preparing a batch reaches the caller once the batch before it is written, as it would
    in turn.
    """
    if not batches:
        return
    pool = ThreadPoolExecutor(1, thread_name_prefix="zarrstain-next-batch")
    try:
        future = pool.submit(prepare, batches[0])
        for k, batch in enumerate(batches):
            prepared = future.result()
            if k + 1 < len(batches):
                future = pool.submit(prepare, batches[k + 1])
            yield batch, prepared
    finally:  # (the caller failed or stopped: a batch being prepared is finished, not used)
        pool.shutdown(wait=True, cancel_futures=True)


def _with_meta(src: OpenStore, plan: WritePlan) -> WritePlan:
    """``plan`` with its image's metadata (a Pending plan holds none until prepared)."""
    if plan.meta is not None:
        return plan
    return plan.with_meta(src.meta(plan.gpath))


def _blocks(plan: WritePlan, dtype: np.dtype | None = None) -> tuple[Any, Any] | None:
    """``(source, convert)`` for coarse block tasks (None: the plan has no block source)."""
    if plan.source is None:
        return None
    convert = plan.convert
    if dtype is not None:
        convert = functools.partial(_cast_after, convert, dtype)
    return plan.source, convert


def _cast_after(convert: Any, dtype: np.dtype, block: np.ndarray) -> np.ndarray:
    return cast(convert(block), dtype)


def _write_new_store(
    src: OpenStore,
    plans: list[WritePlan],
    out: StoreLike,
    overwrite: bool,
    copy_channels: list[str] | bool,
    storage_options: dict | None,
    dry_run: bool,
    refresh: Refresh,
    complete: list[str],
) -> dict[str, str]:
    src_root, layout = src.root, src.layout
    out_where = describe_store(out)
    to_copy = {}
    for plan in plans:  # check copy labels before creating anything
        if not copy_channels:
            to_copy[plan.scene] = []
            continue
        src_labels = list(_with_meta(src, plan).meta.labels)
        if copy_channels is True:
            # all; a new prediction takes the place of an earlier one of the same label (never
            # of an acquired channel: that clash is refused below)
            group = src.group(plan.gpath)
            earlier = set((group.attrs.get("zarrstain") or {}).get("channels") or {})
            wanted = [x for x in src_labels if x not in plan.labels or x not in earlier]
            if len(wanted) < len(src_labels):
                logger.info("%s: earlier %s not copied: written anew", plan.scene, plan.labels)
        else:
            wanted = list(copy_channels or [])
        missing = [lab for lab in wanted if lab not in src_labels]
        if missing:
            raise ChannelError(
                f"cannot copy channel {missing[0]!r}: scene {plan.scene!r} has {src_labels}"
            )
        clash = sorted(set(wanted) & set(plan.labels))
        if clash:
            raise ChannelError(
                f"channel {clash[0]!r} would be both copied and written anew; name the new "
                f"channel differently ({option('output_label=', '--output-label')}) or leave "
                f"it out of {option('copy_channels', '--copy-channels')}"
            )
        to_copy[plan.scene] = wanted
    if dry_run:
        return check_out(out, plans, overwrite, storage_options)
    batches = [plans[i : i + BATCH] for i in range(0, len(plans), BATCH)]
    # the first batch is prepared (its data checked) before the new store exists: a refusal
    # there leaves nothing behind
    ready = refresh(batches[0]) if batches else []
    fmt = src_root.metadata.zarr_format
    root, created = open_or_create_out(out, fmt, storage_options)
    result = {}

    def begin(plan: WritePlan) -> tuple[str, PyramidWrite | None]:
        src_group = src.group(plan.gpath)
        swhere = f"{out_where}/{plan.gpath}" if plan.gpath else out_where
        if created:  # a store this run created holds only the parents made below
            existing = None if plan.gpath else root
        else:
            existing = root.get(plan.gpath) if plan.gpath else root
        if isinstance(existing, zarr.Group) and "multiscales" in ome_attrs(existing)[1]:
            meta = parse_image(existing, swhere)
            plan = plan.with_meta(meta)
            if existing_state(existing, plan, overwrite, swhere):
                return "unchanged", None
            dtype = np.dtype(meta.levels[0].dtype)
            data = cast(plan.data.data, dtype)
            return "written", begin_append(existing, meta, data, plan.labels, plan.record,
                                           swhere, plan.time, _blocks(plan, dtype))  # fmt: skip
        job = begin_create(root, plan.gpath, src_group, plan.meta, plan.data.data, plan.labels,
                           to_copy[plan.scene], plan.record, swhere, plan.time,
                           _blocks(plan), new=existing is None, checked=created)  # fmt: skip
        return "written", job

    # parents first: images are then begun concurrently (metadata requests)
    parents = sorted({p.gpath.rsplit("/", 1)[0] for p in plans if "/" in p.gpath})
    if created:  # every parent (rows, wells) written at once, nothing read
        every = {"/".join(p.split("/")[: i + 1]) for p in parents for i in range(p.count("/") + 1)}
        write_nodes(root, {p: GroupMetadata(zarr_format=fmt) for p in sorted(every)})
    else:
        for parent in parents:
            root.require_group(parent)
    # (the first batch was prepared before the store was created)
    for _, batch in ahead(batches, lambda b: ready if b is batches[0] else refresh(b)):
        begun = map_io(begin, batch)
        for plan, (status, _) in zip(batch, begun, strict=True):
            result[plan.scene] = status
        write_pyramids([job for _, job in begun if job is not None])
    with group_lock(root) as fresh_root:  # merged with what concurrent writers listed
        write_collection_metadata(fresh_root, src_root, layout, list(result) + complete)
    # consolidated as the source was (or the store already is): a reader of a remote copy
    # then opens the whole plate in one request; written last, a snapshot of the finished store
    if has_consolidated(src_root) or has_consolidated(root):
        refresh_consolidated(root, out_where)
    return result
