"""Training recipes: optimizers, learning-rate schedules, weight decay, gradient clipping."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from zarrstain import datasets
from zarrstain.errors import ParameterError
from zarrstain.training import TrainConfig, build_config
from zarrstain.training import train as run_training
from zarrstain.training.recipe import lr_factor, make_optimizer


def _torch_factors(make, steps: int) -> list[float]:
    """The factors torch's own scheduler gives each of ``steps`` optimizer steps."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = make(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedules_follow_torchs_own():
    lr = torch.optim.lr_scheduler
    n = 25
    ours = [lr_factor(k, schedule="step", decay_every=7, gamma=0.5) for k in range(1, n + 1)]
    np.testing.assert_allclose(ours, _torch_factors(lambda o: lr.StepLR(o, 7, 0.5), n))
    ours = [lr_factor(k, schedule="exponential", decay_every=1, gamma=0.9) for k in range(1, n + 1)]
    np.testing.assert_allclose(ours, _torch_factors(lambda o: lr.ExponentialLR(o, 0.9), n))
    ours = [lr_factor(k, schedule="cosine", steps=n, min_factor=0.1) for k in range(1, n + 1)]
    theirs = _torch_factors(lambda o: lr.CosineAnnealingLR(o, n - 1, eta_min=0.1), n)
    np.testing.assert_allclose(ours, theirs, atol=1e-12)
    assert ours[0] == 1.0 and ours[-1] == pytest.approx(0.1)
    assert {lr_factor(k) for k in range(1, 9)} == {1.0}


def test_warmup_rises_linearly_then_the_schedule_starts():
    factors = [lr_factor(k, schedule="cosine", steps=14, warmup_steps=4) for k in range(1, 15)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and factors[-1] == pytest.approx(0.0)
    # exponential: gamma per decay_every steps, smoothly
    assert lr_factor(501, schedule="exponential", decay_every=1000, gamma=0.25) == 0.5


def test_optimizers_and_weight_decay():
    params = [torch.nn.Parameter(torch.zeros(2))]
    config = TrainConfig(["BF"], ["DNA"], optimizer="adamw", weight_decay=0.05, lr=3e-4)
    opt = make_optimizer(params, config)
    assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["weight_decay"] == 0.05
    sgd = make_optimizer(params, dataclasses.replace(config, optimizer="sgd", momentum=0.8))
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["momentum"] == 0.8
    assert type(make_optimizer(params, TrainConfig(["BF"], ["DNA"]))) is torch.optim.Adam


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(optimizer="lamb"), "optimizer 'lamb' is not one of adam, adamw, sgd"),
        (dict(schedule="poly"), "schedule 'poly' is not one of constant, step, exponential"),
        (dict(weight_decay=-1.0), "weight_decay must be a number ≥ 0"),
        (dict(warmup_steps=-2), "warmup_steps must be a whole number ≥ 0"),
        (dict(schedule="step", decay_every=0), "decay_every must be a whole number ≥ 1"),
        (dict(schedule="step", lr_gamma=1.5), "lr_gamma must be in \\(0, 1\\]"),
        (dict(schedule="cosine", min_lr=0.1), "min_lr 0.1 must be below lr"),
        (dict(clip_grad_norm=0.0), "clip_grad_norm must be a positive number"),
        (dict(momentum=0.5), "momentum is a setting of SGD"),
    ],
)
def test_bad_recipes_are_refused_with_the_setting_named(change, message):
    with pytest.raises(ParameterError, match=message):
        TrainConfig(["BF"], ["DNA"], model="fnet2d", **change).check()


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "plate.zarr"
    return datasets.make_plate(
        path, rows=("A",), columns=("1", "2"), fields=1, shape=(1, 4, 48, 48), seed=5
    )


def _config(**kwargs) -> TrainConfig:
    defaults = dict(inputs=["BF"], targets=["DNA"], depth=2, mult_chan=4, steps=6,
                    batch_size=2, patch=[4, 16, 16], device="cpu", optimizer="adamw",
                    weight_decay=0.01, schedule="cosine", warmup_steps=2, min_lr=1e-4,
                    clip_grad_norm=0.5, checkpoint_every=3)  # fmt: skip
    return TrainConfig(**{**defaults, **kwargs})


