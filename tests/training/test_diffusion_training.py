"""Class maps, the class plate, and training and running diffusion models and classifiers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import zarrstain
from cli.main import cli
from zarrstain import datasets
from zarrstain.classes import ClassMap, read_class_map, scene_class
from zarrstain.errors import ParameterError
from zarrstain.training import TrainConfig


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    root = tmp_path_factory.mktemp("plate")
    return datasets.make_class_plate(
        root / "plate.zarr", rows=("A",), columns=("1", "2"), fields=2, shape=(1, 1, 64, 64)
    )


def _config(table, **kwargs):
    return TrainConfig(
        **{"inputs": ["BF"], "targets": ["Membrane"], "model": "diffusion2d", "steps": 4,
           "batch_size": 2, "patch": [32, 32], "device": "cpu", "normalization": "zscore",
           "classes": table and str(table), "val_scenes": ["A/2/1"], "validate_every": 2,
           "checkpoint_every": 2, **kwargs}
    )  # fmt: skip


def test_class_maps_from_tables_attributes_and_labels(plate, tmp_path):
    store, table = plate
    assert table.read_text().splitlines() == ["well,class", "A/1,control", "A/2,translocated"]
    scene = zarrstain.open_image(store, "A/2/1")
    assert scene_class(str(table), scene) == "translocated"
    assert scene_class(None, scene, class_key="treatment") == "translocated"  # the well's attrs
    assert scene_class("mock", scene) == "mock"
    assert scene_class({"A02": "x"}, scene) == "x"
    tsv = tmp_path / "c.tsv"
    tsv.write_text("scene\tclass\nA/2/1\tfield-level\n*\tother\n")
    assert read_class_map(tsv).lookup("A/2/1") == "field-level"
    assert read_class_map(tsv).lookup("B/1/0") == "other"
    assert ClassMap({"a01": "c"}).lookup("A/1/3") == "c"
    bad = tmp_path / "bad.csv"
    bad.write_text("well,treatment\nA/1,x\n")
    with pytest.raises(ParameterError, match="has no 'class' column"):
        read_class_map(bad)
    with pytest.raises(ParameterError, match="does not exist"):
        read_class_map(tmp_path / "none.csv")


def test_the_class_plate_differs_in_the_marker_only(plate):
    store, _ = plate
    control = zarrstain.open_image(store, "A/1/0").values.astype(float)
    moved = zarrstain.open_image(store, "A/2/0").values.astype(float)
    # the same kind of brightfield in both; the marker fills the cells in translocated wells
    bf = [im[0, 0].std() / im[0, 0].mean() for im in (control, moved)]
    assert abs(bf[0] - bf[1]) < 0.5 * max(bf)
    cells = [(im[0, 1] > np.percentile(im[0, 1], 90)) for im in (control, moved)]
    pairs = zip((control, moved), cells, strict=True)
    marker = [im[0, 2][c].mean() / im[0, 2].mean() for im, c in pairs]
    assert marker[1] > 1.3 * marker[0]  # bright where the nuclei are not: the cytoplasm


def test_diffusion_trains_with_classes_and_resumes_exactly(plate, tmp_path):
    store, table = plate
    config = _config(table, class_dropout=0.2)
    result = zarrstain.train(store, config, tmp_path / "m")
    model = zarrstain.load_model(tmp_path / "m")
    assert model.architecture == "diffusion" and model.kwargs["class_names"] == [
        "control",
        "translocated",
    ]
    assert model.kwargs["null_class"] and "val_pcc" in result.history[-1]
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["training"]["ema"] == 0.999
    # two steps, then two more after a "crash", equal four steps in one go
    half = zarrstain.train(store, _config(table, class_dropout=0.2, steps=2), tmp_path / "r")
    assert half.history[-1]["step"] == 2
    zarrstain.train(store, config, tmp_path / "r", resume=True)
    a, b = zarrstain.load_model(tmp_path / "r"), model
    weights = zip(a.module.state_dict().items(), b.module.state_dict().values(), strict=True)
    for (k, va), vb in weights:
        assert torch.equal(va, vb), k
    # each scene's class at prediction; a scene without one is refused by name
    scene = zarrstain.open_image(store, "A/1/0")
    pred = zarrstain.predict(
        scene, model, options={"steps": 2, "classes": str(table)}, halo="exact"
    )
    assert pred.attrs["zarrstain"]["sampling"]["class_label"] == "control"
    with pytest.raises(ParameterError, match="'mock' is not one the model knows"):
        zarrstain.predict(scene, model, options={"steps": 2, "classes": "mock"})


def test_training_refuses_classes_a_model_cannot_use(plate, tmp_path):
    store, table = plate
    with pytest.raises(
        ParameterError, match="classes is a classifier / diffusion setting, not one of .fnet2d."
    ):
        zarrstain.train(store, _config(table, model="fnet2d", depth=1), tmp_path / "f")
    partial = tmp_path / "partial.csv"
    partial.write_text("well,class\nA/1,control\n")
    with pytest.raises(ParameterError, match="have no class in .*A/2/0"):
        zarrstain.train(store, _config(partial), tmp_path / "g")
    with pytest.raises(ParameterError, match="learns classes; give each scene's class"):
        zarrstain.train(store, _config(None, model="classifier2d"), tmp_path / "h")


def test_classifier_trains_on_the_targets_and_guides_predict(plate, tmp_path):
    store, table = plate
    config = zarrstain.training.build_config(
        targets=["Membrane"], model="classifier2d", steps=3, batch_size=2, patch=[32, 32],
        device="cpu", normalization="zscore", classes=str(table),
    )  # fmt: skip
    zarrstain.train(store, config, tmp_path / "c")
    classifier = zarrstain.load_model(tmp_path / "c")
    assert classifier.input_labels == ("Membrane",)
    assert classifier.output_labels == ("control probability", "translocated probability")
    diffusion = zarrstain.train(store, _config(table, steps=2), tmp_path / "d").model
    scene = zarrstain.open_image(store, "A/2/0")
    pred = zarrstain.predict(
        scene, diffusion, halo="exact",
        options={"steps": 2, "classes": str(table), "guidance": tmp_path / "c",
                 "guidance_scale": 1.0},
    )  # fmt: skip
    record = pred.attrs["zarrstain"]["sampling"]
    assert record["guidance"]["content_hash"] == classifier.content_hash
    assert np.isfinite(pred.values).all()


def test_cli_trains_and_samples_a_plate(plate, tmp_path):
    store, table = plate
    runner = CliRunner()
    model = tmp_path / "cli-model"
    args = ["train", str(store), "--input", "BF", "--target", "Membrane", "--model",
            "diffusion2d", "--out", str(model), "--steps", "2", "--batch-size", "2",
            "--patch", "32x32", "--device", "cpu", "--class-map", str(table)]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "out.zarr"
    common = ["predict", str(store), "--model", str(model), "--out", str(out), "--steps", "2",
              "--samples", "2", "--class-map", str(table), "--halo", "exact"]  # fmt: skip
    dry = runner.invoke(cli, [*common, "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.output)
    assert plan["model"]["local"] is True and plan["model"]["passes"] == 2
    assert plan["model"]["sampling"]["samples"] == 2
    assert plan["blocks_to_run"] == 4 * 2  # four scenes, two steps each
    assert not out.exists()
    done = runner.invoke(cli, common)
    assert done.exit_code == 0, done.output
    image = zarrstain.open_image(out, "A/1/0")
    assert list(image.coords["c"].values)[-2:] == [
        "Membrane (predicted)",
        "Membrane (predicted) std",
    ]
    assert not (tmp_path / "out.zarr.zarrstain-scratch").exists()
    for sid, label in (("A/1/0", "control"), ("A/2/1", "translocated")):  # each scene its own
        record = zarrstain.open_image(out, sid).attrs["provenance"]["Membrane (predicted)"]
        assert record["sampling"]["class_label"] == label
    bad = runner.invoke(cli, [*common[:-2], "--class", "mock"])
    assert bad.exit_code != 0 and "'mock' is not one the model knows" in bad.output


def test_unconditional_backbones_model_the_targets_alone(plate, tmp_path):
    store, _ = plate
    runner = CliRunner()
    args = ["train", str(store), "--target", "Membrane", "--model", "diffusion2d",
            "--unconditional", "--out", str(tmp_path / "b"), "--steps", "2", "--batch-size",
            "2", "--patch", "32x32", "--device", "cpu"]  # fmt: skip
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    backbone = zarrstain.load_model(tmp_path / "b")
    assert backbone.kwargs["backbone"] and backbone.in_channels == 0
    assert backbone.input_labels == () and backbone.output_labels == ("Membrane (predicted)",)
    with pytest.raises(zarrstain.errors.ChannelError, match="reads no input channels"):
        zarrstain.predict(zarrstain.open_image(store, "A/1/0"), backbone, options={"steps": 2})
    # its samples come from noise alone, still position-keyed
    x = torch.zeros(1, 0, 32, 32)
    a = backbone.with_options(steps=2).forward(x, seed=1)
    assert a.shape == (1, 1, 32, 32) and torch.equal(
        a, backbone.with_options(steps=2).forward(x, seed=1)
    )
    with pytest.raises(ParameterError, match="unconditional is a diffusion setting"):
        _config(None, model="fnet2d", unconditional=True).check()


def test_paper_gives_each_family_its_published_recipe_and_network():
    fnet = TrainConfig.paper(inputs=["BF"], targets=["DNA"])
    assert (fnet.mult_chan, fnet.batch_size, fnet.betas) == (32, 24, (0.5, 0.999))
    diffusion = TrainConfig.paper(inputs=["BF"], targets=["DNA"], model="diffusion2d")
    assert (diffusion.batch_size, diffusion.lr, diffusion.mult_chan) == (2, 8e-5, 8)
    spec, kwargs = diffusion.architecture()
    assert (kwargs["width"], kwargs["norm"], kwargs["attention"]) == (64, "group", "global")
    assert not spec.geometry(spec.channels(kwargs, 1, 1)).local  # one whole field per block
