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
