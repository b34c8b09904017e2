"""What a new user hit in the newer features (issue 27): each test failed before its fix.

Class maps given as files other than CSV, control branches with quantile heads and several
targets, bioimage.io export from a plate, in-place sampling into integer plates, warnings on
TorchScript export, messages naming Python keywords under the CLI. Stores other tools write are
in ``test_writers.py``; the README's blocks and the shipped experiment files run in
``test_readme.py`` and ``test_experiment.py``.
"""

from __future__ import annotations

import json
import tomllib
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ROOT, tree_digest
from zarrstain.cli.main import cli

import zarrstain
from zarrstain import datasets
from zarrstain.errors import ChannelExistsError, SceneNotFoundError, cli_messages
from zarrstain.models import create_model, export_torchscript, load_model
from zarrstain.testing import random_model
from zarrstain.training import TrainConfig


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


# --- class maps ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def class_plate(tmp_path_factory):
    root = tmp_path_factory.mktemp("classes")
    return datasets.make_class_plate(
        root / "plate.zarr", rows=("A",), columns=("1", "2"), fields=1, shape=(1, 1, 48, 48)
    )


def test_a_json_class_map_is_read_as_a_map(class_plate, tmp_path):
    store, _ = class_plate
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"A/1": "control", "A02": "translocated"}))
    model = tmp_path / "m"
    done = run("train", store, "--input", "BF", "--target", "Membrane", "--model",
               "diffusion2d", "--out", model, "--steps", "1", "--batch-size", "2",
               "--patch", "32x32", "--device", "cpu", "--class-map", classes)  # fmt: skip
    assert done.exit_code == 0, done.output
    assert load_model(model).kwargs["class_names"] == ["control", "translocated"]


def test_a_class_map_file_in_no_known_format_is_refused_by_name(class_plate, tmp_path):
    store, _ = class_plate
    for name, text in (("classes.yaml", "A/1: control\n"), ("classes.json", "{not json")):
        bad = tmp_path / name
        bad.write_text(text)
        out = tmp_path / f"m-{name}"
        done = run("train", store, "--input", "BF", "--target", "Membrane", "--model",
                   "diffusion2d", "--out", out, "--steps", "1", "--class-map", bad)  # fmt: skip
        assert done.exit_code != 0
        assert str(bad) in done.output and "CSV/TSV" in done.output and "JSON" in done.output
        assert "Traceback" not in done.output and not out.exists()
    # a missing file named like a map is a missing file, never a class called "x.json"
    from zarrstain.classes import scene_class

    with pytest.raises(zarrstain.errors.ParameterError, match="does not exist"):
        scene_class(str(tmp_path / "x.json"), zarrstain.open_image(store, "A/1/0"))


# --- control branches with quantile heads -------------------------------------------------


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbone")
    image = datasets.make_image(root / "img.zarr", shape=(1, 1, 48, 48), seed=3)
    common = {"model": "diffusion2d", "steps": 1, "batch_size": 2, "patch": [32, 32],
              "device": "cpu", "normalization": "zscore",
              "model_kwargs": {"width": 8, "mults": [1, 2]}}  # fmt: skip
    config = TrainConfig(inputs=[], targets=["DNA", "Membrane"], unconditional=True, **common)
    zarrstain.train(image, config, root / "backbone")
    return image, root / "backbone", common


def test_a_quantile_branch_trains_on_two_targets(backbone, tmp_path):
    image, path, common = backbone
    config = TrainConfig(inputs=["BF"], targets=["DNA", "Membrane"], backbone=str(path),
                         head="quantiles", **{**common, "model": "control"})  # fmt: skip
    model = zarrstain.train(image, config, tmp_path / "branch").model
    assert model.output_labels == (
        "DNA (predicted)", "DNA (predicted) lower", "DNA (predicted) upper",
        "Membrane (predicted)", "Membrane (predicted) lower", "Membrane (predicted) upper",
    )  # fmt: skip
    pred = zarrstain.predict(
        zarrstain.open_image(image), model, options={"steps": 2}, halo="exact"
    ).values
    assert (pred[:, 1] <= pred[:, 0]).all() and (pred[:, 5] >= pred[:, 3]).all()


def test_quantile_heads_train_with_the_pinball_loss(backbone, tmp_path, monkeypatch):
    """With one target, all three outputs used to train on the median's MSE, silently."""
    from zarrstain.models.diffusion import control

    image, _, common = backbone
    one = TrainConfig(inputs=[], targets=["DNA"], unconditional=True, **common)
    zarrstain.train(image, one, tmp_path / "backbone")
    calls = []
    original = control.quantile_loss

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(control, "quantile_loss", spy)
    branch = {**common, "model": "control", "steps": 2}
    config = TrainConfig(inputs=["BF"], targets=["DNA"], backbone=str(tmp_path / "backbone"),
                         head="quantiles", **branch)  # fmt: skip
    zarrstain.train(image, config, tmp_path / "branch")
    assert len(calls) == 2 and calls[0][1] == 3  # median, lower, upper: the pinball loss


