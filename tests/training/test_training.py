"""Patch sampling, training, checkpoints that predict loads, resume, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from zarrstain.cli.main import cli

import zarrstain
from zarrstain import datasets
from zarrstain.errors import ChannelError, ParameterError
from zarrstain.testing import RecordingStore, chunk_keys, raise_if_dask_computes
from zarrstain.training import PatchSampler, Region, TrainConfig, build_config, split_regions
from zarrstain.training import train as run_training

# CUDA runs where there is a GPU (the project's GPU checks run this suite there), else skips
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
    ),
]


def small_config(**kwargs) -> TrainConfig:
    """BF → DNA with a depth-2 net, on the CPU: seconds, not minutes."""
    defaults = dict(
        inputs=["BF"],
        targets=["DNA"],
        depth=2,
        mult_chan=4,
        steps=6,
        batch_size=2,
        patch=[8, 16, 16],
        device="cpu",
    )
    return TrainConfig(**{**defaults, **kwargs})


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    path = tmp_path_factory.mktemp("train") / "plate.zarr"
    return datasets.make_plate(
        path, rows=("A",), columns=("1", "2", "3"), fields=1, shape=(2, 8, 48, 48), seed=5
    )


def test_sampler_reads_only_the_chunks_a_patch_needs(plate):
    import zarr

    store = RecordingStore(zarr.storage.LocalStore(plate, read_only=True))
    with raise_if_dask_computes():
        scenes = zarrstain.open_scenes(store)
    sampler = PatchSampler(scenes, [Region("A/1/0")], ["BF"], ["DNA"], (8, 16, 16), seed=1)
    store.reads.clear()
    x, y = sampler.sample(1)
    assert x.shape == (1, 1, 8, 16, 16) and y.shape == (1, 1, 8, 16, 16)
    keys = chunk_keys(store.reads)
    # the plate has 32×32 chunks in y and x: one 16×16 patch touches at most 4 per channel
    assert 2 <= len(keys) <= 8


def test_sampler_decodes_each_chunk_once_within_its_budget(plate):
    import zarr

    store = RecordingStore(zarr.storage.LocalStore(plate, read_only=True))
    scenes = zarrstain.open_scenes(store)
    region = [Region("A/1/0", slice(0, 32))]  # one chunk column: 32×32 chunks in y and x
    cached = PatchSampler(scenes, region, ["BF"], ["DNA"], (8, 16, 16), seed=2)
    store.reads.clear()
    first = cached.sample(8)
    touched = set(chunk_keys(store.reads))
    assert touched and cached.cache.misses == len(touched)
    store.reads.clear()
    for _ in range(5):
        cached.sample(8)
    assert set(chunk_keys(store.reads)) <= touched  # nothing decoded twice, only new chunks
    # the cache changes nothing but speed: same patches as reading every patch from the store
    uncached = PatchSampler(scenes, region, ["BF"], ["DNA"], (8, 16, 16), seed=2, cache_bytes=0)
    again = uncached.sample(8)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert uncached.cache.nbytes == 0
    # a budget of two chunks keeps at most two, evicting the least recently used
    chunk = 8 * 32 * 32 * 2  # z × y × x of uint16
    small = PatchSampler(
        scenes, [Region("A/1/0")], ["BF"], ["DNA"], (8, 16, 16), cache_bytes=2 * chunk
    )
    for _ in range(4):
        small.sample(4)
        assert small.cache.nbytes <= 2 * chunk


def test_block_cache_reads_any_window():
    import dask.array as da

    from zarrstain.training.blocks import BlockCache

    values = np.arange(3 * 5 * 20 * 30).reshape(3, 5, 20, 30)
    array = da.from_array(values, chunks=(1, 2, 7, 8))
    cache = BlockCache(10**6)
    windows = [
        (1, [4, 0, 2], slice(3, 17), slice(5, 29)),  # channels out of order, across blocks
        (slice(None), 3, slice(0, 1), slice(29, 30)),
        (2, [1], slice(None), slice(None)),
    ]
    got = cache.read([("a", array, w) for w in windows])
    for window, result in zip(windows, got, strict=True):
        expected, axis = values, 0  # numpy, one axis at a time
        for index in window:
            if isinstance(index, slice):
                expected = expected[(slice(None),) * axis + (index,)]
            else:
                expected = np.take(expected, index, axis=axis)
            axis += np.ndim(index) > 0 or isinstance(index, slice)
        np.testing.assert_array_equal(result, expected)
    assert cache.misses == len(cache._blocks)  # every block decoded once
    assert cache.read([("a", array, windows[0])]) and cache.misses == len(cache._blocks)


def test_sampler_is_deterministic_and_normalized(plate):
    scenes = zarrstain.open_scenes(plate)
    regions = [Region(s) for s in scenes]
    a = PatchSampler(scenes, regions, ["BF"], ["DNA"], (8, 32, 32), seed=3).sample(4)
    b = PatchSampler(scenes, regions, ["BF"], ["DNA"], (8, 32, 32), seed=3).sample(4)
    c = PatchSampler(scenes, regions, ["BF"], ["DNA"], (8, 32, 32), seed=4).sample(4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    # normalized with the scene's global statistics, as predict normalizes
    many = PatchSampler(scenes, regions, ["BF"], ["DNA"], (8, 48, 48), seed=0, flips=False)
    x, _ = many.sample(24)
    assert abs(float(x.mean())) < 0.2 and 0.7 < float(x.std()) < 1.3


def test_split_by_scene_and_region(plate):
    scenes = zarrstain.open_scenes(plate)
    train, val = split_regions(scenes, val_scenes=["A/3/0"])
    assert [r.scene for r in train] == ["A/1/0", "A/2/0"] and [r.scene for r in val] == ["A/3/0"]
    train, val = split_regions(scenes, val_fraction=0.25)
    assert train[0].x == slice(0, 36) and val[0].x == slice(36, 48)
    sampler = PatchSampler(scenes, val, ["BF"], ["DNA"], (8, 16, 12), seed=0)
    for _ in range(20):
        _, _, (_, _, x0), _, _ = sampler._origin()
        assert x0 >= 36
    with pytest.raises(ParameterError, match="not among"):
        split_regions(scenes, val_scenes=["Z/9/9"])


def test_sampler_errors(plate):
    scenes = zarrstain.open_scenes(plate)
    with pytest.raises(ChannelError, match="'Phase' is not in scene"):
        PatchSampler(scenes, [Region("A/1/0")], ["Phase"], ["DNA"], (8, 16, 16))
    with pytest.raises(zarrstain.errors.ShapeMismatchError, match="choose a smaller patch"):
        PatchSampler(scenes, [Region("A/1/0")], ["BF"], ["DNA"], (8, 64, 64))


@pytest.mark.parametrize("device", DEVICES)
def test_a_tiny_model_learns_a_known_mapping(tmp_path, device):
    """DNA := a smooth function of BF exactly: loss must fall and Pearson r rise."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    bf = ndimage.gaussian_filter(rng.normal(size=(2, 1, 8, 64, 64)), (0, 0, 1, 2, 2))
    dna = np.maximum(bf, 0) ** 2  # a nonlinear, local mapping
    data = np.concatenate([bf, dna], axis=1).astype(np.float32) * 1000 + 5000
    store = datasets.save_image(
        tmp_path / "toy.zarr",
        data.astype(np.uint16),
        "tczyx",
        channel_labels=["BF", "DNA"],
        levels=1,
    )
    config = small_config(
        mult_chan=8,
        steps=120,
        batch_size=4,
        patch=[8, 32, 32],
        val_fraction=0.5,
        validate_every=20,
        lr=3e-3,
        normalization="zscore",
        device=device,
    )
    result = run_training(store, config, tmp_path / "toy-model")
    history = result.history
    first = np.mean([h["loss"] for h in history[:10]])
    last = np.mean([h["loss"] for h in history[-10:]])
    vals = [h["val_pcc"] for h in history if "val_pcc" in h]
    assert last < 0.5 * first
    assert vals[-1] > 0.8 and vals[-1] > vals[0]


