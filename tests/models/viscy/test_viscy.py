"""VisCy checkpoints load and predict as VisCy predicts: fixtures made by VisCy 0.4.1 itself.

``tests/fixtures/viscy/make_fixtures.py`` (run in a scratch environment with VisCy) saved
Lightning checkpoints of VisCy's UNeXt2 (VSCyto3D's network) and FullyConvolutionalMAE
(VSCyto2D's), random weights, and VisCy's own outputs: single forwards, and whole-stack
predictions (VisCy's normalization, y/x padding, z windows and blending).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES

import zarrstain
from zarrstain.datasets import save_image
from zarrstain.engine.options import PredictOptions
from zarrstain.engine.pipeline import plan_prediction
from zarrstain.errors import ModelError, ParameterError, ShapeMismatchError
from zarrstain.models import cache, create_model, load_model, save_model
from zarrstain.models.nets.fcmae import FullyConvolutionalMAE, fcmae_config

FIXTURES = FIXTURES / "viscy"
LABELS = {
    "input_labels": ["Phase3D"],
    "output_labels": ["Nuclei (predicted)", "Membrane (predicted)"],
}
#: VSCyto3D's published configuration pools the head's upsampling: only the card says so
POOLED = {**LABELS, "model_config": {"head_pool": True}}


def _copy(tmp_path: Path, name: str) -> Path:
    """The fixture checkpoint in a folder of the test's own (cards go beside it)."""
    path = tmp_path / name
    path.write_bytes((FIXTURES / name).read_bytes())
    return path


def _normalized(raw: np.ndarray, median: float, iqr: float) -> torch.Tensor:
    """VisCy's NormalizeSampled with median and IQR."""
    return torch.from_numpy(((raw.astype(np.float64) - median) / (iqr + 1e-8)).astype(np.float32))


def test_fcmae_reproduces_viscy_forward():
    ckpt = torch.load(FIXTURES / "fcmae.ckpt", map_location="cpu", weights_only=True)
    state = ckpt["state_dict"]
    config = fcmae_config(state)
    assert config["dims"] == [8, 16, 32, 64] and config["in_stack_depth"] == 1
    assert config["out_channels"] == 2 and not config["head_conv"]
    net = FullyConvolutionalMAE(**config).eval()
    net.load_state_dict({k.removeprefix("model."): v for k, v in state.items()}, strict=True)
    io = np.load(FIXTURES / "fcmae_io.npz")
    with torch.no_grad():
        out = net(torch.from_numpy(io["input"]))
    np.testing.assert_allclose(out.numpy(), io["output"], atol=1e-5)


def test_unext2_stack_reproduces_viscy_predict(tmp_path):
    """7 planes, 50 × 70: VisCy pads to 64 × 128, runs 3 windows of 5 and averages them."""
    model = load_model(_copy(tmp_path, "unext2.ckpt"), card=POOLED)
    assert model.architecture == "viscy" and model.normalization == "median_iqr"
    assert not model.geometry.local and model.spatial_dims == 3
    assert model.output_labels == ("Nuclei (predicted)", "Membrane (predicted)")
    io = np.load(FIXTURES / "unext2_predict.npz")
    x = _normalized(io["raw"], io["median"], io["iqr"])[None, None]
    np.testing.assert_allclose(model.forward(x)[0].numpy(), io["prediction"], atol=1e-5)
    # the card's head_pool matters: without it the prediction differs
    plain = load_model(_copy(tmp_path, "unext2.ckpt"), card=LABELS)
    assert np.abs(plain.forward(x)[0].numpy() - io["prediction"]).max() > 1e-3


