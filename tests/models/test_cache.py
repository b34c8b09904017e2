"""The model cache: one copy per process and device, found by content hash (models/cache.py)."""

from __future__ import annotations

import pickle

import pytest
import torch

import zarrstain
from zarrstain.models import cache
from zarrstain.testing import random_model


@pytest.fixture(scope="module")
def model():
    return random_model(ndim=3, depth=2, mult_chan=4, seed=5)


def test_handle_carries_a_path_not_the_weights(tmp_path, model):
    folder = zarrstain.save_model(model, tmp_path / "m")
    loaded = zarrstain.load_model(folder)
    handle = cache.ModelHandle(loaded)
    blob = pickle.dumps(handle)
    assert len(blob) < 2000  # the weights are ~10 kB here, 30+ MB for real nets
    # a fresh process: nothing cached, the model loads once from its folder
    cache._MODELS.pop(loaded.content_hash)
    before = cache.loads[loaded.content_hash]
    for _ in range(3):
        assert pickle.loads(blob).get().content_hash == loaded.content_hash
    assert cache.loads[loaded.content_hash] == before + 1


def test_in_memory_models_carry_their_weights(model):
    handle = pickle.loads(pickle.dumps(cache.ModelHandle(model)))
    assert handle.get().content_hash == model.content_hash


def test_a_module_is_placed_once_per_device(model):
    handle = cache.ModelHandle(model)
    first = cache.placed_module(handle, torch.device("cpu"))
    assert cache.placed_module(cache.ModelHandle(model), torch.device("cpu")) is first
    assert not first.training
