"""Store to store: predict selected scenes and time points and write the outputs back.

:func:`plan_prediction` reads metadata only and runs every check (scenes, channels, time
points, output labels, dtypes, writability); :meth:`PredictionPlan.run` then computes the
normalization statistics of every scene in a first pass (reductions, so memory stays bounded),
and predicts and writes with those statistics fixed. ``zarrstain predict`` is these two calls.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from zarrstain.engine import coarse
from zarrstain.engine.options import PredictOptions, WriteOptions, merge_options
from zarrstain.engine.plan_format import format_plan
from zarrstain.engine.predict import model_options, normalization_method, predict, run_model
from zarrstain.engine.scene_plan import ScenePlan, ScenePlanner
from zarrstain.errors import DataError, ParameterError, option
from zarrstain.io._zarr_compat import map_io
from zarrstain.io.layout import select_scenes
from zarrstain.io.opened import OpenStore, open_store
from zarrstain.io.read import check_chunks, open_scene
from zarrstain.io.repeat import Pending
from zarrstain.io.scratch import scratch_beside
from zarrstain.io.store import StoreLike, describe_store
from zarrstain.io.write import BATCH, list_complete, write_channels, write_predictions
from zarrstain.models import Model, load_model, relabel
from zarrstain.progress import BlockProgress, ProgressCallback, cluster_progress
from zarrstain.timepoints import parse_time, time_range
from zarrstain.units import check_integer_output
from zarrstain.units import rescale as rescale_units

__all__ = ["PredictionPlan", "ScenePlan", "format_plan", "parse_time", "plan_prediction"]

logger = logging.getLogger(__name__)


@dataclass
class PredictionPlan:
    """A checked prediction of a store: :meth:`run` computes and writes it."""

    store: StoreLike
    model: Model
    scenes: list[ScenePlan]
    method: str | None
    options: PredictOptions = field(default_factory=PredictOptions)
    write: WriteOptions = field(default_factory=WriteOptions)
    #: scene → the time points predicted (None: all)
    times: dict[str, slice | None] = field(default_factory=dict)
    #: predict frames whose inputs are constant (normalized to 0) instead of refusing them
    allow_constant: bool = False
    #: map normalized predictions onto the integer dtype written (:func:`zarrstain.units.rescale`)
    rescale: bool = False
    #: after :meth:`run` on a local scheduler: model blocks computed (fewer than
    #: :attr:`n_blocks` when an interrupted run is resumed); None on a cluster, where events
    #: reach ``progress`` asynchronously
    blocks_run: int | None = None
    #: the store as planned (its layout parsed once): tasks read blocks straight from it
    opened: OpenStore | None = None

    @property
    def n_blocks(self) -> int:
        """Model blocks of the scenes still to write, of every pass (sampling step)."""
        return sum(
            s.tiling["blocks"] * s.tiling.get("passes", 1)
            for s in self.scenes
            if s.status == "to write"
        )

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary (what ``--dry-run`` prints)."""
        return {
            "store": describe_store(self.store),
            "out": describe_store(self.write.out) if self.write.out is not None else None,
            "model": {
                "name": self.model.name,
                "content_hash": self.model.content_hash,
                # local: tiling with the exact halo equals whole-field prediction
                "local": self.model.geometry.local,
                "passes": self.model.geometry.passes,
                **({"sampling": _options_summary(self.model)} if self.model.options else {}),
            },
            "normalization": self.method or "none",
            "blocks_to_run": self.n_blocks,
            "scenes": [s.describe() for s in self.scenes],
        }

    def run(self, progress: ProgressCallback | None = None, client: Any = None) -> dict[str, str]:
        """Compute the statistics, predict and write; returns scene → status.

        Parameters
        ----------
        progress
            Called with a ``"predict"`` :class:`~zarrstain.progress.ProgressEvent` each time a
            model block finishes (``done`` of ``total`` = :attr:`n_blocks`; on a cluster as
            the workers' events arrive, from the client's event loop).
        client
            A ``distributed.Client`` to run on: the model is sent to each worker once first
            (see :func:`zarrstain.engine.cluster.publish_model`). When some of its workers have GPUs
            and the options name no ``resources``, model blocks run on those workers only
            (``{"GPU": 1}``); reading, normalization and writing run anywhere.
        """
        todo = [s for s in self.scenes if s.status == "to write"]
        # complete in --out already: listed in its plate metadata too (a run killed after
        # finishing them had not listed them yet)
        complete = [s.scene for s in self.scenes if s.status == "unchanged"]
        store = self.opened if self.opened is not None else self.store
        if not todo:
            logger.info("every scene already holds this prediction; nothing to do")
            self.blocks_run = 0
            if self.write.out is not None and complete:
                list_complete(store, self.write.out, complete, self.write.storage_options)
            return {s.scene: s.status for s in self.scenes}
        if client is not None:
            # distributed: imported only when a cluster runs the plan
            from zarrstain.engine.cluster import gpu_resources, publish_model

            publish_model(client, self.model)
            if self.options.resources is None and (resources := gpu_resources(client)):
                self.options = self.options.replace(resources=resources)
        # Counts model blocks, every pass's (a resumed run computes fewer than n_blocks).
        blocks = BlockProgress(progress, total=self.n_blocks)
        if client is None:
            watch: Any = blocks
        elif progress is not None:
            watch = cluster_progress(client, blocks.add)
        else:
            watch = contextlib.nullcontext()
        scratch = self.scratch()
        computed: dict[str, xr.Dataset | None] = {}
        if self.write.out is None:
            # in place, into the user's store: every scene's data is checked before anything
            # is written
            for first in range(0, len(todo), BATCH):
                computed.update(self._statistics(todo[first : first + BATCH]))
                self._release(todo[first : first + BATCH])

        def prepare(scenes: list[str]) -> tuple[dict[str, xr.DataArray], dict[str, Any]]:
            """One batch as written: with --out, its statistics first (streamed: a field's
            inputs are read once when the statistics task kept them for its block). Called
            for the next batch while one is written (``zarrstain.io.write.ahead``)."""
            batch = [by_scene[sid] for sid in scenes]
            stats = computed if self.write.out is None else self._statistics(batch)
            # one task per model block, or (multi-pass models) the lazy route, whose
            # intermediate passes are computed into the scratch store here
            preds, sources = {}, {}
            for s in batch:
                fused = coarse.block_source(self, s, stats.get(s.scene))
                if fused is not None:
                    preds[s.scene], sources[s.scene] = fused
                else:
                    preds[s.scene] = self.predict(s.source, stats.get(s.scene), scratch, s.scene)
            self._release(batch)  # what is written no longer needs the scenes' arrays
            return preds, sources

        by_scene = {s.scene: s for s in todo}
        # the predictions as checked at planning (labels, fingerprint): each batch's are built
        # by prepare when it is written
        pending = {s.scene: Pending.of(s) for s in todo}
        with watch:
            # the store as planned: its layout is not parsed again
            result = write_predictions(
                store, pending, prepare=prepare, time=self.times,
                complete=complete if self.write.out is not None else None,
                **self.write.kwargs(),
            )  # fmt: skip
        if scratch is not None and self.options.scratch is None:  # ours, and no longer needed
            shutil.rmtree(scratch, ignore_errors=True)
        if client is None:
            self.blocks_run = blocks.done
            logger.info("ran %d model block(s)", blocks.done)
        for s in self.scenes:
            s.status = result.get(s.scene, s.status)
        return {s.scene: s.status for s in self.scenes}

    def _release(self, scenes: list[ScenePlan], total: int | None = None) -> None:
        """Drop these scenes' arrays when the plan has (``total``) more scenes than one batch
        (a plate's memory stays flat in its number of fields); smaller plans keep theirs."""
        if (len(self.scenes) if total is None else total) > BATCH:
            for s in scenes:
                s.release()

    def _statistics(self, scenes: list[ScenePlan]) -> dict[str, xr.Dataset | None]:
        """The scenes' statistics (one task per field), their data refused where it cannot be
        predicted (NaN/inf inputs, constant frames)."""
        computed, bad = coarse.statistics(self, scenes)
        for s in scenes:
            _refuse_nonfinite(s, bad[s.scene])
            if not self.allow_constant and self.method is not None:
                _refuse_constant(s, computed[s.scene], self.method, self.times.get(s.scene))
        return computed

    def scratch(self) -> Path | None:
        """Where :meth:`run` keeps a multi-pass model's passes, one folder per scene.

        The options' ``scratch``, or (removed once every channel is written)
        ``<output store>.zarrstain-scratch``; None for single-pass models.
        """
        if self.model.geometry.passes == 1:
            return None
        if self.options.scratch is not None:
            return Path(self.options.scratch)
        return scratch_beside(self.write.out if self.write.out is not None else self.store)

    def predict(
        self,
        source: xr.DataArray,
        stats: xr.Dataset | None,
        scratch: Path | None = None,
        scene: str = "",
    ) -> xr.DataArray:
        """The (lazy) prediction of a scene, with these statistics, as it will be written.

        With ``scratch`` (a multi-pass model, during :meth:`run`) its passes but the last are
        computed into ``scratch/<scene>`` now; planning chains them lazily and computes nothing.
        """
        where = None if scratch is None else str(scratch / scene if scene else scratch)
        pred = predict(source, self.model, stats=stats,
                       predict_options=self.options.replace(scratch=where))  # fmt: skip
        if self.rescale:
            pred = rescale_units(pred, self.write.dtype)
        return pred