@pytest.fixture(scope="module")
def trained(plate, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "dna"
    config = small_config(val_scenes=["A/3/0"], validate_every=3, checkpoint_every=3)
    return run_training(plate, config, out), config


def test_progress_reports_every_step_with_its_loss(plate, tmp_path):
    from zarrstain.progress import ProgressEvent

    events: list[ProgressEvent] = []
    config = small_config(steps=4, val_scenes=["A/3/0"], validate_every=2)
    result = run_training(plate, config, tmp_path / "m", progress=events.append)
    assert [(e.stage, e.done, e.total) for e in events] == [("train", i, 4) for i in (1, 2, 3, 4)]
    assert [e.info["loss"] for e in events] == [h["loss"] for h in result.history]
    assert ["val_pcc" in e.info for e in events] == [False, True, False, True]


def test_checkpoint_is_a_package_predict_loads(trained, plate, tmp_path):
    result, _ = trained
    card = json.loads((result.package / "card.json").read_text())
    assert card["input_labels"] == ["BF"] and card["output_labels"] == ["DNA (predicted)"]
    assert card["training"]["steps"] == 6 and "val_pcc" in card["training"]
    assert card["training"]["val_regions"] == ["A/3/0"]
    offset, scale = card["output_intensity"][0]
    assert 0 < offset < 65535 and scale > 0
    model = zarrstain.load_model(result.package)
    assert model.content_hash == result.model.content_hash
    pred = zarrstain.predict(zarrstain.open_image(plate, "A/3/0"), model)
    assert pred.attrs["zarrstain"]["output_units"] == "target"
    values = pred.values
    assert np.isfinite(values).all() and abs(np.median(values) - offset) < 10 * scale


@pytest.mark.parametrize("device", DEVICES)
def test_resume_continues_exactly(trained, plate, tmp_path, device):
    import dataclasses

    config = dataclasses.replace(trained[1], device=device)

    straight = run_training(
        plate, dataclasses.replace(config, steps=6, checkpoint_every=3), tmp_path / "straight"
    )
    half = run_training(plate, dataclasses.replace(config, steps=3), tmp_path / "resumed")
    resumed = run_training(plate, config, tmp_path / "resumed", resume=True)
    assert [h["step"] for h in resumed.history] == list(range(1, 7))
    assert half.history == resumed.history[:3]
    np.testing.assert_allclose(
        [h["loss"] for h in resumed.history], [h["loss"] for h in straight.history], rtol=1e-5
    )
    for a, b in zip(
        resumed.model.module.state_dict().values(),
        straight.model.module.state_dict().values(),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ParameterError, match="drop --resume"):
        run_training(plate, config, tmp_path / "nothing", resume=True)


def test_build_config(tmp_path):
    toml = tmp_path / "train.toml"
    toml.write_text('inputs = ["BF"]\ntargets = ["DNA"]\nsteps = 7\npatch = [16, 32, 32]\n')
    config = build_config(toml, steps=9)
    assert config.steps == 9 and config.patch == [16, 32, 32] and config.mult_chan == 8
    assert build_config(toml, paper=True).mult_chan == 32
    with pytest.raises(ParameterError, match="unknown training setting 'stepz'"):
        build_config(None, inputs=["BF"], targets=["DNA"], stepz=3)
    with pytest.raises(ParameterError, match="--target"):
        build_config(None, inputs=["BF"])


def test_train_and_evaluate_cli(plate, tmp_path):
    import shutil

    store = tmp_path / "plate.zarr"
    shutil.copytree(plate, store)
    model = tmp_path / "m"
    train_args = f"--out {model} --steps 4 --depth 2 --mult-chan 4 --patch 8x16x16 --val-scene "
    train_args = (train_args + "A/3/0 --batch-size 2 --input BF --target DNA").split()
    result = CliRunner().invoke(cli, ["train", str(store), *train_args])
    assert result.exit_code == 0, result.output
    assert "validation Pearson r" in result.output
    result = CliRunner().invoke(cli, ["predict", str(store), "--model", str(model)])
    assert result.exit_code == 0, result.output  # uint16 store: written in DNA's units
    out = tmp_path / "eval"
    evaluate_args = ["--prediction", "DNA (predicted)", "--target", "DNA", "--scene", "A/3/0"]
    evaluate_args += ["--input-channel", "BF", "--out", str(out)]
    result = CliRunner().invoke(cli, ["evaluate", str(store), *evaluate_args])
    assert result.exit_code == 0, result.output
    assert "pcc" in result.output and "mean" in result.output
    lines = (out / "evaluation.csv").read_text().splitlines()
    assert lines[0].startswith("scene,t,pcc,ssim,mse,mae,nrmse") and len(lines) == 3
    assert (out / "panels" / "A_3_0.png").stat().st_size > 1000
    bad = CliRunner().invoke(
        cli, ["evaluate", str(store), "--prediction", "Nope", "--target", "DNA"]
    )
    assert bad.exit_code == 1 and "'Nope' is not in scene" in bad.output


def test_2d_model_reads_a_z_stack_given_as_channels(tmp_path):
    """In silico labeling: planes as input channels through a learned per-pixel projection."""
    rng = np.random.default_rng(1)
    planes = rng.integers(1000, 3000, size=(3, 48, 48))
    stain = planes.mean(axis=0, keepdims=True)
    data = np.concatenate([planes, stain]).astype(np.uint16)
    labels = ["phase z0", "phase z1", "phase z2", "stain"]
    datasets.save_image(tmp_path / "stack.zarr", data, "cyx", channel_labels=labels, levels=1)
    config = small_config(
        inputs=labels[:3],
        targets=["stain"],
        model="fnet2d",
        projection=2,
        patch=[32, 32],
        steps=3,
        normalization="zscore",
    )
    result = run_training(tmp_path / "stack.zarr", config, tmp_path / "isl-model")
    model = result.model
    assert model.spatial_dims == 2 and model.kwargs["projection"] == 2
    assert "project.weight" in model.module.state_dict()
    assert model.module.state_dict()["project.weight"].shape == (2, 3, 1, 1)
    loaded = zarrstain.load_model(tmp_path / "isl-model")
    pred = zarrstain.predict(zarrstain.open_image(tmp_path / "stack.zarr"), loaded)
    assert pred.sizes["c"] == 1 and pred.sizes["y"] == 48
