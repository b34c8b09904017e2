"""Test-time augmentation: the mean over xy flips / rotations, with tiling still exact."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import assert_same
from test_tiling import smooth_noise

import zarrstain
from zarrstain import datasets
from zarrstain.engine.options import PredictOptions
from zarrstain.engine.tiling import TTA, predict_whole
from zarrstain.errors import ParameterError
from zarrstain.testing import random_model


@pytest.mark.parametrize("tta", ["flips", "d4"])
@pytest.mark.parametrize(
    ("shape", "chunks"),
    [
        ((1, 1, 12, 64, 64), {"z": 12, "y": 32, "x": 32}),
        ((1, 1, 13, 51, 70), {"z": 24, "y": 24, "x": 28}),  # padded, non-square blocks
    ],
)
def test_tta_keeps_tiling_exact(model3d, tta, shape, chunks):
    x = smooth_noise(shape, seed=5)
    ref = predict_whole(x, model3d, tta=tta)
    options = PredictOptions(halo="exact", normalize=None, chunks=chunks, batch_size=1, tta=tta)
    pred = zarrstain.predict(x, model3d, predict_options=options)
    assert pred.attrs["zarrstain"]["tiling"]["blocks"] > 1
    assert pred.attrs["zarrstain"]["test_time_augmentation"] == tta
    assert_same(pred.values, ref)
    assert np.abs(ref - predict_whole(x, model3d)).max() > 1e-3 * ref.std()  # it did something


def test_tta_is_the_mean_of_the_transformed_predictions(model2d):
    """d4 by hand: predict each flipped / rotated plane, undo, average."""
    x = smooth_noise((1, 1, 2, 48, 48), seed=6)  # square, a multiple of the divisor: no padding
    by_hand = []
    for flip, k in TTA["d4"]:
        moved = np.flip(x, -1) if flip else x
        moved = np.ascontiguousarray(np.rot90(moved, k, axes=(-2, -1)))
        out = np.rot90(predict_whole(moved, model2d), -k, axes=(-2, -1))
        by_hand.append(np.flip(out, -1) if flip else out)
    np.testing.assert_allclose(predict_whole(x, model2d, tta="d4"), np.mean(by_hand, axis=0),
                               rtol=0, atol=1e-5)  # fmt: skip
    assert len(TTA["flips"]) == 4 and len(set(TTA["d4"])) == 8


def test_tta_changes_the_fingerprint_and_bad_values_are_refused(model2d, tmp_path):
    x = smooth_noise((1, 1, 1, 32, 32), seed=3)
    plain = zarrstain.predict(x, model2d, normalize=None)
    flipped = zarrstain.predict(
        x, model2d, predict_options=PredictOptions(normalize=None, tta="flips")
    )
    assert plain.attrs["zarrstain"]["fingerprint"] != flipped.attrs["zarrstain"]["fingerprint"]
    assert "test_time_augmentation" not in plain.attrs["zarrstain"]
    with pytest.raises(ParameterError, match="tta 'rot' is not one of none, flips, d4"):
        PredictOptions(tta="rot")


def test_the_cli_predicts_with_tta(tmp_path):
    from zarrstain.cli.main import cli

    from zarrstain.models import load_model, save_model

    plate = datasets.make_plate(tmp_path / "p.zarr", rows=("A",), columns=("1",), fields=1,
                                shape=(1, 2, 32, 32), seed=1)  # fmt: skip
    save_model(random_model(ndim=2, depth=2, mult_chan=4, seed=2), tmp_path / "m")
    args = ["predict", str(plate), "--model", str(tmp_path / "m"), "--normalization", "none"]
    result = CliRunner().invoke(cli, [*args, "--tta", "d4", "--out", str(tmp_path / "o.zarr")])
    assert result.exit_code == 0, result.output
    written = zarrstain.open_scenes(tmp_path / "o.zarr")["A/1/0"]
    expected = zarrstain.predict(
        zarrstain.open_scenes(plate)["A/1/0"], load_model(tmp_path / "m"),
        predict_options=PredictOptions(normalize=None, tta="d4"),
    )  # fmt: skip
    label = "DNA (predicted)"
    np.testing.assert_allclose(written.sel(c=label).values, expected.sel(c=label).values,
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    bad = CliRunner().invoke(cli, [*args, "--tta", "spin"])
    assert bad.exit_code == 2 and "'spin' is not one of" in bad.output
