"""Synthetic data: deterministic, the promised shapes and labels, a learnable relation."""

from __future__ import annotations

import numpy as np
import pytest

import zarrstain
from zarrstain import datasets


def test_deterministic(tmp_path):
    a = datasets.make_image(tmp_path / "a.zarr", shape=(1, 5, 35, 29), seed=7)
    b = datasets.make_image(tmp_path / "b.zarr", shape=(1, 5, 35, 29), seed=7)
    c = datasets.make_image(tmp_path / "c.zarr", shape=(1, 5, 35, 29), seed=8)
    va, vb, vc = (zarrstain.open_image(p).values for p in (a, b, c))
    np.testing.assert_array_equal(va, vb)
    assert not np.array_equal(va, vc)


def test_image_properties(make_store):
    image = zarrstain.open_image(make_store("image", "0.4"))
    assert image.shape == (2, 3, 6, 37, 42) and image.dtype == np.uint16
    assert list(image.c.values) == list(datasets.CHANNELS)
    assert image.attrs["scale"]["z"] > 3 * image.attrs["scale"]["x"]  # anisotropic voxels
    assert not np.array_equal(image.isel(t=0).values, image.isel(t=1).values)  # cells move


def test_fluorescence_follows_the_cells():
    clean = datasets.render_cells((1, 12, 80, 80), seed=3)
    dna, bf = clean["DNA"][0], clean["BF"][0]
    nuclei = dna > dna.mean() + 2 * dna.std()
    assert nuclei.any()
    # brightfield differs inside nuclei from the background: a model has something to learn
    assert abs(bf[nuclei].mean() - np.median(bf)) > 5 * bf[~nuclei].std() / np.sqrt(nuclei.sum())
    assert np.corrcoef(clean["Membrane"][0].ravel(), dna.ravel())[0, 1] < 0.9


def test_plate_layout(make_store):
    scenes = zarrstain.open_scenes(make_store("plate", "0.5"))
    assert len(scenes) == 8 and scenes["B/2/1"].shape == (1, 3, 4, 33, 30)


def test_bad_version(tmp_path):
    with pytest.raises(ValueError, match="ngff_version must be '0.4' or '0.5'"):
        datasets.make_image(tmp_path / "x.zarr", ngff_version="0.3")


def test_a_low_snr_acquisition_of_the_same_field(tmp_path):
    """The denoising task: the same cells at a hundredth of the exposure, noisy but learnable."""
    from scipy import ndimage

    plain = zarrstain.open_image(datasets.make_image(tmp_path / "a.zarr", shape=(1, 1, 96, 96)))
    both = zarrstain.open_image(
        datasets.make_image(tmp_path / "b.zarr", shape=(1, 1, 96, 96), low_snr=True)
    )
    assert list(both.coords["c"].values) == [*datasets.CHANNELS, *datasets.LOW_SNR]
    np.testing.assert_array_equal(both.values[:, :3], plain.values)  # the others unchanged
    for label in ("DNA", "Membrane"):
        clean = both.sel(c=label).values[0, 0].astype(float)
        noisy = both.sel(c=f"{label} lowSNR").values[0, 0].astype(float)
        raw = np.corrcoef(clean.ravel(), noisy.ravel())[0, 1]
        smooth = np.corrcoef(clean.ravel(), ndimage.gaussian_filter(noisy, 1.5).ravel())[0, 1]
        assert raw < 0.8 < smooth  # noisy, and the same field underneath
        assert noisy.max() < 200 < clean.max()  # a few photons over the camera offset
    plate = datasets.make_plate(tmp_path / "p.zarr", rows=("A",), columns=("1",), fields=1,
                                shape=(1, 1, 32, 32), low_snr=True)  # fmt: skip
    assert "DNA lowSNR" in zarrstain.open_image(plate / "A/1/0").coords["c"].values
