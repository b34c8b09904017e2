"""Object-, phenotype- and assay-level evaluation over a whole store (``evaluate(objects=...)``).

One task per scene (:func:`zarrstain.evaluation.fields.scene_evaluation`) runs on the active dask
scheduler; this module plans them, follows their progress and turns the per-object tables they
return into the plate's answers: detection scores, feature correlations between matched
objects, the KID between the real and virtual populations (and between a generative model's
samples), per-well profiles and, with a class map, the assay's Z′ and effect size on the real
and the virtual stain side by side.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
import pandas as pd

from zarrstain.evaluation.assay import DISCRIMINANT, assay_scores, profile_correlation, profiles
from zarrstain.evaluation.distributions import kid
from zarrstain.evaluation.fields import (
    FieldObjects,
    Scene,
    SceneJob,
    SceneResult,
    scene_evaluation,
)
from zarrstain.evaluation.objects import feature_correlations
from zarrstain.progress import BlockProgress, ProgressCallback, cluster_progress

__all__ = [
    "Assay",
    "ObjectResults",
    "plan_scenes",
    "run_scenes",
    "summarise",
    "well_of",
    "wrote_labels",
]

logger = logging.getLogger(__name__)

#: columns of the per-object table that are not features
_ID_COLUMNS = ("scene", "well", "t", "side", "label", "match", "iou")


@dataclass(frozen=True)
class Assay:
    """Which classes the assay compares, and on which readout.

    Attributes
    ----------
    classes
        Each scene's class: a class map table (``well,class``), a mapping scene/well →
        class, or None with ``class_key`` (as for class-conditional diffusion).
    class_key
        An attribute of the field's or well's group holding the class.
    readout
        A feature (``"mean_intensity"``, ...) or ``"discriminant"`` (all features combined,
        see :mod:`zarrstain.evaluation.assay`).
    controls
        ``(negative, positive)`` class names; default: the two classes present.
    by
        The unit of the profiles compared: ``"scene"`` (each field) or ``"well"``.
    """

    classes: Any = None
    class_key: str | None = None
    readout: str = DISCRIMINANT
    controls: tuple[str, str] | None = None
    by: str = "scene"

    def __post_init__(self) -> None:
        from zarrstain.errors import ParameterError, option

        controls = self.controls
        if isinstance(controls, str):  # "NEG,POS", as a flag gives it
            controls = tuple(c.strip() for c in controls.split(","))
        if controls is not None and (len(controls) != 2 or not all(controls)):
            raise ParameterError(
                f"controls {self.controls!r} must name two classes, negative then positive "
                f"({option('controls=(NEG, POS)', '--controls NEG,POS')})"
            )
        object.__setattr__(self, "controls", tuple(controls) if controls else None)
        if self.by not in ("scene", "well"):
            raise ParameterError(f"assay profiles are per 'scene' or 'well', not {self.by!r}")


@dataclass
class ObjectResults:
    """What an object-level evaluation found (see :class:`zarrstain.evaluation.Evaluation`)."""

    fields: list[FieldObjects]
    objects: pd.DataFrame
    summary: dict[str, float]
    wells: pd.DataFrame
    assay: dict[str, Any] | None = None


def well_of(scene: str) -> str:
    """The well of a plate's field (``"A/1/0"`` → ``"A/1"``); other scenes are their own."""
    parts = scene.split("/")
    return "/".join(parts[:2]) if len(parts) == 3 else scene


def run_scenes(
    jobs: list[SceneJob], images: Mapping[str, Any], progress: ProgressCallback | None = None
) -> list[SceneResult]:
    """One task per scene on the active dask scheduler, in the order of ``jobs``."""
    total = sum(int(images[j.scene].sizes["t"]) for j in jobs)
    tasks = [
        dask.delayed(scene_evaluation, pure=False)(job, Scene(images[job.scene])) for job in jobs
    ]
    with BlockProgress(progress, total=total, stage="evaluate") as fields:
        client = _client()
        follow = cluster_progress(client, fields.add) if client is not None else nullcontext()
        with follow:  # on a cluster, each worker's finished fields reach the bar as events
            return list(dask.compute(*tasks))


