"""Family option schemas: declared once, checked by the library, flags made by the CLI."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from zarrstain.cli.main import cli

import zarrstain
from zarrstain.errors import ParameterError
from zarrstain.models.schema import FamilyOptions, Option, check_options, declared, merge_schemas
from zarrstain.testing import random_model
from zarrstain.training import build_config

SCHEMA = (
    Option("steps", "int", minimum=1),
    Option("mode", choices=("a", "b")),
    Option("table", "path", flag="--table-file"),
    Option("verbose", "bool"),
    Option("scale", "float", minimum=0),
)


def test_values_are_converted_to_the_declared_type():
    got = check_options(SCHEMA, {"steps": "3", "scale": 2, "verbose": "yes", "mode": None},
                        owner="x")  # fmt: skip
    assert got == {"steps": 3, "scale": 2.0, "verbose": True}  # None: the default
    assert isinstance(got["steps"], int)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"stepz": 1}, "x takes no option stepz; it takes steps, mode, table, verbose, scale"),
        ({"steps": 0}, "steps must be a whole number ≥ 1, not 0"),
        ({"steps": 2.5}, "steps must be a whole number ≥ 1, not 2.5"),
        ({"steps": True}, "steps must be a whole number"),
        ({"mode": "c"}, "mode must be one of a, b, not 'c'"),
        ({"table": "no/such.csv"}, "table: no file 'no/such.csv'"),
        ({"verbose": 1}, "verbose is on or off"),
    ],
)
def test_bad_options_name_the_option_and_what_works(given, message):
    with pytest.raises(ParameterError, match=message):
        check_options(SCHEMA, given, owner="x")


def test_two_families_may_share_an_option_only_when_declared_alike():
    same = merge_schemas([("a", (Option("steps", "int"),)), ("b", (Option("steps", "int"),))])
    assert same["steps"][1] == ["a", "b"]
    with pytest.raises(ValueError, match="b and a both declare the option 'steps'"):
        merge_schemas([("a", (Option("steps", "int"),)), ("b", (Option("steps", "float"),))])


def test_families_declare_their_options_where_the_cli_reads_them_without_importing_them():
    assert [o.name for o in declared("diffusion").run][:3] == ["sampler", "steps", "eta"]
    assert declared("fnet") == FamilyOptions()  # fnet takes none
    assert zarrstain.models.get_architecture("diffusion").run_schema == declared("diffusion").run


def test_predict_refuses_an_option_the_family_does_not_declare():
    model = random_model(seed=1)
    with pytest.raises(ParameterError, match=r"architecture 'fnet' .*takes no option steps; it"):
        zarrstain.predict(np.zeros((1, 1, 16, 32, 32)), model,
                          options={"steps": 2})  # fmt: skip


def test_training_settings_are_checked_against_the_family():
    with pytest.raises(ParameterError, match="architecture 'diffusion' takes no option backbone"):
        build_config(inputs=["BF"], targets=["DNA"], model="diffusion2d",
                     options={"backbone": "models/b"})  # fmt: skip
    config = build_config(inputs=["BF"], targets=["DNA"], model="pix2pix",
                          options={"gan_weight": "2"})  # fmt: skip
    assert config.gan_weight == 2.0


def test_the_cli_makes_a_flag_per_declared_option_and_refuses_bad_values(tmp_path):
    runner = CliRunner()
    shown = runner.invoke(cli, ["predict", "--help"]).output
    assert "--sampler [ddim|ddpm]" in shown and "--guidance-model MODEL" in shown
    assert "--class-dropout" not in shown  # a training setting
    trained = runner.invoke(cli, ["train", "--help"]).output
    assert "--class-dropout FLOAT" in trained and "--gan-loss [bce|lsgan]" in trained
    store = zarrstain.datasets.make_image(tmp_path / "img.zarr", shape=(1, 4, 32, 32))
    folder = zarrstain.save_model(random_model(seed=1), tmp_path / "m")
    done = runner.invoke(cli, ["predict", str(store), "--model", str(folder), "--steps", "2"])
    assert done.exit_code != 0
    assert "takes no option --steps; it takes none" in done.output
