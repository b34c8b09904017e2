"""pix2pix: a PatchGAN critic beside any generator; packages hold the generator; resume."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from zarrstain.cli.main import cli

import zarrstain
from zarrstain import datasets
from zarrstain.errors import ParameterError
from zarrstain.evaluation.metrics import pearson
from zarrstain.training import TrainConfig, build_config
from zarrstain.training import train as run_training
from zarrstain.training.adversarial import PatchDiscriminator


@pytest.fixture(scope="module")
def plate(tmp_path_factory):
    path = tmp_path_factory.mktemp("pix2pix") / "plate.zarr"
    return datasets.make_plate(
        path, rows=("A",), columns=("1", "2", "3"), fields=1, shape=(1, 4, 64, 64), seed=8
    )


def small(**kwargs) -> TrainConfig:
    """fnet2d depth 2 against a narrow two-layer critic, on the CPU."""
    defaults = dict(
        inputs=["BF"],
        targets=["DNA"],
        model="pix2pix",
        generator="fnet2d",
        depth=2,
        mult_chan=8,
        steps=6,
        batch_size=4,
        patch=[32, 32],
        device="cpu",
        discriminator_layers=2,
        discriminator_width=8,
        val_scenes=["A/3/0"],
        validate_every=1000,
    )
    return TrainConfig(**{**defaults, **kwargs})


@pytest.mark.parametrize(
    ("dims", "patch", "logits"),
    [(2, (64, 64), (14, 14)), (3, (8, 64, 64), (3, 6, 6)), (3, (4, 16, 16), (3, 3, 3))],
)
def test_the_critic_scores_patches_in_2d_and_3d(dims, patch, logits):
    """Shallow axes are not halved (a z of 4 or 8 survives four layers); one logit map."""
    critic = PatchDiscriminator(dims, 2, patch, width=4, layers=2 if dims == 2 else 3)
    out = critic(torch.zeros(1, 2, *patch))
    assert out.shape[:2] == (1, 1) and tuple(out.shape[2:]) == logits


def test_pix2pix_trains_both_players_and_the_package_holds_the_generator(plate, tmp_path):
    config = small(steps=150, lr=2e-3, validate_every=150, reconstruction_weight=100.0)
    result = run_training(plate, config, tmp_path / "gan")
    history = result.history
    for key in ("d_loss", "adversarial", "reconstruction"):
        first = np.mean([h[key] for h in history[:10]])
        last = np.mean([h[key] for h in history[-10:]])
        assert abs(last - first) > 0.05 * abs(first), (key, first, last)  # both players move
    assert history[-1]["reconstruction"] < 0.5 * history[0]["reconstruction"]
    model = zarrstain.load_model(tmp_path / "gan")
    assert model.architecture == "fnet"  # what predicts is the generator alone
    card = json.loads((tmp_path / "gan" / "card.json").read_text())
    assert card["training"]["loss"] == "pix2pix: BCE ×1 + MSE ×100"
    assert card["training"]["gan"]["layers"] == 2
    held_out = zarrstain.open_image(plate, "A/3/0")
    pred = zarrstain.predict(held_out, model)
    assert pearson(held_out.sel(c="DNA").values, pred.values[:, 0]) > 0.6


def test_pix2pix_resumes_exactly_with_the_discriminator(plate, tmp_path):
    config = small()
    straight = run_training(
        plate, dataclasses.replace(config, checkpoint_every=3), tmp_path / "straight"
    )
    run_training(plate, dataclasses.replace(config, steps=3), tmp_path / "resumed")
    state = torch.load(tmp_path / "resumed" / "training_state.pt", weights_only=True)
    assert "discriminator" in state["adversary"]
    resumed = run_training(plate, config, tmp_path / "resumed", resume=True)
    assert [h["step"] for h in resumed.history] == list(range(1, 7))
    for key in ("loss", "d_loss"):
        np.testing.assert_allclose(
            [h[key] for h in resumed.history], [h[key] for h in straight.history], rtol=1e-5
        )
    for a, b in zip(
        resumed.model.module.state_dict().values(),
        straight.model.module.state_dict().values(),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    plain = dataclasses.replace(config, model="fnet2d", generator=None, discriminator_layers=4,
                                discriminator_width=64)  # fmt: skip
    run_training(plate, dataclasses.replace(plain, steps=3), tmp_path / "plain")
    with pytest.raises(ParameterError, match="was trained without a critic; resume it"):
        run_training(plate, dataclasses.replace(config, steps=6), tmp_path / "plain", resume=True)
    with pytest.raises(ParameterError, match="was trained with pix2pix"):
        run_training(plate, dataclasses.replace(plain, steps=6), tmp_path / "resumed", resume=True)


def test_a_3d_generator_trains_against_a_3d_critic(plate, tmp_path):
    config = small(generator="fnet3d", patch=[4, 16, 16], steps=2, val_scenes=None)
    result = run_training(plate, config, tmp_path / "gan3d")
    assert result.model.kwargs["ndim"] == 3 and np.isfinite(result.history[-1]["d_loss"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            dict(model="fnet2d", generator=None),
            "is a (cyclegan / )?pix2pix setting, not one of .fnet2d.; "
            "train with model= (cyclegan or )?pix2pix",
        ),
        (dict(gan_loss="wgan"), "gan_loss must be one of bce, lsgan, not 'wgan'"),
        (
            dict(reconstruction_loss="ssim"),
            "reconstruction_loss must be one of mse, l1, not 'ssim'",
        ),
        (dict(gan_weight=-1.0), "must be a number ≥ 0"),
        (dict(discriminator_layers=0), "whole number ≥ 1"),
        (dict(discriminator_lr=0), "discriminator_lr must be a positive number"),
        (dict(discriminator_betas="0.5,high"), "must be numbers like 0.5,0.999"),
        (dict(generator="unet9"), "pix2pix's generator 'unet9' is not a registered"),
        (dict(generator="diffusion2d"), "one value per target in one forward"),
        (dict(head="bins"), "one value per target in one forward"),
    ],
)
def test_settings_pix2pix_cannot_use_are_refused(change, message):
    with pytest.raises(ParameterError, match=message):
        small(**change).check()


def test_cli_trains_pix2pix_with_lsgan_and_l1(plate, tmp_path):
    out = tmp_path / "cli-gan"
    args = ["train", str(plate), "--input", "BF", "--target", "DNA", "--out", str(out),
            "--model", "pix2pix", "--generator", "fnet2d", "--depth", "2", "--mult-chan", "4",
            "--steps", "2", "--batch-size", "2", "--patch", "32x32", "--device", "cpu",
            "--gan-loss", "lsgan", "--reconstruction-loss", "l1", "--reconstruction-weight",
            "100", "--discriminator-layers", "2", "--discriminator-width", "4"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["loss"] == "pix2pix: LSGAN ×1 + L1 ×100"
    bad = CliRunner().invoke(cli, [*args[:-4], "--overwrite", "--gan-weight", "-2"])
    assert bad.exit_code != 0 and "--gan-weight must be a number ≥ 0" in bad.output


def test_the_pix2pix_recipe_reads_as_mmv_im2im_writes_it(tmp_path):
    recipe = tmp_path / "gan.yaml"
    recipe.write_text(
        "data: {stores: [plate.zarr], inputs: [BF], targets: [DNA], patch: [64, 64]}\n"
        "model:\n  architecture: pix2pix\n  generator: fnet2d\n"
        "  kwargs: {depth: 4, mult_chan: 32}\n  discriminator: {layers: 4, width: 64}\n"
        "training:\n  loss: {name: pix2pix, gan: bce, gan_weight: 1, reconstruction: mse,"
        " reconstruction_weight: 1000}\n"
        "  optimizer: {name: adam, lr: 0.0002, betas: [0.5, 0.999]}\n"
        "  discriminator_optimizer: {name: adam, lr: 0.0002, betas: [0.5, 0.999]}\n"
        "  schedule: constant\n"
    )
    config = build_config(recipe)
    assert (config.model, config.generator, config.mult_chan) == ("pix2pix", "fnet2d", 32)
    assert config.gan.reconstruction_weight == 1000 and config.gan.betas == (0.5, 0.999)
    assert config.betas == (0.5, 0.999) and config.lr == 2e-4
    recipe.write_text(recipe.read_text().replace("width: 64", "widht: 64"))
    with pytest.raises(ParameterError, match="unknown key model.discriminator.widht"):
        build_config(recipe)