def test_fcmae_planes_reproduce_viscy_predict(tmp_path):
    """VSCyto2D reads one plane: 50 × 70 padded to 256 × 256 (2**8), as VisCy pads."""
    model = load_model(_copy(tmp_path, "fcmae.ckpt"), card=LABELS)
    assert model.spatial_dims == 2
    io = np.load(FIXTURES / "fcmae_io.npz")
    x = _normalized(io["raw"], io["median"], io["iqr"])[:, None]  # planes as the batch
    got = model.forward(x).permute(1, 0, 2, 3).numpy()
    np.testing.assert_allclose(got, io["prediction"], atol=1e-5)


@pytest.mark.parametrize("fixture", ["unext2", "fcmae"])
def test_a_viscy_model_predicts_over_an_ome_zarr_store_as_viscy(tmp_path, fixture):
    """zarrstain's median/IQR of the raw counts, one whole field per block, written back."""
    io = np.load(FIXTURES / f"{fixture}_{'predict' if fixture == 'unext2' else 'io'}.npz")
    card = POOLED if fixture == "unext2" else LABELS
    path = _copy(tmp_path, f"{fixture}.ckpt")
    path.with_suffix(".json").write_text(json.dumps(card))
    raw = io["raw"]
    store = tmp_path / "fov.zarr"
    save_image(
        store, raw[None, None], "tczyx", channel_labels=["Phase3D"], chunks=(1, 1, 1, 32, 32)
    )
    out = tmp_path / "out.zarr"
    plan = plan_prediction(store, load_model(path), out=out, halo="exact", block_memory="1MiB")
    tiling = plan.scenes[0].tiling  # whole fields: one stack, or one block per plane (2D)
    assert tiling["exact"] and tiling["blocks"] == (1 if fixture == "unext2" else 3)
    plan.run()
    written = zarrstain.open_image(out).sel(c=list(card["output_labels"])).values[0]
    np.testing.assert_allclose(written, io["prediction"], atol=1e-4)


def test_tiled_exact_equals_whole_forward_and_tiling_is_labelled_approximate(tmp_path):
    """Not local (GRN, instance norm): exact = one whole field per block; tiles need a halo."""
    model = load_model(_copy(tmp_path, "unext2.ckpt"), card=POOLED)
    io = np.load(FIXTURES / "unext2_predict.npz")
    x = _normalized(io["raw"], io["median"], io["iqr"]).numpy()[None, None]
    whole = model.forward(torch.from_numpy(x))[0].numpy()
    exact = zarrstain.predict(
        x, model, predict_options=PredictOptions(halo="exact", normalize=None, block_memory="1MiB")
    )
    np.testing.assert_allclose(exact.values[0], whole, atol=1e-5)
    with pytest.raises(ParameterError, match="is not local"):
        zarrstain.predict(x, model, halo="exact", normalize=None, chunks={"x": 32})
    approx = zarrstain.predict(x, model, halo=16, normalize=None, chunks={"x": 32})
    assert approx.shape == exact.shape
    assert np.abs(approx.values - exact.values).max() > 1e-3


def test_viscy_predict_yaml_beside_the_checkpoint_is_the_card(tmp_path):
    path = _copy(tmp_path, "unext2.ckpt")
    path.with_suffix(".yml").write_text(
        """
model:
  class_path: viscy.translation.engine.VSUNet
  init_args:
    architecture: UNeXt2
    model_config:
      in_channels: 1
      out_channels: 2
      in_stack_depth: 5
      backbone: convnextv2_tiny
      stem_kernel_size: [5, 4, 4]
      decoder_mode: pixelshuffle
      head_expansion_ratio: 1
      head_pool: true
data:
  class_path: viscy.data.hcs.HCSDataModule
  init_args:
    source_channel: Phase3D
    target_channel: [Nuclei, Membrane]
    z_window_size: 5
    normalizations:
      - class_path: viscy.transforms.NormalizeSampled
        init_args: {keys: [Phase3D], level: fov_statistics, subtrahend: median, divisor: iqr}
"""
    )
    model = load_model(path)
    assert model.input_labels == ("Phase3D",)
    assert model.output_labels == ("Nuclei (predicted)", "Membrane (predicted)")
    assert model.normalization == "median_iqr" and model.kwargs["config"]["head_pool"] is True
    io = np.load(FIXTURES / "unext2_predict.npz")
    x = _normalized(io["raw"], io["median"], io["iqr"])[None, None]
    np.testing.assert_allclose(model.forward(x)[0].numpy(), io["prediction"], atol=1e-5)


