"""FluoGen's uncertainty on a control branch: quantile heads, three chains, calibrated intervals."""

from __future__ import annotations

import logging

import dask.array as da
import numpy as np
import pytest
import torch

import zarrstain
from zarrstain import datasets
from zarrstain.engine.tiling import plan_tiles, predict_whole, run_tiled
from zarrstain.errors import ParameterError
from zarrstain.models import create_model
from zarrstain.models.diffusion.chains import DRIVERS, QuantileChainsHead
from zarrstain.models.diffusion.control import backbone_kwargs
from zarrstain.training import TrainConfig
from zarrstain.uncertainty import conformal
from zarrstain.uncertainty.calibrate import calibrate, target_scale

# about 2.5 minutes on 2 cores (a branch trained once per module): CI runs them, the default
# suite (-m 'not slow') does not
pytestmark = pytest.mark.slow

STEPS = 10
TRAIN = [f"A/{c}/{f}" for c in "1234" for f in "01"]
CALIBRATION = [f"{r}/{c}/{f}" for r in "BCD" for c in "1234" for f in "01"]
TEST = [f"{r}/{c}/{f}" for r in "EFGH" for c in "1234" for f in "01"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A backbone pretrained on every field's membrane, a branch with quantile heads on row A."""
    root = tmp_path_factory.mktemp("control-uncertainty")
    plate = datasets.make_plate(root / "plate.zarr", rows=list("ABCDEFGH"),
                                columns=list("1234"), shape=(1, 1, 64, 64), levels=1)  # fmt: skip
    common = {"targets": ["Membrane"], "batch_size": 8, "patch": [32, 32], "device": "cpu",
              "normalization": "zscore", "lr": 2e-3, "steps": 200}  # fmt: skip
    backbone = root / "backbone"
    kwargs = {"width": 8, "mults": [1, 2], "objective": "v", "zero_snr": True}
    zarrstain.train(plate, TrainConfig(model="diffusion2d", inputs=[], unconditional=True,
                                       model_kwargs=kwargs, **common), backbone)  # fmt: skip
    config = TrainConfig(model="control", inputs=["BF"], backbone=str(backbone),
                         head="quantiles", alpha=0.1, scenes=TRAIN, **common)  # fmt: skip
    branch = zarrstain.train(plate, config, root / "branch").model
    return plate, backbone, branch, root


def _intervals(model, image, **options):
    """(median, lower, upper) of one scene's membrane, and its acquired membrane."""
    p = zarrstain.predict(image, model, halo="exact", options={"steps": STEPS, **options}).values
    y = image.sel(c="Membrane").values
    return p[:, 0], p[:, 1], p[:, 2], y[:, 0]


@pytest.fixture(scope="module")
def raw(trained):
    """Per held-out field (rows B-H): its uncalibrated (median, lower, upper) and membrane."""
    plate, _, branch, _ = trained
    images = zarrstain.open_scenes(plate, scenes=CALIBRATION + TEST)
    return {sid: _intervals(branch, image) for sid, image in images.items()}


def _coverage(model, raw, scenes) -> float:
    """Mean coverage over ``scenes`` of the raw intervals with ``model``'s calibration."""
    cal, hits = model.head.calibration, []
    for sid in scenes:
        median, lower, upper, y = raw[sid]
        if cal is not None:
            lower, upper = cal.apply(median, lower, upper, 0, target_scale(model, 0))
        hits.append(np.mean((lower <= y) & (y <= upper)))
    return float(np.mean(hits))


def _risk_curves(raw, scenes) -> np.ndarray:
    """Per field: its miscovered fraction at every λ of the RCPS grid."""
    curves = []
    for sid in scenes:
        median, lower, upper, y = raw[sid]
        need = conformal.lambda_star(y, median, lower, upper)
        bins = np.searchsorted(conformal.LAMBDAS, need.ravel(), side="left")
        counts = np.bincount(bins, minlength=len(conformal.LAMBDAS) + 1)
        curves.append(conformal.miscoverage_curves(counts[None], np.array([need.size]))[0])
    return np.array(curves)


def test_quantile_heads_start_beside_the_backbone_and_tile_exactly(trained):
    _, path, branch, _ = trained
    backbone, inherited = backbone_kwargs(path)
    fresh = create_model(
        "control", input_labels=["BF"], normalization="zscore",
        output_labels=[f"Membrane (predicted){s}" for s in ("", " lower", " upper")],
        **inherited, head={"kind": "quantiles", "alpha": 0.1},
        backbone={"content_hash": backbone.content_hash, "path": str(path), "embedded": False},
    )  # fmt: skip
    x_t, cond, t = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32), torch.tensor([10, 900])
    with torch.no_grad():
        out = fresh.module(torch.cat([cond, x_t], 1), t)
        v = backbone.module(x_t, t)
    gap = float(torch.nn.functional.softplus(torch.tensor(0.0)))
    assert torch.equal(out[:, :1], v)  # the median is the backbone's output convolution
    assert torch.allclose(out[:, 1:2], v - gap) and torch.allclose(out[:, 2:], v + gap)
    # three chains through the passes, tiled = whole
    model = branch.with_options(steps=3, sampler="ddpm")
    data = np.random.default_rng(0).normal(size=(1, 1, 1, 64, 96)).astype(np.float32)
    whole = predict_whole(data, model, seed=1)
    plan = plan_tiles((1, 1, 64, 96), model, halo="exact", chunks={"y": 32, "x": 32})
    assert plan.n_blocks > 1 and plan.exact
    tiled = run_tiled(da.from_array(data), model, plan, seed=1).compute()
    assert whole.shape[1] == 3
    assert np.abs(tiled - whole).max() <= 1e-5 * float(whole.max() - whole.min())


