"""One scene of a :class:`~zarrstain.engine.pipeline.PredictionPlan`, built only while it is used.

A planned scene has a small summary (status, shape, inputs, outputs, tiling, fingerprint),
which is all that describing and checking a plan needs, and arrays: the scene as read, its
lazy prediction, its statistics and its block source. The arrays are xarray and dask objects
of tens of kilobytes and milliseconds each; a plate of 10,000 fields holding them all would
grow the driver by gigabytes. So a :class:`ScenePlan` builds them from the store when first
used and drops them on :meth:`ScenePlan.release`: planning and running walk the fields in
batches, holding one batch's arrays at a time, and memory stays flat in the number of fields.
Building is deterministic (the same fingerprint and graph names every time), so a rebuilt
scene is the scene that was checked.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

import xarray as xr
import zarr

from zarrstain.engine import coarse, coarse_plan
from zarrstain.engine.normalize import normalization_stats
from zarrstain.engine.predict import normalization_args, per_scene, run_model, select_inputs
from zarrstain.errors import ChannelExistsError, option
from zarrstain.io.metadata import ImageMeta, ome_attrs, parse_image
from zarrstain.io.outstore import existing_out
from zarrstain.io.read import open_scene
from zarrstain.models import Model, renamable
from zarrstain.timepoints import parse_time

if TYPE_CHECKING:
    from zarrstain.engine.pipeline import PredictionPlan

__all__ = ["SceneArrays", "ScenePlan", "ScenePlanner", "build_scene"]


class SceneArrays:
    """What a scene's prediction is made of (lazy: nothing is computed).

    Attributes
    ----------
    prediction
        The lazy prediction, as it will be written.
    stats
        The normalization statistics (lazy until run).
    blocks
        Computes the prediction block by block from the store (None: the lazy route).
    planned
        The coarse plan (None: the lazy route): other fields with the same metadata are
        planned from it (:func:`~zarrstain.engine.coarse_plan.plan_like`).
    """

    def __init__(
        self,
        source: xr.DataArray | Callable[[], xr.DataArray],
        prediction: xr.DataArray,
        stats: xr.Dataset | None,
        blocks: coarse.StoreBlocks | None,
        planned: coarse_plan.Planned | None = None,
    ) -> None:
        self._source = source
        self.prediction, self.stats, self.blocks, self.planned = prediction, stats, blocks, planned

    @property
    def source(self) -> xr.DataArray:
        """The scene (selected time points), as predict reads it (opened when first asked)."""
        if callable(self._source):
            self._source = self._source()
        return self._source


class ScenePlan:
    """What happens to one scene.

    ``source``, ``prediction``, ``stats`` and ``blocks`` are built on first use (see the module
    docstring) and held until :meth:`release`.

    Parameters
    ----------
    scene
        The scene id.
    status
        ``"to write"``, ``"unchanged"`` or, after run, ``"written"``.
    build
        Builds the scene's arrays (deterministically: the same every call).
    arrays
        Its arrays, built already (held until released).
    """

    def __init__(
        self,
        scene: str,
        status: str,
        build: Callable[[], SceneArrays],
        arrays: SceneArrays | None = None,
    ) -> None:
        self.scene = scene
        self.status = status
        self._build = build
        self._arrays = arrays
        pred = self.arrays.prediction
        record = pred.attrs["zarrstain"]
        # what describing and checking the plan need, kept when the arrays are released
        self.inputs: list[str] = list(record["input_channels"])
        self.tiling: dict[str, Any] = record["tiling"]
        self.outputs: list[str] = [str(c) for c in pred.coords["c"].values]
        #: None for a scene planned like another (:meth:`like`): known once built
        self.fingerprint: str | None = record.get("fingerprint")
        self.shape_tzyx = [int(pred.sizes[d]) for d in ("t", "z", "y", "x")]

    @classmethod
    def like(cls, other: ScenePlan, scene: str, build: Callable[[], SceneArrays]) -> ScenePlan:
        """A scene whose metadata equal ``other``'s (shape, chunks, dtype, labels, scale),
        planned without building anything: every check ``other`` passed holds for it, and
        it shares ``other``'s summary (inputs, outputs, tiling). Its fingerprint is known once
        it is built; its status is "to write" (the caller has seen that its target holds none
        of the outputs).
        """
        new = cls.__new__(cls)
        new.scene, new.status, new._build, new._arrays = scene, "to write", build, None
        new.inputs, new.tiling, new.outputs = other.inputs, other.tiling, other.outputs
        new.shape_tzyx, new.fingerprint = other.shape_tzyx, None
        return new

    def __repr__(self) -> str:
        return f"ScenePlan({self.scene!r}, {self.status!r})"

    @property
    def arrays(self) -> SceneArrays:
        """The scene's arrays, built now if they are not held."""
        if self._arrays is None:
            self._arrays = self._build()
            self.fingerprint = self._arrays.prediction.attrs["zarrstain"].get("fingerprint")
        return self._arrays

    @property
    def held(self) -> bool:
        """Whether the arrays are built and held."""
        return self._arrays is not None

    def release(self) -> None:
        """Drop the arrays (built again when next used)."""
        self._arrays = None

    @property
    def source(self) -> xr.DataArray:
        """The scene (selected time points), as predict reads it."""
        return self.arrays.source

    @property
    def prediction(self) -> xr.DataArray:
        """The lazy prediction, as it will be written."""
        return self.arrays.prediction

    @property
    def stats(self) -> xr.Dataset | None:
        """The normalization statistics (lazy until run)."""
        return self.arrays.stats

    @stats.setter
    def stats(self, value: xr.Dataset | None) -> None:
        self.arrays.stats = value

    @property
    def blocks(self) -> coarse.StoreBlocks | None:
        """Computes the prediction block by block from the store (None: the lazy route)."""
        return self.arrays.blocks

    @blocks.setter
    def blocks(self, value: coarse.StoreBlocks | None) -> None:
        self.arrays.blocks = value

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        return {
            "scene": self.scene,
            "status": self.status,
            "shape_tzyx": list(self.shape_tzyx),
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            **self.tiling,
        }