def test_a_recipe_trains_records_its_learning_rate_and_resumes_exactly(plate, tmp_path):
    straight = run_training(plate, _config(), tmp_path / "straight")
    lrs = [h["lr"] for h in straight.history]
    expected = [1e-3 * lr_factor(k, schedule="cosine", steps=6, warmup_steps=2, min_factor=0.1)
                for k in range(1, 7)]  # fmt: skip
    np.testing.assert_allclose(lrs, expected)
    run_training(plate, _config(steps=3), tmp_path / "resumed")
    resumed = run_training(plate, _config(), tmp_path / "resumed", resume=True)
    assert [h["lr"] for h in resumed.history] == lrs
    for a, b in zip(
        resumed.model.module.state_dict().values(),
        straight.model.module.state_dict().values(),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    card = json.loads((tmp_path / "straight" / "card.json").read_text())
    assert card["training"]["optimizer"] == (
        "AdamW (weight decay 0.01), cosine schedule, 2 warm-up steps, gradients clipped to norm 0.5"
    )


def test_clipping_bounds_the_gradient_norm(plate, tmp_path):
    from zarrstain.training.recipe import clip

    w = torch.nn.Parameter(torch.zeros(4))
    w.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])
    assert clip([w], 1.0) == 5.0 and torch.linalg.vector_norm(w.grad) == pytest.approx(1.0)
    # one SGD step (its first step is lr × gradient) with the gradients clipped to norm 1e-3:
    # two learning rates move the same weights apart by 0.5 × 1e-3
    sgd = dict(optimizer="sgd", schedule="constant", warmup_steps=0, min_lr=0.0, steps=1,
               weight_decay=0.0, clip_grad_norm=1e-3)  # fmt: skip
    a = run_training(plate, _config(lr=1.0, **sgd), tmp_path / "a")
    b = run_training(plate, _config(lr=0.5, **sgd), tmp_path / "b")
    assert a.history[0]["grad_norm"] > 0.1  # far above the bound: clipping acted
    moved = sum(
        float(torch.linalg.vector_norm(x.detach() - y.detach())) ** 2
        for x, y in zip(a.model.module.parameters(), b.model.module.parameters(), strict=True)
    )
    assert moved**0.5 == pytest.approx(0.5e-3, rel=0.01)
    card = json.loads((tmp_path / "a" / "card.json").read_text())
    assert card["training"]["optimizer"] == "SGD, gradients clipped to norm 0.001"


def test_experiment_files_hold_the_recipe(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        "data: {stores: [p.zarr], inputs: [BF], targets: [DNA]}\n"
        "model: {architecture: fnet2d}\n"
        "training:\n"
        "  optimizer: {name: adamw, lr: 0.0002, betas: [0.9, 0.99], weight_decay: 0.05}\n"
        "  schedule: {name: cosine, warmup_steps: 10, min_lr: 0.00001}\n"
        "  clip_grad_norm: 1.0\n"
        "  steps: 100\n"
    )
    config = build_config(path)
    assert (config.optimizer, config.lr, config.betas, config.weight_decay) == (
        "adamw", 0.0002, (0.9, 0.99), 0.05
    )  # fmt: skip
    assert (config.schedule, config.warmup_steps, config.min_lr) == ("cosine", 10, 1e-5)
    assert config.clip_grad_norm == 1.0
    path.write_text(path.read_text().replace("min_lr: 0.00001", "gamma: 0.5"))
    with pytest.raises(ParameterError, match="training.schedule.gamma: the cosine schedule takes"):
        build_config(path)


def test_the_pix2pix_preset_is_mmv_im2ims_published_recipe():
    """MMV_Im2Im's paper_configs/labelfree_3d_pix2pix_train.yaml, setting by setting."""
    config = TrainConfig.paper(model="pix2pix", inputs=["BF"], targets=["DNA"])
    config.check()
    assert (config.generator, config.depth, config.mult_chan) == ("fnet3d", 4, 32)
    assert (config.optimizer, config.lr, config.betas, config.weight_decay) == (
        "adam", 2e-4, (0.5, 0.999), 5e-4
    )  # fmt: skip
    gan = config.gan  # the critic: the same Adam, weight decay and schedule
    assert (gan.lr, gan.betas, gan.weight_decay) == (2e-4, (0.5, 0.999), 5e-4)
    assert (gan.loss, gan.weight, gan.reconstruction, gan.reconstruction_weight) == (
        "bce", 1.0, "mse", 1000.0
    )  # fmt: skip
    assert (gan.layers, gan.width) == (4, 64)
    # ExponentialLR(0.999) stepped once an epoch; 2 images x 4 crops of 32x256x256 per device
    assert (config.schedule, config.lr_gamma, config.decay_every) == ("step", 0.999, "epoch")
    assert (config.batch_size, config.patches_per_scene, config.patch) == (8, 4, [32, 256, 256])
    assert (config.epochs, config.normalization) == (10_000, "center")
    # a generator of another family keeps the recipe, not fnet's network
    other = TrainConfig.paper(model="pix2pix", generator="fnet2d", inputs=["BF"], targets=["DNA"])
    assert (other.generator, other.lr, other.patch) == ("fnet2d", 2e-4, None)


def test_the_diffusion_preset_is_guided_i2is():
    """guided-I2I's config/Target2.json: Adam 8e-5, no weight decay, batch 2, EMA 0.9999."""
    config = TrainConfig.paper(model="diffusion2d", inputs=["BF"], targets=["DNA"])
    assert (config.optimizer, config.lr, config.weight_decay, config.betas) == (
        "adam", 8e-5, 0.0, (0.9, 0.999)
    )  # fmt: skip
    assert (config.batch_size, config.ema, config.steps) == (2, 0.9999, 250_000)
    assert config.architecture()[1]["timesteps"] == 2000


