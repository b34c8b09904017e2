"""Tables (CSV, markdown, text) and PNG panels for evaluations."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from zarrstain.evaluation.figures import outlines, plate_heatmap

__all__ = [
    "error_map",
    "field_panel",
    "format_table",
    "gray",
    "markdown_table",
    "outlines",
    "panel",
    "write_csv",
    "write_reports",
]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Every key of the rows, in first-seen order (rows may lack some: blank cells)."""
    return list(dict.fromkeys(k for r in rows for k in r))


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Rows as a CSV file (a key some rows lack: an empty cell)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_keys(rows), restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as a GitHub markdown table."""
    keys = _keys(rows)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as an aligned text table (for the terminal)."""
    keys = _keys(rows)
    cells = [keys] + [[_fmt(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(keys))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells
    )


#: error-map colours (RGB) of false positives and false negatives
ORANGE, BLUE = (255.0, 140.0, 0.0), (0.0, 110.0, 255.0)


def gray(image: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """RGB uint8 of a 2D image scaled from lo to hi (default: its 0.5 and 99.8 percentiles)."""
    image = np.asarray(image, np.float64)
    lo = np.percentile(image, 0.5) if lo is None else lo
    hi = np.percentile(image, 99.8) if hi is None else hi
    scaled = np.clip((image - lo) / ((hi - lo) or 1.0), 0, 1)
    return np.repeat((scaled * 255).astype(np.uint8)[..., None], 3, axis=-1)


def error_map(target: np.ndarray, prediction: np.ndarray, scale: float = 2.0) -> np.ndarray:
    """RGB map of prediction − target (in target standard deviations) over the dimmed target.

    Orange: false positives (predicted signal the target lacks); blue: false negatives
    (target signal the prediction misses), as In silico labeling's error images show them;
    full colour at ``scale`` standard deviations.
    """
    t = np.asarray(target, np.float64)
    p = np.asarray(prediction, np.float64)
    std = t.std() or 1.0
    diff = (p - t) / std
    base = gray(t).astype(np.float64) * 0.35
    fp = np.clip(diff / scale, 0, 1)[..., None] * np.array(ORANGE)
    fn = np.clip(-diff / scale, 0, 1)[..., None] * np.array(BLUE)
    return np.clip(base + fp + fn, 0, 255).astype(np.uint8)


def panel(
    images: Sequence[tuple[str, np.ndarray]], path: Path, *, title: str = "", width: int = 256
) -> Path:
    """Side-by-side tiles with captions: 2D grayscale arrays or RGB uint8 (error maps).

    Target and prediction are best passed already on one intensity scale (the caller decides).
    """
    tiles = []
    for caption, image in images:
        rgb = image if image.ndim == 3 else gray(image)
        im = Image.fromarray(rgb)
        height = max(1, round(im.height * width / im.width))
        tiles.append((caption, im.resize((width, height), Image.NEAREST)))
    top = 18 if title else 0
    height = max(t.height for _, t in tiles) + 16 + top
    canvas = Image.new("RGB", (width * len(tiles) + 4 * (len(tiles) - 1), height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 2), title, fill="black")
    for k, (caption, tile) in enumerate(tiles):
        x = k * (width + 4)
        draw.text((x + 4, top + 1), caption, fill="black")
        canvas.paste(tile, (x, top + 16))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def write_reports(result: Any, out: Path, prediction: str, target: str) -> list[Path]:
    """The evaluation's tables, plate heat map and Markdown report in ``out``.

    ``evaluation.csv`` (per scene and time point), ``summary.csv`` (the plate: the summary and
    the assay), ``objects.csv`` (per object) and ``wells.csv`` (per well) when objects were
    evaluated, ``plate_<metric>.png`` (the wells of
    a plate coloured by F1 at IoU 0.5, else by Pearson r) and ``evaluation.md``, which shows
    the summary, the assay, the heat map and each panel.
    """
    files = [write_csv(result.rows, out / "evaluation.csv")]
    plate = {**result.summary, **{f"assay_{k}": v for k, v in (result.assay or {}).items()}}
    files.append(write_csv([plate], out / "summary.csv"))
    if result.objects is not None:
        result.objects.to_csv(out / "objects.csv", index=False)
        result.wells.to_csv(out / "wells.csv", index_label="well")
        files += [out / "objects.csv", out / "wells.csv"]
    metric = "f1" if result.objects is not None else "pcc"
    by_well: dict[str, list[float]] = {}
    for row in result.rows:
        parts = str(row["scene"]).split("/")
        if len(parts) == 3:
            by_well.setdefault("/".join(parts[:2]), []).append(float(row.get(metric, math.nan)))
    heat = plate_heatmap({w: float(np.nanmean(v)) for w, v in by_well.items()},
                         out / f"plate_{metric}.png", metric=metric)  # fmt: skip
    if heat is not None:
        files.append(heat)
    lines = [f"# Evaluation of {prediction!r} against {target!r}", ""]
    lines += ["## Summary", "", markdown_table([{"scene": "mean", **result.summary}]), ""]
    if result.assay:
        lines += ["## Assay", "", markdown_table([result.assay]), ""]
    if heat is not None:
        lines += ["## Plate", "", f"![{metric} per well]({heat.name})", ""]
    lines += ["## Per scene", "", markdown_table(result.rows), ""]
    panels = sorted((out / "panels").glob("*.png")) if (out / "panels").is_dir() else []
    if panels:
        lines += ["## Panels", ""] + [f"![{p.stem}](panels/{p.name})" for p in panels]
    (out / "evaluation.md").write_text("\n".join(lines) + "\n")
    return [files[0], out / "evaluation.md", *files[1:]]


def field_panel(
    scene: str,
    data: dict[str, np.ndarray],
    job: Any,
    row: dict[str, Any],
    labels: tuple[np.ndarray, np.ndarray] | None,
    folder: Path,
) -> Path:
    """``folder/<scene>.png``: input | target | prediction | error map (| interval width |
    objects) of the middle z-plane of one field (``data``: channel → (z, y, x))."""
    tgt, pred = data[job.target], data[job.prediction]
    z = tgt.shape[0] // 2
    # target and prediction on one intensity scale (the target's)
    lo, hi = np.percentile(tgt[z], 0.5), np.percentile(tgt[z], 99.8)
    images = []
    if job.input_channel:
        images.append((job.input_channel, data[job.input_channel][z]))
    images += [
        ("target", gray(tgt[z], lo, hi)),
        ("prediction", gray(pred[z], lo, hi)),
        ("error: FP orange, FN blue", error_map(tgt[z], pred[z])),
    ]
    bounds = dict(job.uncertainty)
    if "lower" in bounds and "upper" in bounds:  # wide = bright, on the target's range
        width = data[bounds["upper"]][z] - data[bounds["lower"]][z]
        images.append(("interval width", gray(width, 0, hi - lo)))
    if labels is not None:
        zl = min(z, labels[0].shape[0] - 1)
        drawn = outlines(gray(pred[z], lo, hi), labels[0][zl], labels[1][zl])
        images.append(("objects: real green, predicted magenta", drawn))
    name = (scene or "image").replace("/", "_").replace(":", "_")
    title = f"{scene or 'image'}  z={z}  Pearson r {row['pcc']:.3f}  SSIM {row['ssim']:.3f}"
    if "coverage" in row:
        title += f"  coverage {row['coverage']:.3f}"
    if "f1" in row:
        title += f"  F1@0.5 {row['f1']:.3f}"
    return panel(images, folder / f"{name}.png", title=title)
