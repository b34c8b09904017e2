"""``zarrstain predict``: writes validated channels with provenance; refuses bad input untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner
from conftest import SHARED, tree_digest
from zarrstain.cli.main import cli

import zarrstain
from zarrstain.testing import random_model

FNET = SHARED / "fixtures" / "pytorch_fnet"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "nuclei"
    return zarrstain.save_model(random_model(seed=7), folder)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_predict_into_new_store(make_store, model_dir, validate, tmp_path, version):
    src = make_store("plate", version)
    before = tree_digest(src)
    out = tmp_path / "pred.zarr"
    result = run(
        "predict",
        src,
        "--model",
        model_dir,
        "--out",
        out,
        "--halo",
        "exact",
        "--scene",
        "A/1/0",
        "--scene",
        "B/2/1",
        "--copy-channels",
    )
    assert result.exit_code == 0, result.output
    assert "A/1/0: written" in result.output and "B/2/1: written" in result.output
    assert tree_digest(src) == before  # the source is never touched with --out
    validate(out)
    scenes = zarrstain.open_scenes(out)
    assert sorted(scenes) == ["A/1/0", "B/2/1"]
    image = scenes["A/1/0"]
    assert list(image.coords["c"].values) == ["BF", "DNA", "Membrane", "DNA (predicted)"]
    assert image.dtype == np.float32
    records = zarr.open_group(out / "A" / "1" / "0").attrs["zarrstain"]["channels"]
    record = records["DNA (predicted)"]
    model = zarrstain.load_model(model_dir)
    assert record["model"]["content_hash"] == model.content_hash
    assert record["input_channels"] == ["BF"]
    assert record["normalization"]["method"] == "center"
    assert np.isfinite(record["normalization"]["offset"][0][0])
    assert record["tiling"]["halo_mode"] == "exact" and "zarrstain_version" in record
    # the written values are the in-memory prediction of the source scene
    expected = zarrstain.predict(zarrstain.open_image(src, "A/1/0"), model, halo="exact")
    np.testing.assert_allclose(image.sel(c=["DNA (predicted)"]).values, expected.values, atol=1e-5)


def test_predict_in_place_and_repeat(make_store, model_dir, validate):
    src = make_store("image", "0.5")
    args = ("predict", src, "--model", model_dir, "--dtype", "uint16")
    result = run(*args)
    assert result.exit_code == 0, result.output
    validate(src)
    assert list(zarrstain.open_image(src).coords["c"].values)[-1] == "DNA (predicted)"
    after = tree_digest(src)
    again = run(*args)
    assert again.exit_code == 0 and "unchanged" in again.output
    assert tree_digest(src) == after


def test_dry_run_writes_nothing(make_store, model_dir):
    src = make_store("plate", "0.5")
    before = tree_digest(src)
    result = run("predict", src, "--model", model_dir, "--dry-run", "--dtype", "uint16")
    assert result.exit_code == 0, result.output
    assert "8 to write" in result.output and "BF → DNA (predicted)" in result.output
    assert "memory/block" in result.output
    plan = json.loads(
        run(
            "predict",
            src,
            "--model",
            model_dir,
            "--dry-run",
            "--json",
            "--dtype",
            "uint16",
            "--halo",
            "exact",
        ).stdout  # JSON on stdout; the warning about rounding normalized units on stderr
    )
    assert plan["blocks_to_run"] == 8 and plan["scenes"][0]["halo_mode"] == "exact"
    assert tree_digest(src) == before


def test_time_points(make_store, model_dir):
    src = make_store("image", "0.5")  # t=2
    result = run("predict", src, "--model", model_dir, "--dtype", "uint16", "--time", "1")
    assert result.exit_code == 0, result.output
    record = zarr.open_group(src).attrs["zarrstain"]["channels"]["DNA (predicted)"]
    assert record["time_points"] == [[1, 2]]
    bad = run("predict", src, "--model", model_dir, "--time", "5:9", "--dtype", "uint16")
    assert bad.exit_code == 1 and "outside 0:2" in bad.output
    # the other time point is added to the same channel, no --overwrite needed
    more = run("predict", src, "--model", model_dir, "--dtype", "uint16", "--time", "0")
    assert more.exit_code == 0, more.output
    record = zarr.open_group(src).attrs["zarrstain"]["channels"]["DNA (predicted)"]
    assert record["time_points"] == [[0, 2]]
    full = zarrstain.predict(zarrstain.open_image(src), zarrstain.load_model(model_dir))
    stored = zarrstain.open_image(src).sel(c=["DNA (predicted)"]).values
    np.testing.assert_array_equal(stored, np.clip(np.round(full.values), 0, 65535))
    # but time points it already holds are a replacement
    again = run("predict", src, "--model", model_dir, "--dtype", "uint16", "--time", "0:2")
    assert again.exit_code == 1 and "already exists" in again.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--input-channel", "Phase"], "'Phase' not found; available: ['BF', 'DNA', 'Membrane']"),
        (["--scene", "C/9/0"], "scene 'C/9/0' is not in"),
        (["--output-label", "DNA"], "acquired channel 'DNA'"),
        ([], "cannot hold float32 predictions"),
        (["--halo", "wide"], "--halo must be 'auto', 'exact' or an integer ≥ 0 (voxels)"),
    ],
)
def test_bad_input_fails_before_writing(make_store, model_dir, extra, message):
    src = make_store("plate", "0.5")
    before = tree_digest(src)
    result = run("predict", src, "--model", model_dir, *extra)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert tree_digest(src) == before


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_bad_checkpoints(make_store, tmp_path):
    src = make_store("image", "0.5")
    before = tree_digest(src)
    garbage = tmp_path / "garbage" / "model.p"
    garbage.parent.mkdir()
    garbage.write_bytes(b"\x80\x04 definitely not a checkpoint")
    foreign = tmp_path / "foreign" / "model.p"
    foreign.parent.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    for path, message in [
        (garbage, "cannot read"),
        (foreign, "not a pytorch_fnet checkpoint"),
        (tmp_path / "none", "no model at"),
    ]:
        result = run("predict", src, "--model", path, "--out", tmp_path / "o.zarr")
        assert result.exit_code == 1, result.output
        assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert tree_digest(src) == before
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.skipif(not FNET.is_dir(), reason=f"{FNET} is absent (no ../shared)")
def test_pytorch_fnet_checkpoint_on_a_store(tmp_path, validate):
    from zarrstain import datasets

    src = datasets.make_image(tmp_path / "cells.zarr", shape=(1, 16, 40, 36), seed=4)
    out = tmp_path / "out.zarr"
    result = run(
        "predict",
        src,
        "--model",
        FNET / "fnet3d",
        "--input-channel",
        "BF",
        "--output-label",
        "DNA (fnet)",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    validate(out)
    written = zarrstain.open_image(out)
    assert list(written.coords["c"].values) == ["DNA (fnet)"]
    record = zarr.open_group(out).attrs["zarrstain"]["channels"]["DNA (fnet)"]
    assert record["model"]["name"] == "pytorch_fnet:fnet3d"
    assert record["normalization"]["method"] == "center"


def _edit_axes(path):
    group = zarr.open_group(str(path), mode="r+")
    attrs = group.attrs.asdict()
    attrs["ome"]["multiscales"][0]["axes"].reverse()
    group.attrs.put(attrs)


def test_more_bad_input_through_the_cli(tmp_path, model_dir):
    from zarrstain import datasets

    cases = []
    thin = datasets.make_image(tmp_path / "thin.zarr", shape=(1, 2, 32, 32), seed=1)
    cases.append((thin, [], "z=2 is too small for 3D model '"))
    axes = datasets.make_image(tmp_path / "axes.zarr", shape=(1, 4, 32, 32), seed=1)
    _edit_axes(axes)
    cases.append((axes, [], "axes in the order (x, y, z, c, t)"))
    rng = np.random.default_rng(0)
    data = rng.normal(size=(1, 1, 8, 32, 32)).astype(np.float32)
    data[0, 0, 3, 5, 5] = np.nan
    data[0, 0, 4, 6, 6] = np.inf
    nan = tmp_path / "nan.zarr"
    datasets.save_image(nan, data, "tczyx", channel_labels=["BF"], levels=1)
    cases.append((nan, ["--out", tmp_path / "never.zarr"], "'BF' holds 2 NaN/inf voxels"))
    flat = data.copy()
    flat[0] = 100.0  # a blank frame (non-zero: zarr skips chunks of fill values)
    flat = np.concatenate([rng.normal(size=data.shape), flat]).astype(np.float32)
    blank = tmp_path / "blank.zarr"
    datasets.save_image(blank, flat, "tczyx", channel_labels=["BF"], levels=1)
    cases.append(
        (blank, ["--out", tmp_path / "never.zarr"], "1 frame(s) are constant (first at t=1)")
    )
    damaged = datasets.make_image(tmp_path / "damaged.zarr", shape=(1, 4, 32, 32), seed=1)
    (damaged / "s0" / "c" / "0" / "0" / "0" / "0" / "0").write_bytes(b"not zstd at all")
    # --rescale: the random model predicts normalized units (a bare --dtype would warn)
    rescaled = ["--dtype", "uint16", "--rescale"]
    cases.append((damaged, rescaled, "cannot read the chunk(s) at [0:1, 0:1, 0:4"))
    holes = datasets.make_image(tmp_path / "holes.zarr", shape=(1, 4, 32, 32), seed=1)
    (holes / "s0" / "c" / "0" / "0" / "0" / "0" / "0").unlink()
    cases.append((holes, rescaled, "1 of 1 input chunks are missing"))
    cases.append((tmp_path / "missing.zarr", [], "no such store"))
    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w").create_array("x", shape=(4,), dtype="u1")
    cases.append((plain, [], "holds no OME-Zarr metadata"))
    future = datasets.make_image(tmp_path / "future.zarr", shape=(1, 4, 32, 32), seed=1)
    group = zarr.open_group(str(future), mode="r+")
    attrs = group.attrs.asdict()
    attrs["ome"]["version"] = "0.6"
    group.attrs.put(attrs)
    cases.append((future, [], "OME-Zarr 0.6, which zarrstain does not read"))
    twice = tmp_path / "twice.zarr"
    pair = np.nan_to_num(np.concatenate([data, data], axis=1), posinf=0.0)
    datasets.save_image(twice, pair, "tczyx", channel_labels=["BF", "BF"], levels=1)
    cases.append((twice, ["--out", tmp_path / "never.zarr"], "'BF' is ambiguous"))
    for store, extra, message in cases:
        before = tree_digest(store)
        result = run("predict", store, "--model", model_dir, *extra)
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1 or "predicting" in result.output
        assert tree_digest(store) == before
    assert not (tmp_path / "never.zarr").exists()


def test_blank_frames_and_holes_on_request(tmp_path, model_dir):
    from zarrstain import datasets

    store = datasets.make_image(tmp_path / "img.zarr", shape=(2, 4, 32, 32), seed=1)
    (store / "s0" / "c" / "0" / "0" / "0" / "0" / "0").unlink()  # BF at t=0 reads as 0: blank
    first = run("predict", store, "--model", model_dir, "--dtype", "uint16")
    assert first.exit_code == 1 and "input chunks are missing" in first.output
    second = run(
        "predict", store, "--model", model_dir, "--dtype", "uint16", "--allow-missing-chunks"
    )
    assert second.exit_code == 1 and "constant (first at t=0)" in second.output
    third = run(
        "predict",
        store,
        "--model",
        model_dir,
        "--dtype",
        "uint16",
        "--allow-missing-chunks",
        "--allow-constant-frames",
    )
    assert third.exit_code == 0, third.output
    assert "DNA (predicted)" in list(zarrstain.open_image(store).c.values)


def test_predict_from_http_into_a_local_store(http_root, model_dir, validate):
    folder, url = http_root
    from zarrstain import datasets

    datasets.make_image(folder / "img.zarr", shape=(1, 4, 32, 32), seed=2)
    out = folder / "out.zarr"
    result = run("predict", f"{url}/img.zarr", "--model", model_dir, "--out", out)
    assert result.exit_code == 0, result.output
    validate(out)
    model = zarrstain.load_model(model_dir)
    expected = zarrstain.predict(zarrstain.open_image(folder / "img.zarr"), model)
    np.testing.assert_allclose(zarrstain.open_image(out).values, expected.values, rtol=0, atol=1e-5)


def test_device_takes_what_the_library_takes(make_store, model_dir, tmp_path):
    """``--device cuda:N`` reaches the library (which refuses it here, with no GPU, naming the
    fix); an unknown device is a usage error. Nothing is written either way."""
    src = make_store("plate", "0.5")
    before = tree_digest(src)
    out = tmp_path / "pred.zarr"
    bad = run("predict", src, "--model", model_dir, "--out", out, "--device", "tpu")
    assert bad.exit_code == 2, bad.output
    assert "--device must be auto, cpu, cuda or cuda:N, not 'tpu'" in bad.output
    if not torch.cuda.is_available():
        gpu = run("predict", src, "--model", model_dir, "--out", out, "--device", "cuda:1")
        assert gpu.exit_code == 1, gpu.output
        assert "'cuda:1' was asked for but torch sees no CUDA GPU" in gpu.output
        assert "--device cpu" in gpu.output
    assert tree_digest(src) == before and not out.exists()
