"""Diffusion schedules, objectives and sampler steps against their closed forms."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from zarrstain.errors import ParameterError
from zarrstain.models.diffusion.schedules import OBJECTIVES, make_schedule, timesteps


def test_linear_cosine_and_zero_terminal_snr():
    linear = make_schedule("linear", 2000, beta_start=1e-6, beta_end=1e-2)  # Cross-Zamirski
    assert float(linear.betas[0]) == pytest.approx(1e-6) and float(linear.betas[-1]) == 1e-2
    cosine = make_schedule("cosine", 1000)
    s = 0.008
    expected = (
        math.cos((0.5 + s) / (1 + s) * math.pi / 2) ** 2 / math.cos(s / (1 + s) * math.pi / 2) ** 2
    )
    assert float(cosine.alpha_bar[499]) == pytest.approx(expected, rel=1e-9)
    zero = make_schedule("linear", 1000, zero_snr=True)
    plain = make_schedule("linear", 1000)
    assert float(zero.alpha_bar[-1]) == pytest.approx(0.0, abs=1e-12)
    assert float(zero.alpha_bar[0]) == pytest.approx(float(plain.alpha_bar[0]))
    assert (zero.alpha_bar[1:] < zero.alpha_bar[:-1]).all()


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_objectives_convert_back_to_x0_and_noise(objective):
    sched = make_schedule("cosine", 100)
    g = torch.Generator().manual_seed(0)
    x0, eps = (
        torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64),
        torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64),
    )
    for t in (0, 37, 98):
        x_t = sched.add_noise(x0, eps, t)
        target = sched.target(objective, x0, eps, t)
        got_x0, got_eps = sched.to_x0_eps(objective, target, x_t, t)
        torch.testing.assert_close(got_x0, x0)
        torch.testing.assert_close(got_eps, eps)


def test_ddpm_step_samples_the_forward_marginal_one_step_earlier():
    """Given the true x0, x_{t-1} must be distributed as the forward process says."""
    sched = make_schedule("linear", 200)
    g = torch.Generator().manual_seed(1)
    n, t = 200_000, 120
    x0 = torch.full((n,), 0.7, dtype=torch.float64)
    x_t = sched.add_noise(x0, torch.randn(n, generator=g, dtype=torch.float64), t)
    prev = sched.ddpm_step(x0, x_t, t, torch.randn(n, generator=g, dtype=torch.float64))
    ab = float(sched.alpha_bar[t - 1])
    assert float(prev.mean()) == pytest.approx(math.sqrt(ab) * 0.7, abs=0.01)
    assert float(prev.var()) == pytest.approx(1 - ab, rel=0.01)


def test_ddim_is_deterministic_at_eta_0_and_ddpm_like_at_eta_1():
    sched = make_schedule("linear", 1000)
    g = torch.Generator().manual_seed(2)
    x0, eps = (
        torch.randn(16, generator=g, dtype=torch.float64),
        torch.randn(16, generator=g, dtype=torch.float64),
    )
    t, t_prev = 900, 600
    # with the true noise, η = 0 lands exactly on the forward process at t_prev
    step = sched.ddim_step(x0, eps, t, t_prev, eta=0.0)
    torch.testing.assert_close(step, sched.add_noise(x0, eps, t_prev))
    # η = 1 between neighbouring steps: DDPM's posterior variance
    ab, ab_prev = float(sched.alpha_bar[500]), float(sched.alpha_bar[499])
    noise = torch.ones(1, dtype=torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    spread = sched.ddim_step(zero, zero, 500, 499, eta=1.0, noise=noise)
    beta = 1 - ab / ab_prev
    assert float(spread) == pytest.approx(math.sqrt(beta * (1 - ab_prev) / (1 - ab)))


def test_timesteps_and_bad_settings():
    assert timesteps(1000, 4) == [999, 749, 499, 249]
    assert timesteps(10, 10) == list(range(9, -1, -1))
    for call, fragment in [
        (lambda: make_schedule("sigmoid"), "schedule 'sigmoid' is not one of linear, cosine"),
        (lambda: make_schedule("linear", 1), "at least 2 steps"),
        (lambda: make_schedule("linear", 10, beta_start=0.1, beta_end=0.01), "must rise"),
        (lambda: timesteps(10, 11), "sampling steps must be in 1..10"),
        (lambda: make_schedule().target("score", None, None, 0), "objective 'score'"),
    ]:
        with pytest.raises(ParameterError, match=fragment):
            call()


@pytest.fixture(scope="module")
def diffusers():
    # in the test extra, so CI always runs these; skipped only in an install without it
    return pytest.importorskip("diffusers", reason="diffusers (pip install -e '.[test]')")


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("zero_snr", [False, True])
def test_schedules_match_diffusers(diffusers, kind, zero_snr):
    name = {"linear": "linear", "cosine": "squaredcos_cap_v2"}[kind]
    theirs = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule=name, rescale_betas_zero_snr=zero_snr
    )
    ours = make_schedule(kind, 1000, zero_snr=zero_snr)
    # diffusers computes in float32 (its cumulative products drift ~1e-5 relative); ours float64
    torch.testing.assert_close(ours.betas.float(), theirs.betas, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("objective", ["epsilon", "v_prediction"])
def test_ddpm_and_ddim_steps_match_diffusers(diffusers, objective):
    ours_objective = {"epsilon": "epsilon", "v_prediction": "v"}[objective]
    g = torch.Generator().manual_seed(3)
    x_t = torch.randn(2, 3, 8, 8, generator=g)
    prediction = torch.randn(2, 3, 8, 8, generator=g)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    sched = make_schedule("linear", 1000)
    ddpm = diffusers.DDPMScheduler(
        num_train_timesteps=1000, prediction_type=objective, clip_sample=False,
        variance_type="fixed_small",
    )  # fmt: skip
    for t in (999, 500, 1):
        # DDPMScheduler draws its noise itself: the same generator state gives the same noise
        theirs = ddpm.step(
            prediction, t, x_t, generator=torch.Generator().manual_seed(9)
        ).prev_sample
        x0, _ = sched.to_x0_eps(ours_objective, prediction.double(), x_t.double(), t)
        mine = sched.ddpm_step(x0, x_t.double(), t, noise.double())
        torch.testing.assert_close(mine.float(), theirs, rtol=1e-4, atol=1e-5)
    # respaced: 10 of the 1000 steps, as the samplers run them
    ddpm.config.timestep_spacing = "trailing"
    ddpm.set_timesteps(10)
    assert [int(t) for t in ddpm.timesteps] == timesteps(1000, 10)
    chain = [*timesteps(1000, 10), -1]
    for t, t_prev in [*list(itertools.pairwise(chain))[:3], (chain[-2], -1)]:
        theirs = ddpm.step(
            prediction, t, x_t, generator=torch.Generator().manual_seed(9)
        ).prev_sample
        x0, _ = sched.to_x0_eps(ours_objective, prediction.double(), x_t.double(), t)
        mine = sched.ddpm_step(x0, x_t.double(), t, noise.double(), t_prev=t_prev)
        torch.testing.assert_close(mine.float(), theirs, rtol=1e-4, atol=1e-5)
    ddim = diffusers.DDIMScheduler(
        num_train_timesteps=1000, prediction_type=objective, clip_sample=False,
        timestep_spacing="trailing", set_alpha_to_one=True,
    )  # fmt: skip
    ddim.set_timesteps(10)
    assert [int(t) for t in ddim.timesteps] == timesteps(1000, 10)
    steps = [*timesteps(1000, 10), -1]
    for eta in (0.0, 1.0):
        for t, t_prev in list(itertools.pairwise(steps))[:3]:
            theirs = ddim.step(prediction, t, x_t, eta=eta, variance_noise=noise).prev_sample
            x0, eps = sched.to_x0_eps(ours_objective, prediction.double(), x_t.double(), t)
            mine = sched.ddim_step(x0, eps, t, t_prev, eta=eta, noise=noise.double())
            torch.testing.assert_close(mine.float(), theirs, rtol=1e-4, atol=1e-5)
