"""Objects compared: instance matching, detection scores and per-object features.

Objects segmented in the acquired stain (true) and in the virtual one (predicted) are matched
by intersection over union (IoU), one to one (Hungarian assignment among the pairs above a
threshold; above 0.5 a match is unique anyway). Per threshold τ of :data:`THRESHOLDS`
(0.5 … 0.95, as the cell-segmentation benchmarks and VisCy report):

- precision TP / (TP + FP), recall TP / (TP + FN), F1 2TP / (2TP + FP + FN);
- average precision in the Data Science Bowl / StarDist sense, TP / (TP + FP + FN), and its
  mean over the thresholds (``mean_ap``).

Features per object (:func:`object_features`, a CellProfiler-like set from scikit-image's
``regionprops``): size and shape in physical units, mean / integrated intensity and two texture
measures, each measured on the object's own stain. Over the matched pairs their Pearson
correlation says whether the virtual stain preserves what an assay measures; a real-against-real
evaluation gives exactly 1.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment

__all__ = [
    "THRESHOLDS",
    "Matches",
    "feature_correlations",
    "match_objects",
    "object_features",
    "object_scores",
    "pearson_r",
]

#: IoU thresholds of the detection scores: 0.5, 0.55, ..., 0.95
THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


@dataclass(frozen=True)
class Matches:
    """Objects of two label images and their overlaps.

    Attributes
    ----------
    true_ids, pred_ids
        The object ids of each image (label values, background 0 excluded).
    iou
        (n_true, n_pred) intersection over union (dense: fields hold hundreds of objects).
    """

    true_ids: np.ndarray
    pred_ids: np.ndarray
    iou: np.ndarray

    def pairs(self, threshold: float = 0.5) -> list[tuple[int, int, float]]:
        """One-to-one matched ``(true id, predicted id, IoU)`` with IoU ≥ ``threshold``."""
        if not self.iou.size:
            return []
        weight = np.where(self.iou >= threshold, self.iou, 0.0)
        rows, cols = linear_sum_assignment(weight, maximize=True)
        keep = weight[rows, cols] > 0
        return [
            (int(self.true_ids[r]), int(self.pred_ids[c]), float(self.iou[r, c]))
            for r, c in zip(rows[keep], cols[keep], strict=True)
        ]


def match_objects(true: np.ndarray, pred: np.ndarray) -> Matches:
    """IoU of every true object with every predicted one (label images of one shape)."""
    if true.shape != pred.shape:
        raise ValueError(f"label images of shapes {true.shape} and {pred.shape}")
    t, p = true.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    true_ids, t_idx = np.unique(t, return_inverse=True)
    pred_ids, p_idx = np.unique(p, return_inverse=True)
    # counts of (true, pred) label pairs over all voxels: areas and intersections in one pass
    joint = np.bincount(t_idx * len(pred_ids) + p_idx, minlength=len(true_ids) * len(pred_ids))
    joint = joint.reshape(len(true_ids), len(pred_ids)).astype(np.float64)
    t_area, p_area = joint.sum(1), joint.sum(0)
    t_fg, p_fg = true_ids != 0, pred_ids != 0
    inter = joint[np.ix_(t_fg, p_fg)]
    union = t_area[t_fg][:, None] + p_area[p_fg][None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return Matches(true_ids[t_fg], pred_ids[p_fg], iou)


def object_scores(
    matches: Matches, thresholds: Sequence[float] = THRESHOLDS
) -> dict[str, float | int]:
    """Detection scores of ``matches``: per threshold and their summary.

    Returns
    -------
    dict
        ``n_true``, ``n_pred``, ``count_error`` ((n_pred − n_true) / n_true), ``tp``,
        ``precision``, ``recall``, ``f1`` at IoU 0.5, ``mean_ap`` over ``thresholds``,
        ``mean_iou`` of the pairs matched at 0.5, and ``f1@τ`` / ``ap@τ`` per threshold.
        With no true and no predicted objects every score is 1 (nothing to find, nothing
        invented).
    """
    n_true, n_pred = len(matches.true_ids), len(matches.pred_ids)
    out: dict[str, float | int] = {
        "n_true": n_true,
        "n_pred": n_pred,
        "count_error": (n_pred - n_true) / n_true if n_true else float(n_pred > 0),
    }
    aps = []
    for tau in thresholds:
        tp = len(matches.pairs(tau))
        fp, fn = n_pred - tp, n_true - tp
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
        ap = tp / (tp + fp + fn) if tp + fp + fn else 1.0
        aps.append(ap)
        out[f"f1@{tau:g}"], out[f"ap@{tau:g}"] = f1, ap
        if tau == 0.5:
            out["tp"] = tp
            out["precision"] = tp / (tp + fp) if tp + fp else 1.0
            out["recall"] = tp / (tp + fn) if tp + fn else 1.0
            out["f1"] = f1
            pairs = matches.pairs(0.5)
            out["mean_iou"] = float(np.mean([p[2] for p in pairs])) if pairs else float("nan")
    out["mean_ap"] = float(np.mean(aps))
    return out


#: the features of :func:`object_features`, by dimensionality (2D has perimeter-based shape)
FEATURES_2D = (
    "area", "perimeter", "eccentricity", "solidity", "form_factor", "mean_intensity",
    "integrated_intensity", "intensity_std", "gradient_mean",
)  # fmt: skip
FEATURES_3D = (
    "volume", "solidity", "mean_intensity", "integrated_intensity", "intensity_std",
    "gradient_mean",
)  # fmt: skip


def object_features(
    labels: np.ndarray, intensity: np.ndarray, spacing: Sequence[float]
) -> pd.DataFrame:
    """Per object: size and shape (µm, µm², µm³), intensity and texture on ``intensity``.

    Parameters
    ----------
    labels
        Instance labels, (y, x) or (z, y, x).
    intensity
        The stain the objects are measured on (the same shape).
    spacing
        µm per pixel along each axis.

    Returns
    -------
    pandas.DataFrame
        Indexed by object id (``label``); the columns of :data:`FEATURES_2D` or
        :data:`FEATURES_3D`. ``form_factor`` is CellProfiler's 4π·area / perimeter²;
        ``gradient_mean`` the mean gradient magnitude inside the object (a texture measure
        that blur lowers); ``intensity_std`` the spread of intensities inside it.
    """
    from skimage.measure import regionprops_table

    labels = np.asarray(labels)
    intensity = np.asarray(intensity, dtype=np.float64)
    px = tuple(float(s) for s in spacing)[-labels.ndim :]
    two_d = labels.ndim == 2
    props = ["label", "area", "solidity", "mean_intensity"]
    if two_d:
        props += ["perimeter", "eccentricity"]
    with warnings.catch_warnings():  # flat objects of a stack have no 3D convex hull: NaN
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        table = regionprops_table(labels, intensity, properties=props, spacing=px)
    df = pd.DataFrame(table).set_index("label")
    df["solidity"] = df["solidity"].where(np.isfinite(df["solidity"]) & (df["solidity"] <= 1))
    ids = df.index.to_numpy()
    voxel = float(np.prod(px))
    counts = df["area"].to_numpy() / voxel  # regionprops gives physical area with spacing
    df["integrated_intensity"] = df["mean_intensity"] * counts
    df["intensity_std"] = _per_object(labels, intensity, ids, ndi.standard_deviation)
    gradient = np.sqrt(sum(g**2 for g in np.gradient(intensity, *px))) if min(
        labels.shape
    ) > 1 else np.zeros_like(intensity)  # fmt: skip
    df["gradient_mean"] = _per_object(labels, gradient, ids, ndi.mean)
    if two_d:
        perimeter = df["perimeter"].to_numpy()
        df["form_factor"] = np.divide(
            4 * np.pi * df["area"].to_numpy(), perimeter**2,
            out=np.zeros(len(df)), where=perimeter > 0,
        )  # fmt: skip
        return df[list(FEATURES_2D)]
    df = df.rename(columns={"area": "volume"})
    return df[list(FEATURES_3D)]


def _per_object(labels: np.ndarray, values: np.ndarray, ids: np.ndarray, func) -> np.ndarray:
    if not len(ids):
        return np.zeros(0)
    with np.errstate(invalid="ignore", divide="ignore"):  # scipy also visits absent labels
        return np.asarray(func(values, labels, ids), dtype=np.float64)


def feature_correlations(
    true: pd.DataFrame, pred: pd.DataFrame, pairs: Sequence[tuple[int, int, float]]
) -> dict[str, float]:
    """Pearson r of each feature between matched objects (true id, predicted id, IoU; ids
    index the two tables: labels, or tuples for a table of several fields).

    NaN for a feature with fewer than 3 pairs or no spread; identical values give exactly 1.
    """
    if not pairs:
        return {name: float("nan") for name in true.columns}
    t_ids = [p[0] for p in pairs]
    p_ids = [p[1] for p in pairs]
    out = {}
    for name in true.columns:
        a = true.loc[t_ids, name].to_numpy(np.float64)
        b = pred.loc[p_ids, name].to_numpy(np.float64)
        out[name] = pearson_r(a, b)
    return out


def pearson_r(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two feature vectors (NaN below 3 values or without spread)."""
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    if np.array_equal(a, b):  # exactly 1, not 1 − rounding
        return 1.0
    a, b = a - a.mean(), b - b.mean()
    return float(np.clip((a @ b) / np.sqrt((a @ a) * (b @ b)), -1.0, 1.0))