def _options_summary(model: Model) -> dict[str, Any]:
    """The run options a user sets, as configured (not derived internals, models, or values
    that differ per scene)."""
    keep = [o.name for o in model.spec.run_schema if o.type != "model" and not o.scene]
    return {k: model.options[k] for k in keep if model.options.get(k) is not None}


def _refuse_nonfinite(scene: ScenePlan, counts: Any) -> None:
    if counts is None:
        return
    for label, n in zip(scene.inputs, counts, strict=True):
        if n:
            raise DataError(
                f"scene {scene.scene!r}, channel {label!r} holds {int(n)} NaN/inf voxels; "
                "the model would spread them into its predictions; fill them first "
                "(e.g. DataArray.fillna) or choose another channel"
            )


def _refuse_constant(scene: ScenePlan, stats: xr.Dataset, method: str, time: slice | None) -> None:
    scale = stats["scale"].values
    flat = ~np.isfinite(scale) | (scale <= 0)
    if flat.any():
        t, c = (int(i) for i in np.argwhere(flat)[0])
        t_abs = t + (time.start if time is not None else 0)
        raise DataError(
            f"scene {scene.scene!r}, channel {scene.inputs[c]!r}: {int(flat.sum())} frame(s) are "
            f"constant (first at t={t_abs}), with no spread for {method} normalization; leave "
            f"them out ({option('time=', '--time')}) or predict them anyway with "
            + option("allow_constant_frames=True", "--allow-constant-frames")
        )