def test_without_a_card_outputs_get_default_labels_and_inputs_are_named_by_the_caller(tmp_path):
    model = load_model(_copy(tmp_path, "fcmae.ckpt"))
    assert model.input_labels == ()
    assert model.output_labels == ("fcmae 0 (predicted)", "fcmae 1 (predicted)")


def test_workers_reload_a_carded_model_with_its_card(tmp_path):
    """A dask worker gets the handle, not the weights: it reloads the file with the same card."""
    model = load_model(_copy(tmp_path, "unext2.ckpt"), card=POOLED)
    handle = cache.ModelHandle(model)
    blob = pickle.dumps(handle)
    cache._MODELS.pop(model.content_hash)  # as in a fresh process
    reloaded = pickle.loads(blob).get()
    assert reloaded is not model and reloaded.content_hash == model.content_hash
    assert reloaded.kwargs["config"]["head_pool"] is True


def test_bad_checkpoints_and_cards_give_one_clear_error(tmp_path):
    path = _copy(tmp_path, "unext2.ckpt")
    with pytest.raises(ModelError, match="states in_stack_depth=3 but the weights have 5"):
        load_model(path, card={"model_config": {"in_stack_depth": 3}})
    with pytest.raises(ModelError, match="decoder_mode='deconv' is not supported"):
        load_model(path, card={"model_config": {"decoder_mode": "deconv"}})
    with pytest.raises(ModelError, match="unknown key.*labels"):
        load_model(path, card={"labels": ["x"]})
    with pytest.raises(ModelError, match="names 1 output channels"):
        load_model(path, card={"output_labels": ["Nuclei"]})
    with pytest.raises(ModelError, match="z_window_size=3 but the network reads 5"):
        load_model(path, card={"z_window_size": 3})
    package = save_model(
        create_model("fnet", input_labels=["BF"], output_labels=["DNA"], ndim=2, depth=1),
        tmp_path / "pkg",
    )
    with pytest.raises(
        ModelError, match="describes itself; card= is for a TorchScript file and a VisCy"
    ):
        load_model(package, card=LABELS)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model.conv.weight": torch.zeros(1)}}, other)
    with pytest.raises(ModelError, match="not of a VisCy network zarrstain runs"):
        load_model(other)
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {}, "callback": ParameterError("x")}, unsafe)
    with pytest.raises(ModelError, match="cannot be loaded safely"):
        load_model(unsafe)
    thin = np.zeros((1, 1, 3, 64, 64), np.float32)
    with pytest.raises(ShapeMismatchError, match="reads 5 z-planes at a time"):
        zarrstain.predict(thin, load_model(path, card=POOLED), normalize=None)


def test_cli_predicts_with_a_viscy_checkpoint_and_names_a_bad_card(tmp_path):
    from click.testing import CliRunner

    from cli.main import cli

    io = np.load(FIXTURES / "fcmae_io.npz")
    store = tmp_path / "fov.zarr"
    save_image(store, io["raw"][None, None], "tczyx", channel_labels=["Phase3D"])
    path = _copy(tmp_path, "fcmae.ckpt")
    runner = CliRunner()
    args = ["predict", str(store), "--model", str(path), "--out", str(tmp_path / "out.zarr")]
    path.with_suffix(".json").write_text(json.dumps({"inputs": ["Phase3D"]}))
    bad = runner.invoke(cli, args)
    assert bad.exit_code == 1 and "unknown key(s) inputs" in bad.output, bad.output
    path.with_suffix(".json").write_text(json.dumps(LABELS))
    done = runner.invoke(cli, args)
    assert done.exit_code == 0, done.output
    written = zarrstain.open_image(tmp_path / "out.zarr").sel(c=LABELS["output_labels"]).values
    np.testing.assert_allclose(written[0], io["prediction"], atol=1e-4)


