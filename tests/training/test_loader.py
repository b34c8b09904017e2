"""Patch batches from DataLoader workers: the same batches whatever the number of workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zarrstain
from zarrstain import datasets
from zarrstain.errors import ParameterError
from zarrstain.training import TrainConfig
from zarrstain.training import train as run_training
from zarrstain.training.loader import batches
from zarrstain.training.sampler import PatchSampler, split_regions


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    path = tmp_path_factory.mktemp("loader") / "plate.zarr"
    return datasets.make_plate(
        path, rows=("A",), columns=("1", "2"), fields=1, shape=(1, 4, 48, 48), seed=4
    )


def _sampler(plate, **kwargs) -> PatchSampler:
    scenes = zarrstain.open_scenes(plate)
    regions, _ = split_regions(scenes)
    return PatchSampler(scenes, regions, ["BF"], ["DNA"], (16, 16), seed=7, **kwargs)


def test_batches_do_not_depend_on_the_number_of_workers(plate):
    sampler = _sampler(plate, augmentation={"noise": {"std": 0.2}})
    steps = range(3, 8)
    seen = {w: list(batches(sampler, steps, 3, workers=w)) for w in (0, 1, 2)}
    for w in (1, 2):
        for ours, theirs in zip(seen[0], seen[w], strict=True):
            for a, b in zip(ours, theirs, strict=True):
                np.testing.assert_array_equal(a, b)
    assert not np.array_equal(seen[0][0][0], seen[0][1][0])  # steps differ from one another


def test_a_global_batch_is_its_ranks_slices(plate):
    sampler = _sampler(plate)
    whole = sampler.batch(5, 6)
    parts = [next(batches(sampler, range(5, 6), 3, part=(r, 2))) for r in (0, 1)]
    for k, arr in enumerate(whole):
        np.testing.assert_array_equal(arr, np.concatenate([p[k] for p in parts]))


def test_training_with_workers_learns_what_training_without_learns(plate, tmp_path):
    config = dict(inputs=["BF"], targets=["DNA"], model="fnet2d", depth=2, mult_chan=4,
                  steps=5, batch_size=2, patch=[16, 16], device="cpu")  # fmt: skip
    here = run_training(plate, TrainConfig(**config), tmp_path / "here")
    workers = run_training(plate, TrainConfig(**config, loader_workers=2, prefetch=1),
                           tmp_path / "workers")  # fmt: skip
    assert [h["loss"] for h in here.history] == [h["loss"] for h in workers.history]
    for a, b in zip(here.model.module.state_dict().values(),
                    workers.model.module.state_dict().values(), strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bad_loader_settings_are_refused():
    with pytest.raises(ParameterError, match="loader_workers must be a whole number ≥ 0"):
        TrainConfig(["BF"], ["DNA"], model="fnet2d", loader_workers=-1).check()
    with pytest.raises(ParameterError, match="prefetch must be a whole number ≥ 1"):
        TrainConfig(["BF"], ["DNA"], model="fnet2d", prefetch=0).check()
