"""Experiment files: YAML or TOML, flat or in data/model/training sections, checked key by key."""

from __future__ import annotations

import sys

import pytest
from conftest import ROOT

from zarrstain import datasets
from zarrstain.errors import ParameterError
from zarrstain.training import build_config
from zarrstain.training.experiment import read_experiment

CONFIGS = ROOT / "examples" / "configs"

YAML = """
data:
  stores: [plate.zarr]
  inputs: [BF]
  targets: [DNA]
  patch: [64, 64]
  normalization: zscore
model:
  architecture: fnet2d
  kwargs: {depth: 3, mult_chan: 8}
  head: quantiles
training:
  loss: auto
  optimizer: {name: adam, lr: 0.002, betas: [0.5, 0.999]}
  schedule: {name: constant}
  steps: 7
  batch_size: 3
"""
TOML = """
[data]
stores = ["plate.zarr"]
inputs = ["BF"]
targets = ["DNA"]
patch = [64, 64]
normalization = "zscore"
[model]
architecture = "fnet2d"
kwargs = { depth = 3, mult_chan = 8 }
head = "quantiles"
[training]
loss = "auto"
optimizer = { name = "adam", lr = 0.002, betas = [0.5, 0.999] }
schedule = { name = "constant" }
steps = 7
batch_size = 3
"""


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_and_toml_sections_make_the_same_config(tmp_path):
    y, t = _write(tmp_path, "exp.yaml", YAML), _write(tmp_path, "exp.toml", TOML)
    stores, values = read_experiment(y)
    assert stores == [str(tmp_path / "plate.zarr")]  # relative to the file
    assert read_experiment(t) == (stores, values)
    config = build_config(y)
    assert (config.model, config.depth, config.mult_chan, config.head) == (
        "fnet2d",
        3,
        8,
        "quantiles",
    )
    assert (config.lr, config.betas, config.steps, config.batch_size) == (0.002, (0.5, 0.999), 7, 3)
    assert build_config(y, steps=9).steps == 9  # flags override the file


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("  patch: [64, 64]", "  pach: [64, 64]"),
            r"unknown key data\.pach; allowed: stores, inputs",
        ),
        (
            ("name: adam", "name: lamb"),
            r"training\.optimizer\.name 'lamb' is not one of adam, adamw, sgd",
        ),
        (
            ("{name: constant}", "{name: poly}"),
            r"training\.schedule\.name 'poly' is not one of constant, step, exponential, cosine",
        ),
        (("loss: auto", "loss: l1"), r"training\.loss 'l1' is not one of auto"),
        (("architecture: fnet2d", "architecture: unet9"), r"model 'unet9' is not a registered"),
        (("training:", "trainer:"), r"unknown section 'trainer'; an experiment has sections"),
    ],
    ids=["bad-key", "bad-optimizer", "bad-schedule", "bad-loss", "bad-architecture", "section"],
)
def test_a_bad_key_or_value_gives_one_clear_error(tmp_path, edit, message):
    path = _write(tmp_path, "exp.yaml", YAML.replace(*edit))
    with pytest.raises(ParameterError, match=message):
        build_config(path)


def test_a_missing_section_and_unreadable_files(tmp_path):
    no_model = YAML.split("model:")[0] + "training:" + YAML.split("training:")[1]
    with pytest.raises(ParameterError, match="missing section 'model'"):
        build_config(_write(tmp_path, "a.yaml", no_model))
    with pytest.raises(ParameterError, match="is not valid YAML"):
        build_config(_write(tmp_path, "b.yaml", "data: [unclosed"))
    with pytest.raises(ParameterError, match="is not valid TOML"):
        build_config(_write(tmp_path, "c.toml", "data = ["))
    flat = _write(tmp_path, "flat.toml", 'inputs = ["BF"]\ntargets = ["DNA"]\nmodel = "fnet2d"\n')
    assert build_config(flat).model == "fnet2d"  # the flat layout still reads


@pytest.mark.parametrize(
    "name", ["fnet_paper.yaml", "isl.yaml", "pix2pix.yaml", "control_branch.toml"]
)
def test_the_example_recipes_read(name):
    stores, values = read_experiment(CONFIGS / name)
    # the paper's recipe names no store: it needs stacks of 32 planes, the demo has 16
    assert len(stores) == (name != "fnet_paper.yaml") and values["targets"]
    if name != "control_branch.toml":  # that one needs its backbone to exist
        config = build_config(CONFIGS / name)
        assert (
            config.steps
            == {"fnet_paper.yaml": 50_000, "isl.yaml": 600, "pix2pix.yaml": 20_000}[name]
        )
    else:
        assert values["backbone"].endswith("models/backbone") and values["head"] == "quantiles"


