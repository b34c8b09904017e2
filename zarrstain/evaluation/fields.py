"""One scene's evaluation: its pixels' metrics, its objects (segmented in the real and the
virtual stain, matched, measured) and its panel.

:func:`scene_evaluation` is the unit of work of :func:`zarrstain.evaluate`: one task per scene
(a plate's field), like the plate-scale prediction engine's one task per field, so a
384-field plate runs in parallel on the active dask scheduler with one field in memory per
worker. The task reads its pixels itself (no graph of chunks per field to schedule) and writes
its label images and panel itself, so no image travels back to the driver: what returns is a
row per time point and a small table per object.

Label images double as the evaluation's checkpoint: when a scene's two label images are
complete and were made by the same segmenter from the same pixels (a fingerprint of both), they
are read instead of segmenting again, so an interrupted plate evaluation resumes where it
stopped.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd

from zarrstain.evaluation.metrics import (
    coverage,
    interval_width,
    pcc_ceiling,
    score,
    spread_error_spearman,
)
from zarrstain.evaluation.objects import match_objects, object_features, object_scores
from zarrstain.evaluation.report import field_panel
from zarrstain.evaluation.segment import Segmenter
from zarrstain.progress import block_done

__all__ = ["FieldObjects", "Scene", "SceneJob", "SceneResult", "scene_evaluation"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SceneJob:
    """What to evaluate in one scene.

    Attributes
    ----------
    store, scene
        Where the scene is (a location another process can open).
    target, prediction
        Channel labels of the acquired and the predicted stain.
    segmenter
        Applied to both alike.
    samples
        Channels holding a generative model's individual samples (their objects are
        measured as side ``"sample k"``).
    region
        ``(y slice, x slice)`` evaluated (None: the whole field).
    label_names
        ``(real, predicted)`` names of the label images to write, or None (write none).
    uncertainty
        ``(kind, channel)`` of the prediction's ``std`` / ``lower`` / ``upper`` channels.
    second_target
        Another acquisition of the target (the PCC ceiling).
    input_channel
        Shown in the panel.
    panels
        The folder of the scene's panel (its first time point), or None for none.
    """

    store: Any
    scene: str
    target: str
    prediction: str
    segmenter: Segmenter | None = None
    samples: tuple[str, ...] = ()
    region: tuple[slice, slice] | None = None
    label_names: tuple[str, str] | None = None
    uncertainty: tuple[tuple[str, str], ...] = ()
    second_target: str | None = None
    input_channel: str | None = None
    panels: Any = None


@dataclass
class FieldObjects:
    """The objects of one field (scene, time point).

    Attributes
    ----------
    scene, t
        Which field.
    scores
        :func:`~zarrstain.evaluation.objects.object_scores` of the field.
    objects
        One row per object of either stain: ``side`` (``"real"``, ``"pred"`` or ``"sample
        k"``), ``label``, ``match`` (the other side's matched object at IoU ≥ 0.5, or 0),
        ``iou`` and the features.
    """

    scene: str
    t: int
    scores: dict[str, float | int]
    objects: pd.DataFrame


@dataclass
class SceneResult:
    """One scene evaluated: a row per time point, its fields' objects, its panel."""

    rows: list[dict[str, Any]]
    fields: list[FieldObjects]
    panel: Path | None = None


class Scene:
    """A scene's lazy image, handed to its task as it is.

    Not a dask collection (nor a dataclass, which dask traverses): the task reads the time
    points it needs itself, instead of dask computing the whole scene before the task starts.
    """

    __slots__ = ("image",)

    def __init__(self, image: Any) -> None:
        self.image = image


def scene_evaluation(job: SceneJob, scene: Scene | None = None) -> SceneResult:
    """Evaluate every time point of ``job``'s scene: pixels, objects, the panel (module doc).

    ``scene``: the scene as opened by the caller (else it is opened here).
    """
    if scene is None:
        from zarrstain.io.read import open_image

        scene = Scene(open_image(job.store, job.scene))
    image = scene.image
    spacing = tuple(float(image.attrs["scale"][d]) for d in ("z", "y", "x"))
    extra = [c for _, c in job.uncertainty] + [c for c in (job.second_target, job.input_channel)
                                               if c]  # fmt: skip
    channels = list(dict.fromkeys([job.target, job.prediction, *job.samples, *extra]))
    n_t = image.sizes["t"]
    read: dict[int, dict[str, np.ndarray]] = {}

    def frames(t: int, names: list[str] = channels) -> dict[str, np.ndarray]:
        """Channels ``names`` of time point ``t``, read here without a nested dask graph."""
        if t in read:
            return read[t]
        sub = image.isel(t=t).sel(c=names)
        if job.region is not None:
            sub = sub.isel(y=job.region[0], x=job.region[1])
        with dask.config.set(scheduler="sync"):
            values = np.asarray(sub.values, dtype=np.float64)
        data = dict(zip(names, values, strict=True))
        if n_t == 1 and names is channels:  # read once for the fingerprint and the evaluation
            read[t] = data
        return data

    stored = None
    if job.segmenter is not None and job.label_names and job.region is None:
        stored = _Stored.open(job, image, n_t)
    # a single field is read once; a time-lapse's first pass reads the two stains only
    stains = channels if n_t == 1 else [job.target, job.prediction]
    fingerprints = [_fingerprint(frames(t, stains), job) for t in range(n_t)] if stored else []
    reuse = stored is not None and stored.matches(fingerprints)
    writer = stored.begin() if stored is not None and not reuse else None
    rows, fields, panel = [], [], None
    for t in range(n_t):
        data = frames(t)
        tgt, pred = data[job.target], data[job.prediction]
        row = {"scene": job.scene, "t": t, **_pixels(job, data)}
        labels = None
        if job.segmenter is not None:
            if reuse:
                labels = stored.read(t)
            else:
                labels = (_segment(job.segmenter, tgt, spacing),
                          _segment(job.segmenter, pred, spacing))  # fmt: skip
            if writer is not None:
                writer.write(t, *labels)
            field = _field(job, t, data, *labels, spacing)
            fields.append(field)
            row.update({k: field.scores[k] for k in OBJECT_SCORES})
        rows.append({**row, "voxels": int(tgt.size)})
        if job.panels is not None and t == 0:
            panel = field_panel(job.scene, data, job, rows[-1], labels, Path(job.panels))
        block_done()  # one field evaluated (progress)
    if writer is not None:
        writer.finish(fingerprints, job)
    return SceneResult(rows, fields, panel)


def _pixels(job: SceneJob, data: dict[str, np.ndarray]) -> dict[str, float]:
    """Pixel metrics of a field, and those of the prediction's uncertainty channels."""
    tgt, pred = data[job.target], data[job.prediction]
    out = score(tgt, pred)
    channels = {kind: data[label] for kind, label in job.uncertainty}
    if "lower" in channels:
        out["coverage"] = coverage(tgt, channels["lower"], channels["upper"])
        out["interval_width"] = interval_width(tgt, channels["lower"], channels["upper"])
    if "std" in channels:
        out["std_error_spearman"] = spread_error_spearman(tgt, pred, channels["std"])
    if job.second_target:
        out["pcc_ceiling"] = pcc_ceiling(tgt, data[job.second_target])
    return out


#: the field scores an object-level evaluation adds to each row of the evaluation
OBJECT_SCORES = ("f1", "precision", "recall", "mean_ap", "mean_iou", "count_error")


def _field(job: SceneJob, t, data, real, pred, spacing) -> FieldObjects:
    matches = match_objects(real, pred)
    pairs = matches.pairs(0.5)
    to_pred = {a: (b, iou) for a, b, iou in pairs}
    to_real = {b: (a, iou) for a, b, iou in pairs}
    frames = [
        _table(_measure(real, data[job.target], spacing), "real", to_pred),
        _table(_measure(pred, data[job.prediction], spacing), "pred", to_real),
    ]
    for k, channel in enumerate(job.samples):
        labels = _segment(job.segmenter, data[channel], spacing)
        frames.append(_table(_measure(labels, data[channel], spacing), f"sample {k}", {}))
    objects = pd.concat(frames, ignore_index=True)
    objects.insert(0, "scene", job.scene)
    objects.insert(1, "t", t)
    return FieldObjects(job.scene, t, object_scores(matches), objects)


def _segment(segmenter: Segmenter, image: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """(z, y, x) labels: a single plane segmented in 2D, a stack in 3D."""
    if image.shape[0] == 1:
        return np.asarray(segmenter(image[0], spacing[-2:]))[None].astype(np.int32)
    return np.asarray(segmenter(image, spacing)).astype(np.int32)


def _measure(labels: np.ndarray, image: np.ndarray, spacing: Sequence[float]) -> pd.DataFrame:
    if labels.shape[0] == 1:
        return object_features(labels[0], image[0], spacing[-2:])
    return object_features(labels, image, spacing)


def _table(
    features: pd.DataFrame, side: str, matched: dict[int, tuple[int, float]]
) -> pd.DataFrame:
    table = features.reset_index()
    table.insert(0, "side", side)
    table.insert(2, "match", [matched.get(int(i), (0, 0.0))[0] for i in table["label"]])
    table.insert(3, "iou", [matched.get(int(i), (0, 0.0))[1] for i in table["label"]])
    return table


def _fingerprint(data: dict[str, np.ndarray], job: SceneJob) -> str:
    """The pixels of both stains and the segmenter that makes labels of them."""
    digest = hashlib.sha256(np.ascontiguousarray(data[job.target]).tobytes())
    digest.update(np.ascontiguousarray(data[job.prediction]).tobytes())
    digest.update(repr(job.segmenter).encode())
    return digest.hexdigest()[:32]


class _Stored:
    """A scene's two label images in the store: read back, or written anew."""

    def __init__(self, job: SceneJob, group: Any, meta: Any, n_t: int) -> None:
        self.job, self.group, self.meta, self.n_t = job, group, meta, n_t

    @classmethod
    def open(cls, job: SceneJob, image: Any, n_t: int) -> _Stored:
        from zarrstain.io.metadata import parse_image
        from zarrstain.io.store import open_root

        root = open_root(job.store, mode="r+")
        group = root[job.scene] if job.scene else root
        return cls(job, group, parse_image(group, f"{job.store}/{job.scene}"), n_t)

    def matches(self, fingerprints: list[str]) -> bool:
        from zarrstain.io.labels import stored_labels

        for name in self.job.label_names or ():
            record = stored_labels(self.group, name)
            if record is None or record.get("fingerprints") != fingerprints:
                return False
        return True

    def read(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        from zarrstain.io.labels import read_labels

        real, pred = (read_labels(self.group, self.meta, n, t) for n in self.job.label_names)
        return real.astype(np.int32), pred.astype(np.int32)

    def begin(self) -> _Writer:
        from zarrstain.io.labels import LabelWrite

        real, pred = self.job.label_names or ("", "")
        # a stain evaluated against itself has one label image
        names = [real] if real == pred else [real, pred]
        return _Writer([LabelWrite.begin(self.group, self.meta, n) for n in names])


class _Writer:
    """The scene's label images being written: the real stain's, then the predicted one's."""

    def __init__(self, writes: list[Any]) -> None:
        self.writes = writes

    def write(self, t: int, real: np.ndarray, pred: np.ndarray) -> None:
        for w, labels in zip(self.writes, (real, pred), strict=False):
            w.write(t, labels)

    def finish(self, fingerprints: list[str], job: SceneJob) -> None:
        for w, channel in zip(self.writes, (job.target, job.prediction), strict=False):
            w.finish({"channel": channel, "segmenter": repr(job.segmenter),
                      "fingerprints": fingerprints})  # fmt: skip
