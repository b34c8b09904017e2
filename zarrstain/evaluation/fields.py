"""One scene's object evaluation: segment the real and the virtual stain, match, measure.

:func:`scene_objects` is the unit of work of an object-level evaluation: one task per scene
(a plate's field), like the plate-scale prediction engine's one task per field, so a
384-field plate runs in parallel on the active dask scheduler with one field in memory per
worker. The task reads its pixels itself (no graph of chunks per field to schedule) and writes
its label images itself, so no mask travels back to the driver: what returns is a small table
per object and the field's scores.

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
from typing import Any

import dask
import numpy as np
import pandas as pd

from zarrstain.evaluation.objects import match_objects, object_features, object_scores
from zarrstain.evaluation.segment import Segmenter
from zarrstain.progress import block_done

__all__ = ["FieldObjects", "SceneJob", "scene_objects"]

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
    keep_labels
        Return the label images (for panels).
    """

    store: Any
    scene: str
    target: str
    prediction: str
    segmenter: Segmenter
    samples: tuple[str, ...] = ()
    region: tuple[slice, slice] | None = None
    label_names: tuple[str, str] | None = None
    keep_labels: bool = False


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
    labels
        (real, predicted) (z, y, x) label images, when kept.
    """

    scene: str
    t: int
    scores: dict[str, float | int]
    objects: pd.DataFrame
    labels: tuple[np.ndarray, np.ndarray] | None = None


def scene_objects(job: SceneJob) -> list[FieldObjects]:
    """Evaluate every time point of ``job``'s scene (see the module doc)."""
    from zarrstain.io.read import open_image

    image = open_image(job.store, job.scene)
    spacing = tuple(float(image.attrs["scale"][d]) for d in ("z", "y", "x"))
    channels = [job.target, job.prediction, *job.samples]
    n_t = image.sizes["t"]

    read: dict[int, np.ndarray] = {}

    def frames(t: int) -> np.ndarray:  # (channel, z, y, x), read here without a nested graph
        if t in read:
            return read[t]
        sub = image.isel(t=t).sel(c=channels)
        if job.region is not None:
            sub = sub.isel(y=job.region[0], x=job.region[1])
        with dask.config.set(scheduler="sync"):
            data = np.asarray(sub.values, dtype=np.float32)
        if n_t == 1:  # read once for the fingerprint and the evaluation
            read[t] = data
        return data

    stored = _Stored.open(job, image, n_t) if job.label_names and job.region is None else None
    fingerprints = [_fingerprint(frames(t), job) for t in range(n_t)] if stored else []
    reuse = stored is not None and stored.matches(fingerprints)
    writer = stored.begin() if stored is not None and not reuse else None
    out = []
    for t in range(n_t):
        data = frames(t)
        if reuse:
            real, pred = stored.read(t)
        else:
            real = _segment(job.segmenter, data[0], spacing)
            pred = _segment(job.segmenter, data[1], spacing)
        if writer is not None:
            writer.write(t, real, pred)
        out.append(_field(job, t, data, real, pred, spacing))
        block_done()  # one field evaluated (progress)
    if writer is not None:
        writer.finish(fingerprints, job)
    return out


def _field(job: SceneJob, t, data, real, pred, spacing) -> FieldObjects:
    matches = match_objects(real, pred)
    pairs = matches.pairs(0.5)
    to_pred = {a: (b, iou) for a, b, iou in pairs}
    to_real = {b: (a, iou) for a, b, iou in pairs}
    frames = [
        _table(_measure(real, data[0], spacing), "real", to_pred),
        _table(_measure(pred, data[1], spacing), "pred", to_real),
    ]
    for k in range(len(job.samples)):
        labels = _segment(job.segmenter, data[2 + k], spacing)
        frames.append(_table(_measure(labels, data[2 + k], spacing), f"sample {k}", {}))
    objects = pd.concat(frames, ignore_index=True)
    objects.insert(0, "scene", job.scene)
    objects.insert(1, "t", t)
    kept = (real, pred) if job.keep_labels else None
    return FieldObjects(job.scene, t, object_scores(matches), objects, kept)


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


def _fingerprint(data: np.ndarray, job: SceneJob) -> str:
    """The pixels of both stains and the segmenter that makes labels of them."""
    digest = hashlib.sha256(np.ascontiguousarray(data[:2]).tobytes())
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
