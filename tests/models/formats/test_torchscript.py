"""TorchScript: zarrstain models export to one file and load back; any scripted module runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import zarrstain
from zarrstain import datasets
from zarrstain.engine.pipeline import plan_prediction
from zarrstain.errors import ModelError, ParameterError
from zarrstain.models import create_model, export_torchscript, load_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


def _fnet(head=None):
    labels = ["DNA (predicted)"] + (
        ["DNA (predicted) lower", "DNA (predicted) upper"] if head else []
    )
    kwargs = {"head": head} if head else {}
    model = create_model("fnet", input_labels=["BF"], output_labels=labels, ndim=2,
                         normalization="zscore", depth=2, mult_chan=8, **kwargs)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


@pytest.mark.parametrize("head", [None, {"kind": "quantiles", "alpha": 0.1}], ids=["value", "q"])
def test_export_round_trip_predicts_the_same_and_tiles_exactly(tmp_path, head):
    model = _fnet(head)
    path = export_torchscript(model, tmp_path / "m.pt")
    loaded = load_model(path)
    assert loaded.architecture == "torchscript" and loaded.output_labels == model.output_labels
    assert loaded.receptive_radius == model.receptive_radius and loaded.divisor == model.divisor
    x = np.random.default_rng(0).normal(size=(2, 1, 1, 72, 88)).astype(np.float32)
    want = zarrstain.predict(x, model, halo="exact", normalize=None).values
    whole = zarrstain.predict(x, loaded, halo="exact", normalize=None).values
    tiled = zarrstain.predict(x, loaded, halo="exact", normalize=None, chunks={"y": 24, "x": 24})
    assert tiled.data.numblocks[-1] > 1
    np.testing.assert_allclose(whole, want, atol=1e-5)
    np.testing.assert_allclose(tiled.values, whole, atol=1e-5)
    # the file stands alone: plain torch runs it on a normalized batch
    plain = torch.jit.load(str(path))
    with torch.no_grad():
        out = plain(torch.from_numpy(x[:, :, 0, :72, :88]))
    assert out.shape == (2, len(model.output_labels), 72, 88)


def test_a_foreign_scripted_module_runs_over_a_store_with_a_card_beside_it(tmp_path):
    net = torch.jit.script(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                                         nn.Conv2d(4, 1, 3, padding=1)))  # fmt: skip
    path = tmp_path / "net.pt"
    net.save(str(path))
    with pytest.raises(ModelError, match="without a zarrstain card; put one beside it as net.json"):
        load_model(path)
    card = {"input_labels": ["BF"], "output_labels": ["DNA (scripted)"], "normalization": "zscore",
            "spatial_dims": 2, "divisor": 1, "receptive_radius": [2, 2]}  # fmt: skip
    bad = {**card, "receptive_radius": [2]}
    with pytest.raises(ModelError, match="one radius per spatial axis"):
        load_model(path, card=bad)
    with pytest.raises(ModelError, match="lacks divisor"):
        load_model(path, card={k: v for k, v in card.items() if k != "divisor"})
    (tmp_path / "net.json").write_text(json.dumps(card))
    store = datasets.make_image(tmp_path / "img.zarr", shape=(1, 2, 64, 64))
    out = tmp_path / "out.zarr"
    plan_prediction(store, load_model(path), out=out, halo="exact", chunks={"y": 32, "x": 32}).run()
    written = zarrstain.open_image(out)
    assert list(written.coords["c"].values) == ["DNA (scripted)"]
    image = zarrstain.open_image(store).sel(c=["BF"])
    direct = zarrstain.predict(image, load_model(path), halo="exact").values
    np.testing.assert_allclose(written.sel(c=["DNA (scripted)"]).values, direct, atol=1e-4)


def test_sampled_models_do_not_export_and_torchscript_does_not_train(tmp_path):
    diffusion = create_model("diffusion", input_labels=["BF"], output_labels=["DNA (predicted)"],
                             width=8, mults=[1, 2])  # fmt: skip
    with pytest.raises(ParameterError, match="only single-pass deterministic models export"):
        export_torchscript(diffusion, tmp_path / "d.pt")
    export_torchscript(_fnet(), tmp_path / "f.pt")
    with pytest.raises(ParameterError, match="exists"):
        export_torchscript(_fnet(), tmp_path / "f.pt")
    from zarrstain.training import TrainConfig
    from zarrstain.training.config import training_models

    assert "torchscript" not in training_models()
    with pytest.raises(ParameterError, match="not a registered architecture"):
        TrainConfig(inputs=["BF"], targets=["DNA"], model="torchscript").architecture()


def test_cli_export(tmp_path):
    from click.testing import CliRunner

    from cli.main import cli
    from zarrstain.models import save_model

    save_model(_fnet(), tmp_path / "pkg")
    runner = CliRunner()
    done = runner.invoke(cli, ["export", str(tmp_path / "pkg"), "--format", "torchscript",
                               "--out", str(tmp_path / "m.pt")])  # fmt: skip
    assert done.exit_code == 0 and "as torchscript" in done.output, done.output
    assert load_model(tmp_path / "m.pt").input_labels == ("BF",)
    again = runner.invoke(cli, ["export", str(tmp_path / "pkg"), "--out", str(tmp_path / "m.pt")])
    assert again.exit_code != 0 and "exists" in again.output


@pytest.mark.slow  # a worker process starts (a few seconds)
def test_a_torchscript_model_runs_on_worker_processes(tmp_path):
    """A scripted module cannot be pickled: workers get its path and load it themselves."""
    from distributed import Client, LocalCluster

    path = export_torchscript(_fnet(), tmp_path / "m.pt")
    store = datasets.make_image(tmp_path / "img.zarr", shape=(1, 1, 64, 64))
    local = tmp_path / "local.zarr"
    plan_prediction(store, path, out=local, input_channels=["BF"]).run()
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        out = tmp_path / "cluster.zarr"
        plan = plan_prediction(store, path, out=out, input_channels=["BF"])
        assert set(plan.run(client=client).values()) == {"written"}
    np.testing.assert_array_equal(
        zarrstain.open_image(out).values, zarrstain.open_image(local).values
    )