# --- bioimage.io export from a plate --------------------------------------------------------


def test_export_takes_its_sample_from_a_plate_and_names_halo_when_too_small(tmp_path):
    model = zarrstain.save_model(
        create_model("fnet", input_labels=["BF"], output_labels=["DNA (predicted)"], ndim=2,
                     normalization="zscore", depth=2, mult_chan=4),
        tmp_path / "m",
    )  # fmt: skip
    plate = datasets.make_plate(tmp_path / "plate.zarr", rows=("A",), columns=("1", "2"),
                                fields=1, shape=(1, 1, 64, 64))  # fmt: skip
    done = run("export", model, "--format", "bioimageio", "--out", tmp_path / "a.zip",
               "--sample", plate)  # fmt: skip
    assert done.exit_code == 0, done.output
    done = run("export", model, "--format", "bioimageio", "--out", tmp_path / "b.zip",
               "--sample", plate, "--scene", "A/2/0")  # fmt: skip
    assert done.exit_code == 0, done.output
    small = datasets.make_image(tmp_path / "small.zarr", shape=(1, 1, 24, 24))
    done = run("export", model, "--format", "bioimageio", "--out", tmp_path / "c.zip",
               "--sample", small)  # fmt: skip
    assert done.exit_code != 0 and "too small" in done.output and "--halo" in done.output
    done = run("export", model, "--out", tmp_path / "m.pt", "--sample", plate)
    assert done.exit_code != 0 and "--format bioimageio" in done.output


# --- in-place sampling into integer plates ------------------------------------------------


def test_sampling_into_a_uint16_plate_in_place_with_one_dtype(tmp_path):
    plate = datasets.make_plate(tmp_path / "plate.zarr", rows=("A",), columns=("1",), fields=1,
                                shape=(1, 2, 32, 32))  # fmt: skip
    model = zarrstain.save_model(
        create_model("diffusion", input_labels=["BF"], output_labels=["DNA (predicted)"],
                     normalization="zscore", ndim=2, width=8, mults=[1, 2]),
        tmp_path / "diffusion",
    )  # fmt: skip
    before = tree_digest(plate)
    done = run("predict", plate, "--model", model, "--steps", "2", "--samples", "2")
    assert done.exit_code != 0
    assert "'DNA (predicted) std'" in done.output and "--dtype uint16" in done.output
    assert tree_digest(plate) == before
    done = run("predict", plate, "--model", model, "--steps", "2", "--samples", "2",
               "--dtype", "uint16")  # fmt: skip
    assert done.exit_code == 0, done.output
    image = zarrstain.open_image(plate, "A/1/0")
    assert image.dtype == np.uint16
    assert list(image.coords["c"].values)[-2:] == ["DNA (predicted)", "DNA (predicted) std"]


# --- smaller items ------------------------------------------------------------------------


def test_a_torchscript_export_warns_nothing(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_torchscript(random_model(seed=1), tmp_path / "m.pt")
    assert [str(w.message) for w in caught if w.category.__name__ == "TracerWarning"] == []


def test_messages_under_the_cli_name_flags_and_only_working_ones(tmp_path):
    plate = datasets.make_plate(tmp_path / "plate.zarr", rows=("A",), columns=("1", "2"),
                                fields=1, shape=(1, 4, 32, 32))  # fmt: skip
    with cli_messages(), pytest.raises(SceneNotFoundError, match="pass --scene one of"):
        zarrstain.open_image(plate)
    with pytest.raises(SceneNotFoundError, match="pass scene= one of"):
        zarrstain.open_image(plate)
    # an output label that is an acquired channel: rename it (one target) ...
    one = zarrstain.save_model(random_model(output_labels=("DNA",)), tmp_path / "one")
    done = run("predict", plate, "--model", one, "--dtype", "uint16")
    assert done.exit_code != 0 and "--output-label 'DNA (predicted)'" in done.output
    # ... but a model of two targets cannot be renamed: the advice is --out, not --output-label
    two = zarrstain.save_model(random_model(output_labels=("DNA", "Membrane")), tmp_path / "two")
    done = run("predict", plate, "--model", two, "--dtype", "uint16")
    assert done.exit_code != 0 and "--output-label" not in done.output and "--out" in done.output
    with pytest.raises(ChannelExistsError, match="output_label='DNA .predicted.'"):
        zarrstain.engine.pipeline.plan_prediction(plate, one, dtype="uint16")


def test_the_package_metadata_uses_an_spdx_license_string():
    """setuptools deprecates ``project.license`` as a table (warns on every install)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert isinstance(project["license"], str) and project["license"] == "BSD-3-Clause"
