"""Image-similarity metrics for predicted vs. acquired channels (numpy, float64).

- ``pearson``: Pearson correlation coefficient, the virtual-staining papers' headline number
  (scale and offset invariant).
- ``ssim``: structural similarity (Wang et al. 2004) with a 7-voxel uniform window, computed in
  2D per plane and averaged (as ``skimage.metrics.structural_similarity`` with its defaults),
  with the data range taken from the target.
- ``mse``, ``mae``: in units of the target's standard deviation (both images are divided by the
  target's std after subtracting its mean), so numbers compare across channels and stores.
- ``nrmse``: root of the raw mean squared error over the target's standard deviation
  (``skimage``'s ``normalized_root_mse(normalization="euclidean")`` differs by a constant).
- ``sharpness``: the prediction's share of power at high spatial frequencies over the target's
  (:func:`high_frequency_share`): 1 when the prediction has as much fine detail as the target,
  below 1 when it is smoother. MSE-trained models blur what they cannot predict (the mean of
  the possible images) and score below 1; adversarial training (pix2pix) trades some PCC for
  a ratio nearer 1. Noise in the target counts as detail, so a denoising model scores < 1 too.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "METRICS",
    "UNCERTAINTY",
    "coverage",
    "high_frequency_share",
    "interval_width",
    "mae",
    "mse",
    "nrmse",
    "pearson",
    "score",
    "sharpness",
    "spread_error_spearman",
    "ssim",
]


def _pair(target: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(target, np.float64)
    p = np.asarray(prediction, np.float64)
    if t.shape != p.shape:
        raise ValueError(f"target {t.shape} and prediction {p.shape} differ in shape")
    return t, p


def pearson(target: np.ndarray, prediction: np.ndarray) -> float:
    """Pearson r over all voxels (NaN when either image is constant)."""
    t, p = _pair(target, prediction)
    t, p = t - t.mean(), p - p.mean()
    denom = np.sqrt((t * t).sum() * (p * p).sum())
    return float((t * p).sum() / denom) if denom > 0 else float("nan")


def _standardized(target: np.ndarray, prediction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t, p = _pair(target, prediction)
    mean, std = t.mean(), t.std()
    std = std if std > 0 else 1.0
    return (t - mean) / std, (p - mean) / std


def mse(target: np.ndarray, prediction: np.ndarray) -> float:
    """Mean squared error in units of the target's variance."""
    t, p = _standardized(target, prediction)
    return float(np.mean((t - p) ** 2))


def mae(target: np.ndarray, prediction: np.ndarray) -> float:
    """Mean absolute error in units of the target's standard deviation."""
    t, p = _standardized(target, prediction)
    return float(np.mean(np.abs(t - p)))


def nrmse(target: np.ndarray, prediction: np.ndarray) -> float:
    """Root mean squared error over the target's standard deviation."""
    return float(np.sqrt(mse(target, prediction)))


def ssim(target: np.ndarray, prediction: np.ndarray, *, window: int = 7) -> float:
    """Mean structural similarity over (..., y, x) planes; data range from the target."""
    t, p = _pair(target, prediction)
    data_range = float(t.max() - t.min()) or 1.0
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    planes_t = t.reshape(-1, *t.shape[-2:])
    planes_p = p.reshape(-1, *p.shape[-2:])
    n = window * window
    cov_norm = n / (n - 1)  # sample covariance, as skimage
    values = []
    for a, b in zip(planes_t, planes_p, strict=True):
        mu_a = ndimage.uniform_filter(a, window)
        mu_b = ndimage.uniform_filter(b, window)
        var_a = cov_norm * (ndimage.uniform_filter(a * a, window) - mu_a * mu_a)
        var_b = cov_norm * (ndimage.uniform_filter(b * b, window) - mu_b * mu_b)
        cov = cov_norm * (ndimage.uniform_filter(a * b, window) - mu_a * mu_b)
        s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
            (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
        )
        pad = (window - 1) // 2  # skimage crops the border where the window leaves the image
        if s.shape[0] > 2 * pad and s.shape[1] > 2 * pad:
            s = s[pad:-pad, pad:-pad]
        values.append(s.mean())
    return float(np.mean(values))