def test_epochs_count_as_mmv_im2im_counts_them_and_decay_like_lightning(plate, tmp_path):
    from zarrstain.training.recipe import in_steps

    # 2 training scenes x 3 patches each / batch 2 = 3 steps per epoch
    config = _config(epochs=3, steps=400, patches_per_scene=3, schedule="step", lr_gamma=0.5,
                     decay_every="epoch", warmup_steps=0, min_lr=0.0,
                     clip_grad_norm=None)  # fmt: skip
    counted = in_steps(config, 2)
    assert (counted.steps, counted.decay_every, counted.epochs) == (9, 3, None)
    assert in_steps(counted, 2) is counted  # counted in steps already
    result = run_training(plate, config, tmp_path / "epochs")
    assert len(result.history) == 9
    # Lightning steps ExponentialLR(0.5) at each epoch's end: constant within an epoch
    theirs = _torch_factors(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.5), 3)
    np.testing.assert_allclose([h["lr"] for h in result.history],
                               [1e-3 * f for f in theirs for _ in range(3)])  # fmt: skip
    card = json.loads((tmp_path / "epochs" / "card.json").read_text())
    assert (card["training"]["epochs"], card["training"]["epoch_steps"]) == (3, 3)
    assert card["training"]["steps"] == 9


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(epochs=0), "epochs must be a whole number ≥ 1"),
        (dict(decay_every="week"), 'decay_every must be a whole number ≥ 1 or "epoch"'),
        (dict(patches_per_scene=0), "patches_per_scene must be a whole number ≥ 1"),
    ],
)
def test_bad_epoch_settings_are_refused(change, message):
    with pytest.raises(ParameterError, match=message):
        TrainConfig(["BF"], ["DNA"], model="fnet2d", **change).check()


def test_the_cli_trains_in_epochs(plate, tmp_path):
    from click.testing import CliRunner
    from zarrstain.cli.main import cli

    out = tmp_path / "m"
    args = ["train", str(plate), "--input", "BF", "--target", "DNA", "--out", str(out),
            "--model", "fnet2d", "--depth", "2", "--mult-chan", "4", "--patch", "16x16",
            "--batch-size", "2", "--epochs", "2", "--patches-per-scene", "2",
            "--schedule", "step", "--decay-every", "epoch", "--lr-gamma", "0.5",
            "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["steps"] == 4 and card["training"]["config"]["decay_every"] == 2
    bad = CliRunner().invoke(cli, [*args[:-2], "--decay-every", "weekly", "--overwrite"])
    assert bad.exit_code == 2 and "neither a number of steps nor 'epoch'" in bad.output


@pytest.mark.parametrize(
    ("precision", "model"),
    # not bfloat16 in 3D: torch 2.13's CPU build gives non-finite BatchNorm3d/Conv3d gradients
    # under bfloat16 autocast (checked by hand: 5 of 8 backward passes of one fixed batch)
    [("bfloat16", "fnet2d"), ("float16", "fnet2d"), ("float16", "fnet3d")],
)
def test_mixed_precision_trains_close_to_float32_and_resumes_exactly(
    plate, tmp_path, precision, model
):
    patch = [16, 16] if model == "fnet2d" else [4, 16, 16]
    settings = dict(schedule="constant", warmup_steps=0, min_lr=0.0, clip_grad_norm=1.0,
                    model=model, patch=patch)  # fmt: skip
    full = run_training(plate, _config(**settings), tmp_path / "f32")
    mixed = run_training(plate, _config(precision=precision, **settings), tmp_path / "mixed")
    ours, theirs = [h["loss"] for h in mixed.history], [h["loss"] for h in full.history]
    assert all(np.isfinite(ours)) and ours != theirs  # autocast did run in lower precision
    # the same weights and patch at the first step: the same loss to low precision (later
    # steps drift apart, as any two trajectories of a few steps' rounding do)
    assert ours[0] == pytest.approx(theirs[0], rel=0.01)
    run_training(plate, _config(precision=precision, steps=3, **settings), tmp_path / "r")
    resumed = run_training(plate, _config(precision=precision, **settings), tmp_path / "r",
                           resume=True)  # fmt: skip
    assert [h["loss"] for h in resumed.history] == ours
    state = torch.load(tmp_path / "r" / "training_state.pt", weights_only=True)
    assert ("scaler" in state) == (precision == "float16")
    card = json.loads((tmp_path / "mixed" / "card.json").read_text())
    assert card["training"]["optimizer"].endswith(f"{precision} mixed precision")


def test_a_loss_that_is_no_longer_finite_stops_the_run(plate, tmp_path):
    from zarrstain.errors import TrainingError

    with pytest.raises(TrainingError, match="loss is not finite at step 2 .*lower lr="):
        run_training(plate, _config(lr=1e30, optimizer="sgd", weight_decay=0.0,
                                    clip_grad_norm=None, steps=3), tmp_path / "nan")  # fmt: skip


def test_bad_precisions_are_refused():
    with pytest.raises(ParameterError, match="precision 'half' is not one of float32, bfloat16"):
        TrainConfig(["BF"], ["DNA"], model="fnet2d", precision="half").check()
    with pytest.raises(ParameterError, match="pix2pix trains in float32 or bfloat16"):
        TrainConfig(["BF"], ["DNA"], model="pix2pix", precision="float16").check()