def open_source(plan: PredictionPlan, scene: str) -> xr.DataArray:
    """The scene as ``plan`` reads it: its selected time points, from the store as planned."""
    image = open_scene(plan.opened if plan.opened is not None else plan.store, scene)
    tsel = plan.times.get(scene)
    return image.isel(t=tsel) if tsel is not None else image


def build_scene(plan: PredictionPlan, scene: str) -> SceneArrays:
    """The arrays of ``scene`` as ``plan`` predicts it: read from the store as planned."""
    source = open_source(plan, scene)
    planned = coarse_plan.plan_scene(plan, scene, source)  # one task per block
    if planned is not None:
        return SceneArrays(source, planned.prediction, planned.stats, planned.blocks, planned)
    stats = None
    if plan.method is not None:  # lazy: computed once, in run's first pass
        chosen = select_inputs(
            source.coords["c"].values, plan.model, plan.options.kwargs()["input_channels"]
        )
        stats = normalization_stats(
            source.sel(c=chosen), plan.method, **normalization_args(plan.model, plan.method)
        )
    return SceneArrays(source, plan.predict(source, stats), stats, None)


def build_like(
    plan: PredictionPlan, scene: str, like: coarse_plan.Planned, like_source: xr.DataArray
) -> SceneArrays:
    """The arrays of ``scene``, whose metadata equal those of the scene planned as ``like``
    (``like_source``: that scene as opened): what :func:`build_scene` gives, for a fraction of
    its cost (the scene itself is opened only when its ``source`` is asked for)."""
    planned = coarse_plan.plan_like(plan, scene, like, like_source)
    source = functools.partial(open_source, plan, scene)
    return SceneArrays(source, planned.prediction, planned.stats, planned.blocks, planned)