def test_pinball_trained_bounds_order_after_the_chain_reversal(trained, monkeypatch):
    plate, _, branch, _ = trained
    assert branch.head.kind == "quantiles" and DRIVERS == (0, 2, 1)
    image = zarrstain.open_scenes(plate, scenes=TEST[:2])
    monkeypatch.setattr(QuantileChainsHead, "reduce", lambda self, raw: raw)  # the raw chains
    raw = [_intervals(branch, im)[:3] for im in image.values()]
    monkeypatch.undo()
    median = np.concatenate([r[0] for r in raw])
    low_chain = np.concatenate([r[1] for r in raw])  # driven by the upper quantile of v
    high_chain = np.concatenate([r[2] for r in raw])  # driven by the lower quantile of v
    # the reversal: the chain of v's upper quantile ends below the median, nearly everywhere
    assert np.mean(low_chain <= median) >= 0.95 and np.mean(median <= high_chain) >= 0.95
    assert np.mean(high_chain - low_chain) > 0
    median2, lower, upper, _ = _intervals(branch, image[TEST[0]])
    assert (lower <= median2).all() and (median2 <= upper).all()  # ordered where they crossed
    np.testing.assert_array_equal(median2, raw[0][0])


def test_cqr_covers_one_minus_alpha_on_held_out_scenes(trained, raw, caplog):
    plate, _, branch, root = trained
    # the pinball loss trains the bounds apart (trained on the median's MSE, as before a fix,
    # they collapsed onto it: 27 % coverage); raw, they carry no guarantee
    assert _coverage(branch, raw, TEST) > 0.5
    calibrated = calibrate(plate, branch, scenes=CALIBRATION, method="cqr", alpha=0.1,
                           options={"steps": STEPS}, out=root / "cqr")  # fmt: skip
    cal = calibrated.head.calibration
    assert cal.sampling == {"sampler": "ddim", "steps": STEPS} and cal.units == 24 * 64 * 64
    assert calibrated.kwargs["sample_steps"] == STEPS  # the calibrated settings are the default
    assert abs(_coverage(calibrated, raw, TEST) - 0.9) <= 0.02
    # predicting with the calibrated package writes exactly those bounds
    image = zarrstain.open_scenes(plate, scenes=TEST[:1])[TEST[0]]
    median, lower, upper, _ = _intervals(zarrstain.load_model(root / "cqr"), image)
    want = cal.apply(*raw[TEST[0]][:3], 0, target_scale(calibrated, 0))
    np.testing.assert_allclose(lower, want[0], atol=1e-3)
    np.testing.assert_allclose(upper, want[1], atol=1e-3)
    np.testing.assert_array_equal(median, raw[TEST[0]][0])
    with caplog.at_level(logging.WARNING, logger="zarrstain.models.diffusion.family"):
        zarrstain.predict(image, calibrated, options={"steps": 4})
    assert "calibrated with" in caplog.text


def test_rcps_bound_holds_over_seeded_splits(trained, raw):
    """Over seeded random calibration/test splits of the 56 held-out fields, the held-out
    miscoverage of the RCPS interval exceeds α in at most δ of the splits."""
    plate, _, branch, _ = trained
    alpha, delta = 0.1, 0.1
    pool = CALIBRATION + TEST
    curves = _risk_curves(raw, pool)
    rng = np.random.default_rng(0)
    failures, splits = 0, 200
    for _ in range(splits):
        order = rng.permutation(len(curves))
        lam = conformal.rcps_lambda(curves[order[:40]], alpha, delta)
        failures += curves[order[40:], int(np.searchsorted(conformal.LAMBDAS, lam))].mean() > alpha
    assert failures / splits <= delta
    # and through the engine: the same λ from the same 40 fields
    calibrated = calibrate(plate, branch, scenes=pool[:40], method="rcps",
                           options={"steps": STEPS})  # fmt: skip
    assert calibrated.head.calibration.units == 40
    expected = conformal.rcps_lambda(curves[:40], alpha, delta)
    assert calibrated.head.calibration.adjustment[0] == pytest.approx(expected)
    assert _coverage(calibrated, raw, pool[40:]) >= 0.9


def test_control_uncertainty_requests_that_cannot_work(trained, tmp_path):
    plate, backbone, branch, _ = trained
    base = {"targets": ["Membrane"], "inputs": ["BF"], "model": "control", "steps": 1,
            "backbone": str(backbone), "device": "cpu", "patch": [32, 32]}  # fmt: skip
    with pytest.raises(ParameterError, match="takes a quantiles head"):
        zarrstain.train(plate, TrainConfig(**base, head="bins"), tmp_path / "a")
    with pytest.raises(ParameterError, match=r"copies its backbone's network \(width=8\)"):
        zarrstain.train(plate, TrainConfig(**base, model_kwargs={"width": 16}), tmp_path / "b")
    two = {**base, "targets": ["Membrane", "DNA"]}
    with pytest.raises(ParameterError, match="models 1 fluorescence channel"):
        zarrstain.train(plate, TrainConfig(**two), tmp_path / "c")
    with pytest.raises(ParameterError, match="three chains of one sample"):
        branch.with_options(samples=2)
