"""zarrstain.predict: laziness, channel selection, normalization, provenance, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import zarrstain
from zarrstain.engine.pipeline import plan_prediction
from zarrstain.engine.tiling import predict_whole
from zarrstain.errors import ChannelError, ModelError
from zarrstain.testing import raise_if_dask_computes, random_model


@pytest.fixture(scope="module")
def model():
    return random_model(ndim=3, depth=2, mult_chan=4, seed=5)


def test_building_the_graph_computes_nothing(make_store, model):
    path = make_store("plate", "0.5")
    with raise_if_dask_computes():
        image = zarrstain.open_image(path, "A/1/0")
        pred = zarrstain.predict(image, model, halo="exact")
        plan = plan_prediction(path, model, halo="exact", dtype="uint16")
    assert plan.n_blocks > 0
    assert pred.dims == ("t", "c", "z", "y", "x")
    assert list(pred.coords["c"].values) == ["DNA (predicted)"]
    for d in ("t", "z", "y", "x"):
        np.testing.assert_array_equal(pred.coords[d], image.coords[d])
    assert pred.attrs["store"] == image.attrs["store"] and pred.attrs["scene"] == "A/1/0"


def test_normalization_is_global_and_matches_explicit_normalize(make_store, model):
    image = zarrstain.open_image(make_store("image", "0.5"))
    pred = zarrstain.predict(image, model, halo="exact", chunks={"y": 16, "x": 16})
    norm = zarrstain.normalize(image.sel(c=["BF"]), "center").values
    np.testing.assert_allclose(pred.values, predict_whole(norm, model), atol=1e-5)
    record = pred.attrs["zarrstain"]
    assert record["normalization"]["method"] == "center"
    assert record["input_channels"] == ["BF"]
    assert record["model"]["content_hash"] == model.content_hash


def test_normalize_none_runs_on_data_as_given(model):
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 24, 24)).astype(np.float32)
    pred = zarrstain.predict(x, model, normalize=None)
    np.testing.assert_array_equal(pred.values, predict_whole(x, model))
    assert pred.attrs["zarrstain"]["normalization"] == {"method": "none"}


def test_missing_channel_names_the_available_ones(make_store, model):
    image = zarrstain.open_image(make_store("image", "0.5"))
    expected = r"'Phase' not found; available: \['BF', 'DNA', 'Membrane'\]"
    with pytest.raises(ChannelError, match=expected):
        zarrstain.predict(image, model, input_channels=["Phase"])


def test_input_channels_by_label_and_mapping(make_store, model):
    image = zarrstain.open_image(make_store("image", "0.5"))
    renamed = image.assign_coords(c=["Brightfield", "DNA", "Membrane"])
    with pytest.raises(ChannelError, match="'BF' not found"):
        zarrstain.predict(renamed, model)
    a = zarrstain.predict(renamed, model, input_channels={"BF": "Brightfield"})
    b = zarrstain.predict(renamed, model, input_channels=["Brightfield"])
    assert a.attrs["zarrstain"]["input_channels"] == ["Brightfield"]
    np.testing.assert_array_equal(a.isel(t=0).values, b.isel(t=0).values)


def test_ambiguous_label(model):
    data = xr.DataArray(
        np.zeros((1, 2, 8, 16, 16), np.float32),
        dims=("t", "c", "z", "y", "x"),
        coords={"c": ["BF", "BF"]},
    )
    with pytest.raises(ChannelError, match="'BF' is ambiguous"):
        zarrstain.predict(data, model)


def test_unnamed_inputs_need_a_choice_when_several_channels(make_store, model):
    import dataclasses

    unnamed = dataclasses.replace(model, input_labels=())
    image = zarrstain.open_image(make_store("image", "0.5"))
    with pytest.raises(ChannelError, match=r"does not name them.*input_channels="):
        zarrstain.predict(image, unnamed)
    assert zarrstain.predict(image, unnamed, input_channels="BF").sizes["c"] == 1


def test_fingerprint_is_stable_and_tracks_what_matters(make_store, model):
    path = make_store("image", "0.5")
    fp = lambda **kw: zarrstain.predict(zarrstain.open_image(path), model, **kw).attrs[  # noqa: E731
        "zarrstain"
    ]["fingerprint"]
    assert fp() == fp()
    assert fp() != fp(halo="exact")
    assert fp() != fp(normalize="zscore")
    other = random_model(ndim=3, depth=2, mult_chan=4, seed=6)
    assert (
        zarrstain.predict(zarrstain.open_image(path), other).attrs["zarrstain"]["fingerprint"]
        != fp()
    )


def test_cuda_without_gpu_is_refused_before_compute(model):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ModelError, match="no CUDA GPU.*device='cpu'"):
        zarrstain.predict(np.zeros((1, 1, 8, 16, 16), np.float32), model, device="cuda")


def test_bfloat16_mixed_precision_on_cpu(model):
    x = np.random.default_rng(1).standard_normal((1, 1, 8, 32, 32)).astype(np.float32)
    ref = predict_whole(x, model)
    low = zarrstain.predict(x, model, normalize=None, precision="bfloat16").values
    assert low.dtype == np.float32
    assert np.abs(low - ref).max() < 0.1 * ref.std() + 0.05
    with pytest.raises(ValueError, match="precision must be one of"):
        zarrstain.predict(x, model, precision="int8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("precision", ["float32", "tf32", "bfloat16"])
def test_cuda_prediction_agrees_with_the_cpu(precision):
    """float32 on a GPU is IEEE float32 (no TensorFloat-32); tf32 and bfloat16 are close."""
    net = random_model(ndim=3, depth=3, mult_chan=16, seed=2)
    x = np.random.default_rng(3).standard_normal((2, 1, 16, 96, 80)).astype(np.float32)
    ref = predict_whole(x, net)
    gpu = zarrstain.predict(x, net, normalize=None, halo="exact", chunks={"y": 48, "x": 48},
                            device="cuda", precision=precision).values  # fmt: skip
    tolerance = {"float32": 1e-5, "tf32": 1e-2, "bfloat16": 0.1}[precision]
    assert np.abs(gpu - ref).max() < tolerance * ref.std()
    assert torch.backends.cudnn.allow_tf32  # torch's own default is left as it was


def test_tf32_is_float32_on_the_cpu(model):
    x = np.random.default_rng(4).standard_normal((1, 1, 8, 32, 32)).astype(np.float32)
    tf32 = zarrstain.predict(x, model, normalize=None, precision="tf32", device="cpu").values
    np.testing.assert_array_equal(tf32, predict_whole(x, model))
    assert zarrstain.predict(x, model, precision="tf32").attrs["zarrstain"]["precision"] == "tf32"
