"""Validated option objects: checked once, with messages naming the option; the CLI builds them."""

from __future__ import annotations

import dataclasses

import pytest

from zarrstain import errors
from zarrstain.engine.options import PredictOptions, WriteOptions
from zarrstain.engine.pipeline import plan_prediction
from zarrstain.errors import ParameterError
from zarrstain.testing import random_model


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("halo", "wide", "halo must be 'auto', 'exact' or an integer ≥ 0"),
        ("halo", -1, "halo must be"),
        ("precision", "float8", "precision must be one of float32, tf32, bfloat16, float16"),
        ("device", "gpu", "device must be auto, cpu, cuda or cuda:N, not 'gpu'"),
        ("batch_size", 0, "batch_size must be a whole number ≥ 1, not 0"),
        ("block_memory", "lots", "block memory 'lots' is not a size"),
        ("normalize", "minmax", "unknown normalization 'minmax'"),
        ("seed", 1.5, "seed must be a whole number"),
    ],
)
def test_predict_options_refuse_bad_values(field, value, message):
    with pytest.raises(ParameterError, match=message):
        PredictOptions(**{field: value})


def test_options_are_frozen_normalized_and_revalidated_on_replace():
    opts = PredictOptions(halo="96", input_channels="BF")
    assert opts.halo == 96 and opts.input_channels == ("BF",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.halo = 0  # type: ignore[misc]
    with pytest.raises(ParameterError, match="precision"):
        opts.replace(precision="int4")
    assert opts.kwargs()["input_channels"] == ["BF"]
    write = WriteOptions(out="o.zarr", dtype={"a": "uint16"}, copy_channels=["BF"])
    assert str(write.dtype["a"]) == "uint16" and write.kwargs()["copy_channels"] == ["BF"]
    with pytest.raises(ParameterError, match="copy_channels copies source channels"):
        WriteOptions(copy_channels=True)


def test_messages_name_cli_flags_under_the_cli():
    with errors.cli_messages(), pytest.raises(ParameterError, match="--batch-size must be"):
        PredictOptions(batch_size=-2)


def test_plan_from_option_objects_equals_plan_from_keywords(make_store, tmp_path):
    src = make_store("image", "0.5")
    model = random_model(seed=4)
    by_keywords = plan_prediction(src, model, halo="exact", out=tmp_path / "a.zarr")
    by_objects = plan_prediction(
        src,
        model,
        predict_options=PredictOptions(halo="exact"),
        write_options=WriteOptions(out=tmp_path / "a.zarr"),
    )
    assert by_objects.describe() == by_keywords.describe()
    assert by_objects.options == by_keywords.options and by_objects.write == by_keywords.write
    with pytest.raises(ParameterError, match="halo given both as keyword argument"):
        plan_prediction(src, model, halo="exact", predict_options=PredictOptions())
    with pytest.raises(ParameterError, match="must be a WriteOptions"):
        plan_prediction(src, model, write_options={"out": "x"})
