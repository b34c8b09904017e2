"""Exact tiling: predict(halo="exact") equals one forward pass over the whole volume."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED, assert_same
from scipy import ndimage

import zarrstain
from zarrstain.engine.options import PredictOptions
from zarrstain.engine.tiling import predict_whole

FNET = SHARED / "fixtures" / "pytorch_fnet"


def smooth_noise(shape, seed=0):
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    x = ndimage.gaussian_filter(x, (0, 0, 1, 1, 1))
    return (x - x.mean()) / x.std()


@pytest.mark.parametrize(
    ("shape", "chunks"),
    [
        ((1, 1, 20, 64, 64), {"z": 20, "y": 32, "x": 32}),  # regular blocks, whole z
        ((1, 1, 29, 70, 66), {"z": 28, "y": 28, "x": 44}),  # odd shape, blocks in z too
        ((2, 1, 13, 51, 97), {"z": 24, "y": 24, "x": 24}),  # time points, tiny z, odd x
        ((1, 1, 9, 48, 80), {"y": 24, "x": 24, "t": 1}),  # z too thin to split
    ],
)
def test_exact_equals_whole_volume_3d(model3d, shape, chunks):
    x = smooth_noise(shape)
    ref = predict_whole(x, model3d)
    # one volume per forward, as the reference runs them
    pred = zarrstain.predict(
        x,
        model3d,
        predict_options=PredictOptions(halo="exact", normalize=None, chunks=chunks, batch_size=1),
    )
    assert pred.attrs["zarrstain"]["tiling"]["blocks"] > 1
    assert_same(pred.values, ref)


def test_batched_time_points_agree_to_float_precision(model3d):
    """Batching changes only the order of float sums inside the convolutions."""
    x = smooth_noise((3, 1, 12, 40, 44), seed=2)
    ref = predict_whole(x, model3d)
    pred = zarrstain.predict(x, model3d, halo="exact", normalize=None, chunks={"t": 3})
    assert pred.attrs["zarrstain"]["tiling"]["block_tzyx"][0] == 3
    np.testing.assert_allclose(pred.values, ref, rtol=0, atol=1e-5 * ref.std())


def test_smaller_halo_is_not_exact(model3d):
    """The test above can fail: a halo below the receptive field leaves seams."""
    x = smooth_noise((1, 1, 20, 64, 64))
    ref = predict_whole(x, model3d)
    pred = zarrstain.predict(x, model3d, halo=4, normalize=None, chunks={"y": 32, "x": 32})
    assert np.abs(pred.values - ref).max() > 1e-3 * ref.std()


@pytest.mark.parametrize("chunks", [{"z": 1, "y": 40, "x": 40}, {"z": 3, "y": 48, "x": 56}])
def test_exact_equals_whole_2d_plane_by_plane(model2d, chunks):
    x = smooth_noise((2, 1, 5, 90, 101), seed=1)
    ref = predict_whole(x, model2d)
    # each plane is the model's own 2D forward
    single = predict_whole(x[:1, :, 2:3], model2d)
    np.testing.assert_array_equal(ref[:1, :, 2:3], single)
    pred = zarrstain.predict(
        x,
        model2d,
        predict_options=PredictOptions(halo="exact", normalize=None, chunks=chunks, batch_size=1),
    )
    assert pred.attrs["zarrstain"]["tiling"]["halo_zyx"][0] == 0
    assert_same(pred.values, ref)


@pytest.mark.skipif(not FNET.is_dir(), reason=f"{FNET} is absent (no ../shared)")
def test_pytorch_fnet_depth4_exact_halo_112():
    """The real depth-4 checkpoint: halo 112 with 16-aligned blocks is exact (2×2 blocks)."""
    model = zarrstain.load_model(FNET / "fnet3d")
    x = smooth_noise((1, 1, 29, 250, 230))
    ref = predict_whole(x, model)
    pred = zarrstain.predict(x, model, halo="exact", normalize=None, chunks={"y": 128, "x": 128})
    tiling = pred.attrs["zarrstain"]["tiling"]
    assert tiling["halo_zyx"] == [0, 112, 112] and tiling["blocks"] == 4
    # bit for bit when run alone here; after other tests (a different heap, other oneDNN
    # kernels) the float sums may round differently in the last bit: ~1e-6 of the maximum
    assert_same(pred.values, ref)
    # and the whole forward of a fixture input equals pytorch_fnet's own output
    x32 = np.load(FNET / "input_3d_32x64x64.npy")
    expected = np.load(FNET / "expected_out_3d_forward.npy")
    out = zarrstain.predict(x32, model, normalize=None).values
    np.testing.assert_allclose(out, expected, atol=1e-5)
