"""The architecture protocol: plug-ins defined only here tile, denormalize, write and train."""

from __future__ import annotations

import logging

import dask.array as da
import numpy as np
import pytest
import torch
import zarr
from torch import nn

import zarrstain
from zarrstain import datasets
from zarrstain.engine.normalize import normalization_stats, normalize
from zarrstain.engine.options import PredictOptions
from zarrstain.engine.tiling import plan_tiles, predict_whole, run_tiled
from zarrstain.models import (
    ARCHITECTURES,
    Architecture,
    BlockContext,
    Geometry,
    Head,
    create_model,
    get_architecture,
    register,
)


class MeanStd(Architecture):
    """A local 3D net with a value and a std head: conv → (value, softplus std)."""

    name = "test-mean-std"
    loss_name = "Gaussian NLL"

    def build(self, in_channels: int = 1, out_channels: int = 2, kernel: int = 5) -> nn.Module:
        return nn.Conv3d(in_channels, out_channels, kernel, padding=kernel // 2)

    def geometry(self, kwargs):
        r = int(kwargs.get("kernel", 5)) // 2
        return Geometry(3, 1, ((r, r, r),))

    def heads(self, kwargs):
        return (Head("value"), Head("std", " std", dtype="float32"))

    def channels(self, kwargs, n_inputs, n_outputs):
        return {"in_channels": n_inputs, "out_channels": n_outputs, **kwargs}

    def run(self, module, x, context):
        out = module(x)
        return torch.cat([out[:, 0::2], nn.functional.softplus(out[:, 1::2])], 1)

    def loss(self, prediction, target):
        return nn.functional.gaussian_nll_loss(prediction[:, 0::2], target, prediction[:, 1::2])

    def train_kwargs(self, config):
        return {"kernel": 3}


class TwicePass(Architecture):
    """The same local filter applied twice: a two-pass model (radius 2 each, divisor 2)."""

    name = "test-twice"
    fail_at: int | None = None  # raise in this pass, to simulate a crash between passes
    calls: list[int] = []  # noqa: RUF012 - the passes run, in order

    def build(self) -> nn.Module:
        conv = nn.Conv2d(1, 1, 5, padding=2, bias=False)
        with torch.no_grad():
            conv.weight.copy_(torch.linspace(-1, 1, 25).reshape(1, 1, 5, 5))
        return conv

    def geometry(self, kwargs):
        return Geometry(2, 2, ((2, 2), (2, 2)))

    def run(self, module, x, context):
        type(self).calls.append(context.step)
        if context.step == type(self).fail_at:
            raise RuntimeError("simulated crash")
        return torch.tanh(module(x))


class Position(Architecture):
    """Outputs the global x coordinate of each voxel from its block context, plus the seed."""

    name = "test-position"
    stochastic = True

    def build(self) -> nn.Module:
        return nn.Identity()

    def geometry(self, kwargs):
        return Geometry(2, 1, ((0, 0),))

    def run(self, module, x, context: BlockContext):
        assert isinstance(context, BlockContext)
        cols = [o[3] + torch.arange(x.shape[-1], dtype=torch.float32) for o in context.origins]
        rows = torch.stack(cols)[:, None, None, :].expand(-1, 1, x.shape[-2], -1)
        planes = torch.tensor([o[1] for o in context.origins], dtype=torch.float32)
        return rows * 1000 + planes[:, None, None, None] + context.seed


class Global(Architecture):
    """Subtracts the block's mean: not local."""

    name = "test-global"

    def build(self) -> nn.Module:
        return nn.Identity()

    def geometry(self, kwargs):
        return Geometry(2, 1, ((0, 0),), local=False)

    def run(self, module, x, context):
        return x - x.mean(dim=(-2, -1), keepdim=True)


@pytest.fixture(autouse=True, scope="module")
def _registered():
    """The test architectures, registered for this module's tests only."""
    saved = dict(ARCHITECTURES)
    for arch in (MeanStd(), TwicePass(), Position(), Global()):
        register(arch)
    yield
    ARCHITECTURES.clear()
    ARCHITECTURES.update(saved)


def _model(arch, **kwargs):
    torch.manual_seed(0)
    return create_model(arch, input_labels=["BF"], **kwargs)


def _data(shape=(2, 1, 6, 37, 42), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_register_refuses_non_architectures_and_name_clashes():
    with pytest.raises(TypeError, match="Architecture instance"):
        register(object())
    with pytest.raises(ValueError, match="registered already"):
        register(MeanStd())
    with pytest.raises(ValueError, match="training alias"):
        register(type("Alias", (MeanStd,), {"name": "fnet3d"})())
    with pytest.raises(ValueError, match="unknown architecture 'nope'.*register"):
        get_architecture("nope")
    with pytest.raises(ValueError, match="not a multiple of its 2 heads"):
        _model("test-mean-std", output_labels=["a", "b", "c"])


def test_two_output_model_tiles_exactly_denormalizes_each_kind_and_writes_own_dtypes(tmp_path):
    model = _model(
        "test-mean-std",
        output_labels=["DNA (predicted)", "DNA (predicted) std"],
        output_intensity=[(100.0, 10.0), (100.0, 10.0)],
        normalization="zscore",
    )
    assert [h.kind for h in model.outputs] == ["value", "std"]
    data = _data()
    plan = plan_tiles((2, 6, 37, 42), model, halo="exact", chunks={"y": 8, "x": 8, "z": 2})
    assert plan.n_blocks > 10 and plan.exact
    tiled = run_tiled(da.from_array(data), model, plan).compute()
    whole = predict_whole(data, model)
    np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-6)

    store = datasets.make_image(tmp_path / "in.zarr", shape=(2, 6, 37, 42), seed=3)
    scene = zarrstain.open_image(store)
    pred = zarrstain.predict(scene, model, halo="exact", chunks={"z": 2, "y": 16, "x": 16})
    raw = zarrstain.predict(
        scene, model, predict_options=PredictOptions(halo="exact", denormalize=False)
    )
    assert pred.attrs["zarrstain"]["output_kinds"] == ["value", "std"]
    p, r = pred.values, raw.values
    np.testing.assert_allclose(p[:, 0], r[:, 0] * 10 + 100, rtol=1e-5)  # value: offset, scale
    np.testing.assert_allclose(p[:, 1], r[:, 1] * 10, rtol=1e-5)  # std: the scale only
    assert (p[:, 1] > 0).all()

    # the value as uint16 (rounded, clipped), the std keeps its head's float32
    out = tmp_path / "out.zarr"
    zarrstain.write_channels(store, pred, out=out, dtype={"DNA (predicted)": "uint16"})
    back = zarrstain.open_image(out)
    assert back.dtype == np.float32  # one array per NGFF image, holding both exactly
    value = back.sel(c="DNA (predicted)").values
    np.testing.assert_array_equal(value, np.clip(np.round(p[:, 0]), 0, 65535))
    np.testing.assert_allclose(back.sel(c="DNA (predicted) std").values, p[:, 1], rtol=1e-6)
    channels = zarr.open_group(out, mode="r").attrs["zarrstain"]["channels"]
    dtypes = channels["DNA (predicted) std"]["channel_dtypes"]
    assert dtypes == {"DNA (predicted)": "uint16", "DNA (predicted) std": "float32"}


def test_per_channel_dtypes_are_checked(tmp_path):
    model = _model("test-mean-std", output_labels=["v", "s"])
    store = datasets.make_image(tmp_path / "in.zarr", shape=(1, 4, 16, 16), seed=3)
    pred = zarrstain.predict(zarrstain.open_image(store), model)
    with pytest.raises(zarrstain.errors.ChannelError, match="names channel 'x'"):
        zarrstain.write_channels(store, pred, out=tmp_path / "o.zarr", dtype={"x": "uint8"})
    with pytest.raises(zarrstain.errors.ParameterError, match="1 dtypes for 2 channels"):
        zarrstain.write_channels(store, pred, out=tmp_path / "o.zarr", dtype=["uint8"])
    # in place into a uint16 store: the float32 std head cannot go in; nothing is written
    before = sorted(p.name for p in store.rglob("*"))
    with pytest.raises(
        zarrstain.errors.UnsupportedError,
        match=r"cannot hold the float32 channel 's'; pass dtype='uint16' to write every new",
    ):
        zarrstain.write_channels(store, pred)
    assert sorted(p.name for p in store.rglob("*")) == before
    # one dtype for all, as the message says: the std is rounded into the store's uint16
    zarrstain.write_channels(store, pred, dtype="uint16")
    back = zarrstain.open_image(store)
    assert back.dtype == np.uint16 and list(back.coords["c"].values)[-2:] == ["v", "s"]
    expected = np.clip(np.round(pred.sel(c="s").values), 0, 65535)
    np.testing.assert_array_equal(back.sel(c="s").values, expected)


def test_two_pass_model_tiles_exactly_and_resumes_after_a_crash_between_passes(tmp_path):
    model = _model("test-twice", output_labels=["twice"])
    assert model.geometry.passes == 2 and model.receptive_radius == (4, 4)
    data = _data((2, 1, 3, 37, 42), seed=1)
    plan = plan_tiles((2, 3, 37, 42), model, halo="exact", chunks={"y": 8, "x": 8})
    assert plan.halos == ((0, 2, 2), (0, 2, 2)) and plan.n_blocks > 20
    whole = predict_whole(data, model)
    lazy = run_tiled(da.from_array(data), model, plan).compute()
    np.testing.assert_allclose(lazy, whole, rtol=0, atol=1e-6)
    # one pass alone is not the model: the reference really has two passes
    assert np.abs(whole - np.tanh(whole)).max() > 1e-3

    scratch = tmp_path / "scratch.zarr"
    TwicePass.fail_at, TwicePass.calls = 1, []
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_tiled(da.from_array(data), model, plan, scratch=scratch).compute()
    assert 0 in TwicePass.calls
    TwicePass.fail_at, TwicePass.calls = None, []
    resumed = run_tiled(da.from_array(data), model, plan, scratch=scratch).compute()
    assert 0 not in TwicePass.calls and 1 in TwicePass.calls  # pass 0 came from the scratch store
    np.testing.assert_allclose(resumed, whole, rtol=0, atol=1e-6)
    # other inputs: pass 0 is recomputed, not reused
    TwicePass.calls = []
    other = run_tiled(da.from_array(data + 1), model, plan, scratch=scratch).compute()
    assert 0 in TwicePass.calls
    np.testing.assert_allclose(other, predict_whole(data + 1, model), rtol=0, atol=1e-6)


def test_block_context_gives_global_coordinates_and_the_seed():
    model = _model("test-position", output_labels=["x"])
    data = _data((1, 1, 3, 20, 45))
    plan = plan_tiles((1, 3, 20, 45), model, halo=0, chunks={"z": 1, "y": 7, "x": 10})
    out = run_tiled(da.from_array(data), model, plan, seed=5).compute()
    expected = np.arange(45)[None, :] * 1000 + np.arange(3)[:, None, None] + 5
    np.testing.assert_array_equal(out[0, 0], np.broadcast_to(expected, (3, 20, 45)))
    np.testing.assert_array_equal(out, predict_whole(data, model, seed=5))


def test_non_local_models_run_one_whole_field_per_block(caplog):
    model = _model("test-global", output_labels=["g"])
    plan = plan_tiles((1, 4, 300, 300), model, block_memory="1MiB")
    assert plan.chunks[2:] == ((300,), (300,)) and plan.exact
    for halo in ("exact", "auto"):  # tiling it needs an explicit halo
        with pytest.raises(zarrstain.errors.ParameterError, match="is not local.*integer halo"):
            plan_tiles((1, 4, 300, 300), model, halo=halo, chunks={"y": 100, "x": 100})
    with caplog.at_level(logging.WARNING):
        tiled = plan_tiles((1, 4, 300, 300), model, halo=8, chunks={"y": 100, "x": 100})
    assert not tiled.exact and "approximate" in caplog.text
    assert tiled.describe()["exact"] is False
    # blocks as large as the field are not tiling: exact
    assert plan_tiles((1, 4, 300, 300), model, halo="exact", chunks={"y": 300}).exact


def test_training_uses_the_architectures_heads_and_loss(tmp_path):
    store = datasets.make_image(tmp_path / "in.zarr", shape=(1, 8, 32, 64), seed=2)
    config = zarrstain.training.TrainConfig(
        inputs=["BF"], targets=["DNA"], model="test-mean-std", steps=3, batch_size=2,
        patch=[8, 16, 16], device="cpu", val_fraction=0.25, validate_every=3,
    )  # fmt: skip
    result = zarrstain.train(store, config, tmp_path / "m")
    model = zarrstain.load_model(tmp_path / "m")
    assert model.architecture == "test-mean-std" and model.kwargs["kernel"] == 3
    assert model.output_labels == ("DNA (predicted)", "DNA (predicted) std")
    assert model.output_intensity[0] == model.output_intensity[1]
    assert np.isfinite(result.history[-1]["loss"]) and "val_pcc" in result.history[-1]
    card = (tmp_path / "m" / "card.json").read_text()
    assert "Gaussian NLL" in card
    with pytest.raises(zarrstain.errors.ParameterError, match="not a registered architecture"):
        zarrstain.training.TrainConfig(inputs=["BF"], targets=["DNA"], model="unet9").check()


def test_normalize_then_tile_with_the_plug_in_matches_predict(tmp_path):
    """predict is the same engine: normalization, tiling and a plug-in's run."""
    model = _model("test-mean-std", output_labels=["v", "s"], normalization="zscore")
    store = datasets.make_image(tmp_path / "in.zarr", shape=(1, 6, 30, 30), seed=4)
    scene = zarrstain.open_image(store).sel(c=["BF"])
    norm = normalize(scene, "zscore", stats=normalization_stats(scene, "zscore"))
    expected = predict_whole(norm.values.astype(np.float32), model)
    got = zarrstain.predict(scene, model, halo="exact", chunks={"y": 8, "x": 8}).values
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_store_to_store_multi_pass_keeps_a_scratch_store_until_it_succeeds(tmp_path):
    """plan_prediction/run: passes persisted beside the output, reused after a crash, removed."""
    from zarrstain.engine.pipeline import plan_prediction

    model = _model("test-twice", output_labels=["twice"], normalization="none")
    store = datasets.make_image(tmp_path / "in.zarr", shape=(1, 3, 40, 44), seed=6)
    out = tmp_path / "out.zarr"
    scratch = tmp_path / "out.zarr.zarrstain-scratch"
    chunks = {"y": 16, "x": 16}
    TwicePass.fail_at, TwicePass.calls = 1, []
    plan = plan_prediction(store, model, input_channels=["BF"], out=out, chunks=chunks)
    assert TwicePass.calls == []  # planning computes nothing, not even pass 0
    with pytest.raises(RuntimeError, match="simulated crash"):
        plan.run()
    # the last pass crashed while writing: pass 0 is kept, complete, for the rerun
    assert "zarrstain_pass" in zarr.open_group(scratch, mode="r")["pass-0"].attrs
    TwicePass.fail_at, TwicePass.calls = None, []
    plan = plan_prediction(store, model, input_channels=["BF"], out=out, chunks=chunks)
    plan.run()
    assert 0 not in TwicePass.calls and 1 in TwicePass.calls
    assert not scratch.exists()  # removed once the channels are written
    image = zarrstain.open_image(store).sel(c=["BF"]).values.astype(np.float32)
    written = zarrstain.open_image(out).sel(c="twice").values
    np.testing.assert_allclose(written, predict_whole(image, model)[:, 0], rtol=0, atol=1e-6)


def test_cli_predicts_with_a_plug_in_per_channel_dtypes_and_a_scratch(tmp_path):
    from click.testing import CliRunner
    from zarrstain.cli.main import cli

    store = datasets.make_image(tmp_path / "in.zarr", shape=(1, 4, 24, 24), seed=8)
    model = _model("test-mean-std", output_labels=["DNA (predicted)", "DNA (predicted) std"],
                   output_intensity=[(100.0, 10.0)] * 2, normalization="zscore")  # fmt: skip
    package = zarrstain.save_model(model, tmp_path / "meanstd")
    out = tmp_path / "out.zarr"
    args = ["predict", str(store), "--model", str(package), "--out", str(out)]
    done = CliRunner().invoke(cli, ["-q", *args, "--dtype", "DNA (predicted)=uint16"])
    assert done.exit_code == 0, done.output
    channels = zarr.open_group(out, mode="r").attrs["zarrstain"]["channels"]
    assert channels["DNA (predicted) std"]["channel_dtypes"]["DNA (predicted)"] == "uint16"
    bad = CliRunner().invoke(cli, [*args, "--dtype", "uint16", "--dtype", "x=uint8"])
    assert bad.exit_code != 0 and "LABEL=DTYPE" in bad.output

    twice = zarrstain.save_model(_model("test-twice", output_labels=["twice"],
                                        normalization="none"), tmp_path / "twice")  # fmt: skip
    scratch = tmp_path / "my-scratch"
    done = CliRunner().invoke(cli, ["-q", "predict", str(store), "--model", str(twice),
                                    "--input-channel", "BF", "--out", str(tmp_path / "o2.zarr"),
                                    "--scratch", str(scratch)])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert (scratch / "pass-0").is_dir()  # a scratch folder the user named is theirs to remove


def test_model_forward_is_the_prediction_of_every_pass():
    twice = _model("test-twice", output_labels=["twice"])
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        once = torch.tanh(twice.module(x))
        expected = torch.tanh(twice.module(once))
    torch.testing.assert_close(twice.forward(x), expected)
    meanstd = _model("test-mean-std", output_labels=["v", "s"])
    assert (meanstd.forward(torch.randn(1, 1, 6, 8, 8))[:, 1] > 0).all()  # run()'s softplus