def _client() -> Any:
    """The active ``dask.distributed`` client (the default scheduler), or None."""
    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


def summarise(
    fields: list[FieldObjects], images: Mapping[str, Any], assay: Assay | None = None
) -> ObjectResults:
    """The plate's answers from its fields' objects (see the module doc)."""
    objects = pd.concat([f.objects for f in fields], ignore_index=True)
    objects.insert(1, "well", [well_of(s) for s in objects["scene"]])
    features = [c for c in objects.columns if c not in _ID_COLUMNS]
    summary = _detection(fields)
    summary.update(_correlations(objects, features))
    real, pred = objects[objects.side == "real"], objects[objects.side == "pred"]
    summary.update(_kid(real, pred, features).as_dict("kid"))
    samples = sorted(s for s in objects.side.unique() if s.startswith("sample "))
    if len(samples) >= 2:  # diversity: two samples of the same fields
        a, b = (objects[objects.side == s] for s in samples[:2])
        summary.update(_kid(a, b, features).as_dict("kid_samples"))
    wells = _wells(real, pred, features)
    if len(wells) >= 2:
        summary["profile_r"] = profile_correlation(
            profiles(real, features, "well"), profiles(pred, features, "well"), features
        )
    result = _assay(assay, real, pred, features, images) if assay is not None else None
    return ObjectResults(fields, objects, summary, wells, result)


def _kid(a: pd.DataFrame, b: pd.DataFrame, features: list[str]) -> Any:
    """KID between two object tables, pairs within one field left out; features some objects
    lack (the solidity of a flat object in a stack) are left out rather than the objects."""
    field = lambda t: [f"{s}@{k}" for s, k in zip(t.scene, t.t, strict=True)]  # noqa: E731
    usable = [f for f in features if np.isfinite(pd.concat([a[f], b[f]]).to_numpy(float)).all()]
    return kid(a[usable].to_numpy(), b[usable].to_numpy(), real_groups=field(a),
               pred_groups=field(b))  # fmt: skip


def _detection(fields: list[FieldObjects]) -> dict[str, float]:
    """Field means of the detection scores, and the plate's count error from the counts."""
    keys = ("precision", "recall", "f1", "mean_ap", "mean_iou")
    out = {k: float(np.nanmean([f.scores[k] for f in fields])) for k in keys}
    n_true = sum(int(f.scores["n_true"]) for f in fields)
    n_pred = sum(int(f.scores["n_pred"]) for f in fields)
    out["count_error"] = (n_pred - n_true) / n_true if n_true else float(n_pred > 0)
    out["n_true"], out["n_pred"] = float(n_true), float(n_pred)
    return out


def _correlations(objects: pd.DataFrame, features: list[str]) -> dict[str, float]:
    """Pearson r of each feature between matched objects, pooled over the plate (objects
    keyed by scene, time point and label)."""
    key = ["scene", "t", "label"]
    real = objects[objects.side == "real"].set_index(key)[features]
    pred = objects[objects.side == "pred"].set_index(key)[features]
    matched = objects[(objects.side == "real") & (objects.match > 0)]
    columns = (matched.scene, matched.t, matched.label, matched.match, matched.iou)
    pairs = [((s, t, a), (s, t, b), iou) for s, t, a, b, iou in zip(*columns, strict=True)]
    return {f"r_{k}": v for k, v in feature_correlations(real, pred, pairs).items()}


