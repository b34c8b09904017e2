"""Conformal calibration of prediction intervals: the statistics, free of images and models.

Two standard methods, both distribution-free:

- **CQR** (conformalized quantile regression, Romano et al. 2019): with conformity scores
  ``s = max(lower - y, y - upper)`` on n calibration points, widen both bounds by the
  ``ceil((n + 1)(1 - α)) / n`` empirical quantile of s. Covers a new point with probability
  ≥ 1 − α when calibration and test points are exchangeable.
- **RCPS** (risk-controlling prediction sets, Bates et al. 2021; im2im-uq, Angelopoulos et al.
  2022): scale the interval's distances from the centre by λ and pick the smallest λ whose
  Hoeffding–Bentkus upper confidence bound on the mean per-image miscovered fraction is below
  α (for every larger λ too). With probability ≥ 1 − δ over the calibration set, the expected
  miscovered fraction of a new image is ≤ α. Images are the exchangeable units.

:mod:`zarrstain.uncertainty.calibrate` streams the scores out of a store; these functions only
count.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as st

__all__ = [
    "LAMBDAS",
    "cqr_margin",
    "hb_upper_bound",
    "lambda_star",
    "miscoverage_curves",
    "rcps_lambda",
]

#: the λ grid of RCPS: 0, then geometric from 1/1000 to 1000 (λ = 1 is the raw interval)
LAMBDAS = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 1201)])


def cqr_margin(scores: np.ndarray, alpha: float) -> float:
    """CQR's margin q: the ⌈(n+1)(1−α)⌉-th smallest of ``n`` conformity scores.

    Raises
    ------
    ValueError
        Too few scores for this α (n < 1/α − 1): no finite margin guarantees the coverage.
    """
    scores = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    n = scores.size
    k = math.ceil((n + 1) * (1 - alpha))
    if k > n:
        raise ValueError(f"{n} calibration points are too few for alpha={alpha}; need ≥ {k}")
    return float(scores[k - 1])


def lambda_star(
    y: np.ndarray, centre: np.ndarray, lower: np.ndarray, upper: np.ndarray
) -> np.ndarray:
    """Per pixel, the smallest λ whose scaled interval ``centre ∓ λ·distance`` holds ``y``."""
    below = np.maximum(centre - lower, 0)
    above = np.maximum(upper - centre, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        need = np.where(y < centre, (centre - y) / below, (y - centre) / above)
    return np.where(y == centre, 0.0, np.nan_to_num(need, nan=np.inf, posinf=np.inf))


def miscoverage_curves(
    counts: np.ndarray, totals: np.ndarray, lambdas: np.ndarray = LAMBDAS
) -> np.ndarray:
    """Per image, the miscovered fraction at each λ of the grid.

    ``counts[i, j]``: pixels of image i whose λ* falls in grid bin j, i.e. in
    ``(lambdas[j-1], lambdas[j]]`` (bin 0: λ* ≤ 0; the last bin, index ``len(lambdas)``: beyond
    the grid). A pixel is covered at λ when λ ≥ λ*.
    """
    covered = np.cumsum(counts[:, : len(lambdas)], axis=1)
    return 1.0 - covered / np.maximum(totals[:, None], 1)


def hb_upper_bound(risk: float, n: int, delta: float) -> float:
    """Hoeffding–Bentkus (1 − δ) upper confidence bound on a mean of n losses in [0, 1]."""
    if risk >= 1:
        return 1.0

    def p_value(r: float) -> float:
        a = min(risk, r)
        h = _kl(a, r)
        hoeffding = math.exp(-n * h)
        bentkus = math.e * st.binom.cdf(math.ceil(n * risk), n, r)
        return min(hoeffding, bentkus)

    lo, hi = risk, 1.0
    if p_value(hi - 1e-12) >= delta:
        return 1.0
    for _ in range(40):  # p_value falls as r rises above the observed risk (to 1e-12)
        mid = (lo + hi) / 2
        if p_value(mid) >= delta:
            lo = mid
        else:
            hi = mid
    return hi


def _kl(a: float, b: float) -> float:
    """Bernoulli relative entropy h1(a, b)."""
    eps = 1e-15
    a, b = min(max(a, eps), 1 - eps), min(max(b, eps), 1 - eps)
    return a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))


def rcps_lambda(
    curves: np.ndarray, alpha: float, delta: float, lambdas: np.ndarray = LAMBDAS
) -> float:
    """The smallest λ of the grid whose risk bound, and every larger λ's, is below α.

    Parameters
    ----------
    curves
        (images, λ) miscovered fraction per image (:func:`miscoverage_curves`).

    Raises
    ------
    ValueError
        Even the largest λ does not bring the bound below α (too few images for this α and δ,
        or intervals that never hold the target).
    """
    n = curves.shape[0]
    risks = curves.mean(axis=0)  # non-increasing in λ: every pixel covered stays covered

    def holds(j: int) -> bool:
        return hb_upper_bound(float(risks[j]), n, delta) < alpha

    if not holds(len(lambdas) - 1):
        raise ValueError(
            f"no λ up to {lambdas[-1]:g} bounds the risk below alpha={alpha} with delta={delta} "
            f"from {n} image(s); calibrate on more images or accept a larger alpha or delta"
        )
    lo, hi = -1, len(lambdas) - 1  # the bound holds at hi, and (monotone) at every λ above
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if holds(mid):
            hi = mid
        else:
            lo = mid
    return float(lambdas[hi])
