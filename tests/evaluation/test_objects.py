"""Object-level evaluation: segmentation, matching, detection scores, features, KID, assays."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from skimage.draw import disk

from zarrstain.errors import ParameterError
from zarrstain.evaluation.assay import assay_scores, effect_size, z_prime
from zarrstain.evaluation.distributions import kid
from zarrstain.evaluation.metrics import pcc_ceiling
from zarrstain.evaluation.objects import (
    feature_correlations,
    match_objects,
    object_features,
    object_scores,
)
from zarrstain.evaluation.segment import NUCLEI, ThresholdWatershed, get_segmenter

SPACING = (0.5, 0.5)  # µm per pixel: nuclei of 8 µm are 16 pixels across


def _disks(centres, radius=7, shape=(96, 96), value=1000.0, noise=20.0, seed=0):
    """Disks of ``radius`` (or, per centre, ``(y, x, radius)``) on a noisy background."""
    image = np.zeros(shape, np.float32)
    for c in centres:
        rr, cc = disk(c[:2], c[2] if len(c) == 3 else radius, shape=shape)
        image[rr, cc] = value + 50 * len(c)
    return image + np.random.default_rng(seed).normal(0, noise, shape).astype(np.float32)


FOUR = [(20, 20), (20, 60), (60, 20), (70, 70)]


def test_identical_labels_score_one_and_features_correlate_exactly():
    sizes = [(20, 20, 6), (20, 60, 7), (60, 20, 8), (70, 70, 9)]
    labels = NUCLEI(_disks(sizes), SPACING)
    assert labels.max() == 4
    scores = object_scores(match_objects(labels, labels))
    assert scores["f1"] == scores["mean_ap"] == 1.0 and scores["count_error"] == 0.0
    image = _disks(FOUR, seed=3)
    features = object_features(labels, image, SPACING)
    pairs = match_objects(labels, labels).pairs()
    assert set(feature_correlations(features, features, pairs).values()) == {1.0}
    # areas in µm² (0.25 µm² pixels), close to the disks drawn
    drawn = [len(disk((0, 0), r)[0]) * 0.25 for r in (6, 7, 8, 9)]
    assert sorted(features["area"]) == pytest.approx(drawn, rel=0.08)


def test_merged_and_missing_objects_give_the_expected_scores():
    true = np.zeros((40, 80), np.int32)
    true[5:15, 5:15], true[5:15, 20:30], true[25:35, 5:15], true[25:35, 40:50] = 1, 2, 3, 4
    pred = np.zeros_like(true)
    pred[5:15, 5:30] = 1  # nuclei 1 and 2 merged (IoU 100/250 with each: no match)
    pred[25:35, 40:50] = 2  # nucleus 4 found; nucleus 3 missing
    scores = object_scores(match_objects(true, pred))
    assert (scores["tp"], scores["n_true"], scores["n_pred"]) == (1, 4, 2)
    assert scores["precision"] == 0.5 and scores["recall"] == 0.25
    assert scores["f1"] == pytest.approx(2 / (2 + 1 + 3))
    assert scores["ap@0.5"] == pytest.approx(1 / (1 + 1 + 3))
    assert scores["count_error"] == -0.5


def test_segmenting_a_prediction_with_merged_and_missing_nuclei():
    real = _disks(FOUR)
    # the virtual stain lost the third nucleus and smeared the first two into one blob
    fake = _disks([(70, 70)])
    rr, cc = disk((20, 40), 12, shape=fake.shape)
    fake[rr, cc] = 1000
    rr, cc = (np.arange(17, 24)[:, None], np.arange(20, 61)[None, :])
    fake[rr, cc] = 1000
    true, pred = NUCLEI(real, SPACING), NUCLEI(fake, SPACING)
    scores = object_scores(match_objects(true, pred))
    assert (scores["n_true"], scores["tp"]) == (4, 1)
    assert scores["recall"] == 0.25
    assert scores["f1"] == pytest.approx(2 / (2 + (scores["n_pred"] - 1) + 3))


def test_touching_nuclei_are_split_at_their_neck():
    image = _disks([(40, 33), (40, 47)])  # radius 7, centres 14 apart: touching
    assert NUCLEI(image, SPACING).max() == 2


def test_segmenters_are_found_by_name_or_wrapped():
    assert get_segmenter("nuclei") is NUCLEI
    assert get_segmenter("cells").name == "cells"
    threshold = get_segmenter(lambda image, spacing: (image > 500).astype(np.uint8))
    assert threshold(_disks(FOUR), SPACING).max() == 1
    with pytest.raises(ParameterError, match="no segmenter 'stardist'; installed: cells, nuclei"):
        get_segmenter("stardist")
    with pytest.raises(ParameterError, match="must return integer labels"):
        get_segmenter(lambda image, spacing: image[:5])(_disks(FOUR), SPACING)
    with pytest.raises(ParameterError, match="diameter must be > 0"):
        ThresholdWatershed(diameter=0)


def test_kid_is_zero_for_a_population_against_itself_and_detects_a_shift():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 6)), rng.normal(size=(300, 6))
    fields = [i // 10 for i in range(300)]
    same = kid(a, a, real_groups=fields, pred_groups=fields)
    assert same.value == 0.0
    alike = kid(a, b, real_groups=fields, pred_groups=fields)
    assert alike.low < 0 < alike.high
    shifted = kid(a, b + 0.5, real_groups=fields, pred_groups=fields)
    assert shifted.low > alike.high
    assert np.isnan(kid(a[:1], b).value)


def test_z_prime_and_effect_size():
    pos, neg = np.array([10.0, 11, 9, 10]), np.array([0.0, 1, -1, 0])
    sd = np.std(pos, ddof=1)
    assert z_prime(pos, neg) == pytest.approx(1 - 6 * sd / 10)
    assert effect_size(pos, neg) == pytest.approx(10 / sd)
    assert np.isnan(z_prime([1.0], neg))
    profiles = pd.DataFrame({"x": [*pos, *neg], "y": [1.0] * 8}, index=list("abcdefgh"))
    classes = pd.Series(["on"] * 4 + ["off"] * 4, index=profiles.index)
    scores = assay_scores(profiles, profiles, classes, readout="x")
    assert (scores["negative"], scores["positive"]) == ("off", "on")
    assert scores["direction"] == "same"
    swapped = profiles.assign(x=profiles["x"].to_numpy()[::-1])  # the phenotypes exchanged
    reversed_ = assay_scores(profiles, swapped, classes, readout="x")
    assert reversed_["direction"] == "reversed"
    assert reversed_["z_prime_pred"] == pytest.approx(scores["z_prime_real"])  # Z′ cannot tell
    assert scores["z_prime_real"] == scores["z_prime_pred"] == pytest.approx(z_prime(pos, neg))
    with pytest.raises(ParameterError, match="readout 'z' is not a feature"):
        assay_scores(profiles, profiles, classes, readout="z")
    with pytest.raises(ParameterError, match="class 'dmso' is not in the class map"):
        assay_scores(profiles, profiles, classes, controls=("dmso", "on"))


def test_pcc_ceiling_from_two_noisy_acquisitions():
    rng = np.random.default_rng(1)
    signal = rng.normal(size=(64, 64, 64))
    one, two = signal + rng.normal(size=signal.shape), signal + rng.normal(size=signal.shape)
    # each acquisition correlates with the signal by 1/√2
    assert pcc_ceiling(one, two) == pytest.approx(1 / np.sqrt(2), abs=0.01)
