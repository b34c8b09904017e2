"""The loop behind :func:`zarrstain.watch`: poll, predict what is complete, write, report.

One :class:`Follower` per run holds what is known of each scene between polls (time points
written, when each was first found complete, the per-frame statistics so far) and writes
either into an output store that grows with the source (:mod:`zarrstain.live.output`) or in
place, beside the acquired channels (:func:`zarrstain.write_channels` with the time points).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from zarrstain.engine.normalize import normalization_stats, stats_params
from zarrstain.engine.options import PredictOptions
from zarrstain.engine.predict import (
    normalization_args,
    normalization_method,
    predict,
    select_inputs,
)
from zarrstain.errors import (
    ChannelExistsError,
    MetadataError,
    NotOmeZarrError,
    StoreNotFoundError,
    UnsupportedError,
    option,
)
from zarrstain.io.create import write_collection_metadata
from zarrstain.io.lock import group_lock
from zarrstain.io.metadata import ome_attrs
from zarrstain.io.outstore import open_or_create_out
from zarrstain.io.read import image_to_dataarray
from zarrstain.io.store import StoreLike, describe_store, store_location
from zarrstain.io.write import write_channels
from zarrstain.live.output import adopt_metadata, predicted_time_points, write_time_points
from zarrstain.live.source import SceneState, Snapshot, scan
from zarrstain.live.statistics import LiveStatistics, time_statistics
from zarrstain.models import Model
from zarrstain.progress import ProgressEvent

__all__ = ["WatchResult"]

logger = logging.getLogger(__name__)

#: polls in a row a store followed already may fail to parse (a writer between two metadata
#: writes) before the error is raised
RETRIES = 20


@dataclass
class WatchResult:
    """What a :func:`watch` run did.

    Attributes
    ----------
    out
        The output store.
    time_points
        Scene id → time points the output holds (from earlier runs too).
    written
        Scene id → time points predicted by this run.
    latencies
        Seconds from a time point first found complete to its prediction being readable, one
        per time point this run predicted.
    busy_s
        Seconds spent predicting and writing (the rest was waiting for the writer).
    ended
        Why the run ended: ``"count"`` (``until`` reached), ``"closed"`` (the writer closed
        the stream and everything it wrote is predicted), ``"idle"`` (``idle_timeout``
        without a new time point) or ``"stopped"`` (``stop`` was set).
    """

    out: str
    time_points: dict[str, int] = field(default_factory=dict)
    written: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    busy_s: float = 0.0
    ended: str = ""

    def latency(self, q: float = 50) -> float | None:
        """The ``q``-th percentile of the latencies (None before any time point)."""
        return float(np.percentile(self.latencies, q)) if self.latencies else None

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable summary (what the CLI prints)."""
        p50, p95 = self.latency(50), self.latency(95)
        n = sum(self.written.values())
        return {
            "out": self.out,
            "ended": self.ended,
            "time_points": dict(self.time_points),
            "written": dict(self.written),
            "latency_median_s": None if p50 is None else round(p50, 3),
            "latency_p95_s": None if p95 is None else round(p95, 3),
            "seconds_per_time_point": round(self.busy_s / n, 3) if n else None,
        }


@dataclass
class _Scene:
    """What the follower knows of one scene between polls."""

    done: int = 0  # time points the output holds
    declared: int = 0  # time points the source's arrays held when first seen
    seen: dict[int, float] = field(default_factory=dict)  # time point → first found complete
    offsets: list[np.ndarray] = field(default_factory=list)  # per-frame statistics so far
    scales: list[np.ndarray] = field(default_factory=list)
    created: bool = False  # the output image exists (with OME metadata)


