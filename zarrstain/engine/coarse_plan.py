"""A scene planned for coarse tasks (see :mod:`zarrstain.engine.coarse`): its prediction with one
task per block, its statistics as one task, its block source; and fields with the same
metadata planned from it (:func:`plan_like`) without building anything again."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.highlevelgraph import HighLevelGraph

from zarrstain.engine.coarse import (
    FieldInputs,
    StoreBlocks,
    _field_statistics,
    as_dask,
    field_inputs,
)
from zarrstain.engine.normalize import stats_params
from zarrstain.engine.predict import normalization_args, output_affine, prepare
from zarrstain.engine.provenance import prediction_fingerprint, prediction_provenance
from zarrstain.engine.tiling import Forward
from zarrstain.io.metadata import DIMS
from zarrstain.io.read import source_token
from zarrstain.progress import PREDICT_PREFIX
from zarrstain.units import rescale_map, rescale_record

if TYPE_CHECKING:
    from zarrstain.engine.pipeline import PredictionPlan

__all__ = ["Planned", "plan_like", "plan_scene"]


def plan_scene(plan: PredictionPlan, scene: str, source: xr.DataArray) -> Planned | None:
    """A scene's predictions (lazy: one task per block), statistics (lazy: one task) and blocks.

    What ``predict`` would return for the scene, reading only metadata and building no graph
    beyond one task per block; None when the scene takes the lazy route (multi-pass models,
    plans without a store).
    """
    if plan.opened is None:
        return None
    if plan.rescale and not _single_integer(plan.write.dtype):
        return None  # the lazy route refuses it with the message for the user's case
    o = plan.options
    prep = prepare(source, plan.model, o)
    if len(prep.plan.halos) != 1:
        return None
    model, method = prep.model, prep.method
    inputs = field_inputs(plan, scene, source, prep.chosen)
    args = normalization_args(model, method) if method else {}
    stats = None
    if method is not None:
        params = stats_params(prep.inputs, method, **args)  # type: ignore[arg-type]
        stats = _lazy_statistics(inputs, method, args, scene, prep.inputs, params)
    clip = method == "percentile" and args.get("clip", True)
    units = "target" if o.denormalize and model.output_intensity else "normalized"
    affine = output_affine(model) if units == "target" else None
    blocks = StoreBlocks(
        inputs, prep.plan, method, args, None, clip,
        Forward.of(model, device=o.device, precision=o.precision,
                   batch=o.batch_size or 0, seed=o.seed, tta=o.tta),
        affine, rescale_map(plan.write.dtype) if plan.rescale else None,
        dict(o.resources) if o.resources else None,
    )  # fmt: skip
    record = prediction_provenance(
        prep.scene,
        model,
        prep.chosen,
        method,
        stats,
        prep.plan,
        o.precision,
        units,
        o.seed,
        o.tta,
    )
    parts = (model, prep.chosen, method, prep.plan, o.precision, units, o.seed, o.tta)
    record["device"] = o.device
    if plan.rescale:
        record = rescale_record(record, plan.write.dtype)
    skip = ("normalization", "zarrstain", "provenance")
    coords = {d: source.coords[d] for d in ("t", "z", "y", "x")}
    data = as_dask(
        blocks, len(model.output_labels), PREDICT_PREFIX + "blocks-" + record["fingerprint"]
    )
    pred = xr.DataArray(data, dims=DIMS, coords={**coords, "c": list(model.output_labels)})
    pred.attrs = {k: v for k, v in source.attrs.items() if k not in skip}
    pred.attrs["zarrstain"] = record
    return Planned(pred, stats, blocks, parts)


@dataclass(frozen=True)
class Planned:
    """A scene planned by :func:`plan_scene`: what ``predict`` would return, its statistics
    and block source, and what its fingerprint hashes but the inputs and statistics
    (:func:`~zarrstain.engine.provenance.prediction_fingerprint`: model, inputs chosen, method, tile
    plan, precision, units, seed)."""

    prediction: xr.DataArray
    stats: xr.Dataset | None
    blocks: StoreBlocks
    parts: tuple[Any, ...]


def plan_like(plan: PredictionPlan, scene: str, like: Planned, source: xr.DataArray) -> Planned:
    """What :func:`plan_scene` gives for ``scene``, a field whose metadata equal those of the
    field planned as ``like`` (``source``: that field as opened), without building it again:
    the same plan with the scene's own inputs, statistics and fingerprint.
    """
    pred, blocks = like.prediction, like.blocks
    record = dict(pred.attrs["zarrstain"])
    chosen = record["input_channels"]
    inputs = field_inputs(plan, scene, source, chosen)
    token = source_token(source, chosen, scene=scene)  # the scene's inputs
    stats = None
    if like.stats is not None:
        assert blocks.method is not None
        offset, scale = _statistics_arrays(inputs, blocks.method, blocks.norm_args, scene)
        stats = like.stats.copy(data={"offset": offset, "scale": scale})
        stats.attrs = {**like.stats.attrs, "data": token}  # (as stats_params gives them)
        record["normalization"] = {**record["normalization"], "offset": offset, "scale": scale}
    blocks = dataclasses.replace(blocks, inputs=inputs, cached=None, norm=None)
    model, chosen, method, tiles, precision, units, seed, tta = like.parts
    record["fingerprint"] = fingerprint = prediction_fingerprint(
        model, token, chosen, method, stats, tiles, precision, units, seed, tta
    )
    if "input" in record:
        record["input"] = {**record["input"], "scene": scene}
    data = as_dask(blocks, pred.sizes["c"], PREDICT_PREFIX + "blocks-" + fingerprint)
    new = pred.copy(deep=False, data=data)
    new.attrs = {**pred.attrs, "scene": scene, "zarrstain": record}
    return Planned(new, stats, blocks, like.parts)


def _single_integer(dtype: Any) -> bool:
    """Whether ``dtype`` is one integer dtype (not None, a float, or one per channel)."""
    try:
        return np.issubdtype(np.dtype(dtype), np.integer) if dtype is not None else False
    except TypeError:
        return False


def _lazy_statistics(
    inputs: FieldInputs,
    method: str,
    args: dict[str, Any],
    scene: str,
    data: xr.DataArray,
    params: dict[str, Any],
) -> xr.Dataset:
    """:func:`~zarrstain.engine.normalize.normalization_stats` as one lazy task reading the
    field."""
    offset, scale = _statistics_arrays(inputs, method, args, scene)
    coords = {d: data.coords[d] for d in ("t", "c") if d in data.coords}
    variables = {"offset": (("t", "c"), offset), "scale": (("t", "c"), scale)}
    return xr.Dataset(variables, coords=coords, attrs=params)


def _statistics_arrays(
    inputs: FieldInputs, method: str, args: dict[str, Any], scene: str
) -> tuple[da.Array, da.Array]:
    """Offset and scale per (t, c) of a field, lazy: one task reading the field."""
    t, c = inputs.shape[0], len(inputs.channels)
    name = "zarrstain-field-statistics-" + uuid.uuid4().hex  # (tokenizing the reader is slow)
    layers: dict[str, Any] = {name: {name: (_field_statistics, inputs, method, args, scene)}}
    deps: dict[str, set[str]] = {name: set()}
    for i, part in enumerate(("offset", "scale")):
        layers[f"{name}-{part}"] = {(f"{name}-{part}", 0, 0): (_pick, name, i)}
        deps[f"{name}-{part}"] = {name}
    hlg = HighLevelGraph(layers, deps)
    offset, scale = (
        da.Array(hlg, f"{name}-{part}", ((t,), (c,)), dtype=np.float64)
        for part in ("offset", "scale")
    )
    return offset, scale


def _pick(result: tuple[Any, Any], i: int) -> np.ndarray:
    return result[0][i]
