"""Global normalization: pytorch_fnet / MMV_Im2Im semantics, laziness, constant frames."""

from __future__ import annotations

import logging

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from conftest import SHARED

from zarrstain.engine.normalize import normalization_stats, normalize
from zarrstain.testing import raise_if_dask_computes

FIXTURE = SHARED / "fixtures" / "pytorch_fnet" / "input_norm_raw_40x48x56_uint16.npy"
DIMS = ("t", "c", "z", "y", "x")


def _wrap(arr: np.ndarray, chunks=(1, 1, 7, 20, 19)) -> xr.DataArray:
    return xr.DataArray(da.from_array(arr, chunks=chunks), dims=DIMS)


# pytorch_fnet's functions, written from their documented semantics (fixtures README)
def fnet_normalize(img: np.ndarray) -> np.ndarray:
    img = img.astype(np.float32)
    return (img - img.mean()) / img.std()


def fnet_norm_around_center(ar: np.ndarray) -> np.ndarray:
    z_center = ar.shape[0] // 2
    start = min(max(z_center - 16, 0), ar.shape[0] - 32)
    window = ar[start : start + 32].astype(np.float64)
    return ((ar - window.mean()) / window.std()).astype(np.float32)


@pytest.fixture
def raw() -> np.ndarray:
    if not FIXTURE.exists():
        pytest.skip(f"{FIXTURE} is absent (../shared not beside the checkout)")
    return np.load(FIXTURE)


def test_center_matches_pytorch_fnet(raw):
    got = normalize(_wrap(raw[None, None]), "center").values[0, 0]
    np.testing.assert_allclose(got, fnet_norm_around_center(raw), atol=1e-5)


def test_zscore_matches_pytorch_fnet(raw):
    got = normalize(_wrap(raw[None, None]), "zscore").values[0, 0]
    np.testing.assert_allclose(got, fnet_normalize(raw), atol=1e-5)


def test_percentile_is_exact_for_integers(raw):
    got = normalize(_wrap(raw[None, None]), "percentile", p_low=1, p_high=99).values[0, 0]
    lo, hi = np.percentile(raw, [1, 99])
    np.testing.assert_allclose(got, np.clip((raw - lo) / (hi - lo), 0, 1), atol=1e-6)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32])
def test_median_iqr_is_viscys_normalization_with_exact_statistics(dtype):
    """VisCy's NormalizeSampled(subtrahend="median", divisor="iqr"), per (t, c), any dtype."""
    rng = np.random.default_rng(3)
    arr = (rng.gamma(2.0, 300.0, size=(2, 2, 5, 30, 31)) + 100).astype(dtype)
    out = normalize(_wrap(arr, chunks=(1, 1, 2, 7, 9)), "median_iqr").values
    for t in range(2):
        for c in range(2):
            p25, med, p75 = np.percentile(arr[t, c].astype(np.float64), [25, 50, 75])
            want = (arr[t, c] - med) / (p75 - p25)
            np.testing.assert_allclose(out[t, c], want, rtol=1e-5, atol=1e-5)


def test_statistics_are_global_per_t_and_c():
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(2, 3, 5, 30, 30)) * np.arange(1, 7).reshape(2, 3, 1, 1, 1) + 10
    out = normalize(_wrap(arr, chunks=(1, 1, 2, 7, 9)), "zscore").values
    for t in range(2):
        for c in range(3):
            assert abs(out[t, c].mean()) < 1e-5 and abs(out[t, c].std() - 1) < 1e-5
    stats = normalization_stats(_wrap(arr), "zscore")
    np.testing.assert_allclose(stats.offset.values, arr.mean(axis=(2, 3, 4)))


def test_few_slices_use_all_and_say_so(caplog):
    arr = np.arange(6 * 8 * 8, dtype=np.float64).reshape(1, 1, 6, 8, 8)
    with caplog.at_level(logging.INFO, logger="zarrstain.engine.normalize"):
        out = normalize(_wrap(arr, chunks=-1), "center").values
    assert "only 6 z-slices" in caplog.text
    np.testing.assert_allclose(out, (arr - arr.mean()) / arr.std(), atol=1e-5)


@pytest.mark.parametrize("method", ["center", "zscore", "percentile", "median_iqr"])
def test_constant_frames_warn_and_stay_finite(method, caplog):
    arr = np.full((1, 2, 4, 16, 16), 7, dtype=np.uint16)
    arr[0, 1] = np.arange(4 * 16 * 16).reshape(4, 16, 16)
    with caplog.at_level(logging.WARNING, logger="zarrstain.engine.normalize"):
        out = normalize(_wrap(arr, chunks=(1, 1, 2, 8, 8)), method).values
    assert np.isfinite(out).all()
    assert "constant or empty" in caplog.text
    np.testing.assert_array_equal(out[0, 0], 0.0)


def test_building_computes_nothing():
    arr = _wrap(np.random.default_rng(1).integers(0, 4000, (1, 1, 8, 40, 40), dtype=np.uint16))
    with raise_if_dask_computes():
        for method in ("center", "zscore", "percentile", "median_iqr"):
            out = normalize(arr, method)
            assert out.dtype == np.float32 and out.attrs["normalization"]["method"] == method


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown normalization 'minmax'"):
        normalize(_wrap(np.zeros((1, 1, 1, 4, 4))), "minmax")
