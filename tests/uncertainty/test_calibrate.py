"""Conformal calibration: CQR and RCPS from held-out scenes, through the tiling engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import zarrstain
from zarrstain import datasets
from zarrstain.errors import ChannelError, ParameterError
from zarrstain.models import ARCHITECTURES, Architecture, Geometry, create_model, register
from zarrstain.uncertainty import conformal
from zarrstain.uncertainty.calibrate import calibrate


class PixelQuantiles(Architecture):
    """A 2D 1×1 convolution: per pixel, the raw channels of its output head."""

    name = "test-pixel-quantiles"

    def build(self, in_channels: int = 1, out_channels: int = 3) -> nn.Module:
        return nn.Conv2d(in_channels, out_channels, 1)

    def geometry(self, kwargs):
        return Geometry(2, 1, ((0, 0),))

    def channels(self, kwargs, n_inputs, n_outputs):
        head = self.output_head(kwargs)
        n_targets = n_outputs // len(head.outputs)
        return {"in_channels": n_inputs, "out_channels": n_targets * head.raw_channels, **kwargs}


@pytest.fixture(autouse=True, scope="module")
def _registered():
    saved = dict(ARCHITECTURES)
    register(PixelQuantiles())
    yield
    ARCHITECTURES.clear()
    ARCHITECTURES.update(saved)


def quantile_model(half_width: float, alpha: float = 0.1):
    """Median = the input, bounds ∓ ``half_width``: deliberately miscalibrated."""
    model = create_model(
        "test-pixel-quantiles",
        input_labels=["BF"],
        output_labels=["DNA (predicted)", "DNA (predicted) lower", "DNA (predicted) upper"],
        normalization="none",
        head={"kind": "quantiles", "alpha": alpha},
    )
    gap = float(np.log(np.expm1(half_width)))  # softplus(gap) = half_width
    with torch.no_grad():
        model.module.weight.zero_()
        model.module.weight[0, 0] = 1.0
        model.module.bias.copy_(torch.tensor([0.0, gap, gap]))
    return model


def noisy_store(path, seed, sigmas=(1.0,) * 6, size=64):
    """DNA = BF + N(0, σ_t) per time point t: the error the interval must cover."""
    rng = np.random.default_rng(seed)
    bf = rng.normal(size=(len(sigmas), 1, 1, size, size))
    noise = np.stack([rng.normal(scale=s, size=(1, 1, size, size)) for s in sigmas])
    data = np.concatenate([bf, bf + noise], axis=1).astype(np.float32)
    datasets.save_image(path, data, "tczyx", channel_labels=["BF", "DNA"], levels=1)
    return path


def coverage(model, store) -> float:
    pred = zarrstain.predict(zarrstain.open_image(store), model, halo="exact")
    y = zarrstain.open_image(store).sel(c="DNA").values
    lower = pred.sel(c="DNA (predicted) lower").values
    upper = pred.sel(c="DNA (predicted) upper").values
    return float(np.mean((lower <= y) & (y <= upper)))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    base = tmp_path_factory.mktemp("calibration")
    return noisy_store(base / "cal.zarr", seed=1), noisy_store(base / "test.zarr", seed=2)


@pytest.mark.parametrize("alpha", [0.1, 0.2])
@pytest.mark.parametrize("half_width", [0.2, 5.0], ids=["too-narrow", "too-wide"])
def test_cqr_covers_one_minus_alpha_on_held_out_scenes(stores, alpha, half_width):
    cal, test = stores
    model = quantile_model(half_width)
    raw = coverage(model, test)
    assert abs(raw - (1 - alpha)) >= 0.09  # miscalibrated to begin with (wide: covers all)
    calibrated = calibrate(cal, model, alpha=alpha, method="cqr")
    assert calibrated.head.calibration.units == 6 * 64 * 64  # every pixel: below max_pixels
    assert abs(coverage(calibrated, test) - (1 - alpha)) <= 0.02


def test_cqr_samples_pixels_by_position_not_by_block(stores):
    cal, test = stores
    model = quantile_model(0.2)
    small = calibrate(cal, model, alpha=0.1, max_pixels=5000)
    assert 4000 < small.head.calibration.units < 6000
    again = calibrate(cal, model, alpha=0.1, max_pixels=5000)
    assert again.head.calibration == small.head.calibration  # seeded: the same sample
    assert abs(coverage(small, test) - 0.9) <= 0.02


def test_rcps_bound_holds_over_random_calibration_splits():
    """The guarantee itself: over seeded random splits of 60 images, the held-out risk exceeds
    α in at most about δ of the splits (and the bound is not vacuous: λ stays finite)."""
    rng = np.random.default_rng(0)
    alpha, delta, n_images, pixels = 0.1, 0.1, 60, 400
    sigmas = rng.uniform(0.5, 2.0, n_images)  # images differ: the per-image risk varies
    curves = []
    for s in sigmas:
        y = rng.normal(scale=s, size=pixels)
        need = conformal.lambda_star(y, np.zeros(pixels), -np.ones(pixels), np.ones(pixels))
        bins = np.searchsorted(conformal.LAMBDAS, need, side="left")
        counts = np.bincount(bins, minlength=len(conformal.LAMBDAS) + 1)
        curves.append(conformal.miscoverage_curves(counts[None], np.array([pixels]))[0])
    curves = np.array(curves)
    failures = 0
    splits = 200
    for _ in range(splits):
        order = rng.permutation(n_images)
        lam = conformal.rcps_lambda(curves[order[:30]], alpha, delta)
        j = int(np.searchsorted(conformal.LAMBDAS, lam))
        failures += curves[order[30:], j].mean() > alpha
    assert failures / splits <= delta
    assert 1 < lam < 10


def test_rcps_through_the_engine(tmp_path):
    sigmas = np.linspace(0.6, 1.4, 24)
    cal = noisy_store(tmp_path / "cal.zarr", seed=3, sigmas=sigmas, size=32)
    calibrated = calibrate(cal, quantile_model(0.3), alpha=0.1, method="rcps", delta=0.1)
    cal_record = calibrated.head.calibration
    assert cal_record.method == "rcps" and cal_record.units == 24 and cal_record.delta == 0.1
    test = noisy_store(tmp_path / "test.zarr", seed=4, sigmas=sigmas, size=32)
    assert coverage(calibrated, test) >= 0.9  # conservative: a bound, not an estimate


def test_calibrated_model_round_trips_and_records_nominal_coverage(stores, tmp_path):
    cal, test = stores
    saved = calibrate(cal, quantile_model(0.2), alpha=0.2, out=tmp_path / "calibrated")
    loaded = zarrstain.load_model(tmp_path / "calibrated")
    assert loaded.content_hash == saved.content_hash and loaded.head == saved.head
    assert loaded.head.calibration.scenes == ("",)  # a plain image: one scene, id ""
    pred = zarrstain.predict(zarrstain.open_image(test), loaded)
    record = pred.attrs["zarrstain"]["calibration"]
    assert record["method"] == "cqr" and record["nominal_coverage"] == pytest.approx(0.8)
    # the uncalibrated model's intervals are not the calibrated ones
    assert saved.content_hash != quantile_model(0.2).content_hash


def test_bad_calibration_requests(stores, tmp_path):
    cal, _ = stores
    model = quantile_model(0.2)
    with pytest.raises(ParameterError, match=r"alpha=1.5 is not in \(0, 1\)"):
        calibrate(cal, model, alpha=1.5)
    with pytest.raises(ParameterError, match="method 'bayes' is not one of cqr, rcps"):
        calibrate(cal, model, method="bayes")
    with pytest.raises(ChannelError, match="has no target channel 'Nuclei'"):
        calibrate(cal, model, target="Nuclei")
    calibrated = calibrate(cal, model, alpha=0.1)
    with pytest.raises(ParameterError, match="is calibrated for alpha=0.1"):
        calibrate(cal, calibrated, alpha=0.2)
    value = create_model(
        "fnet", input_labels=["BF"], output_labels=["DNA (predicted)"], ndim=2, depth=1
    )
    with pytest.raises(ParameterError, match="'value' head, which predicts no interval"):
        calibrate(cal, value)


def test_a_region_of_a_scene_calibrates_and_the_rest_evaluates(stores):
    cal, _ = stores
    top, bottom = {"y": slice(0, 32)}, {"y": slice(32, 64)}
    model = calibrate(cal, quantile_model(0.2), alpha=0.1, region=top)
    assert model.head.calibration.units == 6 * 32 * 64
    from zarrstain.uncertainty.coverage import calibration_curve

    rows = calibration_curve(
        cal, quantile_model(0.2, alpha=0.2), calibration_scenes=[""], scenes=[""],
        alphas=(0.1, 0.2), calibration_region=top, region=bottom,
    )  # fmt: skip
    assert [r["nominal"] for r in rows] == [0.9, 0.8]
    assert all(abs(r["calibrated"] - r["nominal"]) < 0.03 for r in rows)
    assert np.isnan(rows[0]["raw"]) and rows[1]["raw"] < 0.3  # the head's own alpha only
    with pytest.raises(ParameterError, match="both calibration and evaluation scenes"):
        calibration_curve(cal, model, calibration_scenes=[""], scenes=[""])


def test_a_bins_model_gets_a_calibrated_interval_from_its_distribution(stores):
    """CQR holds for any model, however poor: here a random 2D fnet with 16 intensity bins."""
    from zarrstain.testing import random_model

    cal, test = stores
    head = {"kind": "bins", "bins": 16, "range": [-3.0, 3.0]}
    model = random_model(ndim=2, depth=1, mult_chan=4, normalization="none", head=head)
    assert not model.head.has_interval
    calibrated = calibrate(cal, model, alpha=0.2)
    assert calibrated.output_labels[-2:] == ("DNA (predicted) lower", "DNA (predicted) upper")
    assert calibrated.head.alpha == 0.2 and calibrated.head.has_interval
    assert abs(coverage(calibrated, test) - 0.8) <= 0.02


@pytest.mark.parametrize("method", ["cqr", "rcps"])
def test_calibration_runs_each_model_block_once(tmp_path, method):
    from zarrstain.progress import BlockProgress

    store = noisy_store(tmp_path / "c.zarr", seed=5, sigmas=(1.0,) * 30, size=32)
    model = quantile_model(0.3)
    pred = zarrstain.predict(zarrstain.open_image(store), model, halo="exact")
    n_blocks = pred.attrs["zarrstain"]["tiling"]["blocks"]  # as calibrate plans it
    with BlockProgress() as blocks:
        calibrate(store, model, alpha=0.2, method=method)
    assert blocks.done == n_blocks  # not once per channel read (centre, lower, upper)
