"""Choosing the model: validation loss, the best checkpoint, early stopping, curves."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from zarrstain import datasets
from zarrstain.errors import ParameterError
from zarrstain.training import TrainConfig, build_config
from zarrstain.training import train as run_training
from zarrstain.training.curves import EVENTS, PNG
from zarrstain.training.selection import Selection


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    path = tmp_path_factory.mktemp("selection") / "plate.zarr"
    return datasets.make_plate(
        path, rows=("A",), columns=("1", "2"), fields=1, shape=(1, 4, 48, 48), seed=3
    )


def _config(**kwargs) -> TrainConfig:
    defaults = dict(inputs=["BF"], targets=["DNA"], model="fnet2d", depth=2, mult_chan=4,
                    steps=8, batch_size=2, patch=[16, 16], device="cpu", val_fraction=0.4,
                    val_patches=4, validate_every=1, checkpoint_every=4)  # fmt: skip
    return TrainConfig(**{**defaults, **kwargs})


def _weights(model) -> list[torch.Tensor]:
    return [v.detach().clone() for v in model.module.state_dict().values()]


def test_selection_follows_the_metric_its_direction_and_min_delta():
    pcc = Selection("val_pcc", patience=2)
    history = [{"step": s, "val_pcc": v} for s, v in [(1, 0.5), (2, 0.7), (3, 0.6), (4, 0.65)]]
    assert [pcc.update(h) for h in history] == [True, True, False, False]
    assert (pcc.best_step, pcc.best_value) == (2, 0.7) and pcc.stop(history)
    assert not pcc.stop(history[:3])  # one validation since the best: patience 2 waits
    loss = Selection("val_loss", min_delta=0.1)
    assert [loss.update({"step": s, "val_loss": v}) for s, v in
            [(1, 1.0), (2, 0.95), (3, 0.85)]] == [True, False, True]  # fmt: skip
    assert Selection(None).update({"step": 1, "val_pcc": 1.0}) is False


def test_the_package_keeps_the_best_validation_and_the_run_goes_on(plate, tmp_path):
    result = run_training(plate, _config(monitor="val_loss"), tmp_path / "best")
    losses = [h["val_loss"] for h in result.history]
    best = int(np.argmin(losses)) + 1
    assert result.best == {"monitor": "val_loss", "step": best, "value": min(losses)}
    assert len(result.history) == 8 and result.stopped_early is None
    card = json.loads((tmp_path / "best" / "card.json").read_text())
    assert card["training"]["best"] == result.best
    # the same run stopped at the best step holds the same weights: monitoring changed
    # nothing of the training, and the package is that step's
    upto = run_training(plate, _config(steps=best), tmp_path / "upto")
    for a, b in zip(_weights(result.model), _weights(upto.model), strict=True):
        torch.testing.assert_close(a, b)
    assert [h["loss"] for h in upto.history] == [h["loss"] for h in result.history[:best]]


def test_early_stopping_stops_after_patience_and_stays_stopped(plate, tmp_path):
    # nothing improves on the first validation by more than 10: it stays the best
    config = _config(monitor="val_pcc", patience=2, min_delta=10.0, steps=20)
    result = run_training(plate, config, tmp_path / "early")
    assert result.stopped_early == 3 and len(result.history) == 3
    assert result.best["step"] == 1
    card = json.loads((tmp_path / "early" / "card.json").read_text())
    assert card["training"]["stopped_early"] == 3 and card["training"]["steps"] == 3
    again = run_training(plate, config, tmp_path / "early", resume=True)
    assert len(again.history) == 3 and again.stopped_early == 3  # nothing left to do
    with pytest.raises(ParameterError, match="trained with monitor='val_pcc'"):
        run_training(plate, _config(steps=20), tmp_path / "early", resume=True)


def test_a_monitored_run_resumes_exactly(plate, tmp_path):
    straight = run_training(plate, _config(monitor="val_pcc", ema=0.9), tmp_path / "a")
    run_training(plate, _config(monitor="val_pcc", ema=0.9, steps=4), tmp_path / "b")
    resumed = run_training(plate, _config(monitor="val_pcc", ema=0.9), tmp_path / "b",
                           resume=True)  # fmt: skip
    assert resumed.history == straight.history and resumed.best == straight.best
    for a, b in zip(_weights(resumed.model), _weights(straight.model), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_validation_does_not_change_what_a_diffusion_model_learns(tmp_path):
    """The validation loss draws its diffusion steps and noise under its own seed."""
    plate = datasets.make_plate(tmp_path / "p.zarr", rows=("A",), columns=("1",), fields=2,
                                shape=(1, 1, 32, 32), seed=1)  # fmt: skip
    config = dict(inputs=["BF"], targets=["DNA"], model="diffusion2d", steps=3, batch_size=2,
                  patch=[32, 32], device="cpu", normalization="zscore",
                  val_scenes=["A/1/1"], val_patches=2, model_kwargs={"width": 8})  # fmt: skip
    often = run_training(plate, TrainConfig(**config, validate_every=1), tmp_path / "often")
    rarely = run_training(plate, TrainConfig(**config, validate_every=100), tmp_path / "rare")
    assert [h["loss"] for h in often.history] == [h["loss"] for h in rarely.history]
    vals = [h["val_loss"] for h in often.history]
    assert len(vals) == 3 and vals[-1] == rarely.history[-1]["val_loss"]


def test_curves_are_tensorboard_scalars_and_a_png_in_the_package(plate, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_training(plate, _config(schedule="cosine", clip_grad_norm=1.0), tmp_path / "m")
    events = EventAccumulator(str((tmp_path / "m" / EVENTS).parent))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "val/pcc", "val/loss"} <= tags
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, 9))
    np.testing.assert_allclose([e.value for e in loss], [h["loss"] for h in result.history],
                               rtol=1e-6)  # fmt: skip
    np.testing.assert_allclose([e.value for e in events.Scalars("val/pcc")],
                               [h["val_pcc"] for h in result.history], rtol=1e-6)  # fmt: skip
    with Image.open(tmp_path / "m" / PNG) as png:
        assert png.format == "PNG" and png.size[0] >= 560
        pixels = np.asarray(png.convert("RGB"))
    assert (pixels != 255).any(axis=-1).mean() > 0.01  # curves drawn, not a blank sheet
    assert "![training curves](curves.png)" in (tmp_path / "m" / "README.md").read_text()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(monitor="val_ssim"), "monitor 'val_ssim' is not one of val_pcc, val_loss"),
        (dict(patience=3), "patience stops when a validation metric stops improving"),
        (dict(monitor="val_pcc", patience=0), "patience must be a whole number ≥ 1"),
        (dict(monitor="val_pcc", min_delta=-1.0), "min_delta must be a number ≥ 0"),
    ],
)
def test_bad_selection_settings_are_refused(change, message):
    with pytest.raises(ParameterError, match=message):
        _config(**change).check()


def test_monitoring_needs_held_out_data(plate, tmp_path):
    with pytest.raises(ParameterError, match="monitor val_pcc needs held-out patches.*val_scenes"):
        run_training(plate, _config(monitor="val_pcc", val_fraction=None), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_the_cli_and_experiment_files_choose_and_stop(plate, tmp_path):
    from zarrstain.cli.main import cli

    out = tmp_path / "m"
    args = ["train", str(plate), "--input", "BF", "--target", "DNA", "--out", str(out),
            "--model", "fnet2d", "--depth", "2", "--mult-chan", "4", "--patch", "16x16",
            "--batch-size", "2", "--steps", "20", "--val-fraction", "0.4", "--device", "cpu",
            "--validate-every", "2", "--monitor", "val_loss", "--patience", "1",
            "--min-delta", "100"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "kept the best validation: val_loss" in result.output
    assert "stopped early at step 4 (--patience)" in result.output
    path = tmp_path / "run.yaml"
    path.write_text(
        "data: {stores: [p.zarr], inputs: [BF], targets: [DNA], val_fraction: 0.5}\n"
        "model: {architecture: fnet2d}\n"
        "training: {steps: 100, monitor: val_pcc, patience: 4, min_delta: 0.001}\n"
    )
    config = build_config(path)
    assert (config.monitor, config.patience, config.min_delta) == ("val_pcc", 4, 0.001)
