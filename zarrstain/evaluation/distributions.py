"""How far apart two populations of objects are: KID on per-object features, with an interval.

guided-I2I judges generated Cell Painting by FID/KID between Inception features of real and
generated images, and notes that PCC/SSIM alone mislead for generative models: a sample can
look right pixel by pixel and still shift the population. Without downloaded weights, the
analogue is the same kernel two-sample statistic on the objects' own features
(:func:`~zarrstain.evaluation.objects.object_features`, standardized by the real
population's mean and spread): the kernel inception distance's unbiased MMD² with the cubic
polynomial kernel k(x, y) = (x·y / d + 1)³ (Bińkowski et al., 2018). 0 means the two
populations are indistinguishable by these features; its bootstrap interval (resampling
objects) says whether a difference is more than sampling noise.

The unbiased statistic assumes independent samples, and a virtual stain's objects are not
independent of the real objects of the same field (a good model predicts each one). Pairs of
objects from the same field are therefore left out of all three terms: the populations are
compared across fields, the estimate stays unbiased (a real stain against itself scores about
0, not below), and at least two fields are needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Distance", "kid", "mmd2_poly"]


@dataclass(frozen=True)
class Distance:
    """A distance between two populations with its bootstrap interval.

    Attributes
    ----------
    value
        The statistic on all objects.
    low, high
        The 2.5 and 97.5 percentiles of its bootstrap distribution (NaN without one).
    n_real, n_pred
        Objects in each population.
    """

    value: float
    low: float
    high: float
    n_real: int
    n_pred: int

    def as_dict(self, prefix: str) -> dict[str, float]:
        """``{prefix: value, prefix_low: ..., prefix_high: ...}`` for a report row."""
        return {prefix: self.value, f"{prefix}_low": self.low, f"{prefix}_high": self.high}


def mmd2_poly(
    x: np.ndarray,
    y: np.ndarray,
    x_groups: Sequence | None = None,
    y_groups: Sequence | None = None,
) -> float:
    """Unbiased MMD² of samples ``x`` (n, d) and ``y`` (m, d), cubic polynomial kernel.

    With groups (fields), pairs from one group are left out of every term (module doc);
    without, only each object's pair with itself.
    """
    gx, gy = _groups(len(x), len(y), x_groups, y_groups)
    return _mmd2(*_kernels(x, y), gx, gy, np.arange(len(x)), np.arange(len(y)))


def _groups(n: int, m: int, gx, gy) -> tuple[np.ndarray, np.ndarray]:
    if gx is None or gy is None:  # every object its own group
        return np.arange(n), np.arange(n, n + m)
    codes = {g: k for k, g in enumerate(dict.fromkeys([*gx, *gy]))}
    return np.array([codes[g] for g in gx]), np.array([codes[g] for g in gy])


def _kernels(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = x.shape[1]
    return (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3


def _mmd2(kxx, kyy, kxy, gx: np.ndarray, gy: np.ndarray, i: np.ndarray, j: np.ndarray) -> float:
    """MMD² of the objects ``i`` of x and ``j`` of y (indices; a bootstrap resample repeats
    some), leaving out pairs of one group (``gx``, ``gy``: each object's) and, within a
    population, pairs of an object with itself, so a resample's repeats do not inflate it."""
    a, b = gx[i], gy[j]
    within_x = (a[:, None] != a[None, :]) & (i[:, None] != i[None, :])
    within_y = (b[:, None] != b[None, :]) & (j[:, None] != j[None, :])
    across = a[:, None] != b[None, :]
    if not within_x.any() or not within_y.any() or not across.any():
        return float("nan")
    sxx = kxx[np.ix_(i, i)][within_x].mean()
    syy = kyy[np.ix_(j, j)][within_y].mean()
    return float(sxx + syy - 2 * kxy[np.ix_(i, j)][across].mean())


def kid(
    real: np.ndarray,
    pred: np.ndarray,
    *,
    real_groups: Sequence | None = None,
    pred_groups: Sequence | None = None,
    bootstrap: int = 200,
    seed: int = 0,
    max_objects: int = 2000,
) -> Distance:
    """KID between real and predicted objects' features (rows: objects, columns: features).

    Features are standardized by the real objects' mean and standard deviation (features
    without spread in the real objects are dropped), so each counts alike whatever its unit.

    Parameters
    ----------
    real, pred
        (objects, features) arrays.
    real_groups, pred_groups
        Each object's field (scene and time point): pairs within one field are left out.
    bootstrap
        Resamples of the objects (with replacement) for the interval; 0: none.
    seed
        Of the resampling (and of the subsample when there are more than ``max_objects``).
    max_objects
        Each population is subsampled to at most this many objects (the statistic is
        quadratic in them).

    Returns
    -------
    Distance
        NaN without two objects (and, with groups, two fields) on each side.
    """
    real, gr = _finite(real, real_groups)
    pred, gp = _finite(pred, pred_groups)
    nan = float("nan")
    if len(real) < 2 or len(pred) < 2:
        return Distance(nan, nan, nan, len(real), len(pred))
    rng = np.random.default_rng(seed)
    gx, gy = _groups(len(real), len(pred), gr, gp)  # each object's group, then subsampled
    keep_r = _subsample(len(real), max_objects, rng)
    keep_p = _subsample(len(pred), max_objects, rng)
    real, pred, gx, gy = real[keep_r], pred[keep_p], gx[keep_r], gy[keep_p]
    sd = real.std(0)
    keep = sd > 0
    if not keep.any():
        return Distance(nan, nan, nan, len(real), len(pred))
    mean = real.mean(0)
    x = (real[:, keep] - mean[keep]) / sd[keep]
    y = (pred[:, keep] - mean[keep]) / sd[keep]
    kernels = _kernels(x, y)
    n, m = len(x), len(y)
    value = _mmd2(*kernels, gx, gy, np.arange(n), np.arange(m))
    low = high = nan
    if bootstrap and np.isfinite(value):
        stats = [
            _mmd2(*kernels, gx, gy, rng.integers(0, n, n), rng.integers(0, m, m))
            for _ in range(bootstrap)
        ]
        low, high = (float(v) for v in np.nanpercentile(stats, [2.5, 97.5]))
    return Distance(value, low, high, n, m)


def _finite(a: np.ndarray, groups: Sequence | None) -> tuple[np.ndarray, list | None]:
    a = np.asarray(a, dtype=np.float64)
    ok = np.isfinite(a).all(1) if a.ndim == 2 else np.zeros(0, bool)
    kept = None if groups is None else [g for g, k in zip(groups, ok, strict=True) if k]
    return a[ok] if a.ndim == 2 else a.reshape(0, 0), kept


def _subsample(n: int, most: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= most else np.sort(rng.choice(n, most, replace=False))
