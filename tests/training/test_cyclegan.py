"""CycleGAN: unpaired training through the CLI, exact resume, its fake pool and checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import zarrstain
from zarrstain import datasets
from zarrstain.errors import ParameterError
from zarrstain.training import TrainConfig
from zarrstain.training import train as run_training
from zarrstain.training.cyclegan import FakePool

TARGETS = ["A/2/0", "A/2/1"]


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    path = tmp_path_factory.mktemp("cyclegan") / "plate.zarr"
    return datasets.make_plate(
        path, rows=("A",), columns=("1", "2", "3"), fields=2, shape=(1, 1, 48, 48), seed=4
    )


def _config(**kwargs) -> TrainConfig:
    defaults = dict(inputs=["BF"], targets=["DNA"], model="cyclegan", generator="fnet2d",
                    depth=2, mult_chan=4, steps=6, batch_size=2, patch=[32, 32], device="cpu",
                    target_scenes=TARGETS, val_scenes=["A/3/0"], validate_every=3,
                    checkpoint_every=3, discriminator_layers=2, discriminator_width=8,
                    pool_size=3)  # fmt: skip
    return TrainConfig(**{**defaults, **kwargs})


def test_cyclegan_trains_resumes_exactly_and_predicts_as_its_generator(plate, tmp_path):
    straight = run_training(plate, _config(), tmp_path / "a")
    keys = {"loss", "d_loss", "adversarial", "cycle", "identity", "lr"}
    assert keys <= set(straight.history[0]) and straight.history[-1]["identity"] > 0
    assert "val_pcc" in straight.history[2]  # validated on the paired held-out scene
    run_training(plate, _config(steps=3), tmp_path / "b")
    resumed = run_training(plate, _config(), tmp_path / "b", resume=True)
    assert resumed.history == straight.history  # F, the critics and the pools restored
    for a, b in zip(resumed.model.module.state_dict().values(),
                    straight.model.module.state_dict().values(), strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ParameterError, match="was trained with cyclegan; resume it with --model"):
        pix2pix = _config(model="pix2pix", target_scenes=None, steps=9, pool_size=50)
        run_training(plate, pix2pix, tmp_path / "b", resume=True)
    card = json.loads((tmp_path / "a" / "card.json").read_text())
    assert card["training"]["loss"] == "cyclegan: LSGAN ×1 + cycle L1 ×10 + identity L1 ×2"
    assert card["architecture"] == "fnet" and card["output_labels"] == ["DNA (predicted)"]
    pred = zarrstain.predict(zarrstain.open_image(plate, "A/3/1"), zarrstain.load_model(
        tmp_path / "a"))  # fmt: skip
    assert np.isfinite(pred.values).all()


def test_the_fake_pool_replays_older_fakes_deterministically():
    pool = FakePool(2)
    rng = np.random.default_rng(0)
    first = torch.arange(2.0).view(2, 1)
    assert torch.equal(pool.query(first, rng), first)  # filling: the new ones
    again = [pool.query(torch.full((4, 1), 9.0), np.random.default_rng(5)) for _ in range(2)]
    assert (again[0] != 9.0).any()  # some replayed from the pool
    other = FakePool(2)
    other.query(first, np.random.default_rng(0))
    assert torch.equal(other.query(torch.full((4, 1), 9.0), np.random.default_rng(5)), again[0])
    assert torch.equal(FakePool(0).query(first, rng), first)


def test_unpaired_settings_are_checked(plate, tmp_path):
    with pytest.raises(ParameterError, match="name those whose targets it learns"):
        _config(target_scenes=None).check()
    with pytest.raises(ParameterError, match="target_scenes chooses an unpaired run"):
        TrainConfig(["BF"], ["DNA"], model="fnet2d", target_scenes=TARGETS).check()
    with pytest.raises(ParameterError, match="target scene 'Z/9/9' is not among"):
        run_training(plate, _config(target_scenes=["Z/9/9"]), tmp_path / "x")
    everything = [s for s in zarrstain.open_scenes(plate) if s != "A/3/0"]
    with pytest.raises(ParameterError, match="every training scene is a target scene"):
        run_training(plate, _config(target_scenes=everything), tmp_path / "y")


def test_the_cli_trains_cyclegan(plate, tmp_path):
    from zarrstain.cli.main import cli

    args = ["train", str(plate), "--model", "cyclegan", "--generator", "fnet2d", "--input",
            "BF", "--target", "DNA", "--target-scene", TARGETS[0], "--target-scene", TARGETS[1],
            "--patch", "32x32", "--batch-size", "2", "--steps", "2", "--depth", "2",
            "--mult-chan", "4", "--cycle-weight", "5", "--identity-weight", "0",
            "--discriminator-layers", "2", "--device", "cpu",
            "--out", str(tmp_path / "m")]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["training"]["gan"]["cycle_weight"] == 5.0
    assert card["training"]["loss"].endswith("cycle L1 ×5 + identity L1 ×0")
