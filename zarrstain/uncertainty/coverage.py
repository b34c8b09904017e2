"""Calibration curves: nominal against empirical coverage on held-out scenes, over several α.

For each α the model is calibrated on the calibration scenes (:func:`zarrstain.calibrate`),
then the held-out scenes are predicted and the fraction of target voxels inside the calibrated
interval is counted, lazily, scene by scene (dask reductions: bounded memory). The raw,
uncalibrated interval at the same α is counted too, for bins heads (whose CDF gives an
interval at any α) and at a quantiles head's own α. Points on the diagonal: calibrated.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np
from PIL import Image, ImageDraw

from zarrstain.errors import ParameterError
from zarrstain.evaluation.report import write_csv
from zarrstain.io.read import open_scenes
from zarrstain.io.store import StoreLike
from zarrstain.models import Model, load_model
from zarrstain.models.heads import Calibration
from zarrstain.uncertainty.calibrate import (
    _targets,
    _with_head,
    calibrate,
    interval_model,
    scene_intervals,
    target_scale,
)

__all__ = ["ALPHAS", "calibration_curve", "plot_curve"]

logger = logging.getLogger(__name__)

ALPHAS = (0.05, 0.1, 0.2, 0.3, 0.5)


def calibration_curve(
    store: StoreLike,
    model: Model | str | os.PathLike,
    *,
    calibration_scenes: Sequence[str],
    scenes: Sequence[str],
    target: str | Sequence[str] | None = None,
    alphas: Sequence[float] = ALPHAS,
    method: str = "cqr",
    delta: float = 0.1,
    out: str | os.PathLike | None = None,
    halo: str | int = "exact",
    calibration_region: dict[str, slice] | None = None,
    region: dict[str, slice] | None = None,
) -> list[dict[str, Any]]:
    """Per α (and target): nominal coverage, the calibrated and raw empirical coverage, width.

    Parameters
    ----------
    calibration_scenes, scenes
        Where to calibrate, and the held-out scenes to count coverage on (disjoint).
    out
        Folder for ``calibration.csv`` and ``calibration.png``.
    calibration_region, region
        Count only these voxels of the calibration and evaluation scenes (see
        :func:`zarrstain.calibrate`): one scene can then serve both, in different regions.
    """
    if not isinstance(model, Model):
        model = load_model(model)
    overlap = set(calibration_scenes) & set(scenes)
    if overlap and not (calibration_region and region):
        raise ParameterError(
            f"scenes {sorted(overlap)} are both calibration and evaluation scenes; coverage "
            "counted where the model was calibrated says nothing: keep them apart"
        )
    base = _with_head(model, dataclasses.replace(model.head, calibration=None))
    targets = _targets(interval_model(base, alphas[0]), target)
    rows = []
    for alpha in alphas:
        raw = interval_model(base, alpha)
        calibrated = calibrate(
            store, raw, target=targets, scenes=list(calibration_scenes), alpha=alpha,
            method=method, delta=delta, halo=halo, region=calibration_region,
        )  # fmt: skip
        kept = base.head.kind == "bins" or getattr(base.head, "alpha", None) == alpha
        # one prediction of the raw interval gives both: calibration is a per-voxel transform
        counted = _coverage(store, raw, calibrated.head.calibration, targets, scenes, halo, region)
        for i, label in enumerate(targets):
            rows.append(
                {
                    "target": label,
                    "alpha": alpha,
                    "nominal": 1 - alpha,
                    "calibrated": counted[i][0],
                    "raw": counted[i][2] if kept else float("nan"),
                    "width": counted[i][1],
                }
            )
        logger.info("alpha %g: coverage %s", alpha, [round(c[0], 4) for c in counted])
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        write_csv(rows, folder / "calibration.csv")
        plot_curve(rows, folder / "calibration.png", title=f"{model.name}: {method}")
    return rows


def _coverage(
    store, model: Model, cal: Calibration, targets, scenes, halo, region
) -> list[tuple[float, float, float]]:
    """Per target over the scenes' voxels: calibrated coverage, its mean width in target
    std, and the raw interval's coverage, from one prediction of ``model``'s raw interval."""
    sums = []
    for image in open_scenes(store, scenes=list(scenes)).values():
        for i, centre, lower, upper, y in scene_intervals(
            image, model, targets, halo=halo, region=region
        ):
            lo_c, hi_c = cal.apply(centre, lower, upper, i, scale=target_scale(model, i))
            sums.append((
                i, ((lo_c <= y) & (y <= hi_c)).sum(), (hi_c - lo_c).sum(),
                ((lower <= y) & (y <= upper)).sum(), y.sum(), (y**2).sum(), y.size,
            ))  # fmt: skip
    (done,) = dask.compute(sums)
    out = []
    for i in range(len(targets)):
        mine = np.array([s[1:] for s in done if s[0] == i], dtype=np.float64).sum(axis=0)
        inside, width, raw_inside, total, squares, n = mine
        std = np.sqrt(max(squares / n - (total / n) ** 2, 1e-24))
        out.append((float(inside / n), float(width / n / std), float(raw_inside / n)))
    return out


def plot_curve(rows: Sequence[dict[str, Any]], path: Path, *, title: str = "") -> Path:
    """Nominal (x) against empirical (y) coverage, the diagonal being perfect calibration."""
    size, margin = 360, 44
    canvas = Image.new("RGB", (size + 2 * margin, size + 2 * margin), "white")
    draw = ImageDraw.Draw(canvas)

    def at(nominal: float, empirical: float) -> tuple[float, float]:
        return margin + nominal * size, margin + (1 - empirical) * size

    draw.rectangle([margin, margin, margin + size, margin + size], outline="black")
    draw.line([at(0, 0), at(1, 1)], fill=(160, 160, 160), width=1)
    for v in (0, 0.25, 0.5, 0.75, 1.0):
        x, y = at(v, 0)
        draw.text((x - 8, y + 4), f"{v:g}", fill="black")
        x, y = at(0, v)
        draw.text((x - 30, y - 6), f"{v:g}", fill="black")
    targets = list(dict.fromkeys(r.get("target", "") for r in rows))
    palette = [(30, 90, 200), (200, 60, 60), (40, 150, 70), (150, 80, 180), (230, 140, 20)]
    for n, label in enumerate(targets):  # per target: calibrated filled, raw hollow
        colour = palette[n % len(palette)]
        mine = sorted((r for r in rows if r.get("target", "") == label), key=lambda r: r["nominal"])
        for key, filled in (("calibrated", True), ("raw", False)):
            points = [at(r["nominal"], r[key]) for r in mine if np.isfinite(r[key])]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2 if filled else 1)
            for x, y in points:
                box = [x - 3, y - 3, x + 3, y + 3]
                draw.ellipse(box, fill=colour) if filled else draw.rectangle(box, outline=colour)
        draw.text((margin + 8, margin + 8 + 12 * n), str(label), fill=colour)
    draw.text((margin, 8), title, fill="black")
    draw.text((margin, 22), "filled: calibrated, hollow: raw interval", fill="black")
    draw.text((margin + size // 2 - 40, margin + size + 22), "nominal coverage", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