def _wells(real: pd.DataFrame, pred: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """Per well: object counts and each feature's median, real and predicted side by side."""
    a = profiles(real, features, "well").add_suffix(" (real)")
    b = profiles(pred, features, "well").add_suffix(" (pred)")
    return a.join(b, how="outer")


def _assay(
    assay: Assay, real: pd.DataFrame, pred: pd.DataFrame, features: list[str], images
) -> dict[str, Any]:
    from zarrstain.classes import scene_class
    from zarrstain.errors import ParameterError, option

    classes = {sid: scene_class(assay.classes, image, assay.class_key)
               for sid, image in images.items()}  # fmt: skip
    if all(c is None for c in classes.values()):
        raise ParameterError(
            "the assay needs each scene's class: give a class map "
            f"({option('classes=', '--class-map FILE')}) or "
            f"{option('class_key=', '--class-key ATTR')}"
        )
    if assay.by == "well":
        classes = {well_of(s): c for s, c in classes.items()}
    return assay_scores(
        profiles(real, features, assay.by),
        profiles(pred, features, assay.by),
        pd.Series(classes, dtype=object),
        readout=assay.readout,
        controls=assay.controls,
        features=features,
    )


def plan_scenes(
    images: Mapping[str, Any],
    store: Any,
    prediction: str,
    target: str,
    *,
    objects: Any = None,
    labels: bool | None = None,
    region: tuple[slice | None, slice | None] = (None, None),
    second_target: str | None = None,
    input_channel: str | None = None,
    panels: Any = None,
) -> list[SceneJob]:
    """One :class:`SceneJob` per scene of ``images`` (see :func:`zarrstain.evaluate`).

    Raises
    ------
    ParameterError
        ``labels=True`` with an x/y range (label images cover whole fields), an unknown
        segmenter.
    """
    from zarrstain.errors import ParameterError, option
    from zarrstain.evaluation.segment import get_segmenter

    segmenter = get_segmenter(objects) if objects is not None else None
    cropped = region[0] is not None or region[1] is not None
    if labels and cropped and segmenter is not None:
        raise ParameterError(
            "label images cover whole fields; drop the x/y range or "
            + option("labels=False", "--no-labels")
        )
    write = segmenter is not None and (
        bool(labels) if labels is not None else not cropped and _writable(store)
    )
    names = (f"{target} {segmenter.name}", f"{prediction} {segmenter.name}") if write else None
    crop = (region[0] or slice(None), region[1] or slice(None)) if cropped else None
    jobs = []
    for sid, image in images.items():
        present = [str(c) for c in image.coords["c"].values]
        samples = ()
        if segmenter is not None:
            samples = tuple(sorted(c for c in present if c.startswith(f"{prediction} sample ")))
        jobs.append(SceneJob(
            store, sid, target, prediction, segmenter, samples, crop, names,
            uncertainty=_uncertainty_channels(present, prediction),
            second_target=second_target, input_channel=input_channel, panels=panels,
        ))  # fmt: skip
    return jobs


def _uncertainty_channels(labels: list[str], prediction: str) -> tuple[tuple[str, str], ...]:
    """The prediction's ``std`` / ``lower`` / ``upper`` channels present (bounds in pairs)."""
    found = {k: f"{prediction} {k}" for k in ("std", "lower", "upper")}
    found = {k: v for k, v in found.items() if v in labels}
    if ("lower" in found) != ("upper" in found):
        found.pop("lower", None)
        found.pop("upper", None)
    return tuple(found.items())


def wrote_labels(jobs: list[SceneJob], store: Any) -> None:
    """After label images were written: a consolidated metadata snapshot is rewritten."""
    if any(j.label_names for j in jobs):
        _refresh(store)


def _writable(store: Any) -> bool:
    """A local folder this process may write (object stores and URLs: not by default)."""
    import os

    from zarrstain.io.store import is_remote

    if not isinstance(store, str | os.PathLike) or is_remote(store):
        return False
    return os.access(store, os.W_OK)


def _refresh(store: Any) -> None:
    """Rewrite a consolidated metadata snapshot, so readers that trust it see the labels."""
    from zarrstain.io.store import has_consolidated, open_root, refresh_consolidated

    root = open_root(store, mode="r+")
    if has_consolidated(root):
        refresh_consolidated(root, str(store))