def high_frequency_share(image: np.ndarray, *, cutoff: float = 0.5) -> float:
    """Share of an image's spectral power above ``cutoff`` × Nyquist, over its (y, x) planes.

    Each plane's mean is removed and its power spectrum taken (no window: the share is a
    ratio, and edges weigh on both images of a comparison alike). The radial frequency is in
    units of the Nyquist frequency along an axis, so the default 0.5 counts periods shorter
    than 4 pixels. NaN for a constant image.
    """
    planes = np.asarray(image, np.float64)
    planes = planes.reshape(-1, *planes.shape[-2:])
    fy = np.fft.fftfreq(planes.shape[-2])[:, None] / 0.5
    fx = np.fft.rfftfreq(planes.shape[-1])[None, :] / 0.5
    high = np.hypot(fy, fx) > cutoff
    power = np.abs(np.fft.rfft2(planes - planes.mean(axis=(-2, -1), keepdims=True))) ** 2
    # rfft2 stores each positive x frequency once for two conjugate terms: weigh them twice
    weight = np.full(power.shape[-1], 2.0)
    weight[0] = 1.0
    if planes.shape[-1] % 2 == 0:
        weight[-1] = 1.0
    total = float((power * weight).sum())
    return float((power * weight * high).sum() / total) if total > 0 else float("nan")


def sharpness(target: np.ndarray, prediction: np.ndarray) -> float:
    """The prediction's high-frequency share over the target's (1: as sharp as the target)."""
    t, p = _pair(target, prediction)
    share = high_frequency_share(t)
    return high_frequency_share(p) / share if share > 0 else float("nan")


METRICS = {
    "pcc": pearson,
    "ssim": ssim,
    "mse": mse,
    "mae": mae,
    "nrmse": nrmse,
    "sharpness": sharpness,
}


def score(target: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """Every metric of :data:`METRICS` for one pair of images."""
    return {name: fn(target, prediction) for name, fn in METRICS.items()}


def coverage(target: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Fraction of target voxels inside their interval ``[lower, upper]``."""
    t = np.asarray(target, np.float64)
    return float(np.mean((np.asarray(lower) <= t) & (t <= np.asarray(upper))))


def interval_width(target: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Mean interval width in units of the target's standard deviation."""
    t = np.asarray(target, np.float64)
    width = np.asarray(upper, np.float64) - np.asarray(lower, np.float64)
    return float(width.mean() / max(t.std(), 1e-12))


def spread_error_spearman(target: np.ndarray, prediction: np.ndarray, std: np.ndarray) -> float:
    """Spearman rank correlation between a predicted std and the absolute error.

    Positive when the model is less sure where it is more wrong: the std ranks the voxels by
    their error. NaN for a constant std.
    """
    from scipy import stats

    error = np.abs(np.asarray(target, np.float64) - np.asarray(prediction, np.float64))
    spread = np.asarray(std, np.float64).ravel()
    if np.ptp(spread) == 0:
        return float("nan")
    return float(stats.spearmanr(spread, error.ravel()).statistic)


#: interval and spread metrics, added to a row when the prediction has those channels
UNCERTAINTY = ("coverage", "interval_width", "std_error_spearman")


def pcc_ceiling(target: np.ndarray, second: np.ndarray) -> float:
    """The Pearson r a perfect model could reach against ``target``, given ``second``, another
    acquisition of the same signal with independent noise: √r(target, second).

    pytorch_fnet's estimate of the ceiling set by the target's own noise: if both acquisitions
    are the signal plus independent noise of one level, r(target, signal) = √r(target, second).
    Negative correlations give 0.
    """
    return float(np.sqrt(max(pearson(target, second), 0.0)))
