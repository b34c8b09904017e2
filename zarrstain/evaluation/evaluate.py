"""``zarrstain.evaluate``: compare predicted channels with acquired ones per scene and time."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from zarrstain.errors import ChannelError, ParameterError, option
from zarrstain.evaluation.fields import OBJECT_SCORES
from zarrstain.evaluation.metrics import METRICS, UNCERTAINTY
from zarrstain.evaluation.plate import Assay, plan_scenes, run_scenes, summarise, wrote_labels
from zarrstain.evaluation.report import write_reports
from zarrstain.evaluation.segment import Segmenter
from zarrstain.io.read import open_scenes
from zarrstain.io.store import StoreLike
from zarrstain.progress import ProgressCallback

__all__ = ["Assay", "Evaluation", "evaluate"]

logger = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Per (scene, time point) metrics, their means, and the files written.

    Attributes
    ----------
    rows
        One dict per scene and time point: pixel metrics, and with ``objects`` the field's
        detection scores (``f1``, ``mean_ap``, ``count_error``, ...).
    summary
        Means of the rows' metrics; with ``objects`` also the plate's feature correlations
        (``r_<feature>``), ``kid`` (with its bootstrap interval), ``profile_r`` and, for
        generative models, ``kid_samples``.
    files
        Written into ``out``.
    objects
        With ``objects``: one row per object of either stain (tidy: ``scene``, ``well``,
        ``t``, ``side``, ``label``, ``match``, ``iou``, features).
    wells
        With ``objects``: per well, object counts and feature medians, real and predicted.
    assay
        With ``assay``: Z′ and effect size of the readout on the real and the virtual stain.
    """

    rows: list[dict[str, Any]]
    summary: dict[str, float]
    files: list[Path] = field(default_factory=list)
    objects: pd.DataFrame | None = None
    wells: pd.DataFrame | None = None
    assay: dict[str, Any] | None = None

    def table(self) -> pd.DataFrame:
        """The rows as a tidy table (one row per scene and time point)."""
        return pd.DataFrame(self.rows)


def _label(image, label: str, scene: str) -> None:
    labels = [str(c) for c in image.coords["c"].values]
    if label not in labels:
        raise ChannelError(f"channel {label!r} is not in scene {scene!r}; available: {labels}")


def evaluate(
    store: StoreLike,
    prediction: str,
    target: str,
    *,
    scenes: Sequence[str] | None = None,
    input_channel: str | None = None,
    x_range: slice | None = None,
    y_range: slice | None = None,
    out: str | os.PathLike | None = None,
    panels: bool = True,
    objects: str | Segmenter | Callable[..., Any] | None = None,
    labels: bool | None = None,
    assay: Assay | None = None,
    second_target: str | None = None,
    progress: ProgressCallback | None = None,
) -> Evaluation:
    """Pearson r, SSIM, MSE, MAE and NRMSE of a predicted channel against its target.

    When the scene also holds the prediction's interval (``"<prediction> lower"`` and
    ``"<prediction> upper"``), each row adds ``coverage`` (the fraction of target voxels inside
    it) and ``interval_width`` (mean, in target standard deviations), and the panel the width
    map; with a ``"<prediction> std"`` channel, ``std_error_spearman`` (Spearman correlation of
    the std with the absolute error: does the model know where it is wrong?).

    Parameters
    ----------
    store
        The OME-Zarr store holding both channels (e.g. after ``zarrstain predict``).
    prediction, target
        Channel labels.
    scenes
        Scene ids (default: every scene).
    input_channel
        Shown in the panels beside target and prediction (e.g. the brightfield).
    x_range, y_range
        Evaluate only these x columns / y rows (e.g. the held-out right half of a well).
    out
        Folder for ``evaluation.csv``, ``evaluation.md`` and ``panels/<scene>.png``.
    panels
        Write the PNG panels (input | target | prediction | error map) when ``out`` is given.
    objects
        Also evaluate objects: ``"nuclei"``, ``"cells"`` (:mod:`zarrstain.evaluation.segment`),
        an installed segmenter plug-in's name, or a function ``f(image, spacing) -> labels``.
        The target and the prediction are segmented alike, objects matched by IoU, and each
        field scored (F1 and mean AP over IoU 0.5-0.95, count error), matched objects' features
        correlated and the two populations compared (KID); see :attr:`Evaluation.objects`.
    labels
        Write both stains' objects into the store as OME-Zarr label images
        (``labels/<channel> <objects>``), which also lets an interrupted evaluation resume.
        Default: when the store is a writable local folder and no x/y range is given.
    assay
        With ``objects``: compare two classes (a class map) on a readout, on the real and the
        virtual stain side by side (Z′-factor, effect size); see :class:`Assay`.
    second_target
        A second acquisition of the target (another channel): each row adds ``pcc_ceiling``,
        the Pearson r a perfect model could reach against the target's noise (pytorch_fnet's
        estimate, √r of the two acquisitions).
    progress
        Called with an ``"evaluate"`` :class:`~zarrstain.progress.ProgressEvent` per field
        evaluated.

    Returns
    -------
    Evaluation
        ``rows`` per scene and time point, ``summary`` = mean of every metric.

    Notes
    -----
    MSE and MAE are in units of the target's standard deviation (see
    :mod:`zarrstain.evaluation.metrics`), so they do not depend on intensity units; Pearson r
    and SSIM never do. One task per scene runs on the active dask scheduler (threads by
    default, a ``dask.distributed`` client when one is active), each holding one time point of
    its scene in memory.
    """
    images = open_scenes(store, scenes=list(scenes) if scenes else None)
    needed = [prediction, target, input_channel, second_target]
    for sid, image in images.items():
        for label in (lab for lab in needed if lab):
            _label(image, label, sid)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise ParameterError(
            f"{out_dir} is a file; choose a folder for the evaluation ({option('out=', '--out')})"
        )
    if assay is not None and objects is None:
        raise ParameterError(
            f"an assay compares objects' features; give {option('objects=', '--objects')} "
            "nuclei or cells"
        )
    folder = out_dir / "panels" if out_dir is not None and panels else None
    jobs = plan_scenes(
        images, store, prediction, target, objects=objects, labels=labels,
        region=(y_range, x_range), second_target=second_target, input_channel=input_channel,
        panels=folder,
    )  # fmt: skip
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    done = run_scenes(jobs, images, progress)
    wrote_labels(jobs, store)
    rows = [row for scene in done for row in scene.rows]
    files = [scene.panel for scene in done if scene.panel is not None]
    optional = (*UNCERTAINTY, "pcc_ceiling", *OBJECT_SCORES)
    names = [*METRICS, *(m for m in optional if any(m in r for r in rows))]
    summary = {name: float(np.nanmean([r.get(name, np.nan) for r in rows])) for name in names}
    result = Evaluation(rows, summary, files)
    if objects is not None:
        found = summarise([f for scene in done for f in scene.fields], images, assay)
        summary.update(found.summary)
        result.objects, result.wells, result.assay = found.objects, found.wells, found.assay
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        files[:0] = write_reports(result, out_dir, prediction, target)
    return result