class ScenePlanner:
    """Plans a store's scenes one by one: in full (arrays built and checked), or like a scene
    planned in full whose metadata are the same (:meth:`ScenePlan.like`).

    A plate's fields usually share shape, chunks, dtype, channels and scale: the first is
    planned in full and the others cost a comparison of parsed metadata. A field is planned
    in full when the run options may differ per scene (a class map), when zarrstain wrote into it
    before (its provenance may refuse or skip it), or when its target already holds an
    output label (whether it is done then depends on its fingerprint).
    """

    def __init__(
        self, plan: PredictionPlan, model: Model, time: Any, options: dict[str, Any]
    ) -> None:
        self.plan, self.model, self.time, self.options = plan, model, time, options
        #: metadata key → the scene planned in full, and a builder for scenes like it
        self.seen: dict[Hashable, tuple[ScenePlan, Callable[[str], Any]]] = {}
        self.enabled = plan.opened is not None and not per_scene(model, options)
        write = plan.write
        self.out = existing_out(write.out, "r", write.storage_options) if write.out else None

    def scene(self, sid: str, meta: ImageMeta) -> ScenePlan:
        """The plan of scene ``sid`` (``meta``: its parsed metadata), its time points set."""
        dims = meta.axis_names
        nt = meta.levels[0].shape[dims.index("t")] if "t" in dims else 1
        self.plan.times[sid] = parse_time(self.time, nt, sid)  # each scene its own
        key = self._key(sid, meta)
        like = self.seen.get(key) if key is not None else None
        if like is not None and self._untouched(sid, meta, like[0].outputs):
            return ScenePlan.like(like[0], sid, like[1](sid))
        build = functools.partial(build_scene, self.plan, sid)
        arrays = build()
        scene_model = run_model(self.model, arrays.source, self.options)  # checked per scene
        if self.plan.write.out is None:
            protect_acquired(arrays.source, scene_model, sid)
        planned = ScenePlan(sid, "to write", build, arrays)
        if key is not None and key not in self.seen:
            self.seen[key] = (planned, self._builder(arrays))
        return planned

    def _builder(self, arrays: SceneArrays) -> Callable[[str], Callable[[], SceneArrays]]:
        """scene id → what builds the arrays of a scene planned like ``arrays``' scene."""
        if arrays.planned is None:  # the lazy route: each scene built in full
            return lambda sid: functools.partial(build_scene, self.plan, sid)
        # (what the arrays are now: statistics and runs rebind, never change, their parts)
        like, source = arrays.planned, arrays.source
        return lambda sid: functools.partial(build_like, self.plan, sid, like, source)

    def _key(self, sid: str, meta: ImageMeta) -> Hashable | None:
        """What the checks of a scene depend on, from its metadata; None: plan it in full."""
        if not self.enabled:
            return None
        src = self.plan.opened
        assert src is not None
        if "zarrstain" in src.group(src.layout.scenes[sid]).attrs:
            return None
        tsel = self.plan.times[sid]
        times = (tsel.start, tsel.stop) if tsel is not None else None
        return meta.version, meta.axes, meta.levels, meta.channel_labels, times

    def _untouched(self, sid: str, meta: ImageMeta, outputs: list[str]) -> bool:
        """Whether the scene's target holds none of ``outputs``."""
        if self.plan.write.out is None:
            return not set(outputs) & set(meta.labels)
        if self.out is None:
            return True
        gpath = meta.path
        found = self.out.get(gpath) if gpath else self.out
        if found is None:
            return True
        if not isinstance(found, zarr.Group) or "multiscales" not in ome_attrs(found)[1]:
            return False
        return not set(outputs) & set(parse_image(found, gpath).labels)


def protect_acquired(image: xr.DataArray, model: Model, scene: str) -> None:
    written = image.attrs.get("provenance") or {}
    labels = [str(c) for c in image.coords["c"].values]
    for label in model.output_labels:
        if label in labels and label not in written:
            new = f"{label} (predicted)"
            fix = (
                "name the output differently, e.g. "
                + option(f"output_label={new!r}", f"--output-label '{new}'")
                if renamable(model)
                else f"write to a new store with {option('out=...', '--out')}"
            )
            raise ChannelExistsError(
                f"scene {scene!r} already has an acquired channel {label!r} (not written by "
                f"zarrstain), which predictions never replace; {fix}"
            )
