"""Pictures of an evaluation: object outlines over a stain, and a plate heat map.

Drawn with Pillow only (no plotting library to install): what an imaging scientist checks
first, whether the virtual stain's objects sit where the real ones do, and which wells of a
plate a model serves badly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["VIRIDIS", "colormap", "outlines", "plate_heatmap"]

#: outline colours: real objects green, predicted magenta (distinguishable in red-green
#: colour blindness, as are the error maps' orange and blue)
REAL, PRED = (0, 220, 0), (255, 0, 255)

#: viridis at 5 anchors (perceptually uniform, colour-blind safe), interpolated linearly
VIRIDIS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], np.float64
)


def _edges(labels: np.ndarray) -> np.ndarray:
    """Pixels of an object whose 4-neighbour belongs to another label (or the background)."""
    edge = np.zeros(labels.shape, bool)
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return edge & (labels > 0)


def outlines(rgb: np.ndarray, real: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``rgb`` (y, x, 3 uint8) with the real objects' outlines in green, predicted in magenta."""
    out = rgb.copy()
    out[_edges(real)] = REAL
    out[_edges(pred)] = PRED
    return out


def colormap(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """RGB uint8 of ``values`` on :data:`VIRIDIS` from ``lo`` to ``hi`` (NaN: light gray)."""
    v = np.asarray(values, np.float64)
    span = hi - lo if hi > lo else 1.0
    x = np.clip((v - lo) / span, 0, 1) * (len(VIRIDIS) - 1)
    i = np.clip(np.floor(np.nan_to_num(x)).astype(int), 0, len(VIRIDIS) - 2)
    f = (np.nan_to_num(x) - i)[..., None]
    rgb = VIRIDIS[i] * (1 - f) + VIRIDIS[i + 1] * f
    rgb[~np.isfinite(v)] = 220
    return rgb.round().astype(np.uint8)


_WELL = re.compile(r"^([A-Za-z]+)/0*(\d+)$")


def _row_index(row: str) -> int:
    n = 0
    for ch in row.upper():
        n = n * 26 + ord(ch) - 64
    return n - 1


def plate_heatmap(
    values: Mapping[str, float], path: Path, *, metric: str, cell: int = 36
) -> Path | None:
    """Wells in their plate layout, coloured by ``metric`` (viridis), each with its value.

    ``values`` maps wells (``"B/3"``) to numbers; None is returned (nothing drawn) when no
    key is a well (a store of single images).
    """
    wells = {}
    for key, value in values.items():
        m = _WELL.match(str(key))
        if m:
            wells[(_row_index(m.group(1)), int(m.group(2)) - 1)] = float(value)
    if not wells:
        return None
    rows = max(r for r, _ in wells) + 1
    cols = max(c for _, c in wells) + 1
    finite = [v for v in wells.values() if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    left, top = 24, 34
    canvas = Image.new("RGB", (left + cols * cell + 8, top + rows * cell + 22), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), f"{metric} per well ({lo:.3g} dark … {hi:.3g} bright)", fill="black")
    for c in range(cols):
        draw.text((left + c * cell + cell // 3, top - 14), str(c + 1), fill="black")
    for r in range(rows):
        label = chr(65 + r) if r < 26 else f"{chr(64 + r // 26)}{chr(65 + r % 26)}"
        draw.text((4, top + r * cell + cell // 3), label, fill="black")
    for (r, c), v in wells.items():
        color = tuple(int(x) for x in colormap(np.array([v]), lo, hi)[0])
        box = (left + c * cell, top + r * cell, left + (c + 1) * cell - 2, top + (r + 1) * cell - 2)
        draw.rectangle(box, fill=color)
        ink = "black" if sum(color) > 380 else "white"
        draw.text((box[0] + 3, box[1] + cell // 3), f"{v:.2f}", fill=ink)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