def test_cli_trains_from_an_experiment_file_alone(tmp_path):
    from click.testing import CliRunner

    from cli.main import cli

    datasets.make_image(tmp_path / "plate.zarr", shape=(1, 1, 64, 64))
    text = (
        YAML.replace("fnet2d", "fnet2d")
        .replace("depth: 3", "depth: 2")
        .replace("steps: 7", "steps: 2")
    )
    path = _write(tmp_path, "exp.yaml", text.replace("[64, 64]", "[32, 32]"))
    runner = CliRunner()
    done = runner.invoke(cli, ["train", "--config", str(path), "--out", str(tmp_path / "m"),
                               "--device", "cpu"])  # fmt: skip
    assert done.exit_code == 0, done.output
    assert (tmp_path / "m" / "card.json").is_file()
    none = runner.invoke(cli, ["train", "--out", str(tmp_path / "n")])
    assert none.exit_code != 0 and "STORES" in none.output


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["fnet_paper.yaml", "isl.yaml", "pix2pix.yaml", "control_branch.toml"]
)
def test_the_example_recipes_train_as_their_files_say(tmp_path, name):
    """Each shipped file trains from a clone's root as its "Run:" line says (2 steps here).

    The clone is mirrored in ``tmp_path``: ``examples/configs/`` with the demo plate (the
    files' ``../../zarrstain-demo/plate.zarr``), the backbone the control branch names, the ISL
    store the ISL example writes, and a 32-plane plate for the paper's 32-plane patches.
    """
    import shutil

    from click.testing import CliRunner
    from conftest import SHARED

    from cli.main import cli

    configs = tmp_path / "examples" / "configs"
    shutil.copytree(CONFIGS, configs)
    args = ["--config", str(configs / name), "--out", str(tmp_path / "model"), "--steps", "2",
            "--batch-size", "2", "--device", "cpu"]  # fmt: skip
    runner = CliRunner()
    if name in ("pix2pix.yaml", "control_branch.toml"):
        datasets.make_plate(
            tmp_path / "zarrstain-demo" / "plate.zarr", fields=1, shape=(1, 16, 64, 64)
        )
    if name == "control_branch.toml":  # the backbone the file names, as its comment says
        backbone = ["train", str(tmp_path / "zarrstain-demo" / "plate.zarr"), "--model",
                    "diffusion2d", "--target", "DNA", "--unconditional", "--normalization",
                    "zscore", "--out", str(tmp_path / "models" / "backbone"), "--steps", "2",
                    "--patch", "32x32", "--batch-size", "2"]  # fmt: skip
        done = runner.invoke(cli, backbone)
        assert done.exit_code == 0, done.output
    if name == "fnet_paper.yaml":
        deep = datasets.make_plate(tmp_path / "deep.zarr", columns=["1"], fields=1,
                                   shape=(1, 32, 64, 64))  # fmt: skip
        args = [str(deep), *args]
    if name == "isl.yaml":  # the store examples/isl_phase_to_dapi.py writes first
        data = SHARED / "data" / "isl_condition_blue"
        if not data.is_dir():
            pytest.skip(f"{data} is absent (the ISL data lives in ../shared)")
        sys.path.insert(0, str(CONFIGS.parents[0]))
        try:
            from isl_phase_to_dapi import convert
        finally:
            sys.path.pop(0)
        convert(data, tmp_path / "isl-output" / "isl.zarr")
    done = runner.invoke(cli, ["train", *args])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "model" / "card.json").is_file()


def test_patch_sizes_read_from_text():
    from zarrstain.training import TrainConfig

    assert TrainConfig(["BF"], ["DNA"], patch="32x64X64").patch == [32, 64, 64]
    assert TrainConfig(["BF"], ["DNA"], patch="256,256", model="fnet2d").patch == [256, 256]
    with pytest.raises(ParameterError, match="'32 by 64' is not a size like 32x64x64"):
        TrainConfig(["BF"], ["DNA"], patch="32 by 64")
