"""Training augmentation: intensity and spatial transforms in physical units."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from zarrstain import datasets
from zarrstain.errors import ParameterError
from zarrstain.training import TrainConfig, build_config
from zarrstain.training import train as run_training
from zarrstain.training.augment import Augmentation, warp, window
from zarrstain.training.sampler import PatchSampler, Region


def _scene(values: np.ndarray, scale: dict) -> xr.DataArray:
    """A one-time-point scene with BF = DNA = ``values`` (z, y, x) and voxel size ``scale``."""
    data = da.from_array(np.stack([values, values])[None].astype(np.float32), chunks=16)
    return xr.DataArray(data, dims=("t", "c", "z", "y", "x"), coords={"c": ["BF", "DNA"]},
                        attrs={"scale": scale})  # fmt: skip


def _sampler(scene, patch, augment, seed=0, **kwargs):
    return PatchSampler({"s": scene}, [Region("s")], ["BF"], ["DNA"], patch, seed=seed,
                        normalization="zscore", augmentation=augment, **kwargs)  # fmt: skip


def test_parse_reads_names_mappings_and_yaml_and_names_what_is_wrong():
    assert Augmentation.parse(None) == Augmentation.parse("flips") == Augmentation()
    assert Augmentation.parse("none").flips is False
    aug = Augmentation.parse("{noise: {std: 0.5}, affine: {rotate: 180, zoom: 0.3}}")
    assert aug.settings("noise") == {"prob": 0.5, "std": (0.0, 0.5)}
    assert aug.settings("affine")["rotate"] == (-180.0, 180.0)
    assert aug.settings("affine")["zoom"] == (0.7, 1.3) and aug.settings("blur") is None
    assert Augmentation.parse({"contrast": {"gamma": 0.25}}).settings("contrast")["gamma"] == (
        0.75, 1.25
    )  # fmt: skip
    for bad, message in [
        ({"wobble": {}}, "augment 'wobble' is not one of flips, intensity, contrast"),
        ({"noise": {"sigma": 1}}, "augment noise.sigma is unknown; noise takes prob, std"),
        ({"noise": {"prob": 2}}, "noise.prob must be in \\[0, 1\\]"),
        ({"affine": {"zoom": [1.2, 0.8]}}, "affine.zoom must be a number or \\[low, high\\]"),
        ({"affine": {"zoom": 1.5}}, "affine.zoom must keep the scale above 0"),
        ("spin", "augment 'spin' is not flips, none or a mapping"),
    ]:
        with pytest.raises(ParameterError, match=message):
            Augmentation.parse(bad)


def test_intensity_transforms_change_the_input_only():
    rng = np.random.default_rng(0)
    scene = _scene(rng.normal(size=(1, 40, 40)), {"z": 1.0, "y": 0.5, "x": 0.5})
    plain = _sampler(scene, (16, 16), "none", seed=3)
    every = {k: {"prob": 1} for k in ("intensity", "contrast", "noise", "blur")}
    every["intensity"].update(scale=0.5, shift=1.0)
    every["contrast"]["gamma"] = [0.5, 2.0]
    every["noise"]["std"] = 1.0
    every["blur"]["sigma_um"] = [0.5, 1.0]
    augmented = _sampler(scene, (16, 16), {"flips": False, **every}, seed=3)
    x0, y0, _ = plain.sample_with_mask(6)
    x1, y1, _ = augmented.sample_with_mask(6)
    np.testing.assert_array_equal(y1, y0)  # same patches, targets untouched
    assert not np.allclose(x1, x0) and x1.dtype == np.float32


def test_blur_is_in_micrometres_per_axis():
    """σ in µm: 1.5 µm is 3 px where pixels are 0.5 µm, 4 µm is 2 px where planes are 2 µm."""
    vol = np.zeros((17, 41, 41))
    vol[8, 20, 20] = 1.0
    aug = Augmentation.parse({"blur": {"prob": 1, "sigma_um": [1.5, 1.5], "sigma_z_um": [4, 4]}})
    out = aug.apply_input(vol[None], np.random.default_rng(0), (2.0, 0.5, 0.5))[0]
    z, y = np.arange(17) - 8, np.arange(41) - 20
    var_y = (out.sum(axis=(0, 2)) * y**2).sum() / out.sum()
    var_z = (out.sum(axis=(1, 2)) * z**2).sum() / out.sum()
    assert var_y == pytest.approx(3.0**2, rel=0.02) and var_z == pytest.approx(2.0**2, rel=0.02)


def test_affine_turns_micrometres_not_pixels():
    """A ramp along physical y, rotated by 90°, becomes a ramp along x in µm: with pixels
    twice as wide in x, its slope per x pixel is twice its slope per y pixel."""
    voxel = (1.0, 2.0)  # y, x µm
    yy = np.meshgrid(np.arange(40.0), np.arange(40.0), indexing="ij")[0]
    ramp = (yy * voxel[0])[None]  # intensity = physical y
    aug = Augmentation.parse({"affine": {"prob": 1, "rotate": [90, 90]}})
    matrix = aug.draw_affine(np.random.default_rng(0), 2)
    pixel, size = window(matrix, (8, 8), voxel)
    assert size == (15, 5)  # 8 px of x at 2 µm span 14 µm of y (15 rows); 8 y µm, 4 x px
    out = warp(ramp[:, : size[0], : size[1]], pixel, (8, 8))[0]
    np.testing.assert_allclose(np.diff(out, axis=1), -2.0, atol=1e-5)  # along x, per pixel
    np.testing.assert_allclose(np.diff(out, axis=0), 0.0, atol=1e-5)
    # zoom out by 2: the patch sees twice the field, the ramp's slope per pixel doubles
    zoom = Augmentation.parse({"affine": {"prob": 1, "zoom": [0.5, 0.5]}})
    pixel, size = window(zoom.draw_affine(np.random.default_rng(0), 2), (8, 8), (1.0, 1.0))
    assert size == (15, 15)
    out = warp(yy[None, :15, :15], pixel, (8, 8))[0]
    np.testing.assert_allclose(np.diff(out, axis=0), 2.0, atol=1e-5)


def test_affine_patches_come_from_larger_windows_input_and_target_alike():
    rng = np.random.default_rng(1)
    scene = _scene(rng.normal(size=(1, 64, 64)), {"z": 1.0, "y": 0.65, "x": 0.65})
    spec = {"flips": False, "affine": {"prob": 1, "rotate": 45, "zoom": 0.3, "shear": 0.05}}
    x, y, _ = _sampler(scene, (24, 24), spec).sample_with_mask(8)
    assert x.shape == y.shape == (8, 1, 24, 24)
    np.testing.assert_allclose(x, y, atol=1e-5)  # BF = DNA: the same warp on both
    # a window too large for the region: the patch is cut as without the affine
    small = _scene(rng.normal(size=(1, 24, 24)), {"z": 1.0, "y": 0.65, "x": 0.65})
    got = _sampler(small, (24, 24), {"flips": False, "affine": {"prob": 1, "rotate": [45, 45]}})
    x, _, _ = got.sample_with_mask(2)
    np.testing.assert_allclose(x[0, 0], x[1, 0])  # both: the whole (normalized) field


def test_3d_affine_leaves_z_whole_unless_zoomed():
    rng = np.random.default_rng(2)
    scene = _scene(rng.normal(size=(6, 48, 48)), {"z": 2.0, "y": 0.65, "x": 0.65})
    aug = Augmentation.parse({"affine": {"prob": 1, "rotate": 30}})
    pixel, size = window(aug.draw_affine(np.random.default_rng(0), 3), (6, 16, 16),
                         (2.0, 0.65, 0.65))  # fmt: skip
    assert size[0] == 6 and size[1] > 16 and pixel[0, 0] == 1 and not pixel[0, 1:].any()
    x, _ = _sampler(scene, (6, 16, 16), {"affine": {"prob": 1, "rotate": 30}}).sample(3)
    assert x.shape == (3, 1, 6, 16, 16)


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    path = tmp_path_factory.mktemp("augment") / "plate.zarr"
    return datasets.make_plate(
        path, rows=("A",), columns=("1", "2"), fields=1, shape=(1, 4, 64, 64), seed=2
    )


def test_augmented_training_records_its_augmentation_and_resumes_exactly(plate, tmp_path):
    spec = {"noise": {"std": 0.3}, "blur": {"sigma_um": [0.2, 0.8]},
            "affine": {"rotate": 180, "zoom": 0.2}, "contrast": {"gamma": [0.8, 1.25]},
            "intensity": {"scale": 0.3, "shift": 0.1}}  # fmt: skip
    config = dict(inputs=["BF"], targets=["DNA"], model="fnet2d", depth=2, mult_chan=4,
                  steps=6, batch_size=2, patch=[16, 16], device="cpu", augment=spec,
                  checkpoint_every=3)  # fmt: skip
    straight = run_training(plate, TrainConfig(**config), tmp_path / "a")
    run_training(plate, TrainConfig(**{**config, "steps": 3}), tmp_path / "b")
    resumed = run_training(plate, TrainConfig(**config), tmp_path / "b", resume=True)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    card = json.loads((tmp_path / "a" / "card.json").read_text())
    assert card["training"]["augmentation"]["affine"]["rotate"] == [-180.0, 180.0]
    flips_only = run_training(plate, TrainConfig(**{**config, "augment": "flips"}),
                              tmp_path / "c")  # fmt: skip
    assert [h["loss"] for h in flips_only.history] != [h["loss"] for h in straight.history]


def test_the_cli_and_experiment_files_take_augmentation(plate, tmp_path):
    from click.testing import CliRunner
    from zarrstain.cli.main import cli

    args = ["train", str(plate), "--input", "BF", "--target", "DNA", "--out",
            str(tmp_path / "m"), "--model", "fnet2d", "--depth", "2", "--mult-chan", "4",
            "--patch", "16x16", "--steps", "2", "--device", "cpu"]  # fmt: skip
    ok = CliRunner().invoke(cli, [*args, "--augment", "{noise: {std: 0.2}}"])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(cli, [*args, "--augment", "{noise: {sd: 1}}", "--overwrite"])
    assert bad.exit_code == 1 and "augment noise.sd is unknown" in bad.output
    path = tmp_path / "run.yaml"
    path.write_text(
        "data: {stores: [p.zarr], inputs: [BF], targets: [DNA],\n"
        "       augment: {blur: {sigma_um: 0.5}, affine: {rotate: 90}}}\n"
        "model: {architecture: fnet2d}\ntraining: {steps: 10}\n"
    )
    config = build_config(path)
    assert Augmentation.parse(config.augment).settings("blur")["sigma_um"] == (0.0, 0.5)