class Follower:
    """The state of one :func:`watch` run."""

    def __init__(
        self,
        store: StoreLike,
        model: Model,
        out: StoreLike,
        mode: LiveStatistics,
        options: PredictOptions,
        dtype: np.dtype | None,
        scenes: list[str] | None,
        storage_options: dict[str, Any] | None,
        until: int | None = None,
        latency_target: float | None = None,
    ) -> None:
        self.store, self.model, self.out, self.mode = store, model, out, mode
        self.options, self.dtype, self.scenes = options, dtype, scenes
        self.storage_options = storage_options
        self.method = normalization_method(options.normalize, model)
        self.in_place = out is None
        self.where = describe_store(store)
        self.out_where = self.where if out is None else describe_store(out)
        self.location = store_location(store)
        self.labels = list(model.output_labels)
        # what decides the pixels (not where they are computed): a rerun must match it
        decides = {
            "model": model.content_hash, "labels": self.labels, "normalization": self.method,
            "statistics": mode.spec, "halo": options.halo, "precision": options.precision,
            "inputs": options.input_channels, "options": dict(options.options or {}),
            "seed": options.seed, "tta": options.tta, "chunks": options.chunks,
            "dtype": str(dtype) if dtype is not None else "default",
            "denormalize": options.denormalize,
        }  # fmt: skip
        self.key = tokenize(json.dumps(decides, sort_keys=True, default=str))
        self.state: dict[str, _Scene] = {}
        self.until, self.latency_target = until, latency_target
        self._late = False  # the latency target was missed and not met since
        self.root: Any = None
        self.result = WatchResult(self.out_where)
        self.provisional = False
        self._lag_warned = 0
        self._started = time.monotonic()
        self._failures = 0  # polls in a row whose store could not be read
        self._problem: str | None = None  # why, the last time

    # -- the loop ---------------------------------------------------------------------------

    def run(
        self,
        idle_timeout: float | None,
        poll: float,
        max_batch: int,
        max_lag: int,
        progress: Callable[[ProgressEvent], Any] | None,
        stop: threading.Event | None,
    ) -> WatchResult:
        until = self.until
        last_new = time.monotonic()
        final = False
        while True:
            snap = self._scan(final)
            if snap is not None and self.provisional and not snap.provisional and not final:
                # acquire-zarr writes the image's OME metadata when it closes the stream
                logger.info("%s: the writer closed the stream", self.where)
                final = True
                snap = self._scan(final)
                if snap is not None and self.root is not None and "" in snap.scenes:
                    adopt_metadata(self.root, snap.scenes[""].ome, self.out_where)
            if snap is not None:
                self.provisional = snap.provisional
                if self._note_complete(snap):
                    last_new = time.monotonic()
            did = False
            for sid, st in snap.scenes.items() if snap else ():
                target = self._target(st)
                s = self.state[sid]
                if target > s.done:
                    t1 = min(target, s.done + max_batch)
                    self._predict(snap, st, s.done, t1)
                    did = True
                    self._report(snap, progress, max_lag)
                if stop is not None and stop.is_set():
                    break
            if stop is not None and stop.is_set():
                return self._end("stopped")
            if snap is not None and snap.scenes:
                states = [(self.state[sid], st) for sid, st in snap.scenes.items()]
                if until is not None and all(s.done >= until for s, _ in states):
                    return self._end("count")
                if final and all(s.done >= st.complete for s, st in states):
                    return self._end("closed")
            if did:
                continue
            if idle_timeout is not None and time.monotonic() - last_new > idle_timeout:
                return self._end("idle")
            if stop is not None:
                if stop.wait(poll):
                    return self._end("stopped")
            else:
                time.sleep(poll)

    def _end(self, reason: str) -> WatchResult:
        if not self.state and self._problem:
            logger.warning("%s: nothing could be followed: %s", self.where, self._problem)
        self.result.ended = reason
        self.result.time_points = {sid: s.done for sid, s in self.state.items()}
        n = sum(self.result.written.values())
        logger.info(
            "watch ended (%s): %d time point(s) predicted by this run, median latency %s",
            reason, n, _seconds(self.result.latency(50)),
        )  # fmt: skip
        return self.result

    def _scan(self, final: bool) -> Snapshot | None:
        """The store now; None while nothing is there yet (the writer has not started)."""
        try:
            snap = scan(self.store, self.scenes, final=final, storage_options=self.storage_options)
        except (StoreNotFoundError, NotOmeZarrError, MetadataError) as exc:
            # the writer is creating the store (groups before their metadata; acquire-zarr
            # writes an array's metadata after its first time point): look again. Metadata of
            # a store followed already that stay broken are raised; before that, said once.
            self._failures += 1
            if self.state and self._failures > RETRIES:
                raise
            if self._failures == RETRIES and not isinstance(exc, StoreNotFoundError):
                logger.warning("%s: not readable yet (%s); waiting for its writer", self.where, exc)
            self._problem = str(exc)
            logger.debug("%s: nothing to follow yet (%s)", self.where, exc)
            return None
        self._failures, self._problem = 0, None
        for sid, st in snap.scenes.items():
            if sid not in self.state:
                self.state[sid] = self._resume(snap, st)
            elif self.in_place and st.declared != self.state[sid].declared:
                raise UnsupportedError(
                    f"{self.where}: scene {sid!r} changed from {self.state[sid].declared} to "
                    f"{st.declared} time points while predictions were written in place: its "
                    "writer resizes the arrays; write to a new store "
                    f"({option('out=...', '--out')})"
                )
        return snap

    def _target(self, st: SceneState) -> int:
        """The time points of a scene to predict: those complete, up to ``until``."""
        return st.complete if self.until is None else min(st.complete, self.until)

    def _note_complete(self, snap: Snapshot) -> bool:
        """Record when time points were first found complete; whether any was new."""
        now, new = time.monotonic(), False
        for sid, st in snap.scenes.items():
            s = self.state[sid]
            for t in range(max(s.done, max(s.seen, default=-1) + 1), self._target(st)):
                s.seen[t] = now
                new = True
        return new

    # -- one batch ----------------------------------------------------------------------------

    def _predict(self, snap: Snapshot, st: SceneState, t0: int, t1: int) -> None:
        start = time.monotonic()
        s = self.state[st.scene]
        scene = image_to_dataarray(st.group, st.meta, 0, scene=st.scene, store=self.location)
        chosen = select_inputs(scene.coords["c"].values, self.model, self.options.input_channels)
        # the batch's inputs read once, for the statistics and the model alike (their chunks
        # kept: the blocks are planned as zarrstain predict plans them)
        inputs = scene.sel(c=chosen).isel(t=slice(t0, t1))
        inputs = inputs.copy(data=da.from_array(inputs.values, chunks=inputs.data.chunks,
                                                name=False))  # fmt: skip
        stats = self._statistics(scene, inputs, s, t0)
        pred = predict(inputs, self.model, stats=stats, predict_options=self.options)
        record = {**pred.attrs["zarrstain"], "live": {"statistics": self.mode.spec,
                                                      "key": self.key}}  # fmt: skip
        where = f"{self.out_where}/{st.gpath}" if st.gpath else self.out_where
        if self.in_place:
            self._write_in_place(st, pred.assign_attrs(zarrstain=record), s.created, t0, t1)
        else:
            self._write_out(snap, st, pred.data, record, t0, where, s.created)
        s.created, s.done = True, t1
        now = time.monotonic()
        self.result.busy_s += now - start
        latencies = [now - s.seen.pop(t, start) for t in range(t0, t1)]
        self.result.latencies.extend(latencies)
        self._check_latency(where, t0, max(latencies), now - start, t1 - t0)
        self.result.written[st.scene] = self.result.written.get(st.scene, 0) + t1 - t0
        logger.info("%s: time points %d:%d predicted (%.2f s)", where, t0, t1, now - start)

    def _check_latency(self, where: str, t0: int, worst: float, took: float, n: int) -> None:
        """Warn once when time points miss the latency target (again after it is met)."""
        target = self.latency_target
        if target is None:
            return
        if worst > target and not self._late:
            logger.warning(
                "%s: time point %d was readable %.2f s after it was complete (target %.2f s); "
                "predicting and writing took %.2f s for %d time point(s): use a GPU "
                "(--device), mixed precision (--precision) or a smaller model to stay live",
                where, t0, worst, target, took, n,
            )  # fmt: skip
        self._late = worst > target

    def _write_in_place(
        self, st: SceneState, pred: xr.DataArray, created: bool, t0: int, t1: int
    ) -> None:
        """Time points ``t0:t1`` of the predicted channel, beside the acquired ones."""
        dtype = self.dtype
        if dtype is None and self.model.output_intensity:  # target units: rounded, as predict
            dtype = np.dtype(st.meta.levels[0].dtype)
        # (the channel's own earlier time points are kept: only t0:t1 is written)
        write_channels(self.store, {st.scene: pred}, time={st.scene: slice(t0, t1)},
                       overwrite=created, dtype=dtype,
                       storage_options=self.storage_options)  # fmt: skip

    def _write_out(
        self,
        snap: Snapshot,
        st: SceneState,
        data: Any,
        record: dict[str, Any],
        t0: int,
        where: str,
        created: bool,
    ) -> None:
        """Time points ``t0:`` appended to the output store's image (created by the first)."""
        if self.root is None:
            fmt = 3 if st.meta.version == "0.5" else 2
            self.root, _ = open_or_create_out(self.out, fmt, self.storage_options)
        if st.gpath and "/" in st.gpath:
            self.root.require_group(st.gpath.rsplit("/", 1)[0])
        data = data.astype(self.dtype or np.float32)
        source = (st.group, st.meta, st.ome)
        write_time_points(self.root, st.gpath, source, data, self.labels, record, t0, where)
        if not created and snap.opened is not None and snap.opened.layout.kind != "image":
            with group_lock(self.root) as fresh:  # list the new image in the plate metadata
                made = [sid for sid, x in self.state.items() if x.created] + [st.scene]
                write_collection_metadata(fresh, snap.opened.root, snap.opened.layout, made)

    def _statistics(
        self, scene: xr.DataArray, inputs: xr.DataArray, s: _Scene, t0: int
    ) -> xr.Dataset | None:
        """The normalization statistics of ``inputs`` (time points ``t0:t1`` of ``scene``'s
        input channels, in memory) under the run's mode."""
        if self.method is None:
            return None
        args = normalization_args(self.model, self.method)
        t1, chosen = t0 + inputs.sizes["t"], list(inputs.coords["c"].values)
        if not self.mode.reads_frames:  # fixed: nothing read from the stream
            zeros = np.zeros((t1 - t0, len(chosen)))
            frames = xr.Dataset(
                {"offset": (("t", "c"), zeros), "scale": (("t", "c"), zeros)},
                coords={"c": chosen}, attrs=stats_params(inputs, self.method, **args),
            )  # fmt: skip
            return time_statistics(frames, self.mode)
        frames = normalization_stats(inputs, self.method, **args).compute()
        if not self.mode.history:
            return frames  # each time point its own: zarrstain predict's statistics
        if len(s.offsets) < t0:  # resumed: the time points an earlier run predicted, read once
            earlier = scene.sel(c=chosen).isel(t=slice(len(s.offsets), t0))
            before = normalization_stats(earlier, self.method, **args).compute()
            s.offsets.extend(before["offset"].values)
            s.scales.extend(before["scale"].values)
        del s.offsets[t0:], s.scales[t0:]  # (a batch that failed before is computed again)
        s.offsets.extend(frames["offset"].values)
        s.scales.extend(frames["scale"].values)
        every = xr.Dataset(
            {"offset": (("t", "c"), np.array(s.offsets[:t1])),
             "scale": (("t", "c"), np.array(s.scales[:t1]))},
            coords={"c": chosen}, attrs=frames.attrs,
        )  # fmt: skip
        return time_statistics(every, self.mode).isel(t=slice(t0, t1))

    # -- resuming -------------------------------------------------------------------------------

    def _resume(self, snap: Snapshot, st: SceneState) -> _Scene:
        """A scene's state from the output store: what an earlier run wrote is kept."""
        s = _Scene(declared=st.declared)
        if self.in_place:
            self._check_in_place(snap, st)
            group = st.group
            where = self.out_where if not st.gpath else f"{self.out_where}/{st.gpath}"
            written = (group.attrs.get("zarrstain") or {}).get("channels") or {}
            if not any(label in written for label in self.labels):
                return s
            self._check_key(written, where)
            runs = (written.get(self.labels[0]) or {}).get("time_points") or []
            s.done = runs[0][1] if runs and runs[0][0] == 0 else 0
            s.created = True
            if s.done:
                logger.info("%s: %d time point(s) predicted already; continuing", where, s.done)
            return s
        if self.root is None:
            from zarrstain.io.outstore import existing_out

            self.root = existing_out(self.out, "r+", self.storage_options)
        if self.root is None:
            return s
        group = self.root.get(st.gpath) if st.gpath else self.root
        where = f"{self.out_where}/{st.gpath}" if st.gpath else self.out_where
        if group is None or "multiscales" not in ome_attrs(group)[1]:
            return s
        self._check_key((group.attrs.get("zarrstain") or {}).get("channels") or {}, where)
        s.done, s.created = predicted_time_points(group, where), True
        if s.done > st.declared:
            raise ChannelExistsError(
                f"{where} holds {s.done} predicted time points but {self.where} has only "
                f"{st.declared}; it was written from another acquisition: choose a new "
                f"{option('out=', '--out')}"
            )
        if s.done:
            logger.info("%s: %d time point(s) predicted already; continuing", where, s.done)
        return s

    def _check_key(self, written: dict[str, Any], where: str) -> None:
        """The channels there were written by watch with these very settings."""
        for label in self.labels:
            key = ((written.get(label) or {}).get("live") or {}).get("key")
            if key != self.key:
                raise ChannelExistsError(
                    f"{where} holds {label!r} from "
                    + ("another model or other settings" if key else "something other than watch")
                    + "; continue with the same model and settings or choose "
                    + (f"another {option('output_label=', '--output-label')}" if self.in_place
                       else f"a new {option('out=', '--out')}")
                )  # fmt: skip

    def _check_in_place(self, snap: Snapshot, st: SceneState) -> None:
        """In place only where the writer allocated the whole acquisition (see watch)."""
        where = self.where if not st.gpath else f"{self.where}/{st.gpath}"
        if snap.provisional or st.declared < (self.until or 0):
            held = "no OME metadata yet" if snap.provisional else f"{st.declared} time point(s)"
            raise UnsupportedError(
                f"{where} holds {held} of the {self.until} to acquire: its writer appends "
                "time points and rewrites the arrays' metadata as it does, which would drop a "
                f"channel added in place; write to a store that grows with it "
                f"({option('out=...', '--out')})"
            )

    # -- reporting ------------------------------------------------------------------------------

    def _report(
        self,
        snap: Snapshot,
        progress: Callable[[ProgressEvent], Any] | None,
        max_lag: int,
    ) -> None:
        lag = 0
        for sid, st in snap.scenes.items():
            lag += max(self._target(st) - self.state[sid].done, 0)
        done = sum(self.result.written.values())
        busy = self.result.busy_s
        rate = done / busy if busy > 0 else 0.0
        if lag > max_lag and lag >= 2 * self._lag_warned:
            self._lag_warned = lag
            elapsed = time.monotonic() - self._started
            logger.warning(
                "%d time point(s) wait to be predicted (more than %d): the model predicts "
                "%.2f time points/s, the acquisition wrote %.2f/s so far; predictions fall "
                "behind (nothing is lost: they wait in the store)",
                lag, max_lag, rate, (done + lag) / elapsed if elapsed > 0 else 0.0,
            )  # fmt: skip
        elif lag <= max_lag:
            self._lag_warned = 0
        if progress is not None:
            last = self.result.latencies[-1] if self.result.latencies else 0.0
            info = {"lag": float(lag), "latency": last, "rate": rate}
            progress(ProgressEvent("watch", done, done + lag, info))


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"