def test_a_viscy_model_saves_as_a_zarrstain_package_and_loads_back(tmp_path):
    model = load_model(_copy(tmp_path, "unext2.ckpt"), card=POOLED)
    package = save_model(model, tmp_path / "vscyto3d")
    loaded = load_model(package)
    assert loaded.content_hash == model.content_hash and loaded.normalization == "median_iqr"
    io = np.load(FIXTURES / "unext2_predict.npz")
    x = _normalized(io["raw"], io["median"], io["iqr"])[None, None]
    np.testing.assert_allclose(loaded.forward(x).numpy(), model.forward(x).numpy(), atol=0)


#: VisCy's older U-Nets: the fixtures were made with residual blocks and a linear head
UNET = {**LABELS, "model_config": {"residual": True, "task": "reg"}}


@pytest.mark.parametrize("fixture", ["unet2d", "unet25d"])
def test_viscys_unets_reproduce_viscy_and_tile_exactly(tmp_path, fixture):
    """Local networks: the stack prediction equals VisCy's, and blocks equal the whole."""
    model = load_model(_copy(tmp_path, f"{fixture}.ckpt"), card=UNET)
    assert model.geometry.local and model.kwargs["network"] == (
        "2D" if fixture == "unet2d" else "2.5D"
    )
    io = np.load(FIXTURES / f"{fixture}_io.npz")
    net = model.module.model
    with torch.no_grad():
        np.testing.assert_allclose(
            net(torch.from_numpy(io["input"])).numpy(), io["output"], atol=1e-5
        )
    x = _normalized(io["raw"], io["median"], io["iqr"]).numpy()[None, None]  # (1, 1, Z, 64, 96)
    whole = zarrstain.predict(x, model, halo="exact", normalize=None).values[0]
    # the planes VisCy predicts; it leaves the first and last depth // 2 zero, zarrstain too
    # at the start, while at the end it mirrors the stack to the divisor (4) and predicts
    # one more plane from the mirrored ones
    predicted = (
        np.abs(io["prediction"]).reshape(2, len(io["prediction"][0]), -1).max(axis=(0, 2)) > 0
    )
    np.testing.assert_allclose(whole[:, predicted], io["prediction"][:, predicted], atol=1e-5)
    first = int(np.argmax(predicted))
    np.testing.assert_array_equal(whole[:, :first], 0)
    tiled = zarrstain.predict(x, model, halo="exact", normalize=None, chunks={"y": 32, "x": 32})
    assert tiled.attrs["zarrstain"]["tiling"]["blocks"] > 1
    np.testing.assert_allclose(tiled.values[0], whole, atol=1e-5)
    # without the card, VisCy's defaults (no residual, a ReLU head) give another network
    plain = load_model(_copy(tmp_path, f"{fixture}.ckpt"), card=LABELS)
    assert plain.kwargs["config"]["residual"] is False
    # the 2D head's task has no weights (VisCy's default "seg"); the 2.5D head's batch norm says
    assert plain.kwargs["config"]["task"] == ("seg" if fixture == "unet2d" else "reg")


def test_a_unet_card_contradicting_its_weights_is_refused(tmp_path):
    path = _copy(tmp_path, "unet25d.ckpt")
    with pytest.raises(ModelError, match="states task='seg' but the weights have 'reg'"):
        load_model(path, card={"model_config": {"task": "seg"}})
    with pytest.raises(ShapeMismatchError, match="reads 5 z-planes"):
        zarrstain.predict(np.zeros((1, 1, 4, 32, 32), np.float32), load_model(path), normalize=None)
