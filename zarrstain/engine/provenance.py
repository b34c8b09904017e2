"""The provenance ``predict`` attaches to its result: what determines it, and its fingerprint."""

from __future__ import annotations

from typing import Any

import dask
import xarray as xr

from zarrstain.engine.planner import TilePlan
from zarrstain.io.read import source_token
from zarrstain.models.model import Model, plain_options, run_token

__all__ = ["prediction_fingerprint", "prediction_provenance"]


def prediction_provenance(
    scene: xr.DataArray,
    model: Model,
    chosen: list[str],
    method: str | None,
    stats: xr.Dataset | None,
    plan: TilePlan,
    precision: str,
    units: str,
    seed: int,
    tta: str = "none",
) -> dict[str, Any]:
    """The record :func:`zarrstain.write_channels` stores with each predicted channel."""
    norm: dict[str, Any] = {"method": method or "none"}
    if stats is not None:
        norm.update({k: v for k, v in stats.attrs.items() if k not in ("method", "data")})
        norm["offset"] = stats["offset"].data  # computed with the prediction when written
        norm["scale"] = stats["scale"].data
    fingerprint = prediction_fingerprint(
        model,
        source_token(scene, chosen),
        chosen,
        method,
        stats,
        plan,
        precision,
        units,
        seed,
        tta,
    )
    source = None  # where the inputs were read (the resolved store), for data from a store
    if "store" in scene.attrs and "scene" in scene.attrs:
        source = {k: scene.attrs.get(k) for k in ("store", "scene", "level")}
    return {
        **({"input": source} if source else {}),
        "model": {
            "name": model.name,
            "content_hash": model.content_hash,
            "architecture": model.architecture,
            "source": model.source,
        },
        "input_channels": chosen,
        "normalization": norm,
        "tiling": plan.describe(),
        "precision": precision,
        **({"test_time_augmentation": tta} if tta != "none" else {}),
        "output_units": units,
        "output_kinds": [h.kind for h in model.outputs],
        **(
            {"output_dtypes": [h.dtype for h in model.outputs]}
            if any(h.dtype for h in model.outputs)
            else {}
        ),
        **({"seed": seed} if model.spec.stochastic else {}),
        **({"sampling": plain_options(model.options)} if model.options else {}),
        **_calibration(model),
        "fingerprint": fingerprint,
    }


def prediction_fingerprint(
    model: Model,
    token: str,
    chosen: list[str],
    method: str | None,
    stats: xr.Dataset | None,
    plan: TilePlan,
    precision: str,
    units: str,
    seed: int,
    tta: str = "none",
) -> str:
    """What determines a prediction, hashed: ``token`` is its inputs'
    :func:`~zarrstain.io.read.source_token`; statistics count by what they were computed from
    (their attrs), so lazy and precomputed statistics of the same data give the same
    fingerprint."""
    return dask.base.tokenize(
        model.content_hash,
        token,
        chosen,
        method,
        dict(stats.attrs) if stats is not None else None,
        plan,
        precision,
        units,
        *((seed,) if model.spec.stochastic else ()),
        *((run_token(model.options),) if model.options else ()),
        *((tta,) if tta != "none" else ()),  # earlier fingerprints stay as they were
    )


def _calibration(model: Model) -> dict[str, Any]:
    """The provenance of calibrated intervals: method, α and the nominal coverage."""
    cal = model.head.calibration
    if cal is None:
        return {}
    record = {"method": cal.method, "alpha": cal.alpha, "nominal_coverage": 1 - cal.alpha}
    if cal.delta is not None:
        record["delta"] = cal.delta
    return {"calibration": {**record, "scenes": len(cal.scenes), "units": cal.units}}
