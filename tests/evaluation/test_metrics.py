"""Metrics against hand-computed values and skimage's reference implementation."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from zarrstain.evaluation import metrics


def test_pearson_by_hand():
    t = np.array([1.0, 2.0, 3.0, 4.0])
    p = np.array([2.0, 4.0, 5.0, 9.0])
    # means 2.5 and 5; deviations (-1.5,-.5,.5,1.5) and (-3,-1,0,4)
    expected = (4.5 + 0.5 + 0 + 6) / np.sqrt(5.0 * 26.0)
    assert metrics.pearson(t, p) == pytest.approx(expected)
    assert metrics.pearson(t, 3 * t + 7) == pytest.approx(1.0)
    assert metrics.pearson(t, -t) == pytest.approx(-1.0)
    assert np.isnan(metrics.pearson(t, np.ones(4)))


def test_errors_in_target_std_units_by_hand():
    t = np.array([0.0, 2.0, 4.0, 6.0])  # mean 3, population std sqrt(5)
    p = np.array([1.0, 2.0, 3.0, 10.0])  # errors 1, 0, -1, 4
    assert metrics.mse(t, p) == pytest.approx((1 + 0 + 1 + 16) / 4 / 5)
    assert metrics.mae(t, p) == pytest.approx((1 + 0 + 1 + 4) / 4 / np.sqrt(5))
    assert metrics.nrmse(t, p) == pytest.approx(np.sqrt(18 / 4) / np.sqrt(5))
    assert metrics.mse(t, t) == 0.0


def test_ssim_matches_skimage():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(2, 40, 50))
    p = t + 0.3 * rng.normal(size=t.shape)
    ours = metrics.ssim(t, p)
    theirs = np.mean(
        [
            structural_similarity(a, b, data_range=t.max() - t.min())
            for a, b in zip(t, p, strict=True)
        ]
    )
    assert ours == pytest.approx(theirs, rel=1e-6)
    assert metrics.ssim(t, t) == pytest.approx(1.0)


def test_shapes_must_match():
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.score(np.zeros((3, 3)), np.zeros((3, 4)))


def test_interval_and_spread_metrics():
    from zarrstain.evaluation.metrics import coverage, interval_width, spread_error_spearman

    rng = np.random.default_rng(0)
    target = rng.normal(size=(4, 32, 32))
    assert coverage(target, target - 1, target + 1) == 1.0
    assert coverage(target, target + 0.1, target + 1) == 0.0
    lower, upper = np.full_like(target, -1.0), np.full_like(target, 1.0)
    assert coverage(target, lower, upper) == pytest.approx(0.683, abs=0.02)  # ±1 std of N(0, 1)
    assert interval_width(target, lower, upper) == pytest.approx(2 / target.std())
    # a std that grows with the error ranks it perfectly; a random one not at all
    prediction = target + rng.normal(size=target.shape)
    error = np.abs(target - prediction)
    assert spread_error_spearman(target, prediction, 2 * error + 1) == pytest.approx(1.0)
    assert abs(spread_error_spearman(target, prediction, rng.random(target.shape))) < 0.05
    assert np.isnan(spread_error_spearman(target, prediction, np.ones_like(target)))


def test_high_frequency_share_of_white_noise_is_the_area_above_the_cutoff():
    # white noise spreads its power evenly over the frequency plane: the share above the
    # cutoff is the fraction of (fy, fx) in [-1, 1)² with radius > 0.5, 1 - π/16
    noise = np.random.default_rng(0).normal(size=(8, 128, 128))
    assert metrics.high_frequency_share(noise) == pytest.approx(1 - np.pi / 16, abs=0.01)
    assert np.isnan(metrics.high_frequency_share(np.ones((16, 16))))


def test_sharpness_is_below_one_for_a_blurred_prediction():
    from scipy import ndimage

    rng = np.random.default_rng(1)
    target = ndimage.gaussian_filter(rng.normal(size=(96, 96)), 1.0)
    assert metrics.sharpness(target, target) == pytest.approx(1.0)
    assert metrics.sharpness(target, 5 * target + 2) == pytest.approx(1.0)  # scale-free
    blurred = ndimage.gaussian_filter(target, 2.0)
    assert metrics.sharpness(target, blurred) < 0.3
    sharper = target + 0.5 * target.std() * rng.normal(size=target.shape)
    assert metrics.sharpness(target, sharper) > 1.5
    assert set(metrics.score(target, blurred)) == set(metrics.METRICS)


def test_error_maps_show_false_positives_orange_and_false_negatives_blue():
    from zarrstain.evaluation.report import error_map

    target = np.zeros((4, 4))
    target[0, 0] = 10.0  # signal the prediction misses
    prediction = np.zeros((4, 4))
    prediction[3, 3] = 10.0  # signal the target lacks
    rgb = error_map(target, prediction).astype(int)
    r, g, b = rgb[3, 3]
    assert r > g > b  # orange
    r, g, b = rgb[0, 0]
    assert b > g > r  # blue
