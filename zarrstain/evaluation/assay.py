"""Phenotypes and assays: per-well profiles, and whether two classes separate.

An HCS assay is judged by how well its readout separates the controls: the **Z′-factor**
(Zhang, Chung & Oldenburg, 1999) 1 − 3(σ₊ + σ₋) / |μ₊ − μ₋| (above 0.5: an excellent assay;
0 to 0.5: usable; below 0: the classes overlap) and the **effect size** (Cohen's d, the mean
difference in pooled standard deviations). zarrstain computes both on the real stain and on
the virtual stain side by side: a virtual stain is usable for the assay when its Z′ is close
to the real one's.

The readout is one feature (e.g. ``mean_intensity``) aggregated per field, or the profile's
**discriminant**: a (diagonal) linear discriminant between the two classes, fitted on the
real stain's profiles and applied unchanged to the virtual stain's, so the virtual stain is
scored on the axis that separates the real phenotypes (fitting it on the prediction again
would reward any separation, even a wrong one).

Profiles follow the Cell Painting practice: per-object features aggregated by their median
per field (or well); the profile correlation across wells asks whether the virtual stain
ranks wells like the real one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from zarrstain.errors import ParameterError, option

__all__ = [
    "DISCRIMINANT",
    "assay_scores",
    "effect_size",
    "profile_correlation",
    "profiles",
    "z_prime",
]

#: the readout that combines every feature: the first linear discriminant (see module doc)
DISCRIMINANT = "discriminant"


def z_prime(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Z′-factor of a readout between two classes' samples (NaN without 2 of each)."""
    p, n = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if len(p) < 2 or len(n) < 2:
        return float("nan")
    gap = abs(p.mean() - n.mean())
    spread = 3 * (p.std(ddof=1) + n.std(ddof=1))
    if gap == 0:
        return float("-inf") if spread > 0 else float("nan")
    return float(1 - spread / gap)


