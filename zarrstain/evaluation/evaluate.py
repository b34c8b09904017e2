"""``zarrstain.evaluate``: compare predicted channels with acquired ones per scene and time."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zarrstain.errors import ChannelError, ParameterError, option
from zarrstain.evaluation.metrics import (
    METRICS,
    UNCERTAINTY,
    coverage,
    interval_width,
    score,
    spread_error_spearman,
)
from zarrstain.evaluation.report import error_map, gray, markdown_table, panel, write_csv
from zarrstain.io.read import open_scenes
from zarrstain.io.store import StoreLike

__all__ = ["Evaluation", "evaluate"]

logger = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Per (scene, time point) metrics, their means, and the files written."""

    rows: list[dict[str, Any]]
    summary: dict[str, float]
    files: list[Path] = field(default_factory=list)


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

    Returns
    -------
    Evaluation
        ``rows`` per scene and time point, ``summary`` = mean of every metric.

    Notes
    -----
    MSE and MAE are in units of the target's standard deviation (see
    :mod:`zarrstain.evaluation.metrics`), so they do not depend on intensity units; Pearson r
    and SSIM never do. One (t) volume is in memory at a time.
    """
    images = open_scenes(store, scenes=list(scenes) if scenes else None)
    for sid, image in images.items():
        for label in [prediction, target] + ([input_channel] if input_channel else []):
            _label(image, label, sid)
    out_dir = Path(out) if out is not None else None
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise ParameterError(
            f"{out_dir} is a file; choose a folder for the evaluation ({option('out=', '--out')})"
        )
    rows, files = [], []
    for sid, image in images.items():
        if x_range is not None:
            image = image.isel(x=x_range)
        if y_range is not None:
            image = image.isel(y=y_range)
        extra = _uncertainty_channels(image, prediction)
        for t in range(image.sizes["t"]):
            frame = image.isel(t=t)
            tgt = frame.sel(c=target).values
            pred = frame.sel(c=prediction).values
            channels = {k: frame.sel(c=label).values for k, label in extra.items()}
            row = {"scene": sid, "t": t, **score(tgt, pred), **_uncertainty(tgt, pred, channels)}
            rows.append({**row, "voxels": int(tgt.size)})
            if out_dir is not None and panels and t == 0:
                files.append(
                    _panel(frame, sid, tgt, pred, input_channel, out_dir, rows[-1], channels)
                )
    names = [*METRICS, *(m for m in UNCERTAINTY if any(m in r for r in rows))]
    summary = {name: float(np.nanmean([r.get(name, np.nan) for r in rows])) for name in names}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        files.insert(0, write_csv(rows, out_dir / "evaluation.csv"))
        table = markdown_table(rows) + "\n\n" + markdown_table([{"scene": "mean", **summary}])
        (out_dir / "evaluation.md").write_text(
            f"Evaluation of {prediction!r} against {target!r}\n\n{table}\n"
        )
        files.insert(1, out_dir / "evaluation.md")
    return Evaluation(rows, summary, files)


def _uncertainty_channels(image, prediction: str) -> dict[str, str]:
    """The prediction's ``std`` / ``lower`` / ``upper`` channels present in a scene."""
    labels = {str(c) for c in image.coords["c"].values}
    found = {k: f"{prediction} {k}" for k in ("std", "lower", "upper")}
    found = {k: v for k, v in found.items() if v in labels}
    if ("lower" in found) != ("upper" in found):
        found.pop("lower", None)
        found.pop("upper", None)
    return found


def _uncertainty(tgt, pred, channels: dict[str, np.ndarray]) -> dict[str, float]:
    """Coverage and width of an interval, and how well a std ranks the errors."""
    out = {}
    if "lower" in channels:
        out["coverage"] = coverage(tgt, channels["lower"], channels["upper"])
        out["interval_width"] = interval_width(tgt, channels["lower"], channels["upper"])
    if "std" in channels:
        out["std_error_spearman"] = spread_error_spearman(tgt, pred, channels["std"])
    return out


def _panel(frame, sid, tgt, pred, input_channel, out_dir: Path, row, channels=None) -> Path:
    z = tgt.shape[0] // 2  # the middle plane
    # target and prediction on one intensity scale (the target's)
    lo, hi = np.percentile(tgt[z], 0.5), np.percentile(tgt[z], 99.8)
    images = []
    if input_channel:
        images.append((input_channel, frame.sel(c=input_channel).values[z]))
    images += [
        ("target", gray(tgt[z], lo, hi)),
        ("prediction", gray(pred[z], lo, hi)),
        ("error: FP orange, FN blue", error_map(tgt[z], pred[z])),
    ]
    if channels and "lower" in channels:  # wide = bright, on the target's intensity range
        width = channels["upper"][z] - channels["lower"][z]
        images.append(("interval width", gray(width, 0, hi - lo)))
    name = (sid or "image").replace("/", "_").replace(":", "_")
    title = f"{sid or 'image'}  z={z}  Pearson r {row['pcc']:.3f}  SSIM {row['ssim']:.3f}"
    if "coverage" in row:
        title += f"  coverage {row['coverage']:.3f}"
    return panel(images, out_dir / "panels" / f"{name}.png", title=title)
