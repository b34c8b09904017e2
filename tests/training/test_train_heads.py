"""Training other heads than a value, on targets some scenes lack, and from a trained model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from zarrstain.cli.main import cli

import zarrstain
from zarrstain import datasets
from zarrstain.errors import ChannelError, ParameterError
from zarrstain.training import TrainConfig
from zarrstain.training import train as run_training


def config(**kwargs) -> TrainConfig:
    defaults = dict(
        inputs=["BF"],
        targets=["DNA"],
        model="fnet2d",
        depth=2,
        mult_chan=4,
        steps=4,
        batch_size=2,
        patch=[32, 32],
        device="cpu",
        checkpoint_every=100,
    )
    return TrainConfig(**{**defaults, **kwargs})


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    path = tmp_path_factory.mktemp("heads") / "plate.zarr"
    return datasets.make_plate(
        path, rows=("A",), columns=("1", "2"), fields=1, shape=(1, 2, 48, 48), seed=3
    )


@pytest.mark.parametrize(
    ("head", "options", "suffixes", "loss"),
    [
        ("bins", {"bins": 16}, ["", " std"], "cross-entropy over intensity bins"),
        ("bins", {"bins": 8, "head_outputs": ["mode"]}, ["", " std", " mode"], None),
        ("quantiles", {"alpha": 0.2}, ["", " lower", " upper"], "pinball"),
    ],
)
def test_each_head_trains_saves_and_predicts(plate, tmp_path, head, options, suffixes, loss):
    result = run_training(plate, config(head=head, **options), tmp_path / "m")
    model = result.model
    assert model.output_labels == tuple(f"DNA (predicted){s}" for s in suffixes)
    card = json.loads((result.package / "card.json").read_text())
    assert card["kwargs"]["head"]["kind"] == head
    if loss:
        assert card["training"]["loss"] == loss
    if head == "bins":  # the range is measured from the normalized targets and stored
        lo, hi = card["kwargs"]["head"]["range"]
        assert -10 < lo < -0.5 and 0.5 < hi < 20
    loaded = zarrstain.load_model(result.package)
    assert loaded.content_hash == model.content_hash and loaded.head == model.head
    out = tmp_path / "pred.zarr"
    pred = zarrstain.predict(zarrstain.open_image(plate, "A/1/0"), loaded)
    zarrstain.write_channels(plate, pred, out=out)
    written = zarrstain.open_image(out)
    assert set(model.output_labels) <= set(written.c.values)
    if head == "quantiles":
        lower, upper = (written.sel(c=f"DNA (predicted) {b}").values for b in ("lower", "upper"))
        assert (lower <= upper).all()


def test_targets_a_scene_lacks_are_masked_not_an_error(tmp_path):
    rng = np.random.default_rng(0)
    both = rng.integers(0, 1000, (1, 3, 1, 48, 48)).astype(np.uint16)
    datasets.save_image(tmp_path / "a.zarr", both, "tczyx", channel_labels=["BF", "DNA", "Mem"])
    datasets.save_image(tmp_path / "b.zarr", both[:, :2], "tczyx", channel_labels=["BF", "DNA"])
    stores = [tmp_path / "a.zarr", tmp_path / "b.zarr"]
    result = run_training(stores, config(targets=["DNA", "Mem"]), tmp_path / "m")
    card = json.loads((result.package / "card.json").read_text())
    assert card["training"]["targets_seen"] == {"DNA": 2, "Mem": 1}
    assert all(np.isfinite(h["loss"]) for h in result.history)
    with pytest.raises(ChannelError, match="target channel 'Nuc' is in none of the scenes"):
        run_training(stores, config(targets=["DNA", "Nuc"]), tmp_path / "n")


def test_transfer_trains_only_what_is_not_frozen(plate, tmp_path):
    first = run_training(plate, config(projection=4, steps=2), tmp_path / "first").model
    before = {k: v.clone() for k, v in first.module.state_dict().items()}
    again = run_training(
        plate,
        config(projection=4, steps=3, init=str(tmp_path / "first"), freeze="all-but-head"),
        tmp_path / "second",
    )
    after = again.model.module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("conv_out.") for k in changed)  # BN statistics too
    card = json.loads((again.package / "card.json").read_text())
    assert card["training"]["init"]["freeze"] == "all-but-head"
    assert card["training"]["init"]["content_hash"] == first.content_hash
    # another head on the same net: the output layer starts afresh, the rest is transferred
    third = run_training(
        plate,
        config(projection=4, steps=1, head="quantiles", init=str(tmp_path / "first")),
        tmp_path / "third",
    )
    card = json.loads((third.package / "card.json").read_text())
    assert card["training"]["init"]["initialized_afresh"] == ["conv_out"]


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"head": "gaussian"}, "head 'gaussian' is not one of value, bins, quantiles"),
        ({"head": "quantiles", "alpha": 1.0}, "alpha=1.0 is not in (0, 1)"),
        ({"head": "bins", "bins": 1}, "bins=1 must be at least 2"),
        ({"freeze": "all-but-head"}, "needs a trained model to start from"),
        ({"freeze": "some"}, "freeze 'some' is not one of none, all-but-projection"),
        ({"head_outputs": ["mode"]}, "are options of the bins head, not 'value'"),
    ],
)
def test_bad_head_settings_fail_before_any_work(settings, fragment):
    with pytest.raises(ParameterError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        config(**settings).check()


def test_freezing_a_projection_the_model_lacks(plate, tmp_path):
    run_training(plate, config(steps=1), tmp_path / "plain")
    with pytest.raises(ParameterError, match="has no projection layer to train"):
        run_training(
            plate,
            config(steps=1, init=str(tmp_path / "plain"), freeze="all-but-projection"),
            tmp_path / "next",
        )


def test_heads_and_transfer_through_the_cli(plate, tmp_path):
    args = ["train", str(plate), "--input", "BF", "--target", "DNA", "--model", "fnet2d"]
    args += ["--depth", "2", "--mult-chan", "4", "--steps", "2", "--patch", "32x32"]
    done = CliRunner().invoke(
        cli, [*args, "--head", "bins", "--bins", "8", "--out", tmp_path / "b"]
    )
    assert done.exit_code == 0, done.output
    assert zarrstain.load_model(tmp_path / "b").head.bins == 8
    done = CliRunner().invoke(
        cli,
        [*args, "--init", tmp_path / "b", "--freeze", "all-but-head", "--out", tmp_path / "t"],
    )
    assert done.exit_code == 0, done.output
    bad = CliRunner().invoke(cli, [*args, "--head", "quantiles", "--alpha", "2", "--out", "x"])
    assert bad.exit_code != 0 and "alpha=2.0 is not in (0, 1)" in bad.output
    assert "--alpha" in bad.output