def effect_size(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Cohen's d: (μ₊ − μ₋) / pooled standard deviation (NaN without 2 of each)."""
    p, n = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if len(p) < 2 or len(n) < 2:
        return float("nan")
    pooled = np.sqrt(
        ((len(p) - 1) * p.var(ddof=1) + (len(n) - 1) * n.var(ddof=1)) / (len(p) + len(n) - 2)
    )
    diff = p.mean() - n.mean()
    if pooled == 0:
        return float("nan") if diff == 0 else float(np.sign(diff) * np.inf)
    return float(diff / pooled)


def profiles(objects: pd.DataFrame, features: Sequence[str], by: str = "scene") -> pd.DataFrame:
    """Median of each feature over the objects of each ``by`` group (``"scene"`` or ``"well"``),
    with the number of objects (``count``)."""
    grouped = objects.groupby(by, sort=True)
    out = grouped[list(features)].median()
    out["count"] = grouped.size()
    return out


def profile_correlation(real: pd.DataFrame, pred: pd.DataFrame, features: Sequence[str]) -> float:
    """Mean over groups (wells) of the Pearson r between the real and predicted profile,
    each feature standardized across the groups by the real profiles' mean and spread."""
    common = real.index.intersection(pred.index)
    feats = [f for f in features if real.loc[common, f].std() > 0]
    if len(common) < 2 or len(feats) < 2:
        return float("nan")
    mean, sd = real.loc[common, feats].mean(), real.loc[common, feats].std()
    a = ((real.loc[common, feats] - mean) / sd).to_numpy()
    b = ((pred.loc[common, feats] - mean) / sd).to_numpy()
    rs = []
    for x, y in zip(a, b, strict=True):
        x, y = x - x.mean(), y - y.mean()
        denom = np.sqrt((x @ x) * (y @ y))
        if denom > 0:
            rs.append(float(np.clip(x @ y / denom, -1, 1)))
    return float(np.mean(rs)) if rs else float("nan")


def _discriminant(real: pd.DataFrame, labels: pd.Series, controls: tuple[str, str], feats):
    """The diagonal linear discriminant between the two classes, fitted on the real profiles.

    Diagonal (each feature weighted by its mean difference over its pooled within-class
    variance, correlations ignored): with a few fields per class a full covariance would
    separate any two groups in-sample; the diagonal one stays honest (Dudoit et al., 2002).
    """
    x = real[feats].to_numpy(np.float64)
    neg, pos = (labels == controls[0]).to_numpy(), (labels == controls[1]).to_numpy()
    mean = x.mean(0)
    var = (x[neg].var(0, ddof=1) * (neg.sum() - 1) + x[pos].var(0, ddof=1) * (pos.sum() - 1)) / max(
        1, neg.sum() + pos.sum() - 2
    )
    w = np.divide(x[pos].mean(0) - x[neg].mean(0), var, out=np.zeros(len(feats)), where=var > 0)
    return lambda frame: (frame[feats].to_numpy(np.float64) - mean) @ w


def assay_scores(
    real: pd.DataFrame,
    pred: pd.DataFrame,
    classes: pd.Series,
    *,
    readout: str = DISCRIMINANT,
    controls: tuple[str, str] | None = None,
    features: Sequence[str] | None = None,
) -> dict[str, float | str]:
    """Z′ and effect size of ``readout`` between two classes, on the real and the virtual stain.

    Parameters
    ----------
    real, pred
        Profiles (:func:`profiles`) of the same groups (fields or wells).
    classes
        Each group's class (indexed like the profiles; groups without one are left out).
    readout
        A feature name, or :data:`DISCRIMINANT`.
    controls
        ``(negative, positive)`` class names; default: the two classes present, sorted.
    features
        The profile columns the discriminant combines (default: all but ``count``).

    Returns
    -------
    dict
        ``readout``, ``negative``, ``positive``, ``z_prime_real``, ``z_prime_pred``,
        ``effect_size_real``, ``effect_size_pred``, ``direction`` (``"same"`` when the virtual
        stain moves the readout the way the real one does, else ``"reversed"``: Z′ alone
        cannot tell), ``groups``.
    """
    classes = classes.dropna()
    found = sorted(set(classes))
    if controls is None:
        if len(found) != 2:
            raise ParameterError(
                f"the assay compares two classes; the class map gives {found}: name the "
                f"negative and positive one ({option('controls=', '--controls NEG,POS')})"
            )
        controls = (found[0], found[1])
    missing = [c for c in controls if c not in found]
    if missing:
        raise ParameterError(f"class {missing[0]!r} is not in the class map; it has {found}")
    groups = classes.index[classes.isin(controls)]
    groups = groups.intersection(real.index).intersection(pred.index)
    labels = classes.loc[groups]
    feats = list(features or [c for c in real.columns if c != "count"])
    if readout == DISCRIMINANT:
        project = _discriminant(real.loc[groups], labels, controls, feats)
        values_real, values_pred = project(real.loc[groups]), project(pred.loc[groups])
    elif readout in real.columns:
        values_real = real.loc[groups, readout].to_numpy(np.float64)
        values_pred = pred.loc[groups, readout].to_numpy(np.float64)
    else:
        raise ParameterError(
            f"readout {readout!r} is not a feature; choose {DISCRIMINANT} or one of {feats} "
            f"({option('readout=', '--readout')})"
        )
    neg, pos = (labels == controls[0]).to_numpy(), (labels == controls[1]).to_numpy()
    d_real = effect_size(values_real[pos], values_real[neg])
    d_pred = effect_size(values_pred[pos], values_pred[neg])
    return {
        "readout": readout,
        "negative": controls[0],
        "positive": controls[1],
        "z_prime_real": z_prime(values_real[pos], values_real[neg]),
        "z_prime_pred": z_prime(values_pred[pos], values_pred[neg]),
        "effect_size_real": d_real,
        "effect_size_pred": d_pred,
        # Z′ has no sign: a stain that swaps the phenotypes separates the classes as well
        "direction": "same" if np.sign(d_real) == np.sign(d_pred) else "reversed",
        "groups": len(groups),
    }