def plan_prediction(
    store: StoreLike,
    model: Model | str | os.PathLike,
    *,
    scenes: str | Sequence[str] | None = None,
    time: str | slice | int | None = None,
    out: StoreLike | None = None,
    overwrite: bool = False,
    halo: str | int = "auto",
    normalization: str | None = "model",
    input_channels: Sequence[str] | Mapping[str, str] | str | None = None,
    output_label: str | None = None,
    device: str = "auto",
    precision: str = "float32",
    dtype: Any = None,
    copy_channels: bool | list[str] = False,
    chunks: dict[str, int] | None = None,
    block_memory: int | str | None = None,
    resources: dict[str, float] | None = None,
    allow_missing_chunks: bool = False,
    allow_constant_frames: bool = False,
    rescale: bool = False,
    storage_options: dict[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    predict_options: PredictOptions | None = None,
    write_options: WriteOptions | None = None,
) -> PredictionPlan:
    """Check and plan the prediction of a store's scenes; reads metadata only.

    Parameters
    ----------
    store
        The OME-Zarr store (image, plate, bioformats2raw collection).
    model
        A :class:`~zarrstain.Model`, or a path for :func:`~zarrstain.load_model`.
    scenes
        Scene ids (default: all).
    time
        ``"T0:T1"``, ``"T"`` or a slice: only these time points (default: all).
    out
        Write into this new store instead of in place.
    overwrite
        Replace earlier predictions with the same label. Channels zarrstain did not write
        (acquired data) are never replaced.
    halo, normalization, input_channels, device, precision, chunks, block_memory, resources
        As in :func:`zarrstain.predict` (``normalization`` is its ``normalize``).
    output_label
        Label of the predicted channel (single-output models).
    dtype, copy_channels
        As in :func:`zarrstain.write_channels`.
    allow_missing_chunks
        Predict from inputs with missing chunks (read as the fill value) instead of refusing
        them: for stores that skip chunks of empty regions on purpose.
    allow_constant_frames
        Predict time points whose input is constant (blank frames: normalized to 0) instead of
        refusing them when :meth:`PredictionPlan.run` finds them.
    rescale
        Map predictions in normalized units (pytorch_fnet checkpoints) onto the integer dtype
        written (the store's in place, ``dtype`` with ``out``) by a fixed affine map recorded
        in the provenance (:func:`zarrstain.units.rescale`), instead of rounding them.
    storage_options
        fsspec options for URLs.
    options
        The model family's run options, as in :func:`zarrstain.predict`; checked once, and
        resolved for each scene (a class map gives each its class).
    predict_options, write_options
        The same settings as validated objects (:mod:`zarrstain.engine.options`), e.g. built
        once and reused for several stores; the keyword arguments they hold must then stay at
        their defaults.

    Raises
    ------
    ZarrstainError
        Any problem with the store, scenes, channels, labels or model, before anything is
        computed or written.
    """
    if not isinstance(model, Model):
        model = load_model(model, output_label=output_label)
    elif output_label is not None:
        model = relabel(model, output_label)
    options = merge_options(predict_options, PredictOptions, "predict_options", halo=halo,
                     normalize=normalization, input_channels=input_channels, device=device,
                     precision=precision, chunks=chunks, block_memory=block_memory,
                     resources=resources, options=options)  # fmt: skip
    write = merge_options(
        write_options, WriteOptions, "write_options", out=out, overwrite=overwrite,
        dtype=dtype, copy_channels=copy_channels, storage_options=storage_options,
    )  # fmt: skip
    out, dtype, storage_options = write.out, write.dtype, write.storage_options
    source = open_store(store, "r", storage_options)  # opened and parsed once for the plan
    ids = select_scenes(source.layout, scenes, source.where)

    def meta_of(sid: str) -> Any:
        return source.meta(source.layout.scenes[sid])

    method = normalization_method(options.normalize, model)
    times: dict[str, slice | None] = {}
    # a malformed or empty range fails the same for every scene; the stop asked for, to warn
    # about the scenes cut short
    asked_stop = time_range(time)[1] if time is not None else None
    if out is None and dtype is None and (model.output_intensity or rescale):
        # target units: rounding to the store's integers is meaningful; rescale: mapped onto them
        kinds = (np.dtype(meta_of(sid).levels[0].dtype) for sid in ids)
        dtype = next((d for d in kinds if d.kind in "iu"), None)
        write = write.replace(dtype=dtype)
    # the family's run options checked once (models they name loaded once for every scene)
    run_options = model_options(model, options.options)
    options = options.replace(options=run_options)
    # the model with the run options, as the first scene's (each scene's are checked below)
    first_model = run_model(model, open_scene(source, ids[0]), run_options) if ids else model
    plan = PredictionPlan(
        store, first_model, [], method, options, write, times, allow_constant_frames,
        rescale=rescale, opened=source,
    )  # fmt: skip
    plan.scratch()  # a multi-pass model writing to a URL needs a local scratch: fail now
    missing = 0
    # In batches, each scene's arrays built, checked and (on plates) released: the plan of a
    # plate holds one batch's arrays at a time; fields whose metadata equal a field planned
    # already are planned like it, building nothing (see zarrstain.engine.scene_plan).
    planner = ScenePlanner(plan, model, time, run_options)
    for first in range(0, len(ids), BATCH):
        part = ids[first : first + BATCH]
        # the batch's metadata first, concurrently (round trips to an object store)
        metas = dict(zip(part, map_io(meta_of, part), strict=True))
        batch = [planner.scene(sid, metas[sid]) for sid in part]
        plan.scenes.extend(batch)
        if first == 0 and batch:
            units = batch[0].prediction.attrs["zarrstain"]["output_units"]
            _check_dtype(units, plan, out or store)
        built = {p.scene: p.prediction for p in batch if p.held}
        status = write_channels(source, built, dry_run=True, time=times, **write.kwargs())
        for p in batch:
            p.status = status.get(p.scene, p.status)
        missing += check_chunks(
            source,
            {p.scene: (p.inputs, times[p.scene]) for p in batch if p.status == "to write"},
            allow_missing=allow_missing_chunks,
        )
        plan._release(batch, len(ids))
    cut = [
        f"{sid} ({t.start}:{t.stop})"
        for sid, t in times.items()
        if t is not None and asked_stop is not None and t.stop < asked_stop
    ]
    if cut:
        logger.warning(
            "time %s: %d scene(s) have fewer time points and get those they have: %s",
            time,
            len(cut),
            ", ".join(cut[:5]) + (" ..." if len(cut) > 5 else ""),
        )
    if missing:
        logger.warning("%d input chunk(s) are missing and read as the fill value", missing)
    return plan


def _check_dtype(units: str, plan: PredictionPlan, store: StoreLike) -> None:
    """The dtype written can hold predictions in these units (see check_integer_output)."""
    dtype = plan.write.dtype
    if isinstance(dtype, Mapping | tuple):  # per channel: each is checked when written
        if plan.rescale:
            raise ParameterError(
                f"rescaling maps every prediction onto one integer dtype; give one "
                f"{option('dtype=', '--dtype')} (not one per channel) or drop "
                + option("rescale=True", "--rescale")
            )
    else:
        check_integer_output(units, dtype, plan.rescale, plan.model.name, describe_store(store))
